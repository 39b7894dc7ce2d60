/**
 * Products with packed (quantized) weights: the format's own product forward (LLM.int8() for int8,
 * dequantized blocks for the others, from backend/quant), and the input gradient dy·W, which
 * decodes one chunk of one weight row at a time and uses it for every activation row, so no f32
 * copy of W ever exists. For int8 the gradient uses the dequantized CB, as bitsandbytes does.
 */
import { AdaptkitError, type QuantMatmulArgs } from '../../tensor/index.js';
import { formatOf, quantMatmul as packedMatmul, type QuantizedTensor } from '../quant/index.js';

/** Values of a weight row decoded at once: a multiple of every row-aligned block size (32, 256). */
const CHUNK = 256;

function check(ok: boolean, w: QuantizedTensor, msg: string): void {
  if (!ok) throw new AdaptkitError(`quantMatmul: ${w.name ?? 'packed weight'}: ${msg}`);
}

/** y [m, k] = x [m, n] · W for W [n, k], accumulated in f32. */
function matmulTransposed(x: Float32Array, m: number, w: QuantizedTensor, out: Float32Array): void {
  const format = formatOf(w);
  format.validate(w);
  check(w.shape.length === 2, w, `a matmul weight is [rows, cols], got [${w.shape.join(', ')}]`);
  const [n, k] = w.shape as [number, number];
  check(Number.isInteger(m) && m >= 0 && x.length === m * n, w, `the gradient has ${x.length} values, [${m}, ${n}] needed`);
  check(out.length === m * k, w, `out has ${out.length} values, [${m}, ${k}] needed`);
  out.fill(0);
  const chunk = new Float32Array(Math.min(CHUNK, k));
  for (let r = 0; r < n; r++) {
    for (let c0 = 0; c0 < k; c0 += CHUNK) {
      const len = Math.min(CHUNK, k - c0);
      format.dequantizeRange(w, r * k + c0, len, chunk);
      for (let i = 0; i < m; i++) {
        const g = x[i * n + r]!;
        if (g === 0) continue;
        const o = i * k + c0;
        for (let t = 0; t < len; t++) out[o + t]! += g * chunk[t]!;
      }
    }
  }
}

export function quantMatmul(a: QuantMatmulArgs): void {
  const w = a.w as QuantizedTensor;
  if (a.transpose) matmulTransposed(a.x, a.m, w, a.out);
  else packedMatmul(a.x, a.m, w, { threshold: a.threshold, out: a.out });
}
