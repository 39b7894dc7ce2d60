/**
 * GGUF metadata (the key/value section of llama.cpp model files: architecture, hyper-parameters,
 * vocabulary). Tensor data is not read here. Every length and count is checked against the bytes
 * left in the file before anything is allocated, and arrays nest at most MAX_NESTING deep (the
 * reader recurses once per level), so a broken file is an error naming the file and the key.
 */
import { readFileSync } from 'node:fs';
import { AdaptkitError } from '../tensor/index.js';
import { preview } from './json.js';

export type GgufValue = number | bigint | boolean | string | GgufValue[];

export interface GgufFile {
  version: number;
  tensorCount: bigint;
  metadata: Map<string, GgufValue>;
}

/** llama.cpp's own files nest arrays one level at most. */
const MAX_NESTING = 8;

/** Bytes of one value of each type, at least (a string or an array also needs its 8-byte count). */
const MIN_SIZE: Record<number, number> = { 0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 8: 8, 9: 12, 10: 8, 11: 8, 12: 8 };

class Reader {
  pos = 0;
  /** The key whose value is being read, for messages. */
  key = '';
  constructor(readonly buf: Buffer, readonly path: string) {}

  fail(msg: string): never {
    // a broken length can make the key a run of binary: quote and clip it
    throw new AdaptkitError(`${this.path}: ${this.key ? `${preview(this.key)}: ` : ''}${msg}`);
  }

  need(n: number): void {
    if (this.pos + n > this.buf.length) this.fail(`truncated GGUF file (needed ${n} bytes at offset ${this.pos}, the file has ${this.buf.length})`);
  }

  u32(): number { this.need(4); const v = this.buf.readUInt32LE(this.pos); this.pos += 4; return v; }
  i32(): number { this.need(4); const v = this.buf.readInt32LE(this.pos); this.pos += 4; return v; }
  u64(): bigint { this.need(8); const v = this.buf.readBigUInt64LE(this.pos); this.pos += 8; return v; }

  /** A count of items of at least `itemSize` bytes each, which must fit in the rest of the file. */
  count(what: string, itemSize: number): number {
    const at = this.pos;
    const n = this.u64();
    const left = BigInt(this.buf.length - this.pos);
    if (n * BigInt(itemSize) > left) this.fail(`${what} ${n} at offset ${at} exceeds the file size (${left} bytes left)`);
    return Number(n);
  }

  str(what: string): string {
    const n = this.count(`${what} length`, 1);
    const s = this.buf.toString('utf8', this.pos, this.pos + n);
    this.pos += n;
    return s;
  }

  value(type: number, depth: number): GgufValue {
    const b = this.buf;
    switch (type) {
      case 0: this.need(1); return b.readUInt8(this.pos++);
      case 1: this.need(1); return b.readInt8(this.pos++);
      case 2: { this.need(2); const v = b.readUInt16LE(this.pos); this.pos += 2; return v; }
      case 3: { this.need(2); const v = b.readInt16LE(this.pos); this.pos += 2; return v; }
      case 4: return this.u32();
      case 5: return this.i32();
      case 6: { this.need(4); const v = b.readFloatLE(this.pos); this.pos += 4; return v; }
      case 7: this.need(1); return b.readUInt8(this.pos++) !== 0;
      case 8: return this.str('string');
      case 9: {
        if (depth >= MAX_NESTING) this.fail(`arrays nested more than ${MAX_NESTING} deep at offset ${this.pos}`);
        const at = this.pos;
        const t = this.u32();
        const size = MIN_SIZE[t];
        if (size === undefined) this.fail(`unknown GGUF array element type ${t} at offset ${at}`);
        const n = this.count('array count', size);
        const out: GgufValue[] = new Array(n);
        for (let i = 0; i < n; i++) out[i] = this.value(t, depth + 1);
        return out;
      }
      case 10: return this.u64();
      case 11: { this.need(8); const v = b.readBigInt64LE(this.pos); this.pos += 8; return v; }
      case 12: { this.need(8); const v = b.readDoubleLE(this.pos); this.pos += 8; return v; }
      default: this.fail(`unknown GGUF value type ${type} at offset ${this.pos - 4}`);
    }
  }
}

export function readGgufMetadata(path: string): GgufFile {
  let buf: Buffer;
  try {
    buf = readFileSync(path);
  } catch (e) {
    throw new AdaptkitError(`${path}: cannot read (${(e as Error).message})`);
  }
  const r = new Reader(buf, path);
  if (buf.length < 4 || buf.toString('latin1', 0, 4) !== 'GGUF') throw new AdaptkitError(`${path}: not a GGUF file (bad magic)`);
  r.pos = 4;
  const version = r.u32();
  if (version < 2 || version > 3) throw new AdaptkitError(`${path}: GGUF version ${version} is not supported (2 or 3)`);
  const tensorCount = r.u64();
  // a key/value pair takes at least a key length, a type and one byte
  const kvCount = r.count('key/value count', 13);
  const metadata = new Map<string, GgufValue>();
  for (let i = 0; i < kvCount; i++) {
    r.key = '';
    const key = r.str(`key ${i}`);
    r.key = key;
    metadata.set(key, r.value(r.u32(), 0));
  }
  return { version, tensorCount, metadata };
}
