/**
 * Products with a quantized weight W [rows, cols] on its packed form: y [m, rows] = x [m, cols]·Wᵀ.
 * A weight row is dequantized one chunk (at most CHUNK values, block-aligned) at a time into a
 * scratch buffer reused for every row, and each chunk is used for all m activation rows before
 * the next is decoded, so no f32 copy of W ever exists. Within a chunk the dot product runs in
 * f64; chunks accumulate into the f32 output, as the js GEMM accumulates its k blocks.
 */
import type { QuantFormat, QuantMatmulOptions, QuantizedTensor } from './types.js';
import { checkLength, fail } from './numeric.js';
import { formatOf } from './formats.js';

/** A multiple of every row-aligned block size (32, 256), so chunks start on block boundaries. */
const CHUNK = 256;

function dims(w: QuantizedTensor, x: Float32Array, m: number): [number, number] {
  if (w.shape.length !== 2) fail(w.name, 'shape', `a matmul weight is [rows, cols], got [${w.shape.join(', ')}]`);
  const [n, k] = w.shape as [number, number];
  if (!Number.isInteger(m) || m < 0 || x.length !== m * k) fail(w.name, 'x', `has ${x.length} values, [${m}, ${k}] needed for the weight [${n}, ${k}]`);
  return [n, k];
}

/** Each chunk of each row of W [n, k], decoded in turn into one reused buffer (never all of W). */
function eachChunk(format: QuantFormat, w: QuantizedTensor, n: number, k: number, use: (row: number, col: number, len: number, chunk: Float32Array) => void): void {
  const chunk = new Float32Array(Math.min(CHUNK, k));
  for (let r = 0; r < n; r++) {
    for (let c0 = 0; c0 < k; c0 += CHUNK) {
      const len = Math.min(CHUNK, k - c0);
      format.dequantizeRange(w, r * k + c0, len, chunk);
      use(r, c0, len, chunk);
    }
  }
}

/** Weight-only product: f32 activations against dequantized blocks (any format, int8 included). */
export function blockMatmul(x: Float32Array, m: number, w: QuantizedTensor, opts: QuantMatmulOptions = {}): Float32Array {
  const format = formatOf(w) as QuantFormat;
  format.validate(w);
  const [n, k] = dims(w, x, m);
  const y = opts.out ?? new Float32Array(m * n);
  checkLength(w.name, 'out', y.length, m * n, `[${m}, ${n}]`);
  y.fill(0);
  eachChunk(format, w, n, k, (r, c0, len, chunk) => {
    for (let i = 0; i < m; i++) {
      const xo = i * k + c0;
      let s = 0;
      for (let t = 0; t < len; t++) s += x[xo + t]! * chunk[t]!;
      y[i * n + r]! += s;
    }
  });
  return y;
}

/**
 * y [m, k] = dy [m, n] · W for W [n, k] (the input gradient through a frozen packed weight),
 * decoding one chunk of one weight row at a time for every activation row; f32 accumulation.
 */
export function blockMatmulTransposed(dy: Float32Array, m: number, w: QuantizedTensor, out: Float32Array): Float32Array {
  const format = formatOf(w) as QuantFormat;
  format.validate(w);
  if (w.shape.length !== 2) fail(w.name, 'shape', `a matmul weight is [rows, cols], got [${w.shape.join(', ')}]`);
  const [n, k] = w.shape as [number, number];
  if (!Number.isInteger(m) || m < 0 || dy.length !== m * n) fail(w.name, 'x', `the gradient has ${dy.length} values, [${m}, ${n}] needed`);
  checkLength(w.name, 'out', out.length, m * k, `[${m}, ${k}]`);
  out.fill(0);
  eachChunk(format, w, n, k, (r, c0, len, chunk) => {
    for (let i = 0; i < m; i++) {
      const g = dy[i * n + r]!;
      if (g === 0) continue;
      const o = i * k + c0;
      for (let t = 0; t < len; t++) out[o + t]! += g * chunk[t]!;
    }
  });
  return out;
}

/** The format's own product where it has one (int8: LLM.int8() with outlier decomposition), else blockMatmul. */
export function quantMatmul(x: Float32Array, m: number, w: QuantizedTensor, opts: QuantMatmulOptions = {}): Float32Array {
  const format = formatOf(w) as QuantFormat;
  return format.matmul ? format.matmul(x, m, w, opts) : blockMatmul(x, m, w, opts);
}
