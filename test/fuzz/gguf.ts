/**
 * A GGUF metadata reader and writer that keep every value's type, independent of src/io/gguf.ts:
 * the fuzz test builds small vocabulary seeds from the real llama.cpp files with it, and learns
 * where each length, count and type field sits so mutations can aim at them.
 */
import type { Field } from './mutate.js';

export interface Kv {
  key: string;
  type: number;
  /** Scalars as number/bigint/boolean/string; arrays as { elem, items }. */
  value: unknown;
}

export interface GgufArray {
  elem: number;
  items: unknown[];
}

const SIZES: Record<number, number> = { 0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8 };

export function parseGguf(buf: Buffer): { version: number; tensorCount: bigint; kvs: Kv[] } {
  let pos = 4;
  const u32 = () => { const v = buf.readUInt32LE(pos); pos += 4; return v; };
  const u64 = () => { const v = buf.readBigUInt64LE(pos); pos += 8; return v; };
  const str = () => { const n = Number(u64()); const s = buf.toString('utf8', pos, pos + n); pos += n; return s; };
  const value = (t: number): unknown => {
    switch (t) {
      case 0: return buf.readUInt8(pos++);
      case 1: return buf.readInt8(pos++);
      case 2: { const v = buf.readUInt16LE(pos); pos += 2; return v; }
      case 3: { const v = buf.readInt16LE(pos); pos += 2; return v; }
      case 4: return u32();
      case 5: { const v = buf.readInt32LE(pos); pos += 4; return v; }
      case 6: { const v = buf.readFloatLE(pos); pos += 4; return v; }
      case 7: return buf.readUInt8(pos++) !== 0;
      case 8: return str();
      case 9: {
        const elem = u32();
        const n = Number(u64());
        const items: unknown[] = [];
        for (let i = 0; i < n; i++) items.push(value(elem));
        return { elem, items } satisfies GgufArray;
      }
      case 10: return u64();
      case 11: { const v = buf.readBigInt64LE(pos); pos += 8; return v; }
      case 12: { const v = buf.readDoubleLE(pos); pos += 8; return v; }
      default: throw new Error(`GGUF seed: unknown type ${t}`);
    }
  };
  const version = u32();
  const tensorCount = u64();
  const n = Number(u64());
  const kvs: Kv[] = [];
  for (let i = 0; i < n; i++) {
    const key = str();
    const type = u32();
    kvs.push({ key, type, value: value(type) });
  }
  return { version, tensorCount, kvs };
}

/** Serialize metadata (no tensors) and list the integer fields a mutation can aim at. */
export function writeGguf(kvs: Kv[], version = 3): { bytes: Buffer; fields: Field[] } {
  let buf = Buffer.allocUnsafe(1 << 16);
  let at = 0;
  const fields: Field[] = [];
  const room = (n: number) => {
    if (at + n <= buf.length) return;
    const bigger = Buffer.allocUnsafe(Math.max(buf.length * 2, at + n));
    buf.copy(bigger, 0, 0, at);
    buf = bigger;
  };
  const field = (width: 4 | 8, name: string | undefined, signed = false) => {
    if (name) fields.push({ offset: at, width, signed, name });
  };
  const u32 = (v: number, name?: string) => {
    room(4);
    field(4, name);
    buf.writeUInt32LE(v, at);
    at += 4;
  };
  const u64 = (v: bigint, name?: string) => {
    room(8);
    field(8, name);
    buf.writeBigUInt64LE(v, at);
    at += 8;
  };
  const str = (s: string, name?: string) => {
    const n = Buffer.byteLength(s, 'utf8');
    u64(BigInt(n), name);
    room(n);
    buf.write(s, at, 'utf8');
    at += n;
  };
  const value = (t: number, v: unknown, name: string, record: boolean) => {
    if (t === 8) return str(v as string, record ? `${name} length` : undefined);
    if (t === 9) {
      const a = v as GgufArray;
      u32(a.elem, `${name} element type`);
      u64(BigInt(a.items.length), `${name} count`);
      // only the first and last few elements get named fields: a 50,000-entry vocabulary would
      // otherwise drown the header fields
      a.items.forEach((x, i) => value(a.elem, x, `${name}[${i}]`, i < 4 || i === a.items.length - 1));
      return;
    }
    const size = SIZES[t];
    if (size === undefined) throw new Error(`GGUF seed: unknown type ${t}`);
    room(size);
    if (record && size >= 4) field(size as 4 | 8, name, t === 5 || t === 11);
    switch (t) {
      case 0: buf.writeUInt8(v as number, at); break;
      case 1: buf.writeInt8(v as number, at); break;
      case 2: buf.writeUInt16LE(v as number, at); break;
      case 3: buf.writeInt16LE(v as number, at); break;
      case 4: buf.writeUInt32LE(v as number, at); break;
      case 5: buf.writeInt32LE(v as number, at); break;
      case 6: buf.writeFloatLE(v as number, at); break;
      case 7: buf.writeUInt8(v ? 1 : 0, at); break;
      case 10: buf.writeBigUInt64LE(v as bigint, at); break;
      case 11: buf.writeBigInt64LE(v as bigint, at); break;
      case 12: buf.writeDoubleLE(v as number, at); break;
    }
    at += size;
  };
  room(4);
  buf.write('GGUF', 0, 'latin1');
  at = 4;
  u32(version, 'version');
  u64(0n, 'tensor count');
  u64(BigInt(kvs.length), 'kv count');
  for (const kv of kvs) {
    str(kv.key, `key "${kv.key}" length`);
    u32(kv.type, `${kv.key} type`);
    value(kv.type, kv.value, kv.key, true);
  }
  return { bytes: Buffer.from(buf.subarray(0, at)), fields };
}

export function arr(elem: number, items: unknown[]): GgufArray {
  return { elem, items };
}

/** An array nested `depth` deep, written directly (a recursive writer would overflow first). */
export function deepNestedArrayGguf(depth: number): Buffer {
  const key = Buffer.from('tokenizer.ggml.tokens');
  const head = Buffer.alloc(4 + 4 + 8 + 8 + 8);
  head.write('GGUF', 0, 'latin1');
  head.writeUInt32LE(3, 4);
  head.writeBigUInt64LE(0n, 8);
  head.writeBigUInt64LE(1n, 16);
  head.writeBigUInt64LE(BigInt(key.length), 24);
  const type = Buffer.alloc(4);
  type.writeUInt32LE(9);
  const level = Buffer.alloc(12);
  level.writeUInt32LE(9, 0);
  level.writeBigUInt64LE(1n, 4);
  const last = Buffer.alloc(12);
  last.writeUInt32LE(8, 0);
  last.writeBigUInt64LE(0n, 4);
  return Buffer.concat([head, key, type, ...new Array<Buffer>(depth).fill(level), last]);
}
