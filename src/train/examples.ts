/**
 * Records to token examples. An example is head + body + tail + completion: the loss covers the
 * completion only, and only the body (the free text) is cut when an example is too long.
 */
import { existsSync, readFileSync, statSync } from 'node:fs';
import { parse as parseCsv } from 'csv-parse/sync';
import { AdaptkitError, Rng } from '../tensor/index.js';
import { type Tokenizer, textEnd } from '../models/tokenizer.js';
import { applyChatTemplate } from '../io/chat-template.js';
import type { DataRecord } from './data.js';

export interface Example {
  head: number[];
  body: number[];
  tail: number[];
  completion: number[];
  /** The label of a classification record. */
  label?: string;
  /** Its index, when trained with a classification head. */
  labelIndex?: number;
  /** The id of the task it belongs to in multi-task training (0 when absent). */
  task?: number;
}

/** Text between a classification input and its label unless told otherwise. */
export const DEFAULT_LABEL_CUE = '\nLabel:';

/** Words each label is trained on and scored by, instead of the label's own text. */
export type LabelWords = ReadonlyMap<string, string>;

export interface TemplateOptions {
  /** Text after a classification input, before the label (default "\nLabel:"). */
  labelCue?: string;
  /** A label map: the completion of a label record is " " + its words (else " " + the label). */
  labelWords?: LabelWords;
  /**
   * Put EOS after completions, label words included, so that generation stops after the label
   * (default true when the tokenizer has one).
   */
  eos?: boolean;
  chatTemplate?: string | null;
  bosToken?: string;
  eosToken?: string;
}

function body(tok: Tokenizer, text: string): number[] {
  return tok.encode(text, { bos: false });
}

/** Token ids of `suffix` as it reads after `prefix` (BPE may join across the boundary). */
function after(tok: Tokenizer, prefix: string, suffix: string): number[] {
  const a = tok.encode(prefix, { bos: false });
  const b = tok.encode(prefix + suffix, { bos: false });
  let i = 0;
  while (i < a.length && a[i] === b[i]) i++;
  return i === a.length ? b.slice(i) : tok.encode(suffix, { bos: false });
}

export function toExample(r: DataRecord, tok: Tokenizer, o: TemplateOptions = {}): Example {
  const head = tok.bosId !== null ? [tok.bosId] : [];
  const end = textEnd(tok);
  const eos = (o.eos ?? true) && end !== null ? [end] : [];
  switch (r.kind) {
    case 'completion':
      return { head, body: body(tok, r.prompt), tail: [], completion: [...after(tok, r.prompt, r.completion), ...eos] };
    case 'text':
      return { head, body: [], tail: [], completion: [...body(tok, r.text), ...eos] };
    case 'label': {
      const cue = o.labelCue ?? DEFAULT_LABEL_CUE;
      const words = labelText(r.label, o.labelWords);
      return { head, body: body(tok, r.text), tail: after(tok, r.text, cue), completion: [...after(tok, r.text + cue, ` ${words}`), ...eos], label: r.label };
    }
    case 'chat': {
      if (!o.chatTemplate) throw new AdaptkitError('chat records need a model with a chat template (tokenizer_config.json "chat_template")');
      const opts = { bosToken: o.bosToken, eosToken: o.eosToken };
      const prompt = applyChatTemplate(o.chatTemplate, r.messages.slice(0, -1), { ...opts, addGenerationPrompt: true });
      const full = applyChatTemplate(o.chatTemplate, r.messages, opts);
      if (!full.startsWith(prompt)) throw new AdaptkitError('the chat template does not render the conversation as prompt + reply');
      return { head: [], body: [], tail: tok.encode(prompt, { bos: false }), completion: after(tok, prompt, full.slice(prompt.length)) };
    }
  }
}

/** The words a label is trained on: its entry in the label map, or the label itself. */
export function labelText(label: string, words?: LabelWords): string {
  if (!words) return label;
  const w = words.get(label);
  if (w === undefined) throw new AdaptkitError(`label "${label}" has no entry in the label words`);
  return w;
}

/**
 * A label map from a file: a JSON object {"label": "words", ...}, or two tab-separated columns
 * per line (label, then its words; no header; empty lines skipped). Two labels may not share
 * their words, or the model could not tell them apart.
 */
export function readLabelWords(file: string): Map<string, string> {
  if (!existsSync(file)) throw new AdaptkitError(`label words ${file}: no such file`);
  if (!statSync(file).isFile()) throw new AdaptkitError(`label words ${file} is a folder; --label-words names a JSON or TSV file`);
  const text = readFileSync(file, 'utf8').replace(/^\uFEFF/, '');
  const out = new Map<string, string>();
  const put = (label: string, words: unknown, where: string) => {
    if (typeof words !== 'string' || words.trim() === '') throw new AdaptkitError(`${where}: the words for label "${label}" must be a non-empty string`);
    if (out.has(label)) throw new AdaptkitError(`${where}: label "${label}" appears twice`);
    out.set(label, words.trim());
  };
  if (text.trimStart().startsWith('{')) {
    let v: unknown;
    try {
      v = JSON.parse(text);
    } catch (e) {
      throw new AdaptkitError(`${file}: not valid JSON (${(e as Error).message})`);
    }
    if (v === null || typeof v !== 'object' || Array.isArray(v)) throw new AdaptkitError(`${file}: must be a JSON object {"label": "words"}`);
    for (const [label, words] of Object.entries(v)) put(label, words, file);
  } else {
    text.split(/\r?\n/).forEach((line, i) => {
      if (line.trim() === '') return;
      let fields: string[];
      try {
        // RFC 4180 fields, so that a quoted label or word list reads as its text
        fields = (parseCsv(line, { delimiter: '\t', relax_column_count: true, relax_quotes: true }) as string[][])[0] ?? [];
      } catch (e) {
        throw new AdaptkitError(`${file}:${i + 1}: ${(e as Error).message}`);
      }
      if (fields.length !== 2) throw new AdaptkitError(`${file}:${i + 1}: expected two tab-separated columns (a label and its words), got ${fields.length}`);
      put(fields[0]!, fields[1], `${file}:${i + 1}`);
    });
  }
  if (out.size === 0) throw new AdaptkitError(`${file}: no label words`);
  const byWords = new Map<string, string[]>();
  for (const [label, words] of out) byWords.set(words, [...(byWords.get(words) ?? []), label]);
  const shared = [...byWords].filter(([, ls]) => ls.length > 1);
  if (shared.length) throw new AdaptkitError(`${file}: labels ${shared.slice(0, 3).map(([w, ls]) => `${ls.join(', ')} share the words "${w}"`).join('; ')}`);
  return out;
}

export function exampleLength(e: Example): number {
  return e.head.length + e.body.length + e.tail.length + e.completion.length;
}

/** Tokens before the completion: the prompt an instruction-conditioned adapter reads. */
export function promptLength(e: Example): number {
  return e.head.length + e.body.length + e.tail.length;
}

export interface FitResult {
  examples: Example[];
  truncated: number;
}

/** Cut bodies so that every example fits maxLen; an example whose fixed parts do not fit is an error. */
export function fitExamples(examples: readonly Example[], maxLen: number, allowTruncate: boolean, source = 'data'): FitResult {
  let truncated = 0;
  const out = examples.map((e, i) => {
    const len = exampleLength(e);
    if (len <= maxLen) return e;
    if (!allowTruncate) throw new AdaptkitError(`${source}: example ${i + 1} has ${len} tokens, more than the context of ${maxLen} (allow truncation or raise --seq-len)`);
    truncated++;
    const fixed = len - e.body.length;
    if (fixed <= maxLen) return { ...e, body: e.body.slice(0, maxLen - fixed) };
    // the body alone cannot make room: cut the completion's end too (plain-text examples)
    const room = maxLen - e.head.length - e.tail.length;
    if (room < 1) throw new AdaptkitError(`${source}: example ${i + 1} needs ${e.head.length + e.tail.length} tokens before its completion, more than the context of ${maxLen}`);
    return { ...e, body: [], completion: e.completion.slice(0, room) };
  });
  return { examples: out, truncated };
}

/** Shuffled train/validation split (deterministic for a seed). */
/** Fisher-Yates shuffle of `items` in place with a seeded generator (the same order on every platform); returns it. */
export function shuffleInPlace<T>(items: T[], seed: number): T[] {
  const rng = new Rng(seed);
  for (let i = items.length - 1; i > 0; i--) {
    const j = rng.int(i + 1);
    [items[i], items[j]] = [items[j]!, items[i]!];
  }
  return items;
}

export function splitExamples<T>(items: readonly T[], validation: number, seed: number): { train: T[]; validation: T[] } {
  const idx = shuffleInPlace(Array.from(items.keys()), seed);
  const n = validation < 1 ? Math.round(validation * items.length) : Math.min(items.length, Math.floor(validation));
  return { validation: idx.slice(0, n).map((i) => items[i]!), train: idx.slice(n).map((i) => items[i]!) };
}
