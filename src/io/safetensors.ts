/**
 * safetensors: an 8-byte little-endian header length, a JSON header naming each tensor's dtype,
 * shape and byte range, then the raw bytes. The reader validates the header completely before
 * trusting it and reads tensors lazily, one at a time, so a large file is never read whole.
 */
import { closeSync, existsSync, fstatSync, openSync, readSync } from 'node:fs';
import { join } from 'node:path';
import { AdaptkitError, type Tensor, fromBuffer, numel } from '../tensor/index.js';
import { writeFileAtomic } from './atomic.js';
import { bf16ToF32, f16ToF32, f32ToBf16, f32ToF16 } from './half.js';
import { isObject, preview, readJsonFile } from './json.js';

export type SafetensorsDType = 'F64' | 'F32' | 'F16' | 'BF16' | 'I64' | 'I32' | 'I16' | 'I8' | 'U8' | 'BOOL';

const DTYPE_BYTES: Record<SafetensorsDType, number> = {
  F64: 8, F32: 4, F16: 2, BF16: 2, I64: 8, I32: 4, I16: 2, I8: 1, U8: 1, BOOL: 1,
};

/** Packed (quantized) storage as read back: codes and scales in their own widths. */
export type PackedArray = Uint8Array | Int8Array | Float32Array;

export interface TensorInfo {
  dtype: SafetensorsDType;
  shape: number[];
  /** Byte range inside the data section. */
  begin: number;
  end: number;
}

const MAX_HEADER = 100 * 1024 * 1024;
/** More dimensions than any tensor has; a longer shape is a broken header. */
const MAX_DIMS = 64;

function bad(file: string, msg: string): AdaptkitError {
  return new AdaptkitError(`${file}: invalid safetensors file: ${msg}`);
}

/** Parse and validate a header; dataSize is the number of bytes after the header. */
export function parseHeader(file: string, json: string, dataSize: number): { tensors: Map<string, TensorInfo>; metadata: Record<string, string> } {
  let raw: unknown;
  try {
    raw = JSON.parse(json);
  } catch (e) {
    throw bad(file, `header is not JSON (${(e as Error).message})`);
  }
  if (!isObject(raw)) throw bad(file, `header is not a JSON object (got ${preview(raw)})`);
  const tensors = new Map<string, TensorInfo>();
  let metadata: Record<string, string> = {};
  for (const [name, v] of Object.entries(raw as Record<string, unknown>)) {
    if (name === '__metadata__') {
      if (!isObject(v) || Object.values(v).some((x) => typeof x !== 'string')) {
        throw bad(file, `__metadata__ must map strings to strings, got ${preview(v)}`);
      }
      metadata = v as Record<string, string>;
      continue;
    }
    const t = preview(name, 200);
    if (!isObject(v)) throw bad(file, `entry ${t} is not an object (got ${preview(v)})`);
    const e = v as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
    if (typeof e.dtype !== 'string' || !Object.hasOwn(DTYPE_BYTES, e.dtype)) throw bad(file, `tensor ${t} has unknown dtype ${preview(e.dtype)}`);
    if (!Array.isArray(e.shape) || e.shape.length > MAX_DIMS || e.shape.some((d) => !Number.isSafeInteger(d) || d < 0)) {
      throw bad(file, `tensor ${t} has an invalid shape ${preview(e.shape)}`);
    }
    const off = e.data_offsets;
    if (!Array.isArray(off) || off.length !== 2 || off.some((d) => !Number.isSafeInteger(d) || d < 0) || off[0] > off[1]) {
      throw bad(file, `tensor ${t} has invalid data_offsets ${preview(off)}`);
    }
    const dtype = e.dtype as SafetensorsDType;
    const shape = e.shape as number[];
    const [begin, end] = off as [number, number];
    const bytes = numel(shape) * DTYPE_BYTES[dtype];
    if (end - begin !== bytes) throw bad(file, `tensor ${t} has ${end - begin} bytes but ${dtype} ${preview(shape)} needs ${bytes}`);
    if (end > dataSize) throw bad(file, `tensor ${t} ends at byte ${end} but the data section has ${dataSize} bytes (truncated file?)`);
    tensors.set(name, { dtype, shape, begin, end });
  }
  const sorted = [...tensors.entries()].filter(([, t]) => t.end > t.begin).sort((a, b) => a[1].begin - b[1].begin);
  for (let i = 1; i < sorted.length; i++) {
    if (sorted[i]![1].begin < sorted[i - 1]![1].end) throw bad(file, `tensors ${preview(sorted[i - 1]![0], 200)} and ${preview(sorted[i]![0], 200)} overlap`);
  }
  return { tensors, metadata };
}

/** Convert raw little-endian bytes to an f32 (floats) or i32 (integers) typed array. */
export function decode(file: string, name: string, dtype: SafetensorsDType, bytes: Uint8Array): Float32Array | Int32Array {
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const n = bytes.byteLength / DTYPE_BYTES[dtype];
  switch (dtype) {
    case 'F32': {
      const out = new Float32Array(n);
      new Uint8Array(out.buffer).set(bytes);
      return out;
    }
    case 'F64': {
      const out = new Float32Array(n);
      for (let i = 0; i < n; i++) out[i] = dv.getFloat64(i * 8, true);
      return out;
    }
    case 'F16': {
      const out = new Float32Array(n);
      for (let i = 0; i < n; i++) out[i] = f16ToF32(dv.getUint16(i * 2, true));
      return out;
    }
    case 'BF16': {
      const out = new Float32Array(n);
      for (let i = 0; i < n; i++) out[i] = bf16ToF32(dv.getUint16(i * 2, true));
      return out;
    }
    case 'I32': {
      const out = new Int32Array(n);
      new Uint8Array(out.buffer).set(bytes);
      return out;
    }
    case 'I64': {
      const out = new Int32Array(n);
      for (let i = 0; i < n; i++) {
        const v = dv.getBigInt64(i * 8, true);
        if (v > 2147483647n || v < -2147483648n) throw new AdaptkitError(`${file}: tensor "${name}" holds ${v}, outside the int32 range`);
        out[i] = Number(v);
      }
      return out;
    }
    case 'I16': {
      const out = new Int32Array(n);
      for (let i = 0; i < n; i++) out[i] = dv.getInt16(i * 2, true);
      return out;
    }
    case 'I8': {
      const out = new Int32Array(n);
      for (let i = 0; i < n; i++) out[i] = dv.getInt8(i);
      return out;
    }
    case 'U8':
    case 'BOOL': {
      const out = new Int32Array(n);
      for (let i = 0; i < n; i++) out[i] = bytes[i]!;
      return out;
    }
  }
}

/** A safetensors file opened for lazy, per-tensor reads. */
export class SafetensorsFile {
  readonly tensors: Map<string, TensorInfo>;
  readonly metadata: Record<string, string>;
  private fd: number;
  private dataStart: number;

  constructor(readonly path: string) {
    try {
      this.fd = openSync(path, 'r');
    } catch (e) {
      throw new AdaptkitError(`${path}: cannot open (${(e as Error).message})`);
    }
    try {
      const size = fstatSync(this.fd).size;
      if (size < 8) throw bad(path, `file has ${size} bytes, shorter than the 8-byte header length`);
      const lenBuf = Buffer.alloc(8);
      readSync(this.fd, lenBuf, 0, 8, 0);
      const len = lenBuf.readBigUInt64LE(0);
      if (len > BigInt(Math.min(MAX_HEADER, size - 8))) throw bad(path, `header length ${len} exceeds the file (${size} bytes) or the 100 MiB limit`);
      const hlen = Number(len);
      const hbuf = Buffer.alloc(hlen);
      readSync(this.fd, hbuf, 0, hlen, 8);
      this.dataStart = 8 + hlen;
      const parsed = parseHeader(path, hbuf.toString('utf8'), size - this.dataStart);
      this.tensors = parsed.tensors;
      this.metadata = parsed.metadata;
    } catch (e) {
      closeSync(this.fd);
      throw e;
    }
  }

  keys(): string[] {
    return [...this.tensors.keys()];
  }

  has(name: string): boolean {
    return this.tensors.has(name);
  }

  info(name: string): TensorInfo {
    const t = this.tensors.get(name);
    if (!t) throw new AdaptkitError(`${this.path}: no tensor named "${name}"`);
    return t;
  }

  /** The stored bytes of one tensor, as they lie in the file. */
  readBytes(name: string): Uint8Array {
    const t = this.info(name);
    const bytes = Buffer.alloc(t.end - t.begin);
    let got = 0;
    while (got < bytes.length) {
      const n = readSync(this.fd, bytes, got, bytes.length - got, this.dataStart + t.begin + got);
      if (n === 0) throw bad(this.path, `unexpected end of file reading "${name}"`);
      got += n;
    }
    return new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  }

  /** Read one tensor (floats as f32, integers as i32). */
  read(name: string): Tensor {
    const t = this.info(name);
    return fromBuffer(decode(this.path, name, t.dtype, this.readBytes(name)), t.shape);
  }

  /**
   * One tensor of packed (quantized) storage without widening it: U8 as a Uint8Array, I8 as an
   * Int8Array, floats as a Float32Array (quantization scales and maps).
   */
  readPacked(name: string): PackedArray {
    const t = this.info(name);
    const bytes = this.readBytes(name);
    if (t.dtype === 'U8') return bytes;
    if (t.dtype === 'I8') return new Int8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    const v = decode(this.path, name, t.dtype, bytes);
    if (!(v instanceof Float32Array)) throw new AdaptkitError(`${this.path}: tensor "${name}" is ${t.dtype}; packed storage is U8, I8 or floating point`);
    return v;
  }

  close(): void {
    if (this.fd >= 0) closeSync(this.fd);
    this.fd = -1;
  }
}

/**
 * A model's weights: `model.safetensors`, or shards listed in `model.safetensors.index.json`.
 */
export class WeightSource {
  private files = new Map<string, SafetensorsFile>();
  private where = new Map<string, string>();

  constructor(readonly dir: string, single = 'model.safetensors') {
    const index = join(dir, `${single}.index.json`);
    if (existsSync(join(dir, single))) {
      const f = new SafetensorsFile(join(dir, single));
      this.files.set(single, f);
      for (const k of f.keys()) this.where.set(k, single);
    } else if (existsSync(index)) {
      const doc = readJsonFile(index);
      const map = isObject(doc) ? doc.weight_map : undefined;
      if (!isObject(map)) throw new AdaptkitError(`${index}: "weight_map" must be an object mapping weight names to shard files, got ${preview(map)}`);
      for (const [k, file] of Object.entries(map)) {
        if (typeof file !== 'string' || file.includes('..') || file.startsWith('/')) throw new AdaptkitError(`${index}: weight_map[${preview(k)}] is not a shard file name in this folder: ${preview(file)}`);
        this.where.set(k, file);
      }
    } else {
      throw new AdaptkitError(`${dir}: no ${single} or ${single}.index.json`);
    }
  }

  keys(): string[] {
    return [...this.where.keys()];
  }

  has(name: string): boolean {
    return this.where.has(name);
  }

  private file(name: string): SafetensorsFile {
    const fname = this.where.get(name);
    if (!fname) throw new AdaptkitError(`${this.dir}: no weight named "${name}"`);
    let f = this.files.get(fname);
    if (!f) {
      f = new SafetensorsFile(join(this.dir, fname));
      this.files.set(fname, f);
    }
    return f;
  }

  info(name: string): TensorInfo {
    return this.file(name).info(name);
  }

  read(name: string): Tensor {
    return this.file(name).read(name);
  }

  readPacked(name: string): PackedArray {
    return this.file(name).readPacked(name);
  }

  close(): void {
    for (const f of this.files.values()) f.close();
    this.files.clear();
  }
}

/** A tensor given as its stored bytes (packed quantized storage), written as it is. */
export interface RawTensor {
  dtype: SafetensorsDType;
  shape: number[];
  data: Uint8Array | Int8Array | Float32Array | Uint16Array;
}

export interface WriteOptions {
  metadata?: Record<string, string>;
  /** Storage dtype per tensor name (default F32 for f32 tensors, I32 for i32). */
  dtypes?: Record<string, SafetensorsDType>;
  /** More tensors, by name, whose bytes are written unchanged (little-endian typed arrays). */
  raw?: Record<string, RawTensor>;
}

function rawBytes(name: string, r: RawTensor): Uint8Array {
  const bytes = new Uint8Array(r.data.buffer, r.data.byteOffset, r.data.byteLength);
  const want = numel(r.shape) * DTYPE_BYTES[r.dtype];
  if (bytes.length !== want) throw new AdaptkitError(`safetensors: raw tensor "${name}" has ${bytes.length} bytes, ${r.dtype} [${r.shape.join(', ')}] needs ${want}`);
  return bytes;
}

function encode(t: Tensor, dtype: SafetensorsDType): Uint8Array {
  const src = t.toArray();
  const n = src.length;
  const out = new Uint8Array(n * DTYPE_BYTES[dtype]);
  const dv = new DataView(out.buffer);
  for (let i = 0; i < n; i++) {
    const v = src[i]!;
    switch (dtype) {
      case 'F32': dv.setFloat32(i * 4, v, true); break;
      case 'F64': dv.setFloat64(i * 8, v, true); break;
      case 'F16': dv.setUint16(i * 2, f32ToF16(v), true); break;
      case 'BF16': dv.setUint16(i * 2, f32ToBf16(v), true); break;
      case 'I32': dv.setInt32(i * 4, v, true); break;
      case 'I64': dv.setBigInt64(i * 8, BigInt(Math.trunc(v)), true); break;
      case 'I16': dv.setInt16(i * 2, v, true); break;
      case 'I8': dv.setInt8(i, v); break;
      case 'U8':
      case 'BOOL': dv.setUint8(i, v); break;
    }
  }
  return out;
}

/**
 * Serialize tensors to safetensors bytes. Tensors are laid out in name order; the header is padded
 * with spaces to a multiple of 8 bytes so the data section is aligned.
 */
export function serializeSafetensors(tensors: Record<string, Tensor>, opts: WriteOptions = {}): Uint8Array[] {
  const raw = opts.raw ?? {};
  for (const k of Object.keys(raw)) if (Object.hasOwn(tensors, k)) throw new AdaptkitError(`safetensors: "${k}" is given both as a tensor and as raw bytes`);
  const names = [...Object.keys(tensors), ...Object.keys(raw)].sort();
  const header: Record<string, unknown> = {};
  if (opts.metadata) header.__metadata__ = opts.metadata;
  const blobs: Uint8Array[] = [];
  let offset = 0;
  for (const name of names) {
    const r = Object.hasOwn(raw, name) ? raw[name] : undefined;
    const t = tensors[name];
    const dtype = r ? r.dtype : (opts.dtypes?.[name] ?? (t!.dtype === 'i32' ? 'I32' : 'F32'));
    const bytes = r ? rawBytes(name, r) : encode(t!, dtype);
    header[name] = { dtype, shape: r ? [...r.shape] : [...t!.shape], data_offsets: [offset, offset + bytes.length] };
    blobs.push(bytes);
    offset += bytes.length;
  }
  let json = JSON.stringify(header);
  const pad = (8 - (Buffer.byteLength(json) % 8)) % 8;
  json += ' '.repeat(pad);
  const hbytes = Buffer.from(json, 'utf8');
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(hbytes.length));
  return [len, hbytes, ...blobs];
}

/** Write a safetensors file atomically. */
export function writeSafetensors(path: string, tensors: Record<string, Tensor>, opts: WriteOptions = {}): void {
  writeFileAtomic(path, serializeSafetensors(tensors, opts));
}

/** Read every tensor of a file (small files: adapters, fixtures). */
export function readSafetensors(path: string): { tensors: Record<string, Tensor>; metadata: Record<string, string> } {
  const f = new SafetensorsFile(path);
  try {
    const tensors: Record<string, Tensor> = {};
    for (const k of f.keys()) tensors[k] = f.read(k);
    return { tensors, metadata: f.metadata };
  } finally {
    f.close();
  }
}

