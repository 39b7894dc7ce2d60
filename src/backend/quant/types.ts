/**
 * Quantized weights in the packed forms their files store: bitsandbytes state-dict tensors and
 * GGUF tensor data bytes. Every structure carries its logical row-major shape (a GGUF tensor's
 * ne[] reversed) and, for messages, the tensor's name.
 */

/** LLM.int8() weight (bitsandbytes Linear8bitLt): `weight` holds CB, `SCB` the row absmax. */
export interface Int8RowwiseTensor {
  readonly format: 'int8';
  readonly name?: string;
  /** [rows, cols] */
  readonly shape: readonly number[];
  /** CB = round(W·127/SCB) per row, row-major. */
  readonly weight: Int8Array;
  /** SCB: absmax of each row. */
  readonly scb: Float32Array;
}

/** Second-level state of a double-quantized 4-bit tensor (`compress_statistics`). */
export interface NestedAbsmax {
  /** Absmax of each block of `blocksize` centred first-level absmax values (`weight.nested_absmax`). */
  readonly absmax: Float32Array;
  /** The 8-bit dynamic map (`weight.nested_quant_map`, 256 values). */
  readonly quantMap: Float32Array;
  readonly blocksize: number;
  readonly dtype: string;
  /** mean of the first-level absmax, subtracted before their quantization (`nested_offset`). */
  readonly offset: number;
}

/** bitsandbytes Params4bit: blocks over the flattened row-major tensor. */
export interface Bnb4bitTensor {
  readonly format: 'nf4' | 'fp4';
  readonly name?: string;
  readonly shape: readonly number[];
  readonly blocksize: number;
  /** dtype of the weight before quantization, as the quant_state records it. */
  readonly dtype: string;
  /** `weight`: two 4-bit codes per byte, the even index in the high nibble; ceil(n/2) bytes. */
  readonly weight: Uint8Array;
  /** `weight.absmax`: f32 per block, or 8-bit codes of (absmax − offset) when `nested` is set. */
  readonly absmax: Float32Array | Uint8Array;
  /** `weight.quant_map`: the 16 levels a code stands for. */
  readonly quantMap: Float32Array;
  readonly nested?: NestedAbsmax;
}

export type GgmlFormatName = 'q8_0' | 'q4_0' | 'q4_K' | 'q6_K';

/** GGUF block-quantized tensor data, byte for byte as it lies in the file. */
export interface GgmlTensor {
  readonly format: GgmlFormatName;
  readonly name?: string;
  /** Row-major; the last dimension (GGUF ne[0]) is a multiple of the block size. */
  readonly shape: readonly number[];
  readonly data: Uint8Array;
}

/** 16-bit float storage: the raw bit patterns. */
export interface HalfTensor {
  readonly format: 'bf16' | 'f16';
  readonly name?: string;
  readonly shape: readonly number[];
  readonly data: Uint16Array;
}

export type QuantizedTensor = Int8RowwiseTensor | Bnb4bitTensor | GgmlTensor | HalfTensor;
export type QuantFormatName = QuantizedTensor['format'];

export interface QuantizeOptions {
  /** Tensor name for error messages; kept on the result. */
  name?: string;
  /** nf4/fp4 only: values per absmax block (bitsandbytes: 32 … 4096, default 64). */
  blocksize?: number;
  /** nf4/fp4 only: quantize the absmax values too (bnb_4bit_use_double_quant). */
  doubleQuant?: boolean;
  /** nf4/fp4 only: the dtype recorded in the quant_state (default "float32"). */
  dtype?: string;
}

/** One entry of the format table. */
export interface QuantFormat<Q extends QuantizedTensor = QuantizedTensor> {
  readonly name: Q['format'];
  readonly family: 'bitsandbytes' | 'ggml' | 'half';
  /** Values per block; int8 scales whole rows, so its block is one row (0 here). */
  readonly blockSize: number;
  /** Bytes of the main data array per block (int8: per value). */
  readonly bytesPerBlock: number;
  /** 'rows': blocks never cross a row (the last dimension must divide); 'flat': blocks run over the flattened tensor. */
  readonly layout: 'rows' | 'flat';
  /** GGUF tensor type id, where the format is one. */
  readonly ggmlType?: number;
  /** How the bytes are read, in one line. */
  readonly layoutNote: string;
  quantize(data: Float32Array, shape: readonly number[], opts?: QuantizeOptions): Q;
  dequantize(q: Q): Float32Array;
  /** Values [start, start + count) of the flattened tensor into out[0, count). */
  dequantizeRange(q: Q, start: number, count: number, out: Float32Array): void;
  /** Throws an AdaptkitError naming the tensor and the field when sizes disagree. */
  validate(q: Q): void;
  /** A product of the format's own (LLM.int8()); formats without one multiply dequantized blocks. */
  matmul?(x: Float32Array, m: number, q: Q, opts?: QuantMatmulOptions): Float32Array;
}

export interface QuantMatmulOptions {
  /** int8: |x| ≥ threshold marks an outlier feature column, multiplied in float; 0 disables (default 6). */
  threshold?: number;
  /** Where to write y [m, rows]; its length must match. */
  out?: Float32Array;
}
