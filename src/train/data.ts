/**
 * Training data: JSONL ({"prompt","completion"}, {"messages"}, {"text"}, {"text","label"}) and
 * CSV/TSV with column options, with `file:line` errors for bad records (or skipped and counted),
 * then tokenized into examples whose loss covers only the completion.
 *
 * JSONL is read line by line. CSV and TSV go through csv-parse (RFC 4180: quoted fields may hold
 * the delimiter, newlines and doubled quotes; a UTF-8 BOM and CRLF line ends are accepted), fed
 * from windows of about 1 MiB that end on a line break, so files larger than memory stream
 * through; a window that ends inside a quoted field is read again larger. Line numbers are
 * counted here from the bytes, so they stay right after records that span lines; an error names
 * the line where its record starts.
 *
 * Quotes in TSV: TSV has no single standard (IANA's has no quoting; pandas and Python's csv
 * quote as in CSV). The .tsv files in ../shared/data settle it for this reader: BANKING77 is
 * written RFC 4180 style (its texts with quotes or line breaks are quoted with inner quotes
 * doubled, and 10 train texts span several lines, so splitting on tabs and newlines breaks it),
 * and SST-2 holds no quote at all, so TSV is quoted like CSV by default. Files whose quotes are
 * plain text, such as the SMS Spam Collection (a TSV without the extension, with unbalanced
 * quotes), are read with `quote: false`.
 * Quoting is strict in both formats: a quote inside an unquoted field, text after a closing
 * quote, or a quote never closed is a bad record with its line, never a guess, because the
 * lenient readings (a quote dropped, several lines run into one text) are exactly what silently
 * corrupts a dataset.
 *
 * Columns: an explicit column option always wins. Only for roles no option names does a header
 * name count as a guess (text: text, sentence, prompt; label: label; completion: completion), and
 * two guesses for one role, or a label column next to a completion column, is an error that names
 * the columns and the options that settle it.
 */
import { closeSync, fstatSync, openSync, readSync, statSync } from 'node:fs';
import { CsvError, parse as parseCsv } from 'csv-parse/sync';
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
  /**
   * CSV/TSV: whether a field that starts with `"` is a quoted field (RFC 4180; default true).
   * false reads every quote as plain text, for files written without quoting (the UCI SMS Spam
   * Collection, most GLUE-style TSVs).
   */
  quote?: boolean;
  skipBadLines?: boolean;
}

export interface ReadResult {
  records: DataRecord[];
  /** Lines (records) skipped as bad (with skipBadLines). */
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


function formatOf(path: string, o: ReadOptions): 'jsonl' | 'csv' | 'tsv' {
  if (o.format) return o.format;
  if (/\.(csv)$/i.test(path)) return 'csv';
  if (/\.(tsv|tab)$/i.test(path)) return 'tsv';
  return 'jsonl';
}

/** A parsed CSV/TSV record with the line it starts on, or the parser's complaint about one. */
type DelimitedRow = { fields: string[]; line: number } | { error: unknown; line: number };

const WINDOW_BYTES = 1 << 20;
/** A record may grow this large before it is taken for a quote that is never closed. */
const MAX_RECORD_BYTES = 64 << 20;
const TOO_LONG = Symbol('record too long');

function countNewlines(buf: Buffer, from: number, to: number): number {
  let n = 0;
  for (let i = buf.indexOf(10, from); i >= 0 && i < to; i = buf.indexOf(10, i + 1)) n++;
  return n;
}

/** The bytes from `start` up to the last line break within `want` bytes (all that is left at the end of the file); null when no line ends in them. */
function readWindow(fd: number, start: number, want: number, size: number): Buffer | null {
  const n = Math.min(want, size - start);
  const buf = Buffer.allocUnsafe(n);
  let got = 0;
  while (got < n) {
    const r = readSync(fd, buf, got, n - got, start + got);
    if (r === 0) break;
    got += r;
  }
  if (start + got >= size) return buf.subarray(0, got);
  const nl = buf.lastIndexOf(10, got - 1);
  return nl < 0 ? null : buf.subarray(0, nl + 1);
}

/** The offset just after the line break at or after `from` (or the end of the file). */
function nextLineStart(fd: number, from: number, size: number): number {
  const buf = Buffer.allocUnsafe(1 << 16);
  for (let pos = from; pos < size; ) {
    const n = readSync(fd, buf, 0, Math.min(buf.length, size - pos), pos);
    if (n === 0) break;
    const i = buf.subarray(0, n).indexOf(10);
    if (i >= 0) return pos + i + 1;
    pos += n;
  }
  return size;
}

/**
 * Records of a CSV/TSV file with their starting lines. After a malformed record the file is read
 * on from the line after the one where that record starts, which is what skipping a bad line
 * means when its quote may have swallowed the lines after it.
 */
function* delimitedRows(path: string, delimiter: string, quote: boolean): Generator<DelimitedRow> {
  const fd = openSync(path, 'r');
  try {
    const size = fstatSync(fd).size;
    let start = 0;
    let line = 1;
    let want = WINDOW_BYTES;
    while (start < size) {
      const buf = readWindow(fd, start, want, size);
      const parsed: { fields: string[]; end: number }[] = [];
      let error: unknown;
      if (buf !== null) {
        try {
          parseCsv(buf, {
            delimiter,
            quote: quote ? '"' : false,
            bom: start === 0,
            record_delimiter: ['\r\n', '\n'],
            // blank lines come through as records so that byte offsets, and so line numbers, stay exact
            skip_empty_lines: false,
            // the field count is checked against the header by the caller, which knows the line
            relax_column_count: true,
            on_record: (fields: string[], info) => {
              parsed.push({ fields, end: info.bytes });
              return null;
            },
          });
        } catch (e) {
          error = e;
        }
      }
      let pos = 0;
      for (const r of parsed) {
        yield { fields: r.fields, line };
        line += countNewlines(buf!, pos, r.end);
        pos = r.end;
      }
      if (buf !== null && error === undefined) {
        line += countNewlines(buf, pos, buf.length);
        start += buf.length;
        want = WINDOW_BYTES;
        continue;
      }
      // the window ends inside a record (a line longer than the window, or a quoted field that
      // runs past it): read again from that record's start, with more room if it is the first
      const cutShort = buf === null || (error instanceof CsvError && error.code === 'CSV_QUOTE_NOT_CLOSED' && start + buf.length < size);
      if (cutShort && pos > 0) {
        start += pos;
        want = WINDOW_BYTES;
        continue;
      }
      if (cutShort && want < MAX_RECORD_BYTES) {
        want *= 2;
        continue;
      }
      yield { error: cutShort ? TOO_LONG : error, line };
      start = nextLineStart(fd, start + pos, size);
      line += 1;
      want = WINDOW_BYTES;
    }
  } finally {
    closeSync(fd);
  }
}

const QUOTE_HINT = 'read the file with --no-quote if its quotes are plain text';

/** What a csv-parse complaint means for the record, in the reader's words. */
function csvProblem(e: unknown, cols: string[] | null): string {
  if (e === TOO_LONG) return `no record ends within ${MAX_RECORD_BYTES >> 20} MiB of this line (a quote that is never closed?)`;
  if (!(e instanceof CsvError)) throw e;
  const i = typeof e.column === 'number' ? e.column : -1;
  const where = i < 0 ? '' : cols && cols[i] !== undefined ? ` in column "${cols[i]}"` : ` in field ${i}`;
  switch (e.code) {
    case 'CSV_QUOTE_NOT_CLOSED':
      return `unterminated quote${where}: the quoted field that starts in this record is never closed`;
    case 'CSV_INVALID_CLOSING_QUOTE':
      return `text after the closing quote of a quoted field${where}: write a quote inside a quoted field as "", or ${QUOTE_HINT}`;
    case 'INVALID_OPENING_QUOTE':
      return `a quote inside an unquoted field${where}: quote the whole field and double the quotes in it, or ${QUOTE_HINT}`;
    default:
      return e.message;
  }
}

/** Column of each role; -1 where the role is unused. */
interface Columns {
  text: number;
  label: number;
  completion: number;
}

const GUESSES = { text: ['text', 'sentence', 'prompt'], label: ['label'], completion: ['completion'] };

/**
 * Which column plays which role. Options name columns; header names only fill roles no option
 * names, and only when exactly one column could fill them.
 */
function resolveColumns(path: string, cols: string[] | null, width: number, o: ReadOptions): Columns {
  const listed = cols ? `columns: ${cols.join(', ')}` : `the file has no header; its first record has ${width} fields`;
  const index = (name: string, role: string): number => {
    if (/^\d+$/.test(name)) {
      const i = Number(name);
      if (i >= width) throw new DataError(`${path}: no ${role} column ${i} (${listed}; indices count from 0)`);
      return i;
    }
    const i = cols ? cols.indexOf(name) : -1;
    if (i < 0) throw new DataError(`${path}: no ${role} column "${name}" (columns: ${cols?.join(', ') ?? 'none, the file has no header'})`);
    return i;
  };
  if (o.labelColumn !== undefined && o.completionColumn !== undefined) {
    throw new DataError(`${path}: --label-column and --completion-column are both given; a record is a text with a label or a prompt with a completion, not both`);
  }
  let text = o.textColumn !== undefined ? index(o.textColumn, 'text') : -1;
  let label = o.labelColumn !== undefined ? index(o.labelColumn, 'label') : -1;
  let completion = o.completionColumn !== undefined ? index(o.completionColumn, 'completion') : -1;
  if (cols === null) {
    if (text < 0) text = 0;
  } else {
    const taken = new Set([text, label, completion].filter((i) => i >= 0));
    const found = (names: string[]) => cols.flatMap((c, i) => (names.includes(c) && !taken.has(i) ? [i] : []));
    const named = (is: number[]) => is.map((i) => `"${cols[i]}"`).join(' and ');
    if (text < 0) {
      const t = found(GUESSES.text);
      if (t.length > 1) throw new DataError(`${path}: columns ${named(t)} could each hold the text; say which with --text-column (${listed})`);
      if (t.length === 0) throw new DataError(`${path}: say which column holds the text (--text-column; ${listed})`);
      text = t[0]!;
      taken.add(text);
    }
    if (label < 0 && completion < 0) {
      const l = found(GUESSES.label);
      const c = found(GUESSES.completion);
      if (l.length + c.length > 1) {
        throw new DataError(
          `${path}: columns ${named([...l, ...c])} could each be what is learned; choose with --label-column (a label per text) or --completion-column (a completion per prompt) (${listed})`,
        );
      }
      if (l.length) label = l[0]!;
      else if (c.length) completion = c[0]!;
    }
  }
  const other = label >= 0 ? label : completion;
  if (other >= 0 && other === text) {
    const role = label >= 0 ? 'label' : 'completion';
    throw new DataError(`${path}: column ${cols?.[text] !== undefined ? `"${cols[text]}"` : text} cannot be both the text and the ${role} (say which column holds each with --text-column and --${role}-column)`);
  }
  return { text, label, completion };
}

export function readRecords(path: string, o: ReadOptions = {}): ReadResult {
  let size: number;
  try {
    const st = statSync(path);
    if (st.isDirectory()) throw new DataError(`${path} is a folder; --data names a data file (JSONL, CSV or TSV)`);
    size = st.size;
  } catch (e) {
    if (e instanceof DataError) throw e;
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
  if (fmt === 'jsonl') readJsonl(path, records, bad);
  else readDelimited(path, fmt === 'tsv' ? '\t' : ',', o, records, bad);
  if (records.length === 0) throw new DataError(`${path}: no usable records${skipped ? ` (${skipped} bad lines skipped)` : ''}`);
  return { records, skipped, skippedReasons: reasons };
}

function readJsonl(path: string, records: DataRecord[], bad: (no: number, why: string) => void): void {
  for (const { line: raw, no } of readLines(path)) {
    // editors on Windows save UTF-8 with a BOM, which JSON.parse rejects
    const line = no === 1 ? raw.replace(/^\uFEFF/, '') : raw;
    if (line.trim() === '') continue;
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
  }
}

function readDelimited(path: string, delimiter: string, o: ReadOptions, records: DataRecord[], bad: (no: number, why: string) => void): void {
  const header = o.header ?? true;
  let cols: string[] | null = null;
  let at: Columns | null = null;
  let width = 0;
  for (const r of delimitedRows(path, delimiter, o.quote ?? true)) {
    if ('error' in r) {
      const why = csvProblem(r.error, cols);
      // without its header the roles of the columns are unknown, so there is nothing to read on with
      if (at === null && header) throw new DataError(`${path}:${r.line}: the header is malformed: ${why}`);
      bad(r.line, why);
      continue;
    }
    const row = r.fields;
    if (row.length === 1 && row[0]!.trim() === '') continue;
    if (at === null) {
      width = row.length;
      if (header) {
        cols = row.map((c) => c.trim());
        at = resolveColumns(path, cols, width, o);
        continue;
      }
      at = resolveColumns(path, null, width, o);
    }
    if (row.length !== width) {
      // a field count off the header's is how an unquoted delimiter in a text shows
      bad(r.line, `has ${row.length} fields, ${cols ? 'the header has' : 'the first record has'} ${width}`);
      continue;
    }
    const name = (i: number) => (cols ? `"${cols[i]}"` : String(i));
    const text = row[at.text]!;
    if (at.label >= 0) {
      const label = row[at.label]!.trim();
      if (label === '') bad(r.line, `empty label in column ${name(at.label)}`);
      else records.push({ kind: 'label', text, label });
    } else if (at.completion >= 0) {
      const completion = row[at.completion]!;
      if (completion === '') bad(r.line, `empty completion in column ${name(at.completion)}`);
      else records.push({ kind: 'completion', prompt: text, completion });
    } else if (text.length > 0) records.push({ kind: 'text', text });
    else bad(r.line, `empty text in column ${name(at.text)}`);
  }
}
