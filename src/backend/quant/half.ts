/** bf16 / f16 storage: the 16-bit patterns, rounded to nearest even on the way down. */
import { bf16ToF32, f16ToF32, f32ToBf16, f32ToF16 } from '../../tensor/half.js';
import type { HalfTensor, QuantFormat, QuantizeOptions } from './types.js';
import { checkData, checkLength, checkedNumel, fail } from './numeric.js';

function halfFormat(name: 'bf16' | 'f16', toBits: (x: number) => number, fromBits: (h: number) => number, ggmlType: number): QuantFormat<HalfTensor> {
  const validate = (q: HalfTensor): void => {
    checkLength(q.name, 'data', q.data.length, checkedNumel(q.name, q.shape), `shape [${q.shape.join(', ')}]`);
  };
  const dequantizeRange = (q: HalfTensor, start: number, count: number, out: Float32Array): void => {
    for (let t = 0; t < count; t++) out[t] = fromBits(q.data[start + t]!);
  };
  return {
    name,
    family: 'half',
    blockSize: 1,
    bytesPerBlock: 2,
    layout: 'rows',
    ggmlType,
    layoutNote: name === 'bf16' ? 'little-endian bfloat16: the upper 16 bits of an f32' : 'little-endian IEEE binary16',
    quantize(data: Float32Array, shape: readonly number[], opts: QuantizeOptions = {}): HalfTensor {
      if (opts.blocksize !== undefined || opts.doubleQuant !== undefined) fail(opts.name, 'options', `${name} has no blocks (blocksize and doubleQuant apply to nf4/fp4)`);
      checkData(opts.name, data, shape);
      const out = new Uint16Array(data.length);
      for (let i = 0; i < data.length; i++) out[i] = toBits(data[i]!);
      return { format: name, shape: [...shape], data: out, ...(opts.name === undefined ? {} : { name: opts.name }) };
    },
    dequantize(q: HalfTensor): Float32Array {
      validate(q);
      const out = new Float32Array(q.data.length);
      dequantizeRange(q, 0, out.length, out);
      return out;
    },
    dequantizeRange,
    validate,
  };
}

export const BF16_FORMAT = halfFormat('bf16', f32ToBf16, bf16ToF32, 30);
export const F16_FORMAT = halfFormat('f16', f32ToF16, f16ToF32, 1);
