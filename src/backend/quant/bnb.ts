/**
 * bitsandbytes 4-bit formats, bit for bit as its reference (torch) backend computes them:
 *  - NF4 / FP4 (Params4bit): blocks over the FLATTENED row-major tensor, the last partial block
 *    with its own absmax, two codes per byte with the even index in the high nibble;
 *  - double quantization: (absmax − mean) in 8-bit blockwise dynamic codes, blocks of 256.
 * The f32 rounding steps follow torch: full blocks multiply by the reciprocal absmax (`1.0 / t`
 * is `t.reciprocal()`) while the partial block divides, and a value on a midpoint between two
 * levels takes the lower one (torch.bucketize, right=False).
 */
import type { Bnb4bitTensor, QuantFormat, QuantizeOptions } from './types.js';
import { checkData, checkLength, checkedNumel, f32, fail, wholeTensor } from './numeric.js';

/** absmax.clamp(min=1e-38), with the bound as torch holds it in f32. */
const ABSMAX_FLOOR = f32(1e-38);
export const BNB_4BIT_BLOCKSIZES: readonly number[] = [32, 64, 128, 256, 512, 1024, 2048, 4096];
export const NESTED_BLOCKSIZE = 256;

/** The NF4 levels (create_normal_map(0.9677083) normalised), sorted. */
export const NF4_CODE = Float32Array.from([
  -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
  -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
  0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
  0.7229568362236023, 1.0,
]);

/**
 * FP4 (1 sign, 2 exponent, 1 mantissa bit) in bit-pattern order, divided by its max 12. Code 8
 * is +0: the reference table spells it as the integer -0, which is plain zero.
 */
export const FP4_CODE = Float32Array.from([0, 0.0625, 8, 12, 4, 6, 2, 3, 0, -0.0625, -8, -12, -4, -6, -2, -3], (v) => f32(v / 12));

/**
 * torch.linspace in f32 as its CPU kernel evaluates it (AVX2 build): the step rounded to f32,
 * each scalar point one fused multiply-add from the nearer end, and inside the vectorised part
 * (pairs of 8-lane vectors) each lane is its vector's first point plus a separately rounded
 * lane·step. The dynamic map's means depend on these exact bits.
 */
function torchLinspaceF32(start: number, end: number, steps: number): Float32Array {
  const s = f32(start);
  const e = f32(end);
  const step = f32(f32(e - s) / (steps - 1));
  const half = Math.floor(steps / 2);
  const point = (i: number): number => (i < half ? f32(s + step * i) : f32(e - step * (steps - i - 1)));
  const out = new Float32Array(steps);
  const vectorised = Math.floor(steps / 16) * 16;
  for (let i = 0; i < vectorised; i += 8) {
    const base = point(i);
    out[i] = base;
    for (let lane = 1; lane < 8; lane++) out[i + lane] = f32(base + f32(lane * step));
  }
  for (let i = vectorised; i < steps; i++) out[i] = point(i);
  return out;
}

/**
 * The signed 8-bit dynamic map (create_dynamic_map(signed=True, max_exponent_bits=7)): for each
 * decade 10^-6 … 10^0, the midpoints of 2^i + 1 evenly spaced points in [0.1, 1], both signs,
 * plus 0 and 1, sorted.
 */
function dynamicMap(): Float32Array {
  // literal powers: 10 ** -k is not always the nearest double
  const decades = [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1];
  const values: number[] = [];
  for (let i = 0; i < 7; i++) {
    const b = torchLinspaceF32(0.1, 1, 2 ** i + 1);
    const scale = f32(decades[i]!);
    for (let j = 0; j + 1 < b.length; j++) {
      const mean = f32(f32(b[j]! + b[j + 1]!) / 2);
      const v = f32(scale * mean);
      values.push(v, -v);
    }
  }
  values.push(0, 1);
  return Float32Array.from(values).sort();
}

export const DYNAMIC_MAP = dynamicMap();

interface Codebook {
  /** Midpoints between neighbouring levels in ascending order. */
  bounds: Float32Array;
  /** Code of the level at each sorted position. */
  order: Uint8Array;
}

function codebook(code: Float32Array): Codebook {
  // stable: FP4's +0 codes (0 and 8) keep index order, as torch's CPU sort leaves them
  const order = Uint8Array.from([...code.keys()].sort((a, b) => code[a]! - code[b]! || a - b));
  const bounds = new Float32Array(code.length - 1);
  for (let i = 0; i < bounds.length; i++) bounds[i] = f32(code[order[i]!]! + code[order[i + 1]!]!) / 2;
  return { bounds, order };
}

const NF4_BOOK = codebook(NF4_CODE);
const FP4_BOOK = codebook(FP4_CODE);
const DYNAMIC_BOOK = codebook(DYNAMIC_MAP);

/** torch.bucketize(x, bounds, right=False): how many bounds lie strictly below x (NaN sorts last). */
function bucket(bounds: Float32Array, x: number): number {
  if (Number.isNaN(x)) return bounds.length;
  let lo = 0;
  let hi = bounds.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (bounds[mid]! < x) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

function clampUnit(v: number): number {
  return v < -1 ? -1 : v > 1 ? 1 : v;
}

/**
 * Blockwise absmax scaling and nearest-level codes (quantize_blockwise / quantize_4bit before
 * packing): full blocks keep their raw absmax and multiply by its clamped reciprocal; a partial
 * last block stores the clamped absmax and divides by it.
 */
function blockwiseCodes(data: Float32Array, blocksize: number, book: Codebook): { codes: Uint8Array; absmax: Float32Array } {
  const n = data.length;
  const blocks = Math.ceil(n / blocksize);
  const codes = new Uint8Array(n);
  const absmax = new Float32Array(blocks);
  for (let b = 0; b < blocks; b++) {
    const start = b * blocksize;
    const end = Math.min(n, start + blocksize);
    let am = 0;
    for (let i = start; i < end; i++) am = Math.max(am, Math.abs(data[i]!));
    const clamped = Math.max(am, ABSMAX_FLOOR);
    const full = end - start === blocksize;
    absmax[b] = full ? am : clamped;
    const inv = f32(1 / clamped);
    for (let i = start; i < end; i++) {
      const scaled = clampUnit(full ? f32(data[i]! * inv) : f32(data[i]! / clamped));
      codes[i] = book.order[bucket(book.bounds, scaled)]!;
    }
  }
  return { codes, absmax };
}

function checkBlocksize(name: string | undefined, blocksize: number): void {
  if (!BNB_4BIT_BLOCKSIZES.includes(blocksize)) fail(name, 'blocksize', `must be one of ${BNB_4BIT_BLOCKSIZES.join(', ')}, got ${blocksize}`);
}

/** Correctly rounded f32 mean (torch's f32 reduction order varies by CPU; a file stores the value it used). */
function meanF32(v: Float32Array): number {
  let s = 0;
  for (const x of v) s += x;
  return f32(s / v.length);
}

export function quantize4bit(quantType: 'nf4' | 'fp4', data: Float32Array, shape: readonly number[], opts: QuantizeOptions = {}): Bnb4bitTensor {
  const { name, blocksize = 64, doubleQuant = false, dtype = 'float32' } = opts;
  checkBlocksize(name, blocksize);
  const n = checkData(name, data, shape);
  const code = quantType === 'nf4' ? NF4_CODE : FP4_CODE;
  const book = quantType === 'nf4' ? NF4_BOOK : FP4_BOOK;
  const { codes, absmax } = blockwiseCodes(data, blocksize, book);
  const weight = new Uint8Array(Math.ceil(n / 2));
  // an odd count is padded with a zero before packing
  const pad = book.order[bucket(book.bounds, 0)]!;
  for (let j = 0; j < weight.length; j++) weight[j] = (codes[2 * j]! << 4) | (2 * j + 1 < n ? codes[2 * j + 1]! : pad);
  const base = { format: quantType, shape: [...shape], blocksize, dtype, weight, quantMap: Float32Array.from(code), ...(name === undefined ? {} : { name }) };
  if (!doubleQuant) return { ...base, absmax };
  const offset = meanF32(absmax);
  const centred = absmax.map((a) => f32(a - offset));
  const second = blockwiseCodes(centred, NESTED_BLOCKSIZE, DYNAMIC_BOOK);
  return {
    ...base,
    absmax: second.codes,
    nested: { absmax: second.absmax, quantMap: Float32Array.from(DYNAMIC_MAP), blocksize: NESTED_BLOCKSIZE, dtype: 'float32', offset },
  };
}

export function validate4bit(q: Bnb4bitTensor): void {
  const n = checkedNumel(q.name, q.shape);
  checkBlocksize(q.name, q.blocksize);
  const blocks = Math.ceil(n / q.blocksize);
  const why = `shape [${q.shape.join(', ')}] in blocks of ${q.blocksize}`;
  checkLength(q.name, 'weight', q.weight.length, Math.ceil(n / 2), `${why} (two codes per byte)`);
  checkLength(q.name, 'absmax', q.absmax.length, blocks, why);
  checkLength(q.name, 'quant_map', q.quantMap.length, 16, 'a 4-bit code');
  if (q.nested) {
    if (!(q.absmax instanceof Uint8Array)) fail(q.name, 'absmax', 'must hold 8-bit codes when nested_absmax is present');
    if (!Number.isInteger(q.nested.blocksize) || q.nested.blocksize <= 0) fail(q.name, 'nested_blocksize', `must be a positive integer, got ${q.nested.blocksize}`);
    checkLength(q.name, 'nested_absmax', q.nested.absmax.length, Math.ceil(blocks / q.nested.blocksize), `${blocks} absmax values in blocks of ${q.nested.blocksize}`);
    checkLength(q.name, 'nested_quant_map', q.nested.quantMap.length, 256, 'an 8-bit code');
    if (!Number.isFinite(q.nested.offset)) fail(q.name, 'nested_offset', `must be a finite number, got ${q.nested.offset}`);
  } else if (!(q.absmax instanceof Float32Array)) {
    fail(q.name, 'absmax', 'holds 8-bit codes but the tensor has no nested_absmax');
  }
}

/** A reader of per-block scales: nested ones are decoded on demand, one block at a time. */
function blockScale(q: Bnb4bitTensor): (block: number) => number {
  const { nested, absmax } = q;
  if (!nested) return (b) => absmax[b]!;
  const offset = f32(nested.offset);
  return (b) => f32(f32(nested.quantMap[absmax[b]!]! * nested.absmax[Math.floor(b / nested.blocksize)]!) + offset);
}

export function dequantize4bitRange(q: Bnb4bitTensor, start: number, count: number, out: Float32Array): void {
  const scale = blockScale(q);
  const { weight, quantMap, blocksize } = q;
  let block = -1;
  let s = 0;
  for (let t = 0; t < count; t++) {
    const i = start + t;
    const b = Math.floor(i / blocksize);
    if (b !== block) {
      block = b;
      s = scale(b);
    }
    const byte = weight[i >> 1]!;
    out[t] = f32(quantMap[i & 1 ? byte & 15 : byte >> 4]! * s);
  }
}

function fourBitFormat(quantType: 'nf4' | 'fp4', note: string): QuantFormat<Bnb4bitTensor> {
  return {
    name: quantType,
    family: 'bitsandbytes',
    blockSize: 64,
    bytesPerBlock: 32,
    layout: 'flat',
    layoutNote: note,
    quantize: (data, shape, opts) => quantize4bit(quantType, data, shape, opts),
    dequantize: wholeTensor(dequantize4bitRange, validate4bit),
    dequantizeRange: dequantize4bitRange,
    validate: validate4bit,
  };
}

export const NF4_FORMAT = fourBitFormat('nf4', 'weight: uint8 [ceil(n/2), 1], code of element 2j in the high nibble of byte j, 2j+1 in the low; value = quant_map[code]·absmax[i / blocksize] over the flattened tensor (blocksize 64 by default, set per tensor)');
export const FP4_FORMAT = fourBitFormat('fp4', 'as nf4, with the 16 FP4 levels (sign, 2 exponent bits, 1 mantissa bit, /12) in bit-pattern order');
