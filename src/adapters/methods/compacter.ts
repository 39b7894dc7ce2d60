/**
 * Compacter (Karimi Mahabadi et al. 2021): bottleneck adapters whose down and up projections are
 * parameterized hypercomplex multiplication (PHM) layers, W = Σᵢ Aᵢ ⊗ (sᵢ·tᵢ), with n "slow"
 * n×n matrices Aᵢ shared by every adapter layer and rank-k "fast" factors sᵢ, tᵢ per layer.
 * peft_type "COMPACTER"; keys: base_model.compacter_phm_rule [n, n, n] (shared), and per target
 * <path>.compacter_down_s [n, m/n, k], compacter_down_t [n, k, d/n], compacter_down_bias [m],
 * compacter_up_s [n, d/n, k], compacter_up_t [n, k, m/n], compacter_up_bias [d].
 */
import { AdaptkitError, type Tensor, add, linear, matmul, mul, parameter, randn, reshape, sum, zeros } from '../../tensor/index.js';
import { Module } from '../../nn/index.js';
import { baseJson, optInt } from '../config.js';
import { registerMethod } from '../registry.js';
import { loadInto } from '../state.js';
import { deltaStateDict } from '../files.js';
import { REDUCTION_FACTOR, TARGETS, num, targetsOption } from '../options.js';
import type { AdapterInstance, AdapterMethod, BaseAdapterConfig, LayerDelta, RawAdapterConfig } from '../types.js';
import { type BottleneckConfig, activate, bottleneckSize, parseBottleneck, placementTargets, targetWidth } from './bottleneck.js';

export interface CompacterConfig extends BottleneckConfig {
  phm_dim: number;
  phm_rank: number;
}

function parse(raw: RawAdapterConfig, source: string): CompacterConfig {
  const b = parseBottleneck(raw, source, 'COMPACTER');
  if (b.adapter_type === 'parallel') throw new AdaptkitError(`${source}: Compacter supports the houlsby and pfeiffer placements`);
  return { ...b, phm_dim: optInt(raw, 'phm_dim', 4, source, 1), phm_rank: optInt(raw, 'phm_rank', 1, source, 1) };
}

/** Σᵢ Aᵢ ⊗ (sᵢ tᵢ) for A [n, n, n], s [n, p, k], t [n, k, q] → [n·p, n·q]. */
export function phmWeight(A: Tensor, s: Tensor, t: Tensor): Tensor {
  const n = A.shape[0]!;
  const p = s.shape[1]!;
  const q = t.shape[2]!;
  const fast = matmul(s, t); // [n, p, q]
  const prod = mul(reshape(A, [n, n, 1, n, 1]), reshape(fast, [n, 1, p, 1, q]));
  return reshape(sum(prod, 0), [n * p, n * q]);
}

export class CompacterDelta extends Module implements LayerDelta {
  constructor(
    readonly adapterName: string,
    readonly rule: { A: Tensor },
    public compacter_down_s: Tensor, public compacter_down_t: Tensor, public compacter_down_bias: Tensor,
    public compacter_up_s: Tensor, public compacter_up_t: Tensor, public compacter_up_bias: Tensor,
    readonly config: CompacterConfig,
  ) {
    super();
  }

  apply(_x: Tensor, y: Tensor): Tensor {
    const down = phmWeight(this.rule.A, this.compacter_down_s, this.compacter_down_t);
    const up = phmWeight(this.rule.A, this.compacter_up_s, this.compacter_up_t);
    const h = linear(activate(linear(y, down, this.compacter_down_bias), this.config.non_linearity), up, this.compacter_up_bias);
    return this.config.residual ? add(y, h) : h;
  }
}

class CompacterAdapter implements AdapterInstance {
  readonly method = COMPACTER;
  readonly deltas = new Map<string, LayerDelta & Module>();
  constructor(readonly name: string, readonly config: CompacterConfig, readonly rule: { A: Tensor }) {}
  parameters(): Tensor[] {
    return [this.rule.A, ...[...this.deltas.values()].flatMap((d) => d.parameters())];
  }
  stateDict(): Map<string, Tensor> {
    // the shared rule sits outside any module, as PEFT saves shared tensors
    return new Map([['base_model.compacter_phm_rule', this.rule.A], ...deltaStateDict(this.deltas)]);
  }
  loadStateDict(t: Map<string, Tensor>, source: string): void {
    loadInto(this.stateDict(), t, source);
  }
  configJson(): RawAdapterConfig {
    const c = this.config;
    return {
      ...baseJson(c), adapter_type: c.adapter_type, bottleneck_size: c.bottleneck_size, non_linearity: c.non_linearity,
      phm_dim: c.phm_dim, phm_rank: c.phm_rank, reduction_factor: c.reduction_factor, residual: c.residual,
    };
  }
}

export const COMPACTER: AdapterMethod = {
  peftType: 'COMPACTER',
  description: 'bottleneck adapters with parameterized hypercomplex multiplication layers (Karimi Mahabadi et al. 2021)',
  kind: 'tuner',
  presets: [{
    name: 'compacter',
    description: 'Compacter in the Houlsby placement (reduction factor 4, phm_dim 4)',
    config: (o) => ({ peft_type: 'COMPACTER', adapter_type: 'houlsby', reduction_factor: num(o, 'reduction-factor', 4), phm_dim: 4, ...targetsOption(o, undefined) }),
  }],
  options: [REDUCTION_FACTOR, TARGETS],
  summary: (cfg) => ({ adapter_type: (cfg as CompacterConfig).adapter_type, reduction_factor: (cfg as CompacterConfig).reduction_factor, phm_dim: (cfg as CompacterConfig).phm_dim }),
  parseConfig: parse,
  defaultTargets: (model, cfg) => placementTargets(model, (cfg as CompacterConfig).adapter_type),
  create(name, cfg, targets, ctx) {
    const c = cfg as CompacterConfig;
    const n = c.phm_dim;
    const k = c.phm_rank;
    const rule = { A: parameter(randn([n, n, n], { std: 1 / n, rng: ctx.rng }), 'compacter_phm_rule') };
    const inst = new CompacterAdapter(name, c, rule);
    for (const t of targets) {
      const d = targetWidth(t);
      if (d % n !== 0) throw new AdaptkitError(`Compacter: width ${d} of "${t.path}" is not divisible by phm_dim ${n}`);
      const m = bottleneckSize(c, d, n);
      const P = (shape: number[], std: number, nm: string) => parameter(std === 0 ? zeros(shape) : randn(shape, { std, rng: ctx.rng }), `${t.path}.${nm}`);
      inst.deltas.set(t.path, new CompacterDelta(
        name, rule,
        P([n, m / n, k], 0.1, 'compacter_down_s'), P([n, k, d / n], 0.1, 'compacter_down_t'), P([m], 0, 'compacter_down_bias'),
        P([n, d / n, k], 0, 'compacter_up_s'), P([n, k, m / n], 0.1, 'compacter_up_t'), P([d], 0, 'compacter_up_bias'),
        c,
      ));
    }
    return inst;
  },
  countParameters(cfg, targets) {
    const c = cfg as CompacterConfig;
    const n = c.phm_dim;
    const k = c.phm_rank;
    return n * n * n + targets.reduce((tot, t) => {
      const d = targetWidth(t);
      const m = bottleneckSize(c, d, n);
      return tot + n * k * (m / n + d / n) * 2 + m + d;
    }, 0);
  },
};

registerMethod(COMPACTER);
