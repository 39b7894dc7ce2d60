/**
 * Products with packed (quantized) weights: the format's own product forward (LLM.int8() for int8,
 * dequantized blocks for the others) and the input gradient dy·W, both from backend/quant, which
 * decode one chunk of one weight row at a time, so no f32 copy of W ever exists. For int8 the
 * gradient uses the dequantized CB, as bitsandbytes does.
 */
import type { QuantMatmulArgs } from '../../tensor/index.js';
import { blockMatmulTransposed, quantMatmul as packedMatmul, type QuantizedTensor } from '../quant/index.js';

export function quantMatmul(a: QuantMatmulArgs): void {
  const w = a.w as QuantizedTensor;
  if (a.transpose) blockMatmulTransposed(a.x, a.m, w, a.out);
  else packedMatmul(a.x, a.m, w, { threshold: a.threshold, out: a.out });
}
