/**
 * Image files: IDX arrays (the MNIST format, plain or gzipped) and PNG / JPEG pictures, decoded
 * with pngjs and jpeg-js (pure JavaScript) into 8-bit pixels. Every malformed input is an error
 * that names its file.
 */
import { readFileSync } from 'node:fs';
import { gunzipSync } from 'node:zlib';
import pngjs from 'pngjs';
import jpeg from 'jpeg-js';
import { AdaptkitError } from '../tensor/index.js';

export type IdxDtype = 'u8' | 'i8' | 'i16' | 'i32' | 'f32' | 'f64';
export type IdxData = Uint8Array | Int8Array | Int16Array | Int32Array | Float32Array | Float64Array;

export interface IdxArray {
  dtype: IdxDtype;
  shape: number[];
  data: IdxData;
}

/** The IDX type codes (third byte of the magic number) and their element sizes. */
const IDX_TYPES: Record<number, { dtype: IdxDtype; size: number }> = {
  0x08: { dtype: 'u8', size: 1 }, 0x09: { dtype: 'i8', size: 1 }, 0x0b: { dtype: 'i16', size: 2 },
  0x0c: { dtype: 'i32', size: 4 }, 0x0d: { dtype: 'f32', size: 4 }, 0x0e: { dtype: 'f64', size: 8 },
};

/** Decompressed files larger than this are refused (a gzip bomb, not a dataset). */
const MAX_IDX_BYTES = 2 ** 31 - 1;

function isGzip(b: Uint8Array): boolean {
  return b.length >= 2 && b[0] === 0x1f && b[1] === 0x8b;
}

/** An IDX array from the bytes of a file (gzip-compressed or not); values are big-endian in the file. */
export function parseIdx(input: Uint8Array, source = 'IDX data'): IdxArray {
  let bytes = input;
  if (isGzip(bytes)) {
    try {
      bytes = gunzipSync(bytes, { maxOutputLength: MAX_IDX_BYTES });
    } catch (e) {
      throw new AdaptkitError(`${source}: not a readable gzip file (${(e as Error).message})`);
    }
  }
  if (bytes.length < 4 || bytes[0] !== 0 || bytes[1] !== 0) throw new AdaptkitError(`${source}: not an IDX file (it must start with two zero bytes, a type code and a dimension count)`);
  const type = IDX_TYPES[bytes[2]!];
  if (!type) throw new AdaptkitError(`${source}: unknown IDX type code 0x${bytes[2]!.toString(16).padStart(2, '0')} (known: 0x08 u8, 0x09 i8, 0x0b i16, 0x0c i32, 0x0d f32, 0x0e f64)`);
  const ndim = bytes[3]!;
  if (ndim === 0) throw new AdaptkitError(`${source}: an IDX array needs at least one dimension`);
  const header = 4 + 4 * ndim;
  if (bytes.length < header) throw new AdaptkitError(`${source}: truncated IDX header (${ndim} dimensions need ${header} bytes, the file has ${bytes.length})`);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const shape = Array.from({ length: ndim }, (_, i) => view.getUint32(4 + 4 * i, false));
  const count = shape.reduce((a, b) => a * b, 1);
  const need = header + count * type.size;
  if (bytes.length !== need) {
    throw new AdaptkitError(`${source}: IDX shape [${shape.join(', ')}] of ${type.dtype} needs ${need} bytes, the file has ${bytes.length}${bytes.length < need ? ' (truncated)' : ''}`);
  }
  let data: IdxData;
  switch (type.dtype) {
    case 'u8': data = bytes.slice(header, need); break;
    case 'i8': data = new Int8Array(bytes.slice(header, need).buffer); break;
    case 'i16': data = Int16Array.from({ length: count }, (_, i) => view.getInt16(header + 2 * i, false)); break;
    case 'i32': data = Int32Array.from({ length: count }, (_, i) => view.getInt32(header + 4 * i, false)); break;
    case 'f32': data = Float32Array.from({ length: count }, (_, i) => view.getFloat32(header + 4 * i, false)); break;
    case 'f64': data = Float64Array.from({ length: count }, (_, i) => view.getFloat64(header + 8 * i, false)); break;
  }
  return { dtype: type.dtype, shape, data };
}

export function readIdx(path: string): IdxArray {
  let bytes: Uint8Array;
  try {
    bytes = readFileSync(path);
  } catch (e) {
    throw new AdaptkitError(`${path}: cannot read the IDX file (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
  }
  return parseIdx(bytes, path);
}

/** Decoded pixels: height x width x channels bytes, row by row (1 channel: gray, 3: RGB). */
export interface RawImage {
  width: number;
  height: number;
  channels: 1 | 3;
  data: Uint8Array;
}

/** A decoded picture larger than this is refused before its pixels are allocated. */
const MAX_PIXELS = 64 * 2 ** 20;

function keepChannels(rgba: Uint8Array, width: number, height: number, gray: boolean): RawImage {
  const n = width * height;
  const c = gray ? 1 : 3;
  const out = new Uint8Array(n * c);
  // alpha is dropped, as PIL's convert("RGB") / convert("L") of an RGBA image drops it
  for (let i = 0; i < n; i++) for (let k = 0; k < c; k++) out[i * c + k] = rgba[4 * i + k]!;
  return { width, height, channels: c, data: out };
}

export function decodePng(bytes: Uint8Array, source = 'PNG image'): RawImage {
  let png: { width: number; height: number; data: Uint8Array; color?: boolean };
  try {
    png = pngjs.PNG.sync.read(Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength)) as typeof png;
  } catch (e) {
    throw new AdaptkitError(`${source}: not a readable PNG file (${(e as Error).message})`);
  }
  return keepChannels(png.data, png.width, png.height, !png.color);
}

/** Colour components of a baseline or progressive JPEG (its start-of-frame segment), or null when none is found. */
function jpegComponents(b: Uint8Array): number | null {
  let i = 2;
  while (i + 4 <= b.length) {
    if (b[i] !== 0xff) return null;
    const marker = b[i + 1]!;
    // fill bytes before a marker
    if (marker === 0xff) {
      i++;
      continue;
    }
    const len = (b[i + 2]! << 8) | b[i + 3]!;
    // SOF0..SOF15, except DHT (C4), JPG (C8) and DAC (CC)
    if (marker >= 0xc0 && marker <= 0xcf && marker !== 0xc4 && marker !== 0xc8 && marker !== 0xcc) return i + 9 < b.length ? b[i + 9]! : null;
    if (marker === 0xda) return null;
    i += 2 + len;
  }
  return null;
}

export function decodeJpeg(bytes: Uint8Array, source = 'JPEG image'): RawImage {
  let img: { width: number; height: number; data: Uint8Array };
  try {
    img = jpeg.decode(bytes, { useTArray: true, formatAsRGBA: true, maxResolutionInMP: MAX_PIXELS / 2 ** 20, maxMemoryUsageInMB: 1024 });
  } catch (e) {
    throw new AdaptkitError(`${source}: not a readable JPEG file (${(e as Error).message})`);
  }
  return keepChannels(img.data, img.width, img.height, jpegComponents(bytes) === 1);
}

/** A PNG or JPEG picture, told apart by its first bytes (not its name). */
export function decodeImage(bytes: Uint8Array, source = 'image'): RawImage {
  if (bytes.length >= 8 && bytes[0] === 0x89 && bytes[1] === 0x50 && bytes[2] === 0x4e && bytes[3] === 0x47) return decodePng(bytes, source);
  if (bytes.length >= 3 && bytes[0] === 0xff && bytes[1] === 0xd8 && bytes[2] === 0xff) return decodeJpeg(bytes, source);
  throw new AdaptkitError(`${source}: neither a PNG nor a JPEG file`);
}

export function readImage(path: string): RawImage {
  let bytes: Uint8Array;
  try {
    bytes = readFileSync(path);
  } catch (e) {
    throw new AdaptkitError(`${path}: cannot read the image (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
  }
  return decodeImage(bytes, path);
}

/** Pixels of an IDX array [N, H, W] (gray) or [N, H, W, C] (C = 1 or 3) of bytes, one image per index. */
export function idxImages(a: IdxArray, source = 'IDX images'): { count: number; image(i: number): RawImage } {
  const [n, h, w, c = 1] = a.shape;
  if (a.dtype !== 'u8' || (a.shape.length !== 3 && a.shape.length !== 4) || (c !== 1 && c !== 3)) {
    throw new AdaptkitError(`${source}: images must be u8 [N, height, width] or [N, height, width, 1 or 3], got ${a.dtype} [${a.shape.join(', ')}]`);
  }
  const size = h! * w! * c;
  const data = a.data as Uint8Array;
  return { count: n!, image: (i) => ({ width: w!, height: h!, channels: c as 1 | 3, data: data.subarray(i * size, (i + 1) * size) }) };
}
