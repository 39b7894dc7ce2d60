/**
 * LLM.int8() (bitsandbytes Linear8bitLt), as its reference backend computes it:
 *   weight: SCB = row absmax, CB = round(W · (127/SCB)) with torch's rounding steps (`127 / t` is
 *   `t.reciprocal() * 127`; torch.round ties to even);
 *   product: each activation row quantized the same way at run time (SCA, CA); with a threshold,
 *   every feature column holding some |x| ≥ threshold is an outlier column: its outliers are
 *   zeroed before the row absmax is taken, its codes are zeroed, and it is multiplied in float
 *   against the dequantized weight column. y = (CA·CBᵀ)·(SCA ⊗ SCB)/127² + outlier part.
 * Activations stay f32 here (the reference casts them to f16 first).
 */
import type { Int8RowwiseTensor, QuantFormat, QuantMatmulOptions, QuantizeOptions } from './types.js';
import { checkData, checkLength, checkedNumel, f32, fail, roundHalfEven, wholeTensor } from './numeric.js';

/** int8_vectorwise_dequant's constant for 1/127, in f32. */
const INV_127 = f32(7.874015718698502e-3);
/**
 * 1/127² for the int32 product. The reference's torch backend writes 6.200124e-05, a misprint
 * (1.8e-5 relative) of the 6.200012e-05 its CUDA kernel uses; this is the exact value.
 */
const INV_127_SQUARED = 1 / (127 * 127);
/** transformers' llm_int8_threshold default. */
export const LLM_INT8_THRESHOLD = 6;

/** Row-wise absmax scale and codes of `len` values at v[o]; `skip` zeroes (and leaves out of the absmax) what it marks. */
function quantizeRow(v: Float32Array, o: number, len: number, codes: Int8Array, skipAbs: (x: number) => boolean, zeroCol: (c: number) => boolean): number {
  let am = 0;
  for (let c = 0; c < len; c++) {
    const a = Math.abs(v[o + c]!);
    if (!skipAbs(a)) am = Math.max(am, a);
  }
  // an all-zero row has no scale (the reference divides by zero); its codes stay 0
  if (am === 0) return 0;
  const s = f32(f32(1 / am) * 127);
  for (let c = 0; c < len; c++) codes[o + c] = zeroCol(c) || skipAbs(Math.abs(v[o + c]!)) ? 0 : roundHalfEven(f32(v[o + c]! * s));
  return am;
}

export function quantizeInt8(data: Float32Array, shape: readonly number[], opts: QuantizeOptions = {}): Int8RowwiseTensor {
  const { name } = opts;
  if (opts.blocksize !== undefined || opts.doubleQuant !== undefined) fail(name, 'options', 'int8 scales whole rows (blocksize and doubleQuant apply to nf4/fp4)');
  if (shape.length !== 2) fail(name, 'shape', `int8 row-wise quantization needs [rows, cols], got [${shape.join(', ')}]`);
  checkData(name, data, shape);
  const [rows, cols] = shape as [number, number];
  const weight = new Int8Array(rows * cols);
  const scb = new Float32Array(rows);
  for (let r = 0; r < rows; r++) scb[r] = quantizeRow(data, r * cols, cols, weight, () => false, () => false);
  return { format: 'int8', shape: [rows, cols], weight, scb, ...(name === undefined ? {} : { name }) };
}

export function validateInt8(q: Int8RowwiseTensor): void {
  if (q.shape.length !== 2) fail(q.name, 'shape', `an int8 row-wise weight is [rows, cols], got [${q.shape.join(', ')}]`);
  const n = checkedNumel(q.name, q.shape);
  checkLength(q.name, 'weight', q.weight.length, n, `shape [${q.shape.join(', ')}]`);
  checkLength(q.name, 'SCB', q.scb.length, q.shape[0]!, `${q.shape[0]} rows`);
}

/** int8_vectorwise_dequant: CB·SCB, then times 1/127. */
export function int8Value(cb: number, scb: number): number {
  return f32(f32(cb * scb) * INV_127);
}

export function dequantizeInt8Range(q: Int8RowwiseTensor, start: number, count: number, out: Float32Array): void {
  const cols = q.shape[1]!;
  for (let t = 0; t < count; t++) {
    const i = start + t;
    out[t] = int8Value(q.weight[i]!, q.scb[Math.floor(i / cols)]!);
  }
}

export interface Int8Activations {
  /** CA [m, k]: row-wise codes, zero in outlier columns. */
  ca: Int8Array;
  /** SCA [m]: row absmax after the outliers are zeroed. */
  sca: Float32Array;
  /** Feature columns holding some |x| ≥ threshold, ascending. */
  outlierCols: number[];
}

/** Run-time quantization of activations x [m, k] (int8_vectorwise_quant with a threshold). */
export function int8QuantizeActivations(x: Float32Array, m: number, k: number, threshold: number, name?: string): Int8Activations {
  if (x.length !== m * k) fail(name, 'x', `has ${x.length} values, [${m}, ${k}] needs ${m * k}`);
  if (!(threshold >= 0)) fail(name, 'threshold', `must be a number ≥ 0, got ${threshold}`);
  const isOutlier = threshold > 0 ? (a: number) => a >= threshold : () => false;
  // the outlier set is the batch's: one row's outlier moves that column to float for every row
  const outlierCol = new Uint8Array(k);
  for (let i = 0; i < m * k; i++) if (isOutlier(Math.abs(x[i]!))) outlierCol[i % k] = 1;
  const ca = new Int8Array(m * k);
  const sca = new Float32Array(m);
  for (let i = 0; i < m; i++) sca[i] = quantizeRow(x, i * k, k, ca, isOutlier, (c) => outlierCol[c] === 1);
  return { ca, sca, outlierCols: [...outlierCol.keys()].filter((c) => outlierCol[c]) };
}

/** y [m, rows] = x [m, cols] · Wᵀ the LLM.int8() way, reading CB row by row (no float copy of W). */
export function int8Matmul(x: Float32Array, m: number, w: Int8RowwiseTensor, opts: QuantMatmulOptions = {}): Float32Array {
  validateInt8(w);
  const [n, k] = w.shape as [number, number];
  if (!Number.isInteger(m) || m < 0 || x.length !== m * k) fail(w.name, 'x', `has ${x.length} values, [${m}, ${k}] needed for the weight [${n}, ${k}]`);
  const { ca, sca, outlierCols: cols } = int8QuantizeActivations(x, m, k, opts.threshold ?? LLM_INT8_THRESHOLD, w.name);
  const y = opts.out ?? new Float32Array(m * n);
  checkLength(w.name, 'out', y.length, m * n, `[${m}, ${n}]`);
  const cb = w.weight;
  const colWeight = new Float64Array(cols.length);
  for (let r = 0; r < n; r++) {
    const wo = r * k;
    const scb = w.scb[r]!;
    for (let t = 0; t < cols.length; t++) colWeight[t] = int8Value(cb[wo + cols[t]!]!, scb);
    for (let i = 0; i < m; i++) {
      const xo = i * k;
      let acc = 0;
      for (let c = 0; c < k; c++) acc += ca[xo + c]! * cb[wo + c]!;
      let fp = 0;
      for (let t = 0; t < cols.length; t++) fp += x[xo + cols[t]!]! * colWeight[t]!;
      y[i * n + r] = acc * f32(sca[i]! * scb) * INV_127_SQUARED + fp;
    }
  }
  return y;
}

export const INT8_FORMAT: QuantFormat<Int8RowwiseTensor> = {
  name: 'int8',
  family: 'bitsandbytes',
  blockSize: 0,
  bytesPerBlock: 1,
  layout: 'rows',
  layoutNote: 'weight: int8 [rows, cols] (CB), SCB: f32 [rows] (row absmax); value = CB·SCB/127',
  quantize: quantizeInt8,
  dequantize: wholeTensor(dequantizeInt8Range, validateInt8),
  dequantizeRange: dequantizeInt8Range,
  validate: validateInt8,
  matmul: int8Matmul,
};
