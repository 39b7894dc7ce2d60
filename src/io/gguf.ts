/**
 * GGUF files (llama.cpp's model and adapter container): the key/value metadata (architecture,
 * hyper-parameters, vocabulary), the tensor infos (name, ne[], type, offset) and the tensor data
 * after the aligned header. Every length and count is checked against the bytes left in the file
 * before anything is allocated, arrays nest at most MAX_NESTING deep (the reader recurses once
 * per level), and every tensor's type, block split and data range are checked when the file is
 * opened, so a broken file is an error naming the file, the key or tensor, and the field.
 * Only the header is read at open; tensor data is read on demand, one tensor at a time.
 */
import { closeSync, fstatSync, openSync, readSync } from 'node:fs';
import { AdaptkitError } from '../tensor/index.js';
import { type QuantFormat, type QuantizedTensor, ggmlTypeFormat } from '../backend/quant/index.js';
import { preview } from './json.js';

export type GgufValue = number | bigint | boolean | string | GgufValue[];

export interface GgufFile {
  version: number;
  tensorCount: bigint;
  metadata: Map<string, GgufValue>;
  /** Each key's GGUF value type id (GGUF_TYPE_*), and an array's element type, so a copy keeps them. */
  types: Map<string, { type: number; itemType?: number }>;
}

/** One tensor as the header describes it, with its data range checked against the file. */
export interface GgufTensorInfo {
  name: string;
  /** GGML_TYPE_* id. */
  type: number;
  /** The type's name as llama.cpp prints it (F32, Q8_0, ...). */
  typeName: string;
  /** Dimensions in the file's order: ne[0] is the row length (the fastest-varying index). */
  ne: number[];
  /** Row-major shape: ne reversed. */
  shape: number[];
  /** Absolute byte offset of the data in the file. */
  offset: number;
  nbytes: number;
}

export interface GgufHeader extends GgufFile {
  path: string;
  /** general.alignment, or 32. */
  alignment: number;
  /** Where the tensor data section starts (the header's end, aligned). */
  dataOffset: number;
  fileSize: number;
  tensors: Map<string, GgufTensorInfo>;
}

/** A tensor's data: f32 values, or the packed form the quant module reads (f16/bf16 bits, ggml blocks). */
export type GgufTensorData = { format: 'f32'; name: string; shape: number[]; data: Float32Array } | QuantizedTensor;

/** llama.cpp's own files nest arrays one level at most. */
const MAX_NESTING = 8;

/** ggml's tensors have at most four dimensions (GGML_MAX_DIMS). */
const MAX_DIMS = 4;

export const GGUF_DEFAULT_ALIGNMENT = 32;

/** Bytes of one value of each type, at least (a string or an array also needs its 8-byte count). */
const MIN_SIZE: Record<number, number> = { 0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 8: 8, 9: 12, 10: 8, 11: 8, 12: 8 };

/** GGML_TYPE_* names (ggml.h), so a type this reader cannot use is named, not just numbered. */
export const GGML_TYPE_NAMES: Readonly<Record<number, string>> = {
  0: 'F32', 1: 'F16', 2: 'Q4_0', 3: 'Q4_1', 6: 'Q5_0', 7: 'Q5_1', 8: 'Q8_0', 9: 'Q8_1', 10: 'Q2_K', 11: 'Q3_K',
  12: 'Q4_K', 13: 'Q5_K', 14: 'Q6_K', 15: 'Q8_K', 16: 'IQ2_XXS', 17: 'IQ2_XS', 18: 'IQ3_XXS', 19: 'IQ1_S', 20: 'IQ4_NL',
  21: 'IQ3_S', 22: 'IQ2_S', 23: 'IQ4_XS', 24: 'I8', 25: 'I16', 26: 'I32', 27: 'I64', 28: 'F64', 29: 'IQ1_M', 30: 'BF16',
  34: 'TQ1_0', 35: 'TQ2_0', 39: 'MXFP4',
};

export const GGML_F32 = 0;

/** Block size and bytes per block of the element types this reader reads. */
export interface GgmlTypeLayout {
  type: number;
  name: string;
  blockSize: number;
  bytesPerBlock: number;
  /** The quant module's format, for every type but F32. */
  format: QuantFormat | null;
}

const F32_LAYOUT: GgmlTypeLayout = { type: GGML_F32, name: 'F32', blockSize: 1, bytesPerBlock: 4, format: null };

/** The layout of a GGML type id this reader can read, or undefined. */
export function ggmlTypeLayout(type: number): GgmlTypeLayout | undefined {
  if (type === GGML_F32) return F32_LAYOUT;
  const format = ggmlTypeFormat(type);
  if (!format) return undefined;
  return { type, name: GGML_TYPE_NAMES[type] ?? format.name.toUpperCase(), blockSize: format.blockSize, bytesPerBlock: format.bytesPerBlock, format };
}

/** The GGML type names this reader can read, for messages. */
export function supportedGgmlTypes(): string[] {
  return Object.keys(GGML_TYPE_NAMES).map(Number).filter((t) => ggmlTypeLayout(t)).map((t) => GGML_TYPE_NAMES[t]!);
}

/** Bytes of a tensor of `ne` (file order) and `layout`; the caller has checked that ne[0] splits into blocks. */
export function ggmlTensorBytes(ne: readonly number[], layout: GgmlTypeLayout): number {
  const rows = ne.slice(1).reduce((p, q) => p * q, 1);
  return rows * (ne[0]! / layout.blockSize) * layout.bytesPerBlock;
}

/** Raised while parsing a prefix of the file that ends too soon: read more and parse again. */
class NeedMore extends Error {}

class Reader {
  pos = 0;
  /** The key or tensor whose value is being read, for messages. */
  key = '';
  constructor(readonly buf: Buffer, readonly path: string, readonly fileSize: number) {}

  fail(msg: string): never {
    // a broken length can make the key a run of binary: quote and clip it
    throw new AdaptkitError(`${this.path}: ${this.key ? `${preview(this.key)}: ` : ''}${msg}`);
  }

  need(n: number): void {
    if (this.pos + n <= this.buf.length) return;
    if (this.buf.length < this.fileSize) throw new NeedMore();
    this.fail(`truncated GGUF file (needed ${n} bytes at offset ${this.pos}, the file has ${this.fileSize})`);
  }

  u32(): number { this.need(4); const v = this.buf.readUInt32LE(this.pos); this.pos += 4; return v; }
  i32(): number { this.need(4); const v = this.buf.readInt32LE(this.pos); this.pos += 4; return v; }
  u64(): bigint { this.need(8); const v = this.buf.readBigUInt64LE(this.pos); this.pos += 8; return v; }

  /** A count of items of at least `itemSize` bytes each, which must fit in the rest of the file. */
  count(what: string, itemSize: number): number {
    const at = this.pos;
    const n = this.u64();
    const left = BigInt(this.fileSize - this.pos);
    if (n * BigInt(itemSize) > left) this.fail(`${what} ${n} at offset ${at} exceeds the file size (${left} bytes left)`);
    return Number(n);
  }

  str(what: string): string {
    const n = this.count(`${what} length`, 1);
    this.need(n);
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

  /** One tensor info (name, n_dims, ne[], type, offset relative to the data section), unchecked. */
  tensorInfo(i: number): { name: string; ne: bigint[]; type: number; rel: bigint; at: number } {
    this.key = '';
    const at = this.pos;
    const name = this.str(`tensor ${i} name`);
    this.key = `tensor ${JSON.stringify(name)}`;
    const nDims = this.u32();
    if (nDims < 1 || nDims > MAX_DIMS) this.fail(`n_dims ${nDims} is outside 1..${MAX_DIMS}`);
    const ne: bigint[] = [];
    for (let d = 0; d < nDims; d++) ne.push(this.u64());
    const type = this.u32();
    const rel = this.u64();
    return { name, ne, type, rel, at };
  }
}

function openForRead(path: string): number {
  try {
    return openSync(path, 'r');
  } catch (e) {
    throw new AdaptkitError(`${path}: cannot read (${(e as Error).message})`);
  }
}

function readAt(fd: number, path: string, out: Uint8Array, pos: number): void {
  let got = 0;
  while (got < out.length) {
    const k = readSync(fd, out, got, out.length - got, pos + got);
    if (k === 0) throw new AdaptkitError(`${path}: unexpected end of file at byte ${pos + got}`);
    got += k;
  }
}

/**
 * Parse the header with `parse`, reading a prefix of the file and doubling it while the header
 * runs past it: a model's header is a few MB at most, its data may be many GB.
 */
function parseHeader<T>(path: string, parse: (r: Reader) => T): T {
  const fd = openForRead(path);
  try {
    const size = fstatSync(fd).size;
    for (let n = Math.min(size, 1 << 20); ; n = Math.min(size, n * 2)) {
      const buf = Buffer.alloc(n);
      readAt(fd, path, buf, 0);
      const r = new Reader(buf, path, size);
      if (buf.length < 4 || buf.toString('latin1', 0, 4) !== 'GGUF') throw new AdaptkitError(`${path}: not a GGUF file (bad magic)`);
      try {
        return parse(r);
      } catch (e) {
        if (!(e instanceof NeedMore)) throw e;
      }
    }
  } finally {
    closeSync(fd);
  }
}

function parseKv(r: Reader): GgufFile {
  r.pos = 4;
  const version = r.u32();
  if (version < 2 || version > 3) throw new AdaptkitError(`${r.path}: GGUF version ${version} is not supported (2 or 3)`);
  const tensorCount = r.u64();
  // a key/value pair takes at least a key length, a type and one byte
  const kvCount = r.count('key/value count', 13);
  const metadata = new Map<string, GgufValue>();
  const types = new Map<string, { type: number; itemType?: number }>();
  for (let i = 0; i < kvCount; i++) {
    r.key = '';
    const key = r.str(`key ${i}`);
    r.key = key;
    if (metadata.has(key)) r.fail('appears twice');
    const type = r.u32();
    const at = r.pos;
    metadata.set(key, r.value(type, 0));
    types.set(key, type === 9 ? { type, itemType: r.buf.readUInt32LE(at) } : { type });
  }
  r.key = '';
  return { version, tensorCount, metadata, types };
}

/** The metadata only (tensor infos are not parsed): what a vocabulary file needs. */
export function readGgufMetadata(path: string): GgufFile {
  return parseHeader(path, parseKv);
}

function alignmentOf(md: Map<string, GgufValue>, path: string): number {
  const a = md.get('general.alignment');
  if (a === undefined) return GGUF_DEFAULT_ALIGNMENT;
  if (typeof a !== 'number' || !Number.isInteger(a) || a < 1 || (a & (a - 1)) !== 0 || a > 1 << 20) {
    throw new AdaptkitError(`${path}: general.alignment must be a power of two (at most 2^20), got ${preview(a)}`);
  }
  return a;
}

/**
 * The metadata and every tensor's info, each checked: a known type, a row length that splits
 * into whole blocks, an aligned offset, data inside the file and not overlapping another tensor.
 */
export function readGgufHeader(path: string): GgufHeader {
  return parseHeader(path, (r) => {
    const kv = parseKv(r);
    const alignment = alignmentOf(kv.metadata, path);
    // a tensor info takes at least a name length, n_dims, one ne, a type and an offset
    if (kv.tensorCount * 32n > BigInt(r.fileSize - r.pos)) r.fail(`tensor count ${kv.tensorCount} exceeds the file size (${r.fileSize - r.pos} bytes left)`);
    const raw = Array.from({ length: Number(kv.tensorCount) }, (_, i) => r.tensorInfo(i));
    r.key = '';
    const dataOffset = Math.ceil(r.pos / alignment) * alignment;
    const tensors = new Map<string, GgufTensorInfo>();
    const supported = () => supportedGgmlTypes().join(', ');
    for (const t of raw) {
      const fail: (msg: string) => never = (msg) => {
        throw new AdaptkitError(`${path}: tensor ${JSON.stringify(t.name)}: ${msg}`);
      };
      if (tensors.has(t.name)) fail('appears twice');
      const layout = ggmlTypeLayout(t.type);
      if (!layout) {
        const known = GGML_TYPE_NAMES[t.type];
        fail(known ? `type ${t.type} (${known}) is not supported (${supported()})` : `unknown tensor type id ${t.type} (supported: ${supported()})`);
      }
      let numel = 1n;
      t.ne.forEach((n, d) => {
        if (n < 1n) fail(`ne[${d}] is ${n}; every dimension must be at least 1`);
        numel *= n;
      });
      if (numel > BigInt(Number.MAX_SAFE_INTEGER)) fail(`ne [${t.ne.join(', ')}] has more elements than can be addressed`);
      const ne = t.ne.map(Number);
      if (ne[0]! % layout.blockSize !== 0) {
        fail(`ne[0] = ${ne[0]} (the row length) is not a multiple of the ${layout.name} block size ${layout.blockSize}: the shape does not split into whole blocks`);
      }
      const nbytes = ggmlTensorBytes(ne, layout);
      if (t.rel % BigInt(alignment) !== 0n) fail(`data offset ${t.rel} is not a multiple of the alignment ${alignment}`);
      const offset = BigInt(dataOffset) + t.rel;
      if (offset + BigInt(nbytes) > BigInt(r.fileSize)) {
        fail(`data [${offset}, ${offset + BigInt(nbytes)}) (${layout.name}, ne [${ne.join(', ')}]: ${nbytes} bytes) runs past the end of the file (${r.fileSize} bytes)`);
      }
      tensors.set(t.name, { name: t.name, type: t.type, typeName: layout.name, ne, shape: [...ne].reverse(), offset: Number(offset), nbytes });
    }
    const byOffset = [...tensors.values()].sort((a, b) => a.offset - b.offset);
    for (let i = 1; i < byOffset.length; i++) {
      const prev = byOffset[i - 1]!;
      const cur = byOffset[i]!;
      if (prev.offset + prev.nbytes > cur.offset) {
        throw new AdaptkitError(`${path}: tensor ${JSON.stringify(cur.name)}: data at offset ${cur.offset} overlaps tensor ${JSON.stringify(prev.name)} (${prev.offset} + ${prev.nbytes} bytes)`);
      }
    }
    return { ...kv, path, alignment, dataOffset, fileSize: r.fileSize, tensors };
  });
}

/** An opened GGUF file: the checked header, and each tensor's data read on demand. */
export class GgufReader {
  private fd: number;

  private constructor(readonly header: GgufHeader) {
    this.fd = openForRead(header.path);
  }

  static open(path: string): GgufReader {
    return new GgufReader(readGgufHeader(path));
  }

  get path(): string {
    return this.header.path;
  }

  get metadata(): Map<string, GgufValue> {
    return this.header.metadata;
  }

  info(name: string): GgufTensorInfo {
    const t = this.header.tensors.get(name);
    if (!t) throw new AdaptkitError(`${this.path}: no tensor ${JSON.stringify(name)}`);
    return t;
  }

  has(name: string): boolean {
    return this.header.tensors.has(name);
  }

  names(): string[] {
    return [...this.header.tensors.keys()];
  }

  /** The tensor's bytes as they lie in the file. */
  bytes(name: string): Uint8Array {
    const t = this.info(name);
    const out = new Uint8Array(t.nbytes);
    readAt(this.fd, this.path, out, t.offset);
    return out;
  }

  /** The tensor as f32 values (F32) or in its packed form (F16/BF16 bits, ggml blocks), named and shaped row-major. */
  tensor(name: string): GgufTensorData {
    const t = this.info(name);
    const layout = ggmlTypeLayout(t.type)!;
    if (!layout.format) {
      const data = new Float32Array(t.nbytes / 4);
      readAt(this.fd, this.path, new Uint8Array(data.buffer), t.offset);
      return { format: 'f32', name, shape: [...t.shape], data };
    }
    const raw = this.bytes(name);
    let q: QuantizedTensor;
    if (layout.format.family === 'half') {
      q = { format: layout.format.name as 'f16' | 'bf16', name, shape: [...t.shape], data: new Uint16Array(raw.buffer, raw.byteOffset, raw.length / 2) };
    } else {
      q = { format: layout.format.name as 'q8_0' | 'q4_0' | 'q4_K' | 'q6_K', name, shape: [...t.shape], data: raw };
    }
    layout.format.validate(q);
    return q;
  }

  /** The tensor as f32 values, dequantizing a packed one. */
  float32(name: string): Float32Array {
    const d = this.tensor(name);
    return d.format === 'f32' ? d.data : ggmlTypeLayout(this.info(name).type)!.format!.dequantize(d);
  }

  close(): void {
    if (this.fd >= 0) closeSync(this.fd);
    this.fd = -1;
  }
}

/** Whether the file starts with the GGUF magic (a model path is told apart by its bytes, not its name). */
export function isGgufFile(path: string): boolean {
  let fd: number;
  try {
    fd = openSync(path, 'r');
  } catch {
    return false;
  }
  try {
    const b = Buffer.alloc(4);
    return fstatSync(fd).isFile() && readSync(fd, b, 0, 4, 0) === 4 && b.toString('latin1') === 'GGUF';
  } finally {
    closeSync(fd);
  }
}
