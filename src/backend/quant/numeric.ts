/**
 * Float32 arithmetic and rounding as the reference quantizers do it, and the checks every format
 * shares. JavaScript computes in f64; one Math.fround after each f32 operation gives the f32
 * result exactly (+, −, ×, ÷ of f32 operands are correctly rounded through f64).
 */
import { AdaptkitError } from '../../tensor/index.js';
import type { QuantizedTensor } from './types.js';

export const f32 = Math.fround;

/** torch.round / nearbyint: ties to even (Math.round sends ties up, which shifts codes by one). */
export function roundHalfEven(x: number): number {
  const r = Math.round(x);
  return r - x === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/** C roundf: ties away from zero (ggml's Q8_0 reference quantizer). */
export function roundHalfAway(x: number): number {
  return x < 0 ? -Math.floor(-x + 0.5) : Math.floor(x + 0.5);
}

export function fail(name: string | undefined, field: string, message: string): never {
  throw new AdaptkitError(`${name ?? 'quantized tensor'}: ${field}: ${message}`);
}

/** Element count of a shape, each dimension a non-negative integer. */
export function checkedNumel(name: string | undefined, shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) {
    if (!Number.isInteger(d) || d < 0) fail(name, 'shape', `invalid dimension ${d} in [${shape.join(', ')}]`);
    n *= d;
  }
  return n;
}

export function checkData(name: string | undefined, data: Float32Array, shape: readonly number[]): number {
  const n = checkedNumel(name, shape);
  if (data.length !== n) fail(name, 'data', `has ${data.length} values, shape [${shape.join(', ')}] needs ${n}`);
  return n;
}

export function checkLength(name: string | undefined, field: string, got: number, want: number, why: string): void {
  if (got !== want) fail(name, field, `has ${got} entries, ${why} needs ${want}`);
}

/** Row length of a tensor quantized in row-aligned blocks (GGUF ne[0]). */
export function rowLength(name: string | undefined, shape: readonly number[], block: number, format: string): number {
  if (shape.length === 0) fail(name, 'shape', `${format} needs at least one dimension`);
  const k = shape[shape.length - 1]!;
  if (k % block !== 0) fail(name, 'shape', `last dimension ${k} is not a multiple of the ${format} block size ${block}`);
  return k;
}

/** A whole-tensor dequantize from a range reader, after the tensor's checks. */
export function wholeTensor<Q extends QuantizedTensor>(range: (q: Q, s: number, c: number, o: Float32Array) => void, validate: (q: Q) => void) {
  return (q: Q): Float32Array => {
    validate(q);
    const out = new Float32Array(checkedNumel(q.name, q.shape));
    range(q, 0, out.length, out);
    return out;
  };
}
