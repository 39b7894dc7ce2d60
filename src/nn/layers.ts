import {
  AdaptkitError, type Rng, type Tensor, embedding, layerNorm, linear, parameter, rand, rmsNorm, transpose,
  shapeStr, zeros, ones,
} from '../tensor/index.js';
import { Module } from './module.js';

/** Anything that maps x [..., in] to [..., out]: a Linear, or a Linear wrapped by adapters. */
export type LinearLike = Module & { forward(x: Tensor): Tensor };

/**
 * y = x·Wᵀ + b with W [out, in]. With `fanInFanOut` the weight is stored [in, out] (GPT-2's Conv1D)
 * and y = x·W + b.
 */
export class Linear extends Module {
  weight: Tensor;
  bias: Tensor | null;
  readonly fanInFanOut: boolean;

  constructor(weight: Tensor, bias: Tensor | null = null, fanInFanOut = false) {
    super();
    if (weight.ndim !== 2) throw new AdaptkitError(`Linear: weight must be 2-D, got ${shapeStr(weight.shape)}`);
    const outF = fanInFanOut ? weight.shape[1]! : weight.shape[0]!;
    if (bias && (bias.ndim !== 1 || bias.shape[0] !== outF)) {
      throw new AdaptkitError(`Linear: bias ${shapeStr(bias.shape)} does not match ${outF} outputs`);
    }
    this.weight = weight;
    this.bias = bias;
    this.fanInFanOut = fanInFanOut;
  }

  /** A new layer with PyTorch's default init (uniform ±1/sqrt(in)). */
  static init(inFeatures: number, outFeatures: number, opts: { bias?: boolean; rng?: Rng } = {}): Linear {
    const bound = 1 / Math.sqrt(inFeatures);
    const w = parameter(rand([outFeatures, inFeatures], { low: -bound, high: bound, rng: opts.rng }));
    const b = opts.bias === false ? null : parameter(rand([outFeatures], { low: -bound, high: bound, rng: opts.rng }));
    return new Linear(w, b);
  }

  get inFeatures(): number {
    return this.fanInFanOut ? this.weight.shape[0]! : this.weight.shape[1]!;
  }

  get outFeatures(): number {
    return this.fanInFanOut ? this.weight.shape[1]! : this.weight.shape[0]!;
  }

  forward(x: Tensor): Tensor {
    return linear(x, this.fanInFanOut ? transpose(this.weight) : this.weight, this.bias);
  }
}

/** An embedding lookup; `start` is the absolute position of the first id (hooks may use it). */
export type EmbeddingLike = Module & { forward(ids: Tensor, start?: number): Tensor };

export class Embedding extends Module {
  constructor(public weight: Tensor) {
    super();
  }

  get numEmbeddings(): number {
    return this.weight.shape[0]!;
  }

  forward(ids: Tensor): Tensor {
    return embedding(this.weight, ids);
  }
}

export class RMSNorm extends Module {
  constructor(public weight: Tensor, public eps = 1e-6) {
    super();
  }

  static init(dim: number, eps = 1e-6): RMSNorm {
    return new RMSNorm(parameter(ones([dim])), eps);
  }

  forward(x: Tensor): Tensor {
    return rmsNorm(x, this.weight, this.eps);
  }
}

export class LayerNorm extends Module {
  constructor(public weight: Tensor, public bias: Tensor, public eps = 1e-5) {
    super();
  }

  static init(dim: number, eps = 1e-5): LayerNorm {
    return new LayerNorm(parameter(ones([dim])), parameter(zeros([dim])), eps);
  }

  forward(x: Tensor): Tensor {
    return layerNorm(x, this.weight, this.bias, this.eps);
  }
}
