/**
 * The llama2.c `tokenizer.bin` vocabulary (int32 max_token_length, then per token: float32 score,
 * int32 byte length, bytes) and its SentencePiece-style BPE: a dummy-prefix space, code points
 * looked up whole or split into byte-fallback tokens <0xXX> (id = byte + 3), then repeated merges
 * of the adjacent pair whose joined piece scores highest.
 */
import { readFileSync } from 'node:fs';
import { AdaptkitError } from '../tensor/index.js';

export interface EncodeOptions {
  bos?: boolean;
  eos?: boolean;
}

export class Llama2cTokenizer {
  readonly pieces: Uint8Array[];
  readonly scores: Float32Array;
  private lookup = new Map<string, number>();
  readonly bosId = 1;
  readonly eosId = 2;

  constructor(pieces: Uint8Array[], scores: Float32Array) {
    this.pieces = pieces;
    this.scores = scores;
    for (let i = pieces.length - 1; i >= 0; i--) this.lookup.set(key(pieces[i]!), i);
  }

  static fromFile(path: string, vocabSize: number): Llama2cTokenizer {
    const buf = readFileSync(path);
    const fail = (msg: string): never => {
      throw new AdaptkitError(`${path}: not a valid llama2.c tokenizer: ${msg}`);
    };
    if (buf.length < 4) fail('file too short');
    let pos = 4;
    const pieces: Uint8Array[] = [];
    const scores = new Float32Array(vocabSize);
    for (let i = 0; i < vocabSize; i++) {
      if (pos + 8 > buf.length) fail(`truncated at token ${i} of ${vocabSize}`);
      scores[i] = buf.readFloatLE(pos);
      const len = buf.readInt32LE(pos + 4);
      pos += 8;
      if (len < 0 || pos + len > buf.length) fail(`token ${i} has an invalid length ${len}`);
      pieces.push(new Uint8Array(buf.subarray(pos, pos + len)));
      pos += len;
    }
    return new Llama2cTokenizer(pieces, scores);
  }

  get vocabSize(): number {
    return this.pieces.length;
  }

  encode(text: string, opts: EncodeOptions = {}): number[] {
    const ids: number[] = [];
    if (opts.bos ?? true) ids.push(this.bosId);
    if (text.length > 0) {
      const space = this.lookup.get(key(new Uint8Array([0x20])));
      if (space !== undefined) ids.push(space);
    }
    const enc = new TextEncoder();
    for (const ch of text) {
      const bytes = enc.encode(ch);
      const id = this.lookup.get(key(bytes));
      if (id !== undefined) ids.push(id);
      else for (const b of bytes) ids.push(b + 3);
    }
    // merge the best-scoring adjacent pair until none merges
    const start = opts.bos ?? true ? 1 : 0;
    for (;;) {
      let best = -Infinity;
      let bestId = -1;
      let bestAt = -1;
      for (let i = start; i < ids.length - 1; i++) {
        const merged = concat(this.pieces[ids[i]!]!, this.pieces[ids[i + 1]!]!);
        const id = this.lookup.get(key(merged));
        if (id !== undefined && this.scores[id]! > best) {
          best = this.scores[id]!;
          bestId = id;
          bestAt = i;
        }
      }
      if (bestAt < 0) break;
      ids.splice(bestAt, 2, bestId);
    }
    if (opts.eos) ids.push(this.eosId);
    return ids;
  }

  /** The bytes token `id` stands for after token `prev` (no leading space right after BOS). */
  tokenBytes(id: number, prev = -1): Uint8Array {
    if (!(id >= 0 && id < this.pieces.length)) throw new AdaptkitError(`token id ${id} out of range for a vocabulary of ${this.pieces.length}`);
    let p = this.pieces[id]!;
    if (prev === this.bosId && p[0] === 0x20) p = p.subarray(1);
    const s = key(p);
    const m = /^<0x([0-9A-Fa-f]{2})>$/.exec(s);
    if (m) return new Uint8Array([parseInt(m[1]!, 16)]);
    return p;
  }

  decode(ids: readonly number[]): string {
    const parts: Uint8Array[] = [];
    let prev = -1;
    for (const id of ids) {
      if (id !== this.bosId && id !== this.eosId) parts.push(this.tokenBytes(id, prev));
      prev = id;
    }
    return new TextDecoder().decode(concat(...parts));
  }
}

function key(bytes: Uint8Array): string {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('latin1');
}

function concat(...parts: Uint8Array[]): Uint8Array {
  const n = parts.reduce((s, p) => s + p.length, 0);
  const out = new Uint8Array(n);
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}
