/**
 * Training data: JSONL ({"prompt","completion"}, {"messages"}, {"text"}, {"text","label"}) and
 * CSV/TSV with column options, read line by line (files larger than memory stream through), with
 * `file:line` errors for bad lines (or skipped and counted), then tokenized into examples whose
 * loss covers only the completion.
 */
import { closeSync, openSync, readSync, statSync } from 'node:fs';
import { AdaptkitError } from '../tensor/index.js';
import type { ChatMessage } from '../io/chat-template.js';

export type DataRecord =
  | { kind: 'completion'; prompt: string; completion: string }
  | { kind: 'text'; text: string }
  | { kind: 'chat'; messages: ChatMessage[] }
  | { kind: 'label'; text: string; label: string };

export class DataError extends AdaptkitError {}

/**
 * Lines of a file, read in 1 MiB chunks (never the whole file at once), from byte `start`. Each
 * line comes with its number (counting from `firstLine`) and the byte offset just after it.
 */
export function* readLines(path: string, start = 0, firstLine = 1): Generator<{ line: string; no: number; end: number }> {
  const fd = openSync(path, 'r');
  try {
    const buf = Buffer.alloc(1 << 20);
    let carry = Buffer.alloc(0);
    let pos = start;
    let no = firstLine - 1;
    let lineStart = start;
    for (;;) {
      const n = readSync(fd, buf, 0, buf.length, pos);
      if (n === 0) break;
      pos += n;
      const data = carry.length ? Buffer.concat([carry, buf.subarray(0, n)]) : buf.subarray(0, n);
      let from = 0;
      for (let i = data.indexOf(10); i >= 0; i = data.indexOf(10, from)) {
        const line = data.toString('utf8', from, i).replace(/\r$/, '');
        lineStart += i + 1 - from;
        from = i + 1;
        yield { line, no: ++no, end: lineStart };
      }
      carry = Buffer.from(data.subarray(from));
    }
    if (carry.length > 0) yield { line: carry.toString('utf8').replace(/\r$/, ''), no: ++no, end: lineStart + carry.length };
  } finally {
    closeSync(fd);
  }
}

export interface ReadOptions {
  format?: 'jsonl' | 'csv' | 'tsv';
  /** CSV/TSV: column holding the text (name or 0-based index). */
  textColumn?: string;
  /** CSV/TSV: column holding the label (makes label records). */
  labelColumn?: string;
  /** CSV/TSV: column holding a completion (makes prompt/completion records with textColumn as prompt). */
  completionColumn?: string;
  /** CSV/TSV: whether the first line names the columns (default true). */
  header?: boolean;
  skipBadLines?: boolean;
}

export interface ReadResult {
  records: DataRecord[];
  /** Lines skipped as bad (with skipBadLines). */
  skipped: number;
  /** The first few skip reasons, for reporting. */
  skippedReasons: string[];
}

function isStr(v: unknown): v is string {
  return typeof v === 'string';
}

/** One JSONL object as a record, or a reason it is not one. */
export function jsonRecord(obj: unknown): DataRecord | string {
  if (!obj || typeof obj !== 'object' || Array.isArray(obj)) return 'not a JSON object';
  const o = obj as Record<string, unknown>;
  if ('prompt' in o || 'completion' in o) {
    if (!isStr(o.prompt) || !isStr(o.completion)) return '"prompt" and "completion" must both be strings';
    if (o.completion.length === 0) return '"completion" is empty';
    return { kind: 'completion', prompt: o.prompt, completion: o.completion };
  }
  if ('question' in o && 'answer' in o) {
    // question/answer sets (GSM8K): the answer is the completion
    if (!isStr(o.question) || !isStr(o.answer)) return '"question" and "answer" must both be strings';
    return { kind: 'completion', prompt: `${o.question}\n`, completion: o.answer };
  }
  if ('messages' in o) {
    const m = o.messages;
    if (!Array.isArray(m) || m.length === 0 || !m.every((x) => x && isStr((x as ChatMessage).role) && isStr((x as ChatMessage).content))) {
      return '"messages" must be a non-empty list of {"role", "content"} strings';
    }
    if ((m[m.length - 1] as ChatMessage).role !== 'assistant') return 'the last message must be the assistant\'s (it is what is learned)';
    return { kind: 'chat', messages: m as ChatMessage[] };
  }
  if ('label' in o) {
    if (!isStr(o.text)) return '"text" must be a string';
    if (!isStr(o.label) && typeof o.label !== 'number') return '"label" must be a string or a number';
    return { kind: 'label', text: o.text, label: String(o.label) };
  }
  if ('text' in o) {
    if (!isStr(o.text) || o.text.length === 0) return '"text" must be a non-empty string';
    return { kind: 'text', text: o.text };
  }
  return 'expected "prompt"/"completion", "question"/"answer", "messages", "text" or "text"/"label" keys';
}

/** Split one CSV line (RFC 4180 quoting) or TSV line. */
export function splitRow(line: string, sep: string): string[] | null {
  if (sep === '\t') return line.split('\t');
  const out: string[] = [];
  let cur = '';
  let q = false;
  for (let i = 0; i < line.length; i++) {
    const c = line[i]!;
    if (q) {
      if (c === '"' && line[i + 1] === '"') {
        cur += '"';
        i++;
      } else if (c === '"') q = false;
      else cur += c;
    } else if (c === '"') q = true;
    else if (c === sep) {
      out.push(cur);
      cur = '';
    } else cur += c;
  }
  if (q) return null;
  out.push(cur);
  return out;
}

function formatOf(path: string, o: ReadOptions): 'jsonl' | 'csv' | 'tsv' {
  if (o.format) return o.format;
  if (/\.(csv)$/i.test(path)) return 'csv';
  if (/\.(tsv|tab)$/i.test(path)) return 'tsv';
  return 'jsonl';
}

export function readRecords(path: string, o: ReadOptions = {}): ReadResult {
  let size: number;
  try {
    size = statSync(path).size;
  } catch {
    throw new DataError(`${path}: no such data file`);
  }
  if (size === 0) throw new DataError(`${path}: the data file is empty`);
  const fmt = formatOf(path, o);
  const records: DataRecord[] = [];
  let skipped = 0;
  const reasons: string[] = [];
  const bad = (no: number, why: string) => {
    const msg = `${path}:${no}: ${why}`;
    if (!o.skipBadLines) throw new DataError(`${msg} (pass --skip-bad-lines to skip such lines)`);
    skipped++;
    if (reasons.length < 5) reasons.push(msg);
  };
  let cols: string[] | null = null;
  let ti = -1;
  let li = -1;
  let ci = -1;
  const colIndex = (name: string | undefined, what: string): number => {
    if (name === undefined) return -1;
    if (/^\d+$/.test(name)) return Number(name);
    const i = cols ? cols.indexOf(name) : -1;
    if (i < 0) throw new DataError(`${path}: no ${what} column "${name}" (columns: ${cols?.join(', ') ?? 'none, the file has no header'})`);
    return i;
  };
  for (const { line, no } of readLines(path)) {
    if (line.trim() === '') continue;
    if (fmt === 'jsonl') {
      let obj: unknown;
      try {
        obj = JSON.parse(line);
      } catch (e) {
        bad(no, `not valid JSON (${(e as Error).message})`);
        continue;
      }
      const r = jsonRecord(obj);
      if (typeof r === 'string') bad(no, r);
      else records.push(r);
      continue;
    }
    const row = splitRow(line, fmt === 'tsv' ? '\t' : ',');
    if (!row) {
      bad(no, 'unterminated quote');
      continue;
    }
    if (cols === null && (o.header ?? true)) {
      cols = row.map((c) => c.trim());
      ti = colIndex(o.textColumn ?? (cols.includes('text') ? 'text' : undefined), 'text');
      li = colIndex(o.labelColumn ?? (cols.includes('label') ? 'label' : undefined), 'label');
      ci = colIndex(o.completionColumn, 'completion');
      if (ti < 0) throw new DataError(`${path}: say which column holds the text (--text-column; columns: ${cols.join(', ')})`);
      continue;
    }
    if (ti < 0) {
      ti = colIndex(o.textColumn ?? '0', 'text');
      li = colIndex(o.labelColumn, 'label');
      ci = colIndex(o.completionColumn, 'completion');
    }
    const need = Math.max(ti, li, ci);
    if (row.length <= need) {
      bad(no, `has ${row.length} columns, column ${need} is needed`);
      continue;
    }
    const text = row[ti]!;
    if (li >= 0) {
      if (row[li]!.trim() === '') bad(no, 'empty label');
      else records.push({ kind: 'label', text, label: row[li]!.trim() });
    } else if (ci >= 0) records.push({ kind: 'completion', prompt: text, completion: row[ci]! });
    else if (text.length > 0) records.push({ kind: 'text', text });
    else bad(no, 'empty text');
  }
  if (records.length === 0) throw new DataError(`${path}: no usable records${skipped ? ` (${skipped} bad lines skipped)` : ''}`);
  return { records, skipped, skippedReasons: reasons };
}
