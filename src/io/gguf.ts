/**
 * GGUF metadata (the key/value section of llama.cpp model files: architecture, hyper-parameters,
 * vocabulary). Tensor data is not read here. Every length is checked against the file size.
 */
import { readFileSync } from 'node:fs';
import { AdaptkitError } from '../tensor/index.js';

export type GgufValue = number | bigint | boolean | string | GgufValue[];

export interface GgufFile {
  version: number;
  tensorCount: bigint;
  metadata: Map<string, GgufValue>;
}

class Reader {
  pos = 0;
  constructor(readonly buf: Buffer, readonly path: string) {}

  need(n: number): void {
    if (this.pos + n > this.buf.length) throw new AdaptkitError(`${this.path}: truncated GGUF file (needed ${n} bytes at offset ${this.pos})`);
  }

  u32(): number { this.need(4); const v = this.buf.readUInt32LE(this.pos); this.pos += 4; return v; }
  i32(): number { this.need(4); const v = this.buf.readInt32LE(this.pos); this.pos += 4; return v; }
  u64(): bigint { this.need(8); const v = this.buf.readBigUInt64LE(this.pos); this.pos += 8; return v; }

  count(): number {
    const n = this.u64();
    if (n > BigInt(this.buf.length)) throw new AdaptkitError(`${this.path}: GGUF count ${n} exceeds the file size`);
    return Number(n);
  }

  str(): string {
    const n = this.count();
    this.need(n);
    const s = this.buf.toString('utf8', this.pos, this.pos + n);
    this.pos += n;
    return s;
  }

  value(type: number): GgufValue {
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
      case 8: return this.str();
      case 9: {
        const t = this.u32();
        const n = this.count();
        const out: GgufValue[] = new Array(n);
        for (let i = 0; i < n; i++) out[i] = this.value(t);
        return out;
      }
      case 10: return this.u64();
      case 11: { this.need(8); const v = b.readBigInt64LE(this.pos); this.pos += 8; return v; }
      case 12: { this.need(8); const v = b.readDoubleLE(this.pos); this.pos += 8; return v; }
      default: throw new AdaptkitError(`${this.path}: unknown GGUF value type ${type} at offset ${this.pos}`);
    }
  }
}

export function readGgufMetadata(path: string): GgufFile {
  const r = new Reader(readFileSync(path), path);
  r.need(4);
  if (r.buf.toString('latin1', 0, 4) !== 'GGUF') throw new AdaptkitError(`${path}: not a GGUF file (bad magic)`);
  r.pos = 4;
  const version = r.u32();
  if (version < 2 || version > 3) throw new AdaptkitError(`${path}: GGUF version ${version} is not supported (2 or 3)`);
  const tensorCount = r.u64();
  const kvCount = r.count();
  const metadata = new Map<string, GgufValue>();
  for (let i = 0; i < kvCount; i++) {
    const key = r.str();
    metadata.set(key, r.value(r.u32()));
  }
  return { version, tensorCount, metadata };
}
