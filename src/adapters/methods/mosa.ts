/**
 * MoSA ("Split & Merge: Unlocking the Potential of Visual Adapters via Sparse Training"): a
 * bottleneck adapter whose projection(s) are split by disjoint random masks into N sparse
 * experts that train one at a time and are averaged into one ordinary bottleneck adapter.
 *
 * Training: every expert is a full-size copy of the split projection; a random equal-count
 * partition of the weight's entries (fixed at creation from the adapter's seed) gives expert i
 * the entries it may change, carried as the parameter's gradMask, so the optimizer never moves
 * (or decays) an entry outside it. Biases are not masked: every expert trains its whole bias.
 * Each forward inside the training scope draws one expert per adapted layer, shared by the whole
 * batch, from the global generator (the one the trainer seeds, checkpoints and restores for
 * gradient-checkpoint recomputation, so draws replay exactly). The experts not drawn take no
 * part in that step: their gradient stays null and the optimizer does not step them.
 * Everywhere else (eval, scoring, generation) the layer runs the merged adapter
 * W = (1/N) Σ_i W_i, b = (1/N) Σ_i b_i: deterministic, an ensemble of the experts folded into
 * one bottleneck. With share "down" the split up-projection comes after the non-linearity, so the
 * merged output is exactly the mean of the experts' outputs; with "up" or "none" it is the
 * adapter with averaged weights, which the non-linearity makes differ from that mean.
 *
 * Saving writes only the merged adapter, as peft_type "BOTTLENECK" with bottleneck.ts's keys
 * (<path>.adapter_down.{weight,bias}, adapter_up.{weight,bias}, adapter_ln.{weight,bias}), so it
 * loads and serves as a plain bottleneck adapter with no inference overhead. Checkpoints also
 * keep the experts, the shared parts and each split weight's expert assignment, so training
 * resumes exactly. Loading a bottleneck adapter's weights into a MoSA adapter makes every expert
 * a copy of them.
 *
 * Config (peft_type "MOSA"; neither PEFT nor AdapterHub has MoSA), beside every field of a
 * bottleneck adapter (adapter_type, reduction_factor, bottleneck_size, non_linearity, residual,
 * layer_norm, scaling, with bottleneck.ts's defaults):
 *   num_experts         integer >= 2, default 4 (the authors' EXPERT_NUM); every expert must
 *                       get at least one entry of each split weight.
 *   share               "down" (default, as in all of the authors' scripts): one dense
 *                       down-projection, the up-projection split; "up": the down-projection
 *                       split; "none": both split (one draw picks the expert of both).
 *   consistency_weight  number >= 0, default 0 (off). Above 0 every step runs two passes with
 *                       independently drawn experts and minimizes
 *                       CE(o1) + w·½[KL(sg p2 ‖ p1) + KL(sg p1 ‖ p2)], p = softmax(o), the KL
 *                       summed over the vocabulary and averaged over all positions of the
 *                       batch (the authors' scripts use w = 1 with the second pass' own loss
 *                       weighted 0, as here).
 * Initialization: the down-projection is drawn as in a plain bottleneck adapter of the same
 * seed (so the two start alike), up-projections and biases are zero, and a split projection's
 * experts all start as copies of it; a new adapter is therefore the identity.
 * Preset `mosa`: the authors' AdaptFormer-style adapter, parallel beside each feed-forward block
 * on its (normalized) input with GELU, reduction factor 4 (--reduction-factor), 4 experts
 * (--experts), share "down", no consistency term. Scaling stays at the bottleneck default 1, not
 * the authors' 0.1: under Adam a 0.1 output scale only slows a zero-initialized adapter tenfold
 * at the learning rates adapters train with here (set "scaling": 0.1 to reproduce theirs). The
 * matched baseline is a BOTTLENECK config with the same fields.
 * Not implemented: the authors' "row"/"column" mask modes, the "joint" merge and the
 * deep-feature MSE regularizer.
 */
import {
  AdaptkitError, Rng, type Tensor, add, clone, defaultRng, detach, exp, fromBuffer, isTraining, logSoftmax, mul, noGrad,
  ones, parameter, randn, sub, sum, zeros,
} from '../../tensor/index.js';
import { Linear, Module } from '../../nn/index.js';
import { AdapterConfigError, baseJson, optInt, optNumber, optString } from '../config.js';
import { registerMethod } from '../registry.js';
import { loadInto } from '../state.js';
import { deltaStateDict, peftKey } from '../files.js';
import { REDUCTION_FACTOR, TARGETS, num, targetsOption } from '../options.js';
import { type BottleneckConfig, BottleneckDelta, bottleneckSize, withLayerNorm, parseBottleneck, placementTargets, targetWidth } from './bottleneck.js';
import type { AdapterInstance, AdapterMethod, BaseAdapterConfig, LayerDelta, MethodOption, RawAdapterConfig, TargetInfo } from '../types.js';

export type SharedProjection = 'down' | 'up' | 'none';

export interface MosaConfig extends BottleneckConfig {
  num_experts: number;
  share: SharedProjection;
  consistency_weight: number;
}

export const EXPERTS: MethodOption = { name: 'experts', type: 'int', min: 2, description: 'sparse experts a MoSA projection is split into (default 4)' };

export function parseMosa(raw: RawAdapterConfig, source: string): MosaConfig {
  const c = parseBottleneck(raw, source, 'MOSA');
  return {
    ...c,
    num_experts: optInt(raw, 'num_experts', 4, source, 2),
    share: optString(raw, 'share', 'down', ['down', 'up', 'none'] as const, source),
    consistency_weight: optNumber(raw, 'consistency_weight', 0, source, 0),
  };
}

/** Mean of same-shaped tensors; the forward and the saved adapter both use it, so they agree bit for bit. */
function mean(ts: readonly Tensor[]): Tensor {
  let s = ts[0]!;
  for (let i = 1; i < ts.length; i++) s = add(s, ts[i]!);
  return mul(s, 1 / ts.length);
}

/** An equal-count random partition of `size` entries among `n` experts: the expert of each entry. */
export function partitionEntries(size: number, n: number, rng: Rng): Int32Array {
  const order = Array.from({ length: size }, (_, i) => i);
  for (let i = size - 1; i > 0; i--) {
    const j = rng.int(i + 1);
    [order[i], order[j]] = [order[j]!, order[i]!];
  }
  const owner = new Int32Array(size);
  for (let j = 0; j < size; j++) owner[order[j]!] = Math.floor((j * n) / size);
  return owner;
}

function maskOf(owner: Int32Array, expert: number): Float32Array {
  const m = new Float32Array(owner.length);
  for (let i = 0; i < owner.length; i++) if (owner[i] === expert) m[i] = 1;
  return m;
}

/** One projection of the adapter: a single dense layer every expert uses, or one masked copy per expert. */
export class ExpertLinear extends Module {
  constructor(
    readonly weight: Tensor[],
    readonly bias: Tensor[],
    /** The expert that owns each weight entry (split projections), null for a shared one. */
    readonly expertOf: Int32Array | null,
  ) {
    super();
    if (expertOf) weight.forEach((w, i) => (w.gradMask = maskOf(expertOf, i)));
  }

  get split(): boolean {
    return this.expertOf !== null;
  }

  /** The layer expert k runs. */
  expert(k: number): Linear {
    const i = this.split ? k : 0;
    return new Linear(this.weight[i]!, this.bias[i]!);
  }

  /** The layer of the merged adapter (differentiable: gradients reach every expert). */
  merged(): Linear {
    return this.split ? new Linear(mean(this.weight), mean(this.bias)) : this.expert(0);
  }

  /** Give every entry its owner again (from a checkpoint) and the experts their masks. */
  assign(owner: Int32Array): void {
    this.expertOf!.set(owner);
    this.weight.forEach((w, i) => (w.gradMask = maskOf(owner, i)));
  }
}

export class MosaDelta extends Module implements LayerDelta {
  adapter_ln: { weight: Tensor; bias: Tensor } | null = null;

  constructor(
    readonly adapterName: string,
    public adapter_down: ExpertLinear,
    public adapter_up: ExpertLinear,
    readonly config: MosaConfig,
    ln: { weight: Tensor; bias: Tensor } | null,
  ) {
    super();
    if (ln) this.adapter_ln = ln;
  }

  override namedParameters(prefix = ''): [string, Tensor][] {
    return withLayerNorm(super.namedParameters(prefix), prefix, this.adapter_ln);
  }

  /** The ordinary bottleneck adapter of expert k, or (null) the merged one. */
  bottleneck(k: number | null): BottleneckDelta {
    const pick = (p: ExpertLinear) => (k === null ? p.merged() : p.expert(k));
    return new BottleneckDelta(this.adapterName, pick(this.adapter_down), pick(this.adapter_up), this.config, this.adapter_ln);
  }

  apply(x: Tensor, y: Tensor): Tensor {
    return this.bottleneck(isTraining() ? defaultRng.int(this.config.num_experts) : null).apply(x, y);
  }
}

type ObjectiveStep = Parameters<NonNullable<AdapterInstance['objective']>>[0];

/** CE of the first pass plus the symmetric KL between two passes, each pulled toward the other held fixed. */
export function consistencyObjective(step: ObjectiveStep, weight: number): Tensor {
  const o1 = step.logits();
  const o2 = step.logits();
  const lp1 = logSoftmax(o1);
  const lp2 = logSoftmax(o2);
  const t1 = detach(lp1);
  const t2 = detach(lp2);
  const last = o1.ndim - 1;
  // the KL of each position, summed over the vocabulary
  const kl = add(sum(mul(exp(t2), sub(t2, lp1)), last), sum(mul(exp(t1), sub(t1, lp2)), last));
  if (step.weights) {
    // averaged over the positions the data loss counts (not padding or prompt)
    const w = step.weights;
    const n = Math.max(1, (w.toArray() as Float32Array).reduce((a, b) => a + b, 0));
    return add(step.loss(o1), mul(sum(mul(kl, w)), (0.5 * weight) / n));
  }
  return add(step.loss(o1), mul(sum(kl), (0.5 * weight) / kl.size));
}

const PROJECTIONS = ['adapter_down', 'adapter_up'] as const;

class MosaAdapter implements AdapterInstance {
  readonly method = MOSA;
  readonly deltas = new Map<string, MosaDelta>();
  objective?: (step: ObjectiveStep) => Tensor;

  constructor(readonly name: string, readonly config: MosaConfig) {
    // without the term a step is the plain single pass, so no objective is offered then
    if (config.consistency_weight > 0) this.objective = (step) => consistencyObjective(step, config.consistency_weight);
  }

  parameters(): Tensor[] {
    return [...this.deltas.values()].flatMap((d) => d.parameters());
  }

  /** The merged adapter under bottleneck keys. */
  stateDict(): Map<string, Tensor> {
    return noGrad(() => deltaStateDict(new Map([...this.deltas].map(([p, d]) => [p, d.bottleneck(null)]))));
  }

  /** A bottleneck adapter's weights: shared parts take them, every expert of a split one a copy. */
  loadStateDict(tensors: Map<string, Tensor>, source: string): void {
    const into = new Map<string, Tensor>();
    const copies: [Tensor, Tensor[]][] = [];
    for (const [path, d] of this.deltas) {
      for (const proj of PROJECTIONS) {
        const e = d[proj];
        for (const field of ['weight', 'bias'] as const) {
          const list = e[field];
          if (!e.split) {
            into.set(peftKey(path, `${proj}.${field}`), list[0]!);
            continue;
          }
          const tmp = zeros(list[0]!.shape);
          into.set(peftKey(path, `${proj}.${field}`), tmp);
          copies.push([tmp, list]);
        }
      }
      if (d.adapter_ln) {
        into.set(peftKey(path, 'adapter_ln.weight'), d.adapter_ln.weight);
        into.set(peftKey(path, 'adapter_ln.bias'), d.adapter_ln.bias);
      }
    }
    loadInto(into, tensors, source);
    for (const [tmp, list] of copies) {
      const v = tmp.toArray() as Float32Array;
      for (const p of list) (p.storage.data as Float32Array).set(v, p.offset);
    }
  }

  configJson(): RawAdapterConfig {
    const c = this.config;
    return {
      ...baseJson(c), peft_type: 'BOTTLENECK', adapter_type: c.adapter_type, bottleneck_size: c.bottleneck_size, layer_norm: c.layer_norm,
      non_linearity: c.non_linearity, reduction_factor: c.reduction_factor, residual: c.residual, scaling: c.scaling,
    };
  }

  private assignments(): Map<string, ExpertLinear> {
    const out = new Map<string, ExpertLinear>();
    for (const [path, d] of this.deltas) for (const proj of PROJECTIONS) if (d[proj].split) out.set(`${path}.${proj}.expert_of`, d[proj]);
    return out;
  }

  /** Every parameter under its name, and each split weight's expert of every entry. */
  checkpointState(): Map<string, Tensor> {
    const out = new Map<string, Tensor>();
    for (const p of this.parameters()) out.set(p.name!, p);
    for (const [k, e] of this.assignments()) out.set(k, fromBuffer(e.expertOf!.slice(), e.weight[0]!.shape));
    return out;
  }

  loadCheckpointState(tensors: Map<string, Tensor>, source: string): void {
    const owners = this.assignments();
    const params = new Map(this.parameters().map((p) => [p.name!, p]));
    const rest = new Map([...tensors].filter(([k]) => !owners.has(k)));
    const missing = [...owners.keys()].filter((k) => !tensors.has(k));
    if (missing.length) throw new AdaptkitError(`${source}: MoSA training state lacks the expert assignment ${missing.slice(0, 4).join(', ')}${missing.length > 4 ? ` and ${missing.length - 4} more` : ''}`);
    const n = this.config.num_experts;
    const checked = new Map<ExpertLinear, Int32Array>();
    for (const [k, e] of owners) {
      const t = tensors.get(k)!;
      const owner = Int32Array.from(t.toArray());
      const counts = new Array<number>(n).fill(0);
      let ok = t.dtype === 'i32' && owner.length === e.expertOf!.length;
      for (let i = 0; ok && i < owner.length; i++) {
        const x = owner[i]!;
        if (x < 0 || x >= n) ok = false;
        else counts[x]!++;
      }
      if (!ok || counts.some((c) => c === 0)) throw new AdaptkitError(`${source}: "${k}" is not an assignment of ${e.expertOf!.length} entries to ${n} experts that each own some`);
      checked.set(e, owner);
    }
    loadInto(params, rest, source);
    for (const [e, owner] of checked) e.assign(owner);
  }
}

function parameterCount(c: MosaConfig, targets: TargetInfo[]): number {
  const n = c.num_experts;
  return targets.reduce((s, t) => {
    const d = targetWidth(t);
    const m = bottleneckSize(c, d);
    const downs = c.share === 'down' ? 1 : n;
    const ups = c.share === 'up' ? 1 : n;
    return s + downs * (m * d + m) + ups * (d * m + d) + (c.layer_norm === 'none' ? 0 : 2 * d);
  }, 0);
}

export const MOSA: AdapterMethod = {
  peftType: 'MOSA',
  description: 'MoSA: a bottleneck adapter trained as random sparse experts, saved merged as a bottleneck adapter',
  kind: 'tuner',
  presets: [{
    name: 'mosa',
    description: 'MoSA: parallel GELU bottleneck adapters beside each feed-forward block, the up-projection split into sparse experts (reduction factor 4, 4 experts)',
    config: (o) => ({
      peft_type: 'MOSA', adapter_type: 'parallel', non_linearity: 'gelu', reduction_factor: num(o, 'reduction-factor', 4), num_experts: num(o, 'experts', 4), share: 'down',
      ...targetsOption(o, undefined),
    }),
  }],
  options: [REDUCTION_FACTOR, EXPERTS, TARGETS],
  // the saved adapter is a bottleneck adapter, written as bottleneck.ts writes it
  floatKeys: ['scaling'],
  summary: (cfg) => {
    const c = cfg as MosaConfig;
    return { adapter_type: c.adapter_type, reduction_factor: c.reduction_factor, bottleneck_size: c.bottleneck_size, num_experts: c.num_experts, share: c.share, consistency_weight: c.consistency_weight };
  },
  parseConfig: (raw, source) => parseMosa(raw, source),
  defaultTargets: (model, cfg) => placementTargets(model, (cfg as MosaConfig).adapter_type),
  create(name, cfg: BaseAdapterConfig, targets, ctx) {
    const c = cfg as MosaConfig;
    const n = c.num_experts;
    const inst = new MosaAdapter(name, c);
    // the down-projections come first from the seed, drawn as a plain bottleneck adapter draws them
    const inits = targets.map((t) => {
      const d = targetWidth(t);
      const m = bottleneckSize(c, d);
      return { t, d, m, down: randn([m, d], { std: 0.02, rng: ctx.rng }) };
    });
    const maskRng = new Rng(ctx.rng.nextU32());
    for (const { t, d, m, down } of inits) {
      const projection = (proj: (typeof PROJECTIONS)[number], w0: Tensor, outputs: number): ExpertLinear => {
        const key = `${t.path}.${proj}`;
        if (c.share === (proj === 'adapter_down' ? 'down' : 'up')) {
          return new ExpertLinear([parameter(w0, `${key}.weight`)], [parameter(zeros([outputs]), `${key}.bias`)], null);
        }
        if (w0.size < n) {
          throw new AdapterConfigError(`"num_experts" is ${n}, but ${key}.weight has only ${w0.size} entries, so some expert would own none; use at most ${w0.size} experts or a wider bottleneck`);
        }
        const owner = partitionEntries(w0.size, n, maskRng);
        const weight = Array.from({ length: n }, (_, i) => parameter(noGrad(() => clone(w0)), `${key}.experts.${i}.weight`));
        const bias = Array.from({ length: n }, (_, i) => parameter(zeros([outputs]), `${key}.experts.${i}.bias`));
        return new ExpertLinear(weight, bias, owner);
      };
      const dn = projection('adapter_down', down, m);
      const up = projection('adapter_up', zeros([d, m]), d);
      const ln = c.layer_norm === 'none' ? null : { weight: parameter(ones([d]), `${t.path}.adapter_ln.weight`), bias: parameter(zeros([d]), `${t.path}.adapter_ln.bias`) };
      inst.deltas.set(t.path, new MosaDelta(name, dn, up, c, ln));
    }
    return inst;
  },
  countParameters: (cfg, targets) => parameterCount(cfg as MosaConfig, targets),
};

registerMethod(MOSA);
