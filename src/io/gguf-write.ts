/**
 * Writing GGUF files (version 3, little-endian): typed key/values, tensor infos, then each
 * tensor's data at an aligned offset, as llama.cpp's gguf writer lays them out. Also the
 * tokenizer.ggml.* keys of a SentencePiece vocabulary, from a llama2.c tokenizer.bin or a
 * SentencePiece-BPE tokenizer.json, as llama.cpp's converter writes them.
 */
import { writeFileAtomic } from './atomic.js';
import { AdaptkitError } from '../tensor/index.js';
import { GGUF_DEFAULT_ALIGNMENT, type GgufValue, ggmlTensorBytes, ggmlTypeLayout } from './gguf.js';
import { preview } from './json.js';
import type { Llama2cTokenizer } from './tokenizer-llama2c.js';

export type GgufScalarType = 'u8' | 'i8' | 'u16' | 'i16' | 'u32' | 'i32' | 'f32' | 'bool' | 'string' | 'u64' | 'i64' | 'f64';

/** A value with the GGUF type it is written as (a JS number alone does not say u32 or f32). */
export type GgufTyped =
  | { type: GgufScalarType; value: number | bigint | boolean | string }
  | { type: 'array'; itemType: GgufScalarType; value: readonly (number | bigint | boolean | string)[] };

const TYPE_ID: Record<GgufScalarType | 'array', number> = {
  u8: 0, i8: 1, u16: 2, i16: 3, u32: 4, i32: 5, f32: 6, bool: 7, string: 8, array: 9, u64: 10, i64: 11, f64: 12,
};

export const gguf = {
  u32: (value: number): GgufTyped => ({ type: 'u32', value }),
  i32: (value: number): GgufTyped => ({ type: 'i32', value }),
  f32: (value: number): GgufTyped => ({ type: 'f32', value }),
  bool: (value: boolean): GgufTyped => ({ type: 'bool', value }),
  str: (value: string): GgufTyped => ({ type: 'string', value }),
  array: (itemType: GgufScalarType, value: readonly (number | bigint | boolean | string)[]): GgufTyped => ({ type: 'array', itemType, value }),
};

/** A tensor to write: its row-major shape (written as ne, reversed), GGML type id and data bytes. */
export interface GgufTensorOut {
  name: string;
  type: number;
  shape: readonly number[];
  data: Uint8Array;
}

export interface GgufContents {
  metadata: ReadonlyArray<readonly [string, GgufTyped]>;
  tensors: readonly GgufTensorOut[];
  /** Tensor data alignment; a value other than 32 is written as general.alignment. */
  alignment?: number;
}

/** A growing little-endian byte buffer. */
class Out {
  private buf = Buffer.alloc(1 << 16);
  len = 0;

  private room(n: number): void {
    if (this.len + n <= this.buf.length) return;
    const next = Buffer.alloc(Math.max(this.buf.length * 2, this.len + n));
    this.buf.copy(next, 0, 0, this.len);
    this.buf = next;
  }

  u8(v: number): void { this.room(1); this.buf.writeUInt8(v, this.len); this.len += 1; }
  i8(v: number): void { this.room(1); this.buf.writeInt8(v, this.len); this.len += 1; }
  u16(v: number): void { this.room(2); this.buf.writeUInt16LE(v, this.len); this.len += 2; }
  i16(v: number): void { this.room(2); this.buf.writeInt16LE(v, this.len); this.len += 2; }
  u32(v: number): void { this.room(4); this.buf.writeUInt32LE(v, this.len); this.len += 4; }
  i32(v: number): void { this.room(4); this.buf.writeInt32LE(v, this.len); this.len += 4; }
  f32(v: number): void { this.room(4); this.buf.writeFloatLE(v, this.len); this.len += 4; }
  f64(v: number): void { this.room(8); this.buf.writeDoubleLE(v, this.len); this.len += 8; }
  u64(v: bigint): void { this.room(8); this.buf.writeBigUInt64LE(v, this.len); this.len += 8; }
  i64(v: bigint): void { this.room(8); this.buf.writeBigInt64LE(v, this.len); this.len += 8; }

  str(s: string): void {
    const b = Buffer.from(s, 'utf8');
    this.u64(BigInt(b.length));
    this.room(b.length);
    b.copy(this.buf, this.len);
    this.len += b.length;
  }

  pad(alignment: number): void {
    const n = (alignment - (this.len % alignment)) % alignment;
    this.room(n);
    this.buf.fill(0, this.len, this.len + n);
    this.len += n;
  }

  bytes(): Buffer {
    return this.buf.subarray(0, this.len);
  }
}

function writeScalar(o: Out, type: GgufScalarType, v: number | bigint | boolean | string, key: string): void {
  const bad = (): never => {
    throw new AdaptkitError(`GGUF key ${key}: ${preview(v)} is not a ${type} value`);
  };
  const int = (lo: number, hi: number) => (typeof v === 'number' && Number.isInteger(v) && v >= lo && v <= hi ? v : bad());
  switch (type) {
    case 'u8': return o.u8(int(0, 0xff));
    case 'i8': return o.i8(int(-0x80, 0x7f));
    case 'u16': return o.u16(int(0, 0xffff));
    case 'i16': return o.i16(int(-0x8000, 0x7fff));
    case 'u32': return o.u32(int(0, 0xffffffff));
    case 'i32': return o.i32(int(-0x80000000, 0x7fffffff));
    case 'f32': return o.f32(typeof v === 'number' ? v : bad());
    case 'f64': return o.f64(typeof v === 'number' ? v : bad());
    case 'bool': return o.u8(typeof v === 'boolean' ? (v ? 1 : 0) : bad());
    case 'string': return o.str(typeof v === 'string' ? v : bad());
    case 'u64': return o.u64(typeof v === 'bigint' ? v : BigInt(int(0, Number.MAX_SAFE_INTEGER)));
    case 'i64': return o.i64(typeof v === 'bigint' ? v : BigInt(int(-Number.MAX_SAFE_INTEGER, Number.MAX_SAFE_INTEGER)));
  }
}

/** The file as chunks: the header (padded to the alignment), then each tensor's data, each padded. */
export function serializeGguf(c: GgufContents): Uint8Array[] {
  const alignment = c.alignment ?? GGUF_DEFAULT_ALIGNMENT;
  if (!Number.isInteger(alignment) || alignment < 1 || (alignment & (alignment - 1)) !== 0) {
    throw new AdaptkitError(`GGUF alignment must be a power of two, got ${alignment}`);
  }
  const metadata = [...c.metadata];
  const keys = new Set<string>();
  for (const [k] of metadata) {
    if (keys.has(k)) throw new AdaptkitError(`GGUF key ${k} is given twice`);
    keys.add(k);
  }
  if (keys.has('general.alignment')) throw new AdaptkitError('GGUF: set the alignment with the alignment option, not a general.alignment key');
  if (alignment !== GGUF_DEFAULT_ALIGNMENT) metadata.push(['general.alignment', gguf.u32(alignment)]);
  const o = new Out();
  o.u8(0x47); o.u8(0x47); o.u8(0x55); o.u8(0x46); // "GGUF"
  o.u32(3);
  o.u64(BigInt(c.tensors.length));
  o.u64(BigInt(metadata.length));
  for (const [k, v] of metadata) {
    o.str(k);
    o.u32(TYPE_ID[v.type]);
    if (v.type === 'array') {
      o.u32(TYPE_ID[v.itemType]);
      o.u64(BigInt(v.value.length));
      for (const x of v.value) writeScalar(o, v.itemType, x, k);
    } else {
      writeScalar(o, v.type, v.value, k);
    }
  }
  const names = new Set<string>();
  let rel = 0;
  const offsets: number[] = [];
  for (const t of c.tensors) {
    if (names.has(t.name)) throw new AdaptkitError(`GGUF tensor ${t.name} is given twice`);
    names.add(t.name);
    const layout = ggmlTypeLayout(t.type);
    if (!layout) throw new AdaptkitError(`GGUF tensor ${t.name}: type ${t.type} cannot be written`);
    const ne = [...t.shape].reverse();
    if (ne.length < 1 || ne.length > 4 || ne.some((n) => !Number.isInteger(n) || n < 1)) throw new AdaptkitError(`GGUF tensor ${t.name}: shape [${t.shape.join(', ')}] must have 1 to 4 positive dimensions`);
    if (ne[0]! % layout.blockSize !== 0) throw new AdaptkitError(`GGUF tensor ${t.name}: row length ${ne[0]} is not a multiple of the ${layout.name} block size ${layout.blockSize}`);
    const nbytes = ggmlTensorBytes(ne, layout);
    if (t.data.length !== nbytes) throw new AdaptkitError(`GGUF tensor ${t.name}: ${t.data.length} data bytes, ${layout.name} [${t.shape.join(', ')}] takes ${nbytes}`);
    o.str(t.name);
    o.u32(ne.length);
    for (const n of ne) o.u64(BigInt(n));
    o.u32(t.type);
    o.u64(BigInt(rel));
    offsets.push(rel);
    rel += Math.ceil(nbytes / alignment) * alignment;
  }
  o.pad(alignment);
  const chunks: Uint8Array[] = [o.bytes()];
  for (const t of c.tensors) {
    chunks.push(t.data);
    const pad = (alignment - (t.data.length % alignment)) % alignment;
    if (pad) chunks.push(new Uint8Array(pad));
  }
  return chunks;
}

export function writeGguf(path: string, c: GgufContents): void {
  writeFileAtomic(path, serializeGguf(c));
}

/** llama.cpp's token types (llama_token_type). */
export const GGUF_TOKEN_TYPE = { normal: 1, unknown: 2, control: 3, userDefined: 4, unused: 5, byte: 6 } as const;

/** A SentencePiece vocabulary as llama.cpp's "llama" tokenizer reads it. */
export interface SpmGgufVocab {
  tokens: string[];
  scores: number[];
  types: number[];
  bos: number | null;
  eos: number | null;
  unk: number | null;
  addBos: boolean;
  addEos: boolean;
}

const SP = '\u2581';
const BYTE_PIECE = /^<0x[0-9A-Fa-f]{2}>$/;

/**
 * A llama2.c tokenizer.bin as the SentencePiece vocabulary it was exported from: spaces back to
 * "▁", and BOS/EOS, which llama2.c's export writes as "\n<s>\n" / "\n</s>\n", as "<s>" / "</s>".
 */
export function spmVocabFromLlama2c(tok: Llama2cTokenizer): SpmGgufVocab {
  const dec = new TextDecoder('utf-8', { fatal: false });
  const tokens = tok.pieces.map((p, i) => {
    const s = dec.decode(p);
    return i === tok.bosId || i === tok.eosId || i === 0 ? s.trim() : s.replace(/ /g, SP);
  });
  const types = tokens.map((t, i) => (i === 0 ? GGUF_TOKEN_TYPE.unknown : i === tok.bosId || i === tok.eosId ? GGUF_TOKEN_TYPE.control : BYTE_PIECE.test(t) ? GGUF_TOKEN_TYPE.byte : GGUF_TOKEN_TYPE.normal));
  return { tokens, scores: Array.from(tok.scores), types, bos: tok.bosId, eos: tok.eosId, unk: 0, addBos: true, addEos: false };
}

type Json = Record<string, unknown>;

/**
 * A SentencePiece-BPE tokenizer.json (BPE with byte fallback and the "▁" normalizer, as HF's
 * Llama tokenizers and adaptkit's converters write it) as a SentencePiece vocabulary. The file has
 * merge ranks, not scores; SentencePiece merges the adjacent pair whose joined piece scores
 * highest, so a piece scores minus the rank of the first merge that makes it, which orders the
 * merges as the file does. Pieces no merge makes keep score 0 (they are never a merge's result).
 */
export function spmVocabFromTokenizerJson(tokenizer: Json, config: Json, source: string): SpmGgufVocab {
  const fail = (msg: string): never => {
    throw new AdaptkitError(`${source}: ${msg}`);
  };
  const model = (tokenizer.model ?? {}) as Json;
  if (model.type !== 'BPE' || model.byte_fallback !== true) {
    fail(`model ${preview(model.type)}${model.type === 'BPE' ? ' without byte_fallback' : ''} cannot be written as a GGUF vocabulary (SentencePiece-BPE tokenizers: BPE with byte_fallback)`);
  }
  const vocab = (model.vocab ?? {}) as Record<string, number>;
  const n = Math.max(-1, ...Object.values(vocab)) + 1;
  const tokens: (string | undefined)[] = new Array(n);
  for (const [t, id] of Object.entries(vocab)) {
    if (!Number.isInteger(id) || id < 0) fail(`model.vocab: ${preview(t)} has id ${preview(id)}`);
    tokens[id] = t;
  }
  const added = (Array.isArray(tokenizer.added_tokens) ? tokenizer.added_tokens : []) as Json[];
  const special = new Set<number>();
  for (const a of added) {
    const id = a.id as number;
    if (!Number.isInteger(id) || id < 0) fail(`added_tokens: id ${preview(id)}`);
    if (id >= tokens.length) tokens.length = id + 1;
    tokens[id] ??= String(a.content);
    if (a.special) special.add(id);
  }
  const missing = tokens.findIndex((t) => t === undefined);
  if (missing >= 0) fail(`no token has id ${missing}: a GGUF vocabulary lists every id`);
  const scores = new Array<number>(tokens.length).fill(0);
  const seen = new Set<number>();
  const merges = (Array.isArray(model.merges) ? model.merges : []) as (string | [string, string])[];
  merges.forEach((m, rank) => {
    const [a, b] = Array.isArray(m) ? m : [m.slice(0, m.indexOf(' ', 1)), m.slice(m.indexOf(' ', 1) + 1)];
    const id = vocab[`${a}${b}`];
    if (id !== undefined && !seen.has(id)) {
      seen.add(id);
      scores[id] = -rank;
    }
  });
  const name = (k: string): string | null => {
    const v = config[k];
    if (typeof v === 'string') return v;
    if (v && typeof v === 'object' && typeof (v as Json).content === 'string') return (v as Json).content as string;
    return null;
  };
  const idOf = (k: string): number | null => {
    const t = name(k);
    if (t === null) return null;
    const id = tokens.indexOf(t);
    return id >= 0 ? id : null;
  };
  const unk = typeof model.unk_token === 'string' ? tokens.indexOf(model.unk_token) : -1;
  const types = (tokens as string[]).map((t, i) => (i === unk ? GGUF_TOKEN_TYPE.unknown : special.has(i) ? GGUF_TOKEN_TYPE.control : BYTE_PIECE.test(t) ? GGUF_TOKEN_TYPE.byte : GGUF_TOKEN_TYPE.normal));
  return {
    tokens: tokens as string[],
    scores,
    types,
    bos: idOf('bos_token'),
    eos: idOf('eos_token'),
    unk: unk >= 0 ? unk : null,
    addBos: config.add_bos_token !== false,
    addEos: config.add_eos_token === true,
  };
}

/**
 * The tokenizer.ggml.* keys of a SentencePiece vocabulary, in the order llama.cpp's converter
 * writes them. A model with more embedding rows than tokens (`vocabSize`) gets "[PADi]" tokens
 * (score -1000, type unused), as the converter pads them: llama.cpp needs a token per row.
 */
export function spmVocabKeys(vocab: SpmGgufVocab, vocabSize = vocab.tokens.length): [string, GgufTyped][] {
  const v = { ...vocab, tokens: [...vocab.tokens], scores: [...vocab.scores], types: [...vocab.types] };
  for (let i = v.tokens.length; i < vocabSize; i++) {
    v.tokens.push(`[PAD${i}]`);
    v.scores.push(-1000);
    v.types.push(GGUF_TOKEN_TYPE.unused);
  }
  const out: [string, GgufTyped][] = [
    ['tokenizer.ggml.model', gguf.str('llama')],
    ['tokenizer.ggml.pre', gguf.str('default')],
    ['tokenizer.ggml.tokens', gguf.array('string', v.tokens)],
    ['tokenizer.ggml.scores', gguf.array('f32', v.scores)],
    ['tokenizer.ggml.token_type', gguf.array('i32', v.types)],
  ];
  if (v.bos !== null) out.push(['tokenizer.ggml.bos_token_id', gguf.u32(v.bos)]);
  if (v.eos !== null) out.push(['tokenizer.ggml.eos_token_id', gguf.u32(v.eos)]);
  if (v.unk !== null) out.push(['tokenizer.ggml.unknown_token_id', gguf.u32(v.unk)]);
  out.push(['tokenizer.ggml.add_bos_token', gguf.bool(v.addBos)], ['tokenizer.ggml.add_eos_token', gguf.bool(v.addEos)]);
  return out;
}

const TYPE_NAME = Object.fromEntries(Object.entries(TYPE_ID).map(([k, v]) => [v, k])) as Record<number, GgufScalarType | 'array'>;

/** A value read from a GGUF file with its recorded type ids (GgufFile.types), to copy it into another file unchanged. */
export function retype(v: GgufValue, key: string, t: { type: number; itemType?: number }): GgufTyped {
  const type = TYPE_NAME[t.type];
  if (type === undefined) throw new AdaptkitError(`GGUF key ${key}: unknown value type ${t.type}`);
  if (type !== 'array') return { type, value: v as number | bigint | boolean | string };
  const item = t.itemType === undefined ? undefined : TYPE_NAME[t.itemType];
  if (item === undefined || item === 'array') throw new AdaptkitError(`GGUF key ${key}: arrays of ${item ?? `type ${t.itemType}`} cannot be copied`);
  return gguf.array(item, v as (number | bigint | boolean | string)[]);
}
