/**
 * Seeded mutators for the loader fuzz test: byte-level (bit flips, length/count fields, truncation,
 * chunk edits) and JSON-level (null, wrong types, huge and negative numbers, deleted and added keys,
 * deep nesting, empty values). Every mutant is a pure function of (base seed, format, index), so a
 * finding reproduces from its id alone.
 */

/** The base seed of `npm test`; ADAPTKIT_FUZZ_SEED picks another. */
export const DEFAULT_SEED = 20240601;

/** xoshiro128**: fast, seedable, and identical on every platform. */
export class Rng {
  private a: number;
  private b: number;
  private c: number;
  private d: number;

  constructor(seed: number) {
    // splitmix32 spreads a small seed over the whole state
    let s = seed >>> 0;
    const next = () => {
      s = (s + 0x9e3779b9) >>> 0;
      let z = s;
      z = Math.imul(z ^ (z >>> 16), 0x85ebca6b) >>> 0;
      z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35) >>> 0;
      return (z ^ (z >>> 16)) >>> 0;
    };
    this.a = next();
    this.b = next();
    this.c = next();
    this.d = next() | 1;
  }

  u32(): number {
    // xoshiro128** step
    const r = Math.imul(rotl(Math.imul(this.b, 5), 7), 9) >>> 0;
    const t = this.b << 9;
    this.c ^= this.a;
    this.d ^= this.b;
    this.b ^= this.c;
    this.a ^= this.d;
    this.c ^= t;
    this.d = rotl(this.d, 11);
    return r;
  }

  float(): number {
    return this.u32() / 4294967296;
  }

  /** An integer in [0, n). */
  int(n: number): number {
    return n <= 0 ? 0 : Math.floor(this.float() * n);
  }

  chance(p: number): boolean {
    return this.float() < p;
  }

  pick<T>(items: readonly T[]): T {
    return items[this.int(items.length)]!;
  }
}

function rotl(x: number, k: number): number {
  return ((x << k) | (x >>> (32 - k))) >>> 0;
}

/** FNV-1a over the mutant's identity. */
export function seedFor(base: number, format: string, index: number): number {
  let h = 0x811c9dc5;
  for (const ch of `${base}:${format}:${index}`) {
    h ^= ch.charCodeAt(0);
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h;
}

export interface Mutant {
  /** Index into the format's seed files. */
  seed: number;
  bytes: Buffer;
  /** What was changed, in words, to make a finding readable without rerunning it. */
  desc: string;
}

// ---------------------------------------------------------------------------------------------
// byte-level

/** A length, count or header integer inside a binary seed, found by walking its structure. */
export interface Field {
  offset: number;
  width: 1 | 2 | 4 | 8;
  signed?: boolean;
  name: string;
}

const HOT_U64: bigint[] = [
  0n, 1n, 2n, 3n, 7n, 8n, 0x7fn, 0x80n, 0xffn, 0x100n, 0x7fffn, 0xffffn, 0x7fffffffn, 0x80000000n, 0xffffffffn,
  0x100000000n, 2n ** 40n, 2n ** 53n, 2n ** 53n + 1n, 2n ** 63n - 1n, 2n ** 63n, 2n ** 64n - 1n,
];

function readField(buf: Buffer, f: Field): bigint {
  switch (f.width) {
    case 1: return BigInt(f.signed ? buf.readInt8(f.offset) : buf.readUInt8(f.offset));
    case 2: return BigInt(f.signed ? buf.readInt16LE(f.offset) : buf.readUInt16LE(f.offset));
    case 4: return BigInt(f.signed ? buf.readInt32LE(f.offset) : buf.readUInt32LE(f.offset));
    case 8: return f.signed ? buf.readBigInt64LE(f.offset) : buf.readBigUInt64LE(f.offset);
  }
}

function writeField(buf: Buffer, f: Field, v: bigint): void {
  const bits = BigInt(f.width * 8);
  const u = BigInt.asUintN(Number(bits), v);
  switch (f.width) {
    case 1: buf.writeUInt8(Number(u), f.offset); break;
    case 2: buf.writeUInt16LE(Number(u), f.offset); break;
    case 4: buf.writeUInt32LE(Number(u), f.offset); break;
    case 8: buf.writeBigUInt64LE(u, f.offset); break;
  }
}

function fieldValue(rng: Rng, buf: Buffer, f: Field): bigint {
  const cur = readField(buf, f);
  const size = BigInt(buf.length);
  switch (rng.int(5)) {
    case 0: return rng.pick(HOT_U64);
    case 1: return -BigInt(1 + rng.int(3)) * (rng.chance(0.5) ? 1n : cur === 0n ? 1n : cur);
    case 2: return cur + BigInt(rng.pick([-2, -1, 1, 2, 8, 1000]));
    case 3: return cur * BigInt(rng.pick([2, 16, 256, 65536]));
    default: return size + BigInt(rng.pick([-8, -1, 0, 1, 8]));
  }
}

export interface ByteSpace {
  /** Integers worth aiming at (header, lengths, counts, types). */
  fields: Field[];
  /** Bytes [0, hotEnd) hold the structure; flips and truncations favour them. */
  hotEnd: number;
}

const HOT_BYTES = [0x00, 0x01, 0x7f, 0x80, 0xfe, 0xff, 0x20, 0x22, 0x5b, 0x7b, 0x5c];

function offsetIn(rng: Rng, len: number, hotEnd: number): number {
  return rng.chance(0.75) ? rng.int(Math.min(hotEnd, len)) : rng.int(len);
}

/** One to three byte-level edits of a seed. */
export function mutateBytes(rng: Rng, seedIndex: number, seed: Buffer, space: ByteSpace): Mutant {
  let buf = Buffer.from(seed);
  const desc: string[] = [];
  const edits = 1 + (rng.chance(0.3) ? 1 + rng.int(2) : 0);
  for (let e = 0; e < edits; e++) {
    const op = rng.int(10);
    if (op <= 3 && space.fields.length > 0) {
      const f = rng.pick(space.fields);
      if (f.offset + f.width > buf.length) continue;
      const v = fieldValue(rng, buf, f);
      writeField(buf, f, v);
      desc.push(`set ${f.name} @${f.offset} to ${BigInt.asUintN(f.width * 8, v)}`);
    } else if (op === 4 && buf.length > 0) {
      const n = 1 + rng.int(4);
      const at: number[] = [];
      for (let i = 0; i < n; i++) {
        const o = offsetIn(rng, buf.length, space.hotEnd);
        const bit = rng.int(8);
        buf[o]! ^= 1 << bit;
        at.push(o * 8 + bit);
      }
      desc.push(`flip bits ${at.join(',')}`);
    } else if (op === 5 && buf.length > 0) {
      const o = offsetIn(rng, buf.length, space.hotEnd);
      const v = rng.chance(0.6) ? rng.pick(HOT_BYTES) : rng.int(256);
      buf[o] = v;
      desc.push(`byte @${o} = 0x${v.toString(16)}`);
    } else if (op === 6 || op === 7) {
      const n = rng.chance(0.6) ? rng.int(Math.min(space.hotEnd + 8, buf.length + 1)) : rng.int(buf.length + 1);
      buf = buf.subarray(0, n);
      desc.push(`truncate to ${n} bytes`);
    } else if (op === 8 && buf.length > 1) {
      const o = offsetIn(rng, buf.length, space.hotEnd);
      const n = 1 + rng.int(64);
      if (rng.chance(0.5)) {
        buf = Buffer.concat([buf.subarray(0, o), buf.subarray(o + n)]);
        desc.push(`delete ${n} bytes @${o}`);
      } else {
        buf = Buffer.concat([buf.subarray(0, o + n), buf.subarray(o, o + n), buf.subarray(o + n)]);
        desc.push(`duplicate ${n} bytes @${o}`);
      }
    } else {
      const n = 1 + rng.int(64);
      const extra = Buffer.alloc(n);
      for (let i = 0; i < n; i++) extra[i] = rng.int(256);
      buf = Buffer.concat([buf, extra]);
      desc.push(`append ${n} random bytes`);
    }
  }
  if (desc.length === 0) desc.push('unchanged');
  return { seed: seedIndex, bytes: buf, desc: desc.join('; ') };
}

// ---------------------------------------------------------------------------------------------
// JSON-level

export type Json = null | boolean | number | string | Json[] | { [k: string]: Json };

export interface JsonSpace {
  /** Strings that mean something to the loader (type names, known module names, dtypes). */
  strings: readonly string[];
  /** Keys the loader reads, to add where they were absent. */
  keys: readonly string[];
}

// Values JSON.stringify cannot produce (Infinity, 20,000-deep nesting, huge literals) go in as
// placeholders and are spliced into the text afterwards.
const RAW = '\u0000RAW:';
const END = '\u0000';
const raw = (text: string) => `${RAW}${text}${END}`;
const DEPTH = 20000;

function expandRaw(text: string): string {
  return text.replace(/"\\u0000RAW:([^"\\]*)\\u0000"/g, (_, body: string) => {
    if (body === 'deep-array') return '['.repeat(DEPTH) + ']'.repeat(DEPTH);
    if (body === 'deep-object') return '{"a":'.repeat(DEPTH) + 'null' + '}'.repeat(DEPTH);
    return body;
  });
}

/** A JSON document (with placeholders) as text. */
export function jsonText(v: Json): string {
  return expandRaw(JSON.stringify(v));
}

function interestingNumber(rng: Rng, cur: number | null): Json {
  const fixed: Json[] = [
    0, -1, 1, 2, 0.5, -0.5, 1.5, 255, 256, 65536, 2 ** 31 - 1, 2 ** 31, 2 ** 32, 4194304, 2 ** 53, 2 ** 53 + 2, 1e15, 1e300,
    -(2 ** 31), -1e300, raw('1e999'), raw('-1e999'), raw('1e-400'), raw('123456789012345678901234567890'), raw('-0'),
  ];
  if (cur === null || rng.chance(0.6)) return rng.pick(fixed);
  return rng.pick([cur + 1, cur - 1, cur * 2, -cur, cur * 1024, cur / 3, cur * 1e12]);
}

function randomValue(rng: Rng, space: JsonSpace): Json {
  switch (rng.int(12)) {
    case 0: return null;
    case 1: return rng.chance(0.5);
    case 2: case 3: return interestingNumber(rng, null);
    case 4: return rng.pick(['', ' ', 'x', '\u0000', '__proto__', 'constructor', '(', '[', '\\', '*', '(a+)+$', '.*', 'a'.repeat(10000)]);
    case 5: case 6: return space.strings.length > 0 ? rng.pick(space.strings) : 'x';
    case 7: return rng.pick<Json>([[], [null], [1], ['a'], [1, 2], [[]], [['a', 'b']], ['a', 1, null]]);
    case 8: return rng.pick<Json>([{}, { a: 1 }, { type: 'x' }, { '': null }]);
    case 9: return raw(rng.chance(0.5) ? 'deep-array' : 'deep-object');
    case 10: return new Array(rng.pick([1000, 100000])).fill(0);
    default: return space.strings.length > 0 ? [rng.pick(space.strings)] : [];
  }
}

interface Site {
  parent: Json[] | { [k: string]: Json } | null;
  key: string | number;
  value: Json;
  path: string;
}

function childPath(path: string, key: string | number): string {
  if (typeof key === 'number') return `${path}[${key}]`;
  return /^[A-Za-z_][\w]*$/.test(key) ? `${path}.${key}` : `${path}[${JSON.stringify(key.length > 40 ? `${key.slice(0, 40)}…` : key)}]`;
}

/**
 * A random node: descend from the root, stopping early often, so structure near the top is hit as
 * much as big tables. Containers on the way down are copied (once per mutant), so the seed itself
 * is never changed and a mutant costs a path of shallow copies, not a clone of a whole vocabulary.
 */
function pickSite(rng: Rng, holder: { root: Json }, fresh: Set<object>): Site {
  const own = (v: Json): Json => {
    if (v === null || typeof v !== 'object' || fresh.has(v)) return v;
    const copy: Json = Array.isArray(v) ? v.slice() : { ...v };
    fresh.add(copy);
    return copy;
  };
  holder.root = own(holder.root);
  let site: Site = { parent: null, key: 'root', value: holder.root, path: '$' };
  for (;;) {
    const v = site.value;
    const container = v !== null && typeof v === 'object';
    const size = container ? (Array.isArray(v) ? v.length : Object.keys(v).length) : 0;
    if (!container || size === 0) return site;
    if (site.parent !== null && rng.chance(0.3)) return site;
    if (Array.isArray(v)) {
      const i = rng.int(v.length);
      const c = (v[i] = own(v[i]!));
      site = { parent: v, key: i, value: c, path: childPath(site.path, i) };
    } else {
      const keys = Object.keys(v);
      const k = rng.pick(keys);
      const c = (v[k] = own(v[k]!));
      site = { parent: v, key: k, value: c, path: childPath(site.path, k) };
    }
  }
}

function set(holder: { root: Json }, s: Site, v: Json): void {
  if (s.parent === null) holder.root = v;
  else if (Array.isArray(s.parent)) s.parent[s.key as number] = v;
  else s.parent[s.key as string] = v;
}

function show(v: Json): string {
  if (typeof v === 'string' && v.startsWith(RAW)) return v.slice(RAW.length, -1);
  if (Array.isArray(v) && v.length > 8) return `[${v.length} zeros]`;
  const s = JSON.stringify(v);
  return s.length > 60 ? `${s.slice(0, 60)}…` : s;
}

/** One to three structural edits of a parsed JSON seed. */
export function mutateJson(rng: Rng, seedIndex: number, seed: Json, space: JsonSpace): Mutant {
  // text-level damage and whole-document replacement are rare: they stop at the parser
  if (rng.chance(0.04)) {
    const text = jsonText(seed);
    if (rng.chance(0.5)) {
      const n = rng.int(text.length);
      return { seed: seedIndex, bytes: Buffer.from(text.slice(0, n)), desc: `text truncated to ${n} chars` };
    }
    const at = rng.int(text.length);
    const ch = rng.pick(['"', '{', ']', ',', '\\', '\u0000', 'x']);
    return { seed: seedIndex, bytes: Buffer.from(text.slice(0, at) + ch + text.slice(at + 1)), desc: `char @${at} = ${JSON.stringify(ch)}` };
  }
  if (rng.chance(0.03)) {
    const v = rng.pick<Json>([null, [], {}, 0, 'x', true, raw('deep-array')]);
    return { seed: seedIndex, bytes: Buffer.from(jsonText(v)), desc: `document replaced by ${show(v)}` };
  }
  const holder = { root: seed };
  const fresh = new Set<object>();
  const desc: string[] = [];
  const edits = 1 + (rng.chance(0.35) ? 1 + rng.int(2) : 0);
  for (let e = 0; e < edits; e++) {
    const s = pickSite(rng, holder, fresh);
    const op = rng.int(14);
    if (op === 0) {
      set(holder, s, null);
      desc.push(`${s.path} = null`);
    } else if (op === 1 && s.parent !== null) {
      if (Array.isArray(s.parent)) s.parent.splice(s.key as number, 1);
      else delete s.parent[s.key as string];
      desc.push(`delete ${s.path}`);
    } else if ((op === 2 || op === 3) && (typeof s.value === 'number' || rng.chance(0.3))) {
      const v = interestingNumber(rng, typeof s.value === 'number' ? s.value : null);
      set(holder, s, v);
      desc.push(`${s.path} = ${show(v)}`);
    } else if (op === 4 && typeof s.value === 'string' && space.strings.length > 0) {
      const v = rng.pick(space.strings);
      set(holder, s, v);
      desc.push(`${s.path} = ${show(v)}`);
    } else if (op === 5) {
      const v = rng.pick<Json>(['', [], {}, 0]);
      set(holder, s, v);
      desc.push(`${s.path} = ${show(v)}`);
    } else if (op === 6) {
      const v = raw(rng.chance(0.5) ? 'deep-array' : 'deep-object');
      set(holder, s, v);
      desc.push(`${s.path} = ${show(v)} nested ${DEPTH} deep`);
    } else if ((op === 7 || op === 8) && s.value !== null && typeof s.value === 'object' && !Array.isArray(s.value) && space.keys.length > 0) {
      const k = rng.pick(space.keys);
      const v = randomValue(rng, space);
      s.value[k] = v;
      desc.push(`${childPath(s.path, k)} = ${show(v)}`);
    } else if (op === 9 && Array.isArray(s.value) && s.value.length > 0) {
      const a = s.value;
      const kind = rng.int(3);
      if (kind === 0) {
        const n = rng.int(a.length);
        a.length = n;
        desc.push(`${s.path} cut to ${n} items`);
      } else if (kind === 1) {
        const i = rng.int(a.length);
        a.splice(i, 0, a[i]!);
        desc.push(`${s.path}[${i}] duplicated`);
      } else {
        a.reverse();
        desc.push(`${s.path} reversed`);
      }
    } else {
      const v = randomValue(rng, space);
      set(holder, s, v);
      desc.push(`${s.path} = ${show(v)}`);
    }
  }
  return { seed: seedIndex, bytes: Buffer.from(jsonText(holder.root)), desc: desc.join('; ') };
}

/** A JSON document built from a value that may hold placeholders (for the named cases). */
export function deepArray(): Json {
  return raw('deep-array');
}

export function rawNumber(text: string): Json {
  return raw(text);
}
