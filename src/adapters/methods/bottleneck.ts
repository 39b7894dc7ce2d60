/**
 * Bottleneck adapters: a down-projection, a non-linearity and an up-projection added to a layer.
 * Placements (the configurations compared by the AST adapter study and LLM-Adapters):
 *   houlsby  — series, after the attention output and after the feed-forward output;
 *   pfeiffer — series, after the feed-forward output only;
 *   parallel — beside the feed-forward block, on its input.
 * Series: y' = y + s·up(act(down(LN?(y)))) (no "+ y" when residual is false; LN after when
 * layer_norm is "after"). Parallel: y' = y + s·up(act(down(x))).
 * peft_type "BOTTLENECK"; keys <path>.adapter_down.{weight,bias}, adapter_up.{weight,bias},
 * adapter_ln.{weight,bias}. The up-projection starts at zero, so a new adapter is the identity
 * (except with layer_norm "after" or residual false, which change the layer by design).
 */
import { AdaptkitError, type Tensor, add, gelu, layerNorm, mul, ones, parameter, randn, relu, silu, tanh, zeros } from '../../tensor/index.js';
import { type AdapterDescriptor, Linear, type LinearLayer, Module, type TargetSpec, isLinearLayer } from '../../nn/index.js';
import { baseJson, optBool, optInt, optNumber, optString, parseBase } from '../config.js';
import { registerMethod } from '../registry.js';
import { loadInto } from '../state.js';
import { deltaStateDict } from '../files.js';
import { REDUCTION_FACTOR, TARGETS, num, targetsOption } from '../options.js';
import { roleTargets } from '../targets.js';
import type { AdapterInstance, AdapterMethod, BaseAdapterConfig, LayerDelta, RawAdapterConfig, TargetInfo } from '../types.js';

export type Placement = 'houlsby' | 'pfeiffer' | 'parallel';
export type Activation = 'relu' | 'gelu' | 'silu' | 'tanh';

export interface BottleneckConfig extends BaseAdapterConfig {
  adapter_type: Placement;
  reduction_factor: number;
  bottleneck_size: number | null;
  non_linearity: Activation;
  residual: boolean;
  layer_norm: 'none' | 'before' | 'after';
  scaling: number;
}

/** Where a placement goes on a model (target_modules overrides it). */
export function placementTargets(model: AdapterDescriptor, placement: Placement): TargetSpec | null {
  if (placement === 'pfeiffer') return roleTargets(model, ['block.ffn_out']);
  if (placement === 'parallel') return roleTargets(model, ['block.ffn']);
  return roleTargets(model, ['block.attn_out', 'block.ffn_out']);
}

export function parseBottleneck(raw: RawAdapterConfig, source: string, peftType = 'BOTTLENECK'): BottleneckConfig {
  const base = parseBase(raw, peftType, source);
  const bs = raw.bottleneck_size;
  return {
    ...base,
    adapter_type: optString(raw, 'adapter_type', 'houlsby', ['houlsby', 'pfeiffer', 'parallel'] as const, source),
    reduction_factor: optNumber(raw, 'reduction_factor', 16, source, 1),
    bottleneck_size: bs === undefined || bs === null ? null : optInt(raw, 'bottleneck_size', 1, source, 1),
    non_linearity: optString(raw, 'non_linearity', 'relu', ['relu', 'gelu', 'silu', 'tanh'] as const, source),
    residual: optBool(raw, 'residual', true, source),
    layer_norm: optString(raw, 'layer_norm', 'none', ['none', 'before', 'after'] as const, source),
    scaling: optNumber(raw, 'scaling', 1, source),
  };
}

export function activate(x: Tensor, a: Activation): Tensor {
  return a === 'relu' ? relu(x) : a === 'gelu' ? gelu(x) : a === 'silu' ? silu(x) : tanh(x);
}

/** Output width of a target: a linear layer's out_features, or the width of a block's output. */
export function targetWidth(t: TargetInfo): number {
  if (isLinearLayer(t.module)) return t.module.outFeatures;
  const lin = t.module.namedModules().map(([, m]) => m).filter((m): m is LinearLayer => isLinearLayer(m));
  const last = lin[lin.length - 1];
  if (!last) throw new AdaptkitError(`"${t.path}" has no linear layer to size a bottleneck adapter from`);
  return last.outFeatures;
}

/** A delta's parameters with its optional adapter layer norm under PEFT's `adapter_ln` keys. */
export function withLayerNorm(params: [string, Tensor][], prefix: string, ln: { weight: Tensor; bias: Tensor } | null): [string, Tensor][] {
  const p = prefix ? `${prefix}.` : '';
  if (ln) params.push([`${p}adapter_ln.weight`, ln.weight], [`${p}adapter_ln.bias`, ln.bias]);
  return params;
}

export class BottleneckDelta extends Module implements LayerDelta {
  adapter_ln: { weight: Tensor; bias: Tensor } | null = null;

  constructor(
    readonly adapterName: string,
    public adapter_down: Linear,
    public adapter_up: Linear,
    readonly config: BottleneckConfig,
    ln: { weight: Tensor; bias: Tensor } | null,
  ) {
    super();
    if (ln) this.adapter_ln = ln;
  }

  override namedParameters(prefix = ''): [string, Tensor][] {
    return withLayerNorm(super.namedParameters(prefix), prefix, this.adapter_ln);
  }

  private branch(z: Tensor): Tensor {
    const h = this.adapter_up.forward(activate(this.adapter_down.forward(z), this.config.non_linearity));
    return this.config.scaling === 1 ? h : mul(h, this.config.scaling);
  }

  apply(x: Tensor, y: Tensor): Tensor {
    const c = this.config;
    if (c.adapter_type === 'parallel') return add(y, this.branch(x));
    const z = c.layer_norm === 'before' && this.adapter_ln ? layerNorm(y, this.adapter_ln.weight, this.adapter_ln.bias) : y;
    let out = c.residual ? add(y, this.branch(z)) : this.branch(z);
    if (c.layer_norm === 'after' && this.adapter_ln) out = layerNorm(out, this.adapter_ln.weight, this.adapter_ln.bias);
    return out;
  }
}

export function bottleneckSize(c: { bottleneck_size: number | null; reduction_factor: number }, width: number, multiple = 1): number {
  const m = c.bottleneck_size ?? Math.max(1, Math.floor(width / c.reduction_factor));
  return Math.ceil(m / multiple) * multiple;
}

class BottleneckAdapter implements AdapterInstance {
  readonly method = BOTTLENECK;
  readonly deltas = new Map<string, LayerDelta & Module>();
  constructor(readonly name: string, readonly config: BottleneckConfig) {}
  parameters(): Tensor[] {
    return [...this.deltas.values()].flatMap((d) => d.parameters());
  }
  stateDict(): Map<string, Tensor> {
    return deltaStateDict(this.deltas);
  }
  loadStateDict(t: Map<string, Tensor>, source: string): void {
    loadInto(this.stateDict(), t, source);
  }
  configJson(): RawAdapterConfig {
    const c = this.config;
    return {
      ...baseJson(c), adapter_type: c.adapter_type, bottleneck_size: c.bottleneck_size, layer_norm: c.layer_norm,
      non_linearity: c.non_linearity, reduction_factor: c.reduction_factor, residual: c.residual, scaling: c.scaling,
    };
  }
}

export const BOTTLENECK: AdapterMethod = {
  peftType: 'BOTTLENECK',
  description: 'bottleneck adapters (Houlsby, Pfeiffer, parallel placements)',
  kind: 'tuner',
  presets: [{
    name: 'bottleneck',
    description: 'Houlsby bottleneck adapters after attention and feed-forward outputs (reduction factor 4)',
    config: (o) => ({ peft_type: 'BOTTLENECK', adapter_type: 'houlsby', reduction_factor: num(o, 'reduction-factor', 4), ...targetsOption(o, undefined) }),
  }],
  options: [REDUCTION_FACTOR, TARGETS],
  floatKeys: ['scaling'],
  summary: (cfg) => ({ adapter_type: (cfg as BottleneckConfig).adapter_type, reduction_factor: (cfg as BottleneckConfig).reduction_factor, bottleneck_size: (cfg as BottleneckConfig).bottleneck_size }),
  parseConfig: (raw, source) => parseBottleneck(raw, source),
  defaultTargets: (model, cfg) => placementTargets(model, (cfg as BottleneckConfig).adapter_type),
  create(name, cfg, targets, ctx) {
    const c = cfg as BottleneckConfig;
    const inst = new BottleneckAdapter(name, c);
    for (const t of targets) {
      const d = targetWidth(t);
      const m = bottleneckSize(c, d);
      const down = new Linear(parameter(randn([m, d], { std: 0.02, rng: ctx.rng }), `${t.path}.adapter_down.weight`), parameter(zeros([m]), `${t.path}.adapter_down.bias`));
      const up = new Linear(parameter(zeros([d, m]), `${t.path}.adapter_up.weight`), parameter(zeros([d]), `${t.path}.adapter_up.bias`));
      const ln = c.layer_norm === 'none' ? null : { weight: parameter(ones([d])), bias: parameter(zeros([d])) };
      inst.deltas.set(t.path, new BottleneckDelta(name, down, up, c, ln));
    }
    return inst;
  },
  countParameters(cfg, targets) {
    const c = cfg as BottleneckConfig;
    return targets.reduce((n, t) => {
      const d = targetWidth(t);
      const m = bottleneckSize(c, d);
      return n + 2 * m * d + m + d + (c.layer_norm === 'none' ? 0 : 2 * d);
    }, 0);
  },
};

registerMethod(BOTTLENECK);

