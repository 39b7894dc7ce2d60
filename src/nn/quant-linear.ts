/**
 * A linear layer whose weight stays in its packed quantized form (LLM.int8(), NF4/FP4, GGUF
 * blocks, bf16/f16): y = x·Wᵀ + b runs on the packed form through the quantLinear primitive.
 * The weight is not a Tensor, so it is not a parameter: it can never get a gradient, optimizer
 * state or a weight-gradient GEMM (frozen means free), while gradients flow through it to x.
 */
import { AdaptkitError, type Tensor, fromBuffer, noGrad, quantLinear, shapeStr, transpose } from '../tensor/index.js';
import {
  LLM_INT8_THRESHOLD, blockMatmul, dequantize, formatOf, quantize, validateQuantized, type QuantizedTensor, type QuantizeOptions,
} from '../backend/quant/index.js';
import { Module } from './module.js';
import { Linear } from './layers.js';

/** Bytes of every typed array a packed tensor holds (codes, scales, maps, nested scales). */
export function packedBytes(q: QuantizedTensor): number {
  let n = 0;
  const visit = (v: unknown, depth: number): void => {
    if (ArrayBuffer.isView(v)) n += v.byteLength;
    else if (depth < 2 && v && typeof v === 'object' && !Array.isArray(v)) for (const x of Object.values(v)) visit(x, depth + 1);
  };
  visit(q, 0);
  return n;
}

/** The options that quantize a weight the way `q` was quantized (block size, double quantization, dtype). */
export function quantizeOptionsOf(q: QuantizedTensor): QuantizeOptions {
  const b = q as { blocksize?: number; nested?: unknown; dtype?: string };
  return b.blocksize === undefined ? {} : { blocksize: b.blocksize, doubleQuant: b.nested !== undefined, dtype: b.dtype };
}

/** Values of a weight row decoded at once when a row is read blockwise. */
const ROW_CHUNK = 256;

export class QuantLinear extends Module {
  readonly weight: QuantizedTensor;
  bias: Tensor | null;
  /**
   * LLM.int8() outlier threshold, used by int8 weights only: a feature column holding some
   * |x| ≥ threshold is multiplied in float; 0 multiplies every column in int8.
   */
  threshold = LLM_INT8_THRESHOLD;
  /** The packed weight is [out, in] whatever the layout of the float layer it replaced. */
  readonly fanInFanOut = false;
  #rowNorms: Float64Array | null = null;

  constructor(weight: QuantizedTensor, bias: Tensor | null = null) {
    super();
    const where = weight.name ?? 'QuantLinear';
    if (weight.shape.length !== 2) throw new AdaptkitError(`${where}: a quantized linear weight is [out, in], got [${weight.shape.join(', ')}]`);
    validateQuantized(weight);
    if (bias && (bias.ndim !== 1 || bias.shape[0] !== weight.shape[0])) {
      throw new AdaptkitError(`${where}: bias ${shapeStr(bias.shape)} does not match ${weight.shape[0]} outputs`);
    }
    this.weight = weight;
    this.bias = bias;
  }

  /** A float weight [out, in] quantized into `format` (every name in backend/quant's table). */
  static quantize(weight: Tensor, bias: Tensor | null, format: string, opts: QuantizeOptions = {}): QuantLinear {
    if (weight.ndim !== 2) throw new AdaptkitError(`${opts.name ?? weight.name ?? 'weight'}: a linear weight is [out, in], got ${shapeStr(weight.shape)}`);
    const data = noGrad(() => weight.toArray()) as Float32Array;
    return new QuantLinear(quantize(format, data, weight.shape, { ...opts, name: opts.name ?? weight.name }), bias);
  }

  /** The float layer's weight and bias quantized, its [in, out] (Conv1D) layout turned into [out, in]. */
  static fromLinear(layer: Linear, format: string, opts: QuantizeOptions = {}): QuantLinear {
    const w = layer.fanInFanOut ? noGrad(() => transpose(layer.weight)) : layer.weight;
    return QuantLinear.quantize(w, layer.bias, format, { ...opts, name: opts.name ?? layer.weight.name });
  }

  get format(): string {
    return this.weight.format;
  }

  get inFeatures(): number {
    return this.weight.shape[1]!;
  }

  get outFeatures(): number {
    return this.weight.shape[0]!;
  }

  private opts(): { threshold: number } {
    return { threshold: this.weight.format === 'int8' ? this.threshold : 0 };
  }

  forward(x: Tensor): Tensor {
    return quantLinear(x, this.weight, this.bias, this.opts());
  }

  /** x·Wᵀ without the bias. */
  product(x: Tensor): Tensor {
    return quantLinear(x, this.weight, null, this.opts());
  }

  /** W [out, in] as a fresh f32 tensor (merging, export, SVD initializations): the one place a float copy is made. */
  dequantizedWeight(): Tensor {
    return fromBuffer(dequantize(this.weight), [...this.weight.shape]);
  }

  /** ||W_o||² of every output row, decoded row chunk by row chunk (computed once: the weight never changes). */
  rowSquaredNorms(): Float64Array {
    if (this.#rowNorms) return this.#rowNorms;
    const format = formatOf(this.weight);
    const [n, k] = this.weight.shape as [number, number];
    const out = new Float64Array(n);
    const chunk = new Float32Array(Math.min(ROW_CHUNK, k));
    for (let r = 0; r < n; r++) {
      let s = 0;
      for (let c0 = 0; c0 < k; c0 += ROW_CHUNK) {
        const len = Math.min(ROW_CHUNK, k - c0);
        format.dequantizeRange(this.weight, r * k + c0, len, chunk);
        for (let t = 0; t < len; t++) s += chunk[t]! * chunk[t]!;
      }
      out[r] = s;
    }
    this.#rowNorms = out;
    return out;
  }

  /**
   * Row norms ||W_o + scale·(B·A)_o|| for a low-rank update B [out, r] · A [r, in] (DoRA's weight
   * norm), without a float copy of W or of B·A: ||W_o||² + 2·scale·Σ_j B[o,j]·(A·Wᵀ)[j,o] +
   * scale²·B_o (A·Aᵀ) B_oᵀ, with A·Wᵀ taken on the dequantized blocks.
   */
  lowRankRowNorms(b: Float32Array, a: Float32Array, r: number, scale: number): Float32Array {
    const [n, k] = this.weight.shape as [number, number];
    if (a.length !== r * k || b.length !== n * r) throw new AdaptkitError(`${this.weight.name ?? 'QuantLinear'}: a low-rank update of [${n}, ${k}] needs B [${n}, ${r}] and A [${r}, ${k}]`);
    const p = blockMatmul(a, r, this.weight);
    const gram = new Float64Array(r * r);
    for (let j = 0; j < r; j++) {
      for (let l = j; l < r; l++) {
        let s = 0;
        for (let i = 0; i < k; i++) s += a[j * k + i]! * a[l * k + i]!;
        gram[j * r + l] = s;
        gram[l * r + j] = s;
      }
    }
    const w2 = this.rowSquaredNorms();
    const out = new Float32Array(n);
    for (let o = 0; o < n; o++) {
      let cross = 0;
      let quad = 0;
      for (let j = 0; j < r; j++) {
        const bj = b[o * r + j]!;
        cross += bj * p[j * n + o]!;
        for (let l = 0; l < r; l++) quad += bj * gram[j * r + l]! * b[o * r + l]!;
      }
      out[o] = Math.sqrt(Math.max(0, w2[o]! + 2 * scale * cross + scale * scale * quad));
    }
    return out;
  }

  /** Memory the layer holds: the packed weight and the f32 bias. */
  bytes(): number {
    return packedBytes(this.weight) + (this.bias ? this.bias.size * 4 : 0);
  }

  /**
   * A layer of the same format and options holding `weight` [out, in] (a merged weight), with the
   * largest change requantization makes to any of its values.
   */
  requantize(weight: Tensor, bias: Tensor | null = this.bias): { layer: QuantLinear; maxAbsError: number } {
    const layer = QuantLinear.quantize(weight, bias, this.weight.format, { ...quantizeOptionsOf(this.weight), name: this.weight.name });
    layer.threshold = this.threshold;
    const want = noGrad(() => weight.toArray()) as Float32Array;
    const got = dequantize(layer.weight);
    let maxAbsError = 0;
    for (let i = 0; i < want.length; i++) maxAbsError = Math.max(maxAbsError, Math.abs(got[i]! - want[i]!));
    return { layer, maxAbsError };
  }
}

/** A float or a quantized linear layer: what adapter methods on linear layers accept. */
export type LinearLayer = Linear | QuantLinear;

export function isLinearLayer(m: unknown): m is LinearLayer {
  return m instanceof Linear || m instanceof QuantLinear;
}

/** A linear layer's weight as [out, in] f32: a view of a float weight, a dequantized copy of a packed one. */
export function weightOutIn(layer: LinearLayer): Tensor {
  if (layer instanceof QuantLinear) return layer.dequantizedWeight();
  return layer.fanInFanOut ? transpose(layer.weight) : layer.weight;
}

/** x·Wᵀ without the bias, on the packed form for a quantized layer. */
export function productNoBias(layer: LinearLayer, x: Tensor): Tensor {
  if (layer instanceof QuantLinear) return layer.product(x);
  return new Linear(layer.weight, null, layer.fanInFanOut).forward(x);
}
