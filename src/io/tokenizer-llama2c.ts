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
  /** llama2.c's data puts BOS between stories (run.c stops generating at BOS): BOS ends a text. */
  readonly endOfText = 1;

  /** @param source names the tokenizer in errors (its file) */
  constructor(pieces: Uint8Array[], scores: Float32Array, readonly source = 'llama2.c tokenizer') {
    this.pieces = pieces;
    this.scores = scores;
    for (let i = pieces.length - 1; i >= 0; i--) this.lookup.set(key(pieces[i]!), i);
  }

  static fromFile(path: string, vocabSize: number): Llama2cTokenizer {
    const fail = (msg: string): never => {
      throw new AdaptkitError(`${path}: not a valid llama2.c tokenizer: ${msg}`);
    };
    // the file does not record its size: the checkpoint's vocab_size says how many tokens to read
    if (!Number.isSafeInteger(vocabSize) || vocabSize <= 0) fail(`vocabulary size ${vocabSize} must be a positive integer`);
    let buf: Buffer;
    try {
      buf = readFileSync(path);
    } catch (e) {
      throw new AdaptkitError(`${path}: cannot read (${(e as Error).message})`);
    }
    if (buf.length < 4) fail('file too short');
    // each token takes at least 8 bytes (score and length), so a larger count cannot be in the file
    if (vocabSize > (buf.length - 4) / 8) fail(`${buf.length} bytes cannot hold ${vocabSize} tokens`);
    let pos = 4;
    const pieces: Uint8Array[] = [];
    const scores = new Float32Array(vocabSize);
    for (let i = 0; i < vocabSize; i++) {
      if (pos + 8 > buf.length) fail(`truncated at token ${i} of ${vocabSize}`);
      scores[i] = buf.readFloatLE(pos);
      const len = buf.readInt32LE(pos + 4);
      pos += 8;
      if (len < 0 || pos + len > buf.length) fail(`token ${i} has an invalid length ${len} (${buf.length - pos} bytes left)`);
      pieces.push(new Uint8Array(buf.subarray(pos, pos + len)));
      pos += len;
    }
    return new Llama2cTokenizer(pieces, scores, path);
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
    // merge the best-scoring adjacent pair until none merges (leftmost first on ties), with a heap
    // over candidate pairs and a linked list of tokens: O(n log n) instead of rescanning every pair
    const start = opts.bos ?? true ? 1 : 0;
    const merged = this.mergeAll(ids.slice(start));
    ids.splice(start, ids.length - start, ...merged);
    if (opts.eos) ids.push(this.eosId);
    return ids;
  }

  private pairs: Map<number, { id: number; score: number }> | null = null;

  /** For every pair of tokens whose joined bytes are a token: that token (highest score wins). */
  private pairTable(): Map<number, { id: number; score: number }> {
    if (this.pairs) return this.pairs;
    const V = this.pieces.length;
    const table = new Map<number, { id: number; score: number }>();
    for (let id = 0; id < V; id++) {
      const p = this.pieces[id]!;
      for (let cut = 1; cut < p.length; cut++) {
        const a = this.lookup.get(key(p.subarray(0, cut)));
        const b = this.lookup.get(key(p.subarray(cut)));
        if (a === undefined || b === undefined) continue;
        const k = a * V + b;
        const prev = table.get(k);
        // the same joined bytes always map to one id (the lookup's), so only scores of that id matter
        const joined = this.lookup.get(key(p))!;
        if (!prev || this.scores[joined]! > prev.score) table.set(k, { id: joined, score: this.scores[joined]! });
      }
    }
    this.pairs = table;
    return table;
  }

  private mergeAll(tokens: number[]): number[] {
    const n = tokens.length;
    if (n < 2) return tokens;
    const V = this.pieces.length;
    const table = this.pairTable();
    const tok = tokens.slice();
    const next = Array.from({ length: n }, (_, i) => (i + 1 < n ? i + 1 : -1));
    const prev = Array.from({ length: n }, (_, i) => i - 1);
    const alive = new Uint8Array(n).fill(1);
    // heap entries: [score, position, left token, right token]
    const heap: [number, number, number, number][] = [];
    const less = (x: [number, number, number, number], y: [number, number, number, number]) => x[0] > y[0] || (x[0] === y[0] && x[1] < y[1]);
    const push = (e: [number, number, number, number]) => {
      heap.push(e);
      let i = heap.length - 1;
      while (i > 0) {
        const p = (i - 1) >> 1;
        if (!less(heap[i]!, heap[p]!)) break;
        [heap[i], heap[p]] = [heap[p]!, heap[i]!];
        i = p;
      }
    };
    const pop = () => {
      const top = heap[0]!;
      const last = heap.pop()!;
      if (heap.length > 0) {
        heap[0] = last;
        let i = 0;
        for (;;) {
          const l = 2 * i + 1;
          const r = l + 1;
          let m = i;
          if (l < heap.length && less(heap[l]!, heap[m]!)) m = l;
          if (r < heap.length && less(heap[r]!, heap[m]!)) m = r;
          if (m === i) break;
          [heap[i], heap[m]] = [heap[m]!, heap[i]!];
          i = m;
        }
      }
      return top;
    };
    const consider = (i: number) => {
      const j = next[i]!;
      if (i < 0 || j < 0) return;
      const m = table.get(tok[i]! * V + tok[j]!);
      if (m) push([m.score, i, tok[i]!, tok[j]!]);
    };
    for (let i = 0; i + 1 < n; i++) consider(i);
    while (heap.length > 0) {
      const [, i, a, b] = pop();
      const j = next[i]!;
      // stale entry: one side changed since it was pushed
      if (!alive[i] || j < 0 || !alive[j] || tok[i] !== a || tok[j] !== b) continue;
      tok[i] = table.get(a * V + b)!.id;
      alive[j] = 0;
      next[i] = next[j]!;
      if (next[j]! >= 0) prev[next[j]!] = i;
      consider(prev[i]!);
      consider(i);
    }
    const out: number[] = [];
    for (let i = 0; i >= 0; i = next[i]!) out.push(tok[i]!);
    return out;
  }

  /** The bytes token `id` stands for after token `prev` (no leading space right after BOS). */
  tokenBytes(id: number, prev = -1): Uint8Array {
    if (!(Number.isInteger(id) && id >= 0 && id < this.pieces.length)) throw new AdaptkitError(`${this.source}: token id ${id} out of range for a vocabulary of ${this.pieces.length}`);
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
