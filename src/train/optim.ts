/**
 * Optimizers over parameter tensors, updating them in place. Their state is plain typed arrays so
 * checkpoints can save and restore it exactly.
 */
import { AdaptkitError, type Tensor } from '../tensor/index.js';

export interface OptimizerState {
  step: number;
  /** Per-parameter buffers (by parameter index), e.g. m and v for AdamW. */
  buffers: Record<string, Float32Array[]>;
}

export interface Optimizer {
  lr: number;
  readonly params: readonly Tensor[];
  /** Apply one update from the parameters' .grad (parameters without a grad are skipped). */
  step(): void;
  zeroGrad(): void;
  state(): OptimizerState;
  loadState(s: OptimizerState): void;
}

function data(t: Tensor): Float32Array {
  if (!t.isContiguous()) throw new AdaptkitError(`parameter ${t.name ?? ''} is not contiguous`);
  return (t.storage.data as Float32Array).subarray(t.offset, t.offset + t.size);
}

abstract class Base implements Optimizer {
  abstract lr: number;
  constructor(readonly params: readonly Tensor[]) {
    if (params.length === 0) throw new AdaptkitError('the optimizer got no trainable parameters');
  }
  abstract step(): void;
  abstract state(): OptimizerState;
  abstract loadState(s: OptimizerState): void;

  zeroGrad(): void {
    for (const p of this.params) {
      if (p.grad) {
        p.grad.dispose();
        p.grad = null;
      }
    }
  }
}

export interface AdamWOptions {
  lr?: number;
  betas?: [number, number];
  eps?: number;
  weightDecay?: number;
}

/** AdamW (Loshchilov & Hutter): Adam with bias correction and decoupled weight decay. */
export class AdamW extends Base {
  lr: number;
  readonly beta1: number;
  readonly beta2: number;
  readonly eps: number;
  readonly weightDecay: number;
  private t = 0;
  private m: Float32Array[];
  private v: Float32Array[];
  /** Steps each parameter has taken: one without a gradient does not step (as in PyTorch). */
  private steps: Float32Array;

  constructor(params: readonly Tensor[], o: AdamWOptions = {}) {
    super(params);
    this.lr = o.lr ?? 1e-3;
    [this.beta1, this.beta2] = o.betas ?? [0.9, 0.999];
    this.eps = o.eps ?? 1e-8;
    this.weightDecay = o.weightDecay ?? 0.01;
    this.m = params.map((p) => new Float32Array(p.size));
    this.v = params.map((p) => new Float32Array(p.size));
    this.steps = new Float32Array(params.length);
  }

  step(): void {
    this.t++;
    const { beta1: b1, beta2: b2, eps, lr, weightDecay: wd } = this;
    this.params.forEach((p, i) => {
      if (!p.grad) return;
      const t = ++this.steps[i]!;
      const stepSize = lr / (1 - b1 ** t);
      const sqrtC2 = Math.sqrt(1 - b2 ** t);
      const w = data(p);
      const g = p.grad.toArray() as Float32Array;
      const m = this.m[i]!;
      const v = this.v[i]!;
      const decay = 1 - lr * wd;
      const mask = p.gradMask;
      for (let j = 0; j < w.length; j++) {
        if (mask && mask[j] === 0) continue;
        const gj = g[j]!;
        m[j] = b1 * m[j]! + (1 - b1) * gj;
        v[j] = b2 * v[j]! + (1 - b2) * gj * gj;
        w[j] = w[j]! * decay - (stepSize * m[j]!) / (Math.sqrt(v[j]!) / sqrtC2 + eps);
      }
    });
  }

  state(): OptimizerState {
    return {
      step: this.t,
      buffers: { m: this.m.map((a) => a.slice()), v: this.v.map((a) => a.slice()), steps: [this.steps.slice()] },
    };
  }

  loadState(s: OptimizerState): void {
    const { m, v } = s.buffers;
    if (!m || !v || m.length !== this.params.length) throw new AdaptkitError('optimizer state does not match the parameters');
    m.forEach((a, i) => {
      if (a.length !== this.params[i]!.size) throw new AdaptkitError(`optimizer state for parameter ${i} has ${a.length} values, expected ${this.params[i]!.size}`);
    });
    this.t = s.step;
    this.m = m.map((a) => a.slice());
    this.v = v!.map((a) => a.slice());
    // a state saved before per-parameter steps were kept: every parameter stepped each time
    const steps = s.buffers.steps?.[0];
    this.steps = steps && steps.length === this.params.length ? steps.slice() : new Float32Array(this.params.length).fill(s.step);
  }
}

export interface SGDOptions {
  lr?: number;
  momentum?: number;
  weightDecay?: number;
  nesterov?: boolean;
}

/** SGD with momentum (PyTorch's formulation) and L2 weight decay. */
export class SGD extends Base {
  lr: number;
  readonly momentum: number;
  readonly weightDecay: number;
  readonly nesterov: boolean;
  private t = 0;
  private buf: Float32Array[];

  constructor(params: readonly Tensor[], o: SGDOptions = {}) {
    super(params);
    this.lr = o.lr ?? 1e-2;
    this.momentum = o.momentum ?? 0;
    this.weightDecay = o.weightDecay ?? 0;
    this.nesterov = o.nesterov ?? false;
    this.buf = params.map((p) => new Float32Array(p.size));
  }

  step(): void {
    this.t++;
    const first = this.t === 1;
    this.params.forEach((p, i) => {
      if (!p.grad) return;
      const w = data(p);
      const g = p.grad.toArray() as Float32Array;
      const b = this.buf[i]!;
      const mask = p.gradMask;
      for (let j = 0; j < w.length; j++) {
        if (mask && mask[j] === 0) continue;
        let d = g[j]! + this.weightDecay * w[j]!;
        if (this.momentum !== 0) {
          b[j] = first ? d : this.momentum * b[j]! + d;
          d = this.nesterov ? d + this.momentum * b[j]! : b[j]!;
        }
        w[j] = w[j]! - this.lr * d;
      }
    });
  }

  state(): OptimizerState {
    return { step: this.t, buffers: { momentum: this.buf.map((a) => a.slice()) } };
  }

  loadState(s: OptimizerState): void {
    const b = s.buffers.momentum;
    if (!b || b.length !== this.params.length) throw new AdaptkitError('optimizer state does not match the parameters');
    this.t = s.step;
    this.buf = b.map((a) => a.slice());
  }
}

/** Zero the gradient entries that parameters' gradMasks exclude (before clipping, so they do not count). */
export function maskGrads(params: readonly Tensor[]): void {
  for (const p of params) {
    if (!p.grad || !p.gradMask) continue;
    if (p.gradMask.length !== p.size) throw new AdaptkitError(`parameter ${p.name ?? ''}: its gradMask has ${p.gradMask.length} entries, the parameter ${p.size}`);
    if (!p.grad.isContiguous()) p.grad = p.grad.contiguous();
    const gd = p.grad.storage.data as Float32Array;
    const off = p.grad.offset;
    for (let i = 0; i < p.size; i++) if (p.gradMask[i] === 0) gd[off + i] = 0;
  }
}

/** Scale all gradients so their global L2 norm is at most maxNorm; returns the norm before clipping. */
export function clipGradNorm(params: readonly Tensor[], maxNorm: number): number {
  let sq = 0;
  for (const p of params) {
    if (!p.grad) continue;
    const g = p.grad.toArray();
    for (let i = 0; i < g.length; i++) sq += g[i]! * g[i]!;
  }
  const norm = Math.sqrt(sq);
  if (maxNorm > 0 && norm > maxNorm) {
    const s = maxNorm / (norm + 1e-6);
    for (const p of params) {
      if (!p.grad) continue;
      const gd = p.grad.storage.data as Float32Array;
      const off = p.grad.offset;
      for (let i = 0; i < p.grad.size; i++) gd[off + i]! *= s;
    }
  }
  return norm;
}
