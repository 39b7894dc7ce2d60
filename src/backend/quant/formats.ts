/**
 * The table of quantized weight formats: each entry quantizes, dequantizes (whole or a range of
 * the flattened tensor, block by block) and checks a packed tensor of its kind. Everything else
 * finds a format here by name, never by a switch of its own.
 */
import { AdaptkitError } from '../../tensor/index.js';
import type { QuantFormat, QuantFormatName, QuantizedTensor, QuantizeOptions } from './types.js';
import { FP4_FORMAT, NF4_FORMAT } from './bnb.js';
import { INT8_FORMAT } from './int8.js';
import { Q4_0_FORMAT, Q4_K_FORMAT, Q6_K_FORMAT, Q8_0_FORMAT } from './ggml.js';
import { BF16_FORMAT, F16_FORMAT } from './half.js';

/** The packed structure whose `format` admits K (nf4 and fp4 share one). */
type TensorOf<K extends QuantFormatName, T = QuantizedTensor> = T extends QuantizedTensor ? (K extends T['format'] ? T : never) : never;
type FormatTable = { readonly [K in QuantFormatName]: QuantFormat<TensorOf<K>> };

export const QUANT_FORMATS: FormatTable = {
  int8: INT8_FORMAT,
  nf4: NF4_FORMAT,
  fp4: FP4_FORMAT,
  q8_0: Q8_0_FORMAT,
  q4_0: Q4_0_FORMAT,
  q4_K: Q4_K_FORMAT,
  q6_K: Q6_K_FORMAT,
  bf16: BF16_FORMAT,
  f16: F16_FORMAT,
};

export const QUANT_FORMAT_NAMES = Object.keys(QUANT_FORMATS) as QuantFormatName[];

/** A format by name (e.g. from `--quantize`); unknown names are an error listing the known ones. */
export function quantFormat(name: string): QuantFormat {
  if (!Object.prototype.hasOwnProperty.call(QUANT_FORMATS, name)) {
    throw new AdaptkitError(`unknown quantized format "${name}" (known: ${QUANT_FORMAT_NAMES.join(', ')})`);
  }
  return QUANT_FORMATS[name as QuantFormatName] as unknown as QuantFormat;
}

/** The GGUF tensor type ids this table reads (GGML_TYPE_*), for a GGUF loader. */
export function ggmlTypeFormat(type: number): QuantFormat | undefined {
  return QUANT_FORMAT_NAMES.map((n) => quantFormat(n)).find((f) => f.ggmlType === type);
}

export function quantize(format: string, data: Float32Array, shape: readonly number[], opts?: QuantizeOptions): QuantizedTensor {
  return quantFormat(format).quantize(data, shape, opts);
}

export function formatOf(q: QuantizedTensor): QuantFormat {
  return quantFormat(q.format);
}

export function dequantize(q: QuantizedTensor): Float32Array {
  return formatOf(q).dequantize(q);
}

export function validateQuantized(q: QuantizedTensor): void {
  formatOf(q).validate(q);
}
