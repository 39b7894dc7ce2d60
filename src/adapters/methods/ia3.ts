/**
 * IA3 (Liu et al. 2022): learned vectors that rescale activations. Targets that are not
 * feed-forward get their outputs scaled (keys, values); feedforward_modules get their inputs scaled.
 * PEFT key: <path>.ia3_l, shape [out, 1] (output scaling) or [1, in] (input scaling).
 */
import { AdaptkitError, type Tensor, clone, indexSelect, mul, noGrad, ones, parameter, reshape, transpose, randn } from '../../tensor/index.js';
import { type AdapterDescriptor, type Linear, Module, isLinearLayer } from '../../nn/index.js';
import { baseJson, optBool, parseBase } from '../config.js';
import { registerMethod } from '../registry.js';
import { loadInto } from '../state.js';
import { peftKey } from '../files.js';
import { TARGETS, targetsOption } from '../options.js';
import { matches, roleTargets } from '../targets.js';
import { type AdapterInstance, type AdapterMethod, type BaseAdapterConfig, type LayerDelta, type RawAdapterConfig, type RowBatchedForm, RowRouting, type TargetInfo } from '../types.js';

export interface IA3Config extends BaseAdapterConfig {
  feedforward_modules: string[] | string | null;
  fan_in_fan_out: boolean;
  init_ia3_weights: boolean;
}

/** PEFT's default IA3 targets: keys, values and the feed-forward layer whose input is scaled. */
function defaults(d: AdapterDescriptor): { target: string[] | string | null; ff: string[] | string | null } {
  return { target: roleTargets(d, ['attn.k', 'attn.v', 'ffn.in']), ff: roleTargets(d, ['ffn.in']) };
}

function parse(raw: RawAdapterConfig, source: string): IA3Config {
  const base = parseBase(raw, 'IA3', source);
  const ff = raw.feedforward_modules;
  if (ff !== undefined && ff !== null && typeof ff !== 'string' && !(Array.isArray(ff) && ff.every((x) => typeof x === 'string'))) {
    throw new AdaptkitError(`${source}: "feedforward_modules" must be a string or a list of strings`);
  }
  return {
    ...base,
    feedforward_modules: (ff as string[] | string | null | undefined) ?? null,
    fan_in_fan_out: optBool(raw, 'fan_in_fan_out', false, source),
    init_ia3_weights: optBool(raw, 'init_ia3_weights', true, source),
  };
}

export class IA3Delta extends Module implements LayerDelta {
  constructor(readonly adapterName: string, public ia3_l: Tensor, readonly feedforward: boolean) {
    super();
  }

  transformInput(x: Tensor): Tensor {
    return this.feedforward ? mul(x, reshape(this.ia3_l, [-1])) : x;
  }

  apply(_x: Tensor, y: Tensor): Tensor {
    return this.feedforward ? y : mul(y, reshape(this.ia3_l, [-1]));
  }

  mergeWeight(weight: Tensor, fanInFanOut = false): Tensor {
    return noGrad(() => {
      // l scales rows of W [out, in] (outputs) or its columns (inputs)
      const l = this.feedforward ? reshape(this.ia3_l, [1, -1]) : reshape(this.ia3_l, [-1, 1]);
      return clone(fanInFanOut ? transpose(mul(transpose(weight), l)) : mul(weight, l));
    });
  }

  mergeBias(bias: Tensor | null): Tensor | null {
    if (!bias || this.feedforward) return bias;
    return noGrad(() => clone(mul(bias, reshape(this.ia3_l, [-1]))));
  }
}

class IA3Adapter implements AdapterInstance {
  readonly method = IA3;
  readonly deltas = new Map<string, IA3Delta>();
  constructor(readonly name: string, readonly config: IA3Config) {}

  parameters(): Tensor[] {
    return [...this.deltas.values()].flatMap((d) => d.parameters());
  }

  stateDict(): Map<string, Tensor> {
    return new Map([...this.deltas].map(([p, d]) => [peftKey(p, 'ia3_l'), d.ia3_l]));
  }

  loadStateDict(tensors: Map<string, Tensor>, source: string): void {
    loadInto(this.stateDict(), tensors, source);
  }

  configJson(): RawAdapterConfig {
    const c = this.config;
    return { ...baseJson(c), fan_in_fan_out: c.fan_in_fan_out, feedforward_modules: c.feedforward_modules, init_ia3_weights: c.init_ia3_weights };
  }
}

function isFF(c: IA3Config, t: TargetInfo): boolean {
  return c.feedforward_modules !== null && matches(c.feedforward_modules, t.path, 'feedforward_modules') !== null;
}

/** Stacks of output scales [slots, out] and input scales [slots, in], both 1 in unused slots. */
class RowIA3Delta extends Module implements LayerDelta {
  readonly adapterName = '*rows*';
  constructor(readonly stacks: Record<string, Tensor>, readonly routing: RowRouting) {
    super();
  }

  private scale(t: Tensor, x: Tensor): Tensor {
    const rows = this.routing.rows;
    if (!rows) throw new AdaptkitError('a row-batched layer ran without row routing');
    return reshape(indexSelect(t, 0, rows), x.ndim === 3 ? [x.shape[0]!, 1, -1] : [x.shape[0]!, -1]);
  }

  transformInput(x: Tensor): Tensor {
    return mul(x, this.scale(this.stacks.in!, x));
  }

  apply(_x: Tensor, y: Tensor): Tensor {
    return mul(y, this.scale(this.stacks.out!, y));
  }
}

const ROWS: RowBatchedForm = {
  key: () => 'ia3',
  sizes: () => ({}),
  limits: () => ({}),
  layout: (layer) => ({ in: { shape: [layer.inFeatures], identity: 1 }, out: { shape: [layer.outFeatures], identity: 1 } }),
  write(inst, path, slot) {
    const d = (inst as IA3Adapter).deltas.get(path)!;
    (d.feedforward ? slot.in! : slot.out!).set(d.ia3_l.toArray() as Float32Array);
  },
  delta: (_layer, stacks, routing) => new RowIA3Delta(stacks, routing),
};

export const IA3: AdapterMethod = {
  peftType: 'IA3',
  description: 'learned vectors rescaling keys, values and feed-forward inputs (Liu et al. 2022)',
  kind: 'tuner',
  parseConfig: parse,
  presets: [{
    name: 'ia3',
    description: "IA3 on the model's keys, values and feed-forward inputs",
    config: (o, model) => ({ peft_type: 'IA3', fan_in_fan_out: model.fanInFanOut, ...targetsOption(o, undefined) }),
  }],
  options: [TARGETS],
  mergeable: true,
  rowBatched: ROWS,
  summary: (cfg) => ({ feedforward_modules: (cfg as IA3Config).feedforward_modules }),
  defaultTargets(model) {
    return defaults(model).target;
  },
  create(name, cfg, targets, ctx) {
    const c = cfg as IA3Config;
    if (c.target_modules === null) c.target_modules = defaults(ctx.descriptor).target;
    if (c.feedforward_modules === null) c.feedforward_modules = defaults(ctx.descriptor).ff ?? [];
    const inst = new IA3Adapter(name, c);
    for (const t of targets) {
      if (!isLinearLayer(t.module)) throw new AdaptkitError(`IA3 targets linear layers; "${t.path}" is a ${t.module.constructor.name}`);
      const ff = isFF(c, t);
      const shape = ff ? [1, t.module.inFeatures] : [t.module.outFeatures, 1];
      const init = c.init_ia3_weights ? ones(shape) : randn(shape, { rng: ctx.rng, std: 0.02, mean: 1 });
      const d = new IA3Delta(name, parameter(init, `${t.path}.ia3_l`), ff);
      if (t.module.fanInFanOut) {
        const merge = d.mergeWeight.bind(d);
        d.mergeWeight = (w: Tensor) => merge(w, true);
      }
      inst.deltas.set(t.path, d);
    }
    return inst;
  },
  countParameters(cfg, targets) {
    const c = cfg as IA3Config;
    return targets.reduce((n, t) => n + (isFF(c, t) ? (t.module as Linear).inFeatures : (t.module as Linear).outFeatures), 0);
  },
};

registerMethod(IA3);
