/**
 * Input covariance of target layers over calibration batches (what CorDA decomposes W·C with).
 * Each targeted linear layer is wrapped, for the duration of the calibration forwards, by a
 * recorder that accumulates XᵀX over every input row.
 */
import { AdaptkitError, type Tensor, noGrad, tidy } from '../tensor/index.js';
import { Linear, Module } from '../nn/index.js';
import { findTargets } from './targets.js';
import type { BaseAdapterConfig, LayerDelta } from './types.js';
import { AdaptedLayer } from './wrapper.js';

class CovarianceRecorder extends Module implements LayerDelta {
  readonly adapterName = '*calibration*';
  rows = 0;
  constructor(readonly sum: Float64Array, readonly dim: number) {
    super();
  }

  apply(x: Tensor, y: Tensor): Tensor {
    const d = this.dim;
    const a = x.toArray();
    const n = a.length / d;
    for (let r = 0; r < n; r++) {
      const o = r * d;
      for (let i = 0; i < d; i++) {
        const xi = a[o + i]!;
        if (xi === 0) continue;
        for (let j = 0; j < d; j++) this.sum[i * d + j]! += xi * a[o + j]!;
      }
    }
    this.rows += n;
    return y;
  }
}

/**
 * Run `forward` on each calibration batch and return, per targeted layer path, the covariance
 * C = XᵀX / rows (plus `damp`·mean(diag)·I so that C is invertible).
 */
export function collectCovariance(
  model: Module, target: Pick<BaseAdapterConfig, 'target_modules' | 'exclude_modules' | 'layers_to_transform' | 'layers_pattern' | 'peft_type'>,
  batches: readonly Tensor[], forward: (ids: Tensor) => unknown, damp = 1e-4,
): Map<string, Float64Array> {
  if (batches.length === 0) throw new AdaptkitError('collectCovariance: give at least one calibration batch');
  const targets = findTargets(model, { ...target, modules_to_save: null, task_type: null, base_model_name_or_path: null, revision: null, inference_mode: false, raw: {} } as BaseAdapterConfig, null);
  const recorders = new Map<string, CovarianceRecorder>();
  const originals = new Map<string, Module>();
  for (const t of targets) {
    if (!(t.module instanceof Linear)) throw new AdaptkitError(`"${t.path}" is not a linear layer`);
    const d = t.module.inFeatures;
    const rec = new CovarianceRecorder(new Float64Array(d * d), d);
    recorders.set(t.path, rec);
    originals.set(t.path, model.get(t.path));
    model.replace(t.path, new AdaptedLayer(model.get(t.path) as Linear, [rec]));
  }
  try {
    for (const b of batches) tidy(() => noGrad(() => void forward(b)));
  } finally {
    for (const [p, m] of originals) model.replace(p, m);
  }
  const out = new Map<string, Float64Array>();
  for (const [p, rec] of recorders) {
    const d = rec.dim;
    const c = rec.sum.map((v) => v / Math.max(rec.rows, 1));
    let tr = 0;
    for (let i = 0; i < d; i++) tr += c[i * d + i]!;
    for (let i = 0; i < d; i++) c[i * d + i]! += damp * (tr / d || 1);
    out.set(p, c);
  }
  return out;
}
