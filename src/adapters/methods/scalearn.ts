/**
 * ScaLearn ("Simple and Highly Parameter-Efficient Task Transfer by Learning to Scale"): a target
 * task learns to scale the outputs of frozen single-task source adapters (the target's own
 * included). At each location the sources share, h = Σ_i ω_i ⊙ u_i + y, where u_i is source i's
 * up-projection output without its residual (source-adapters.ts) and y the layer's output; the
 * residual is added once, after the sum, and ω is not normalized.
 *
 * Variants (presets): `scalearn` ω ∈ R^{N×d} per layer (L·N·d parameters), `scalearn-uniform`
 * ω ∈ R^{N×1} per layer (L·N), `scalearn-plus` one N×d ω shared by every layer (N·d),
 * `scalearn-uniform-plus` one N×1 ω (N numbers in all).
 * Config (peft_type "SCALEARN"; neither PEFT nor AdapterHub has ScaLearn), beside the source
 * fields of source-adapters.ts:
 *   omega_shape       "vector" (default, one scale per source and feature) or "scalar" (one per source);
 *   shared_omega      false (default): one ω per layer; true: the "++" variants;
 *   omega_init_scale  2.0: ω starts at N(scale/N, 0.001²), the authors' "avg" initialization;
 *   dropout_ratio     0.3: dropout on ω itself (not on activations), inside training only; a
 *                     shared ω gets a fresh mask at every layer;
 *   residual          true: add y after the sum (false: h = Σ_i ω_i ⊙ u_i).
 * Keys: base_model.model.<path>.scalearn_omega [N, d | 1] per layer, or base_model.model.scalearn_omega
 * once when shared, beside the frozen sources' keys.
 * Inference: ω folds into each source's up-projection, so the adapter is exactly one bottleneck
 * adapter whose bottleneck stacks the sources' (the `exports` capability writes it as BOTTLENECK;
 * this needs one non-linearity and no source layer norm).
 */
import { AdaptkitError, type Tensor, add, dropout, fromBuffer, isTraining, mul, narrow, noGrad, parameter, randn, reshape } from '../../tensor/index.js';
import { Module } from '../../nn/index.js';
import { AdapterConfigError, baseJson, optBool, optNumber, optString } from '../config.js';
import { registerMethod } from '../registry.js';
import { loadInto } from '../state.js';
import { PEFT_MODEL_PREFIX, deltaStateDict, peftKey } from '../files.js';
import { type BottleneckDelta, placementTargets, targetWidth } from './bottleneck.js';
import { SOURCE_ADAPTERS, type SourceSet, type SourcesConfig, commonWidth, createSources, parseSources, sourcesOption, upOutput } from './source-adapters.js';
import type { AdapterInstance, AdapterMethod, LayerDelta, MethodPreset, RawAdapterConfig, TargetInfo } from '../types.js';
import type { AdapterModel } from '../adapter-model.js';

export interface ScaLearnConfig extends SourcesConfig {
  omega_shape: 'vector' | 'scalar';
  shared_omega: boolean;
  omega_init_scale: number;
  dropout_ratio: number;
  residual: boolean;
}

export const SHARED_OMEGA_KEY = `${PEFT_MODEL_PREFIX}scalearn_omega`;

export function parseScaLearn(raw: RawAdapterConfig, source: string): ScaLearnConfig {
  const c = parseSources(raw, source, 'SCALEARN');
  const p = optNumber(raw, 'dropout_ratio', 0.3, source, 0);
  if (p >= 1) throw new AdapterConfigError(`${source}: "dropout_ratio" must be below 1, got ${p}`);
  return {
    ...c,
    omega_shape: optString(raw, 'omega_shape', 'vector', ['vector', 'scalar'] as const, source),
    shared_omega: optBool(raw, 'shared_omega', false, source),
    omega_init_scale: optNumber(raw, 'omega_init_scale', 2, source),
    dropout_ratio: p,
    residual: optBool(raw, 'residual', true, source),
  };
}

export class ScaLearnDelta extends Module implements LayerDelta {
  /** This layer's ω; null when ω is shared (it then belongs to the adapter, not to every layer). */
  scalearn_omega: Tensor | null = null;
  readonly #shared: Tensor | null;

  constructor(
    readonly adapterName: string,
    public sources: BottleneckDelta[],
    omega: Tensor,
    shared: boolean,
    readonly config: ScaLearnConfig,
  ) {
    super();
    this.#shared = shared ? omega : null;
    if (!shared) this.scalearn_omega = omega;
  }

  get omega(): Tensor {
    return this.#shared ?? this.scalearn_omega!;
  }

  apply(x: Tensor, y: Tensor): Tensor {
    const p = this.config.dropout_ratio;
    const w = p > 0 && isTraining() ? dropout(this.omega, p) : this.omega;
    const cols = w.shape[1]!;
    let s: Tensor | null = null;
    this.sources.forEach((src, i) => {
      const t = mul(upOutput(src, x, y), reshape(narrow(w, 0, i, 1), [cols]));
      s = s ? add(s, t) : t;
    });
    return this.config.residual ? add(y, s!) : s!;
  }
}

class ScaLearnAdapter implements AdapterInstance {
  readonly method = SCALEARN;
  readonly deltas = new Map<string, ScaLearnDelta>();
  readonly omegas: Tensor[] = [];

  constructor(readonly name: string, readonly config: ScaLearnConfig, readonly sources: SourceSet) {}

  parameters(): Tensor[] {
    return [...this.omegas];
  }

  stateDict(): Map<string, Tensor> {
    const out = deltaStateDict(this.deltas);
    if (this.config.shared_omega) out.set(SHARED_OMEGA_KEY, this.omegas[0]!);
    return out;
  }

  loadStateDict(tensors: Map<string, Tensor>, source: string): void {
    loadInto(this.stateDict(), tensors, source);
  }

  configJson(): RawAdapterConfig {
    const c = this.config;
    return {
      ...baseJson(c), ...this.sources.configJson(),
      dropout_ratio: c.dropout_ratio, omega_init_scale: c.omega_init_scale, omega_shape: c.omega_shape, residual: c.residual, shared_omega: c.shared_omega,
    };
  }
}

function omegaShape(c: ScaLearnConfig, width: number): [number, number] {
  return [c.sources.length, c.omega_shape === 'vector' ? width : 1];
}

/** The adapter as one bottleneck adapter: the sources' bottlenecks side by side, ω folded into the up-projections. */
function asBottleneck(am: AdapterModel, name: string): { config: RawAdapterConfig; tensors: Map<string, Tensor> } {
  const inst = am.adapters.get(name) as ScaLearnAdapter;
  const c = inst.config;
  const srcs = c.sources.map((s) => s.config);
  const why = !c.residual ? '"residual" is false'
    : new Set(srcs.map((s) => s.non_linearity)).size > 1 ? 'its sources use different non-linearities'
    : srcs.some((s) => s.layer_norm !== 'none') ? 'a source has its own layer norm' : null;
  if (why) throw new AdaptkitError(`adapter "${name}" (SCALEARN) cannot be written as one BOTTLENECK adapter: ${why}`);
  const tensors = new Map<string, Tensor>();
  const sizes = new Set<number>();
  noGrad(() => {
    for (const [path, d] of inst.deltas) {
      const w = d.omega.toArray() as Float32Array;
      const cols = d.omega.shape[1]!;
      const parts = d.sources.map((s) => ({
        dw: s.adapter_down.weight.toArray() as Float32Array, db: s.adapter_down.bias!.toArray() as Float32Array,
        uw: s.adapter_up.weight.toArray() as Float32Array, ub: s.adapter_up.bias!.toArray() as Float32Array,
        m: s.adapter_down.weight.shape[0]!, scale: s.config.scaling,
      }));
      const width = d.sources[0]!.adapter_down.weight.shape[1]!;
      const out = d.sources[0]!.adapter_up.weight.shape[0]!;
      const total = parts.reduce((n, p) => n + p.m, 0);
      sizes.add(total);
      const down = new Float32Array(total * width);
      const downB = new Float32Array(total);
      const up = new Float32Array(out * total);
      const upB = new Float32Array(out);
      let at = 0;
      parts.forEach((p, i) => {
        down.set(p.dw, at * width);
        downB.set(p.db, at);
        for (let r = 0; r < out; r++) {
          const k = p.scale * w[i * cols + (cols === 1 ? 0 : r)]!;
          for (let j = 0; j < p.m; j++) up[r * total + at + j] = k * p.uw[r * p.m + j]!;
          upB[r]! += k * p.ub[r]!;
        }
        at += p.m;
      });
      tensors.set(peftKey(path, 'adapter_down.weight'), fromBuffer(down, [total, width]));
      tensors.set(peftKey(path, 'adapter_down.bias'), fromBuffer(downB, [total]));
      tensors.set(peftKey(path, 'adapter_up.weight'), fromBuffer(up, [out, total]));
      tensors.set(peftKey(path, 'adapter_up.bias'), fromBuffer(upB, [out]));
    }
  });
  if (sizes.size !== 1) {
    for (const t of tensors.values()) t.dispose();
    throw new AdaptkitError(`adapter "${name}" (SCALEARN) cannot be written as one BOTTLENECK adapter: its stacked bottleneck differs between layers (${[...sizes].join(', ')})`);
  }
  const first = srcs[0]!;
  return {
    config: {
      ...baseJson(c), peft_type: 'BOTTLENECK', adapter_type: first.adapter_type, bottleneck_size: [...sizes][0]!, layer_norm: 'none',
      non_linearity: first.non_linearity, reduction_factor: first.reduction_factor, residual: true, scaling: 1,
    },
    tensors,
  };
}

function preset(name: string, description: string, fields: Partial<Pick<ScaLearnConfig, 'omega_shape' | 'shared_omega'>>): MethodPreset {
  return { name, description, config: (o) => ({ peft_type: 'SCALEARN', ...fields, ...sourcesOption(o) }) };
}

export const SCALEARN: AdapterMethod = {
  peftType: 'SCALEARN',
  description: 'ScaLearn: learned scales of frozen source bottleneck adapters\' outputs, for task transfer',
  kind: 'tuner',
  presets: [
    preset('scalearn', 'ScaLearn: a scale per source and feature at every layer over frozen --source-adapters', { omega_shape: 'vector' }),
    preset('scalearn-uniform', 'ScaLearnUniform: one scale per source at every layer', { omega_shape: 'scalar' }),
    preset('scalearn-plus', 'ScaLearn++: one scale per source and feature shared by all layers', { omega_shape: 'vector', shared_omega: true }),
    preset('scalearn-uniform-plus', 'ScaLearnUniform++: one scale per source in all (N numbers)', { omega_shape: 'scalar', shared_omega: true }),
  ],
  options: [SOURCE_ADAPTERS],
  floatKeys: ['scaling', 'omega_init_scale', 'dropout_ratio'],
  startsAsIdentity: false,
  summary: (cfg) => {
    const c = cfg as ScaLearnConfig;
    return { sources: c.sources.map((s) => s.name), omega_shape: c.omega_shape, shared_omega: c.shared_omega, dropout_ratio: c.dropout_ratio };
  },
  parseConfig: (raw, source) => parseScaLearn(raw, source),
  defaultTargets: (model, cfg) => placementTargets(model, (cfg as ScaLearnConfig).sources[0]!.config.adapter_type),
  create(name, cfg, targets, ctx) {
    const c = cfg as ScaLearnConfig;
    const sources = createSources(name, c, targets, ctx);
    const inst = new ScaLearnAdapter(name, c, sources);
    const init = (width: number, key: string) => parameter(randn(omegaShape(c, width), { mean: c.omega_init_scale / c.sources.length, std: 0.001, rng: ctx.rng }), key);
    const shared = c.shared_omega ? init(commonWidth(targets, 'a shared ω (shared_omega)'), 'scalearn_omega') : null;
    if (shared) inst.omegas.push(shared);
    for (const t of targets) {
      const omega = shared ?? init(targetWidth(t), `${t.path}.scalearn_omega`);
      if (!shared) inst.omegas.push(omega);
      inst.deltas.set(t.path, new ScaLearnDelta(name, sources.at(t.path), omega, !!shared, c));
    }
    return inst;
  },
  countParameters(cfg, targets: TargetInfo[]) {
    const c = cfg as ScaLearnConfig;
    const per = (t: TargetInfo) => omegaShape(c, targetWidth(t)).reduce((a, b) => a * b, 1);
    if (c.shared_omega) return targets.length ? per(targets[0]!) : 0;
    return targets.reduce((n, t) => n + per(t), 0);
  },
  exports: { BOTTLENECK: asBottleneck },
};

registerMethod(SCALEARN);
