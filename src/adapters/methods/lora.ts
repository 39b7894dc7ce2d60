/**
 * LoRA (Hu et al. 2021) and its variants: rsLoRA scaling (alpha/sqrt(r)), DoRA (weight-decomposed:
 * a learned magnitude per output over the direction of W + sBA), rank/alpha patterns, dropout,
 * bias modes, GPT-2 Conv1D layout (fan_in_fan_out), and the initializations default (Kaiming-uniform
 * A, zero B), gaussian, PiSSA (principal singular vectors of W, residual frozen) and CorDA (SVD of
 * W·C with C the input covariance; "kpm" adapts the smallest components, "ipm" the largest).
 *
 * PEFT keys: <path>.lora_A.weight [r, in], <path>.lora_B.weight [out, r],
 * <path>.lora_magnitude_vector [out] (DoRA), <path>.bias with bias "all"/"lora_only".
 */
import {
  AdaptkitError, type Tensor, add, addmm, concat, contiguous, dropout, narrow, fromBuffer, indexSelect, inverse, linear, matmul, matmul64, mul, noGrad,
  parameter, rand, randn, reshape, sqrt, sum, svd, transpose, zeros, div, clone,
} from '../../tensor/index.js';
import { Linear, type LinearLayer, Module, QuantLinear, isLinearLayer, productNoBias, weightOutIn } from '../../nn/index.js';
import { baseJson, showValue, numberMap, optBool, optInt, optNumber, parseBase, patternValue } from '../config.js';
import { registerMethod } from '../registry.js';
import { loadInto } from '../state.js';
import { peftKey, splitPeftKey } from '../files.js';
import { ALPHA, DROPOUT, RANK, TARGETS, num, targetsOption } from '../options.js';
import { combineLora, LORA_COMBINATIONS } from './lora-combine.js';
import {
  type AdapterInstance, type AdapterMethod, type BaseAdapterConfig, type CreateContext, type LayerDelta, type MethodPreset,
  type LowRankFactors, type PresetOptions, type RawAdapterConfig, type RowBatchedForm, RowRouting, type TargetInfo,
} from '../types.js';

export type LoraInit = 'default' | 'gaussian' | 'pissa' | 'corda' | 'zeros';

export interface LoraConfig extends BaseAdapterConfig {
  r: number;
  lora_alpha: number;
  lora_dropout: number;
  bias: 'none' | 'all' | 'lora_only';
  fan_in_fan_out: boolean;
  use_rslora: boolean;
  use_dora: boolean;
  rank_pattern: Record<string, number>;
  alpha_pattern: Record<string, number>;
  init: LoraInit;
  /** init_lora_weights as written in the file (true, false, "gaussian", "pissa", "corda", ...). */
  init_lora_weights: unknown;
  corda_mode: 'kpm' | 'ipm';
}

function parseInit(v: unknown, source: string): LoraInit {
  if (v === undefined || v === null || v === true) return 'default';
  if (v === false) return 'zeros';
  if (v === 'gaussian') return 'gaussian';
  if (v === 'pissa' || (typeof v === 'string' && v.startsWith('pissa_niter_'))) return 'pissa';
  if (v === 'corda') return 'corda';
  throw new AdaptkitError(`${source}: init_lora_weights ${showValue(v)} is not supported (true, false, "gaussian", "pissa", "corda")`);
}

export function parseLoraConfig(raw: RawAdapterConfig, source: string): LoraConfig {
  const base = parseBase(raw, 'LORA', source);
  const bias = raw.bias ?? 'none';
  if (bias !== 'none' && bias !== 'all' && bias !== 'lora_only') throw new AdaptkitError(`${source}: "bias" must be "none", "all" or "lora_only", got ${showValue(bias)}`);
  const dropoutP = optNumber(raw, 'lora_dropout', 0, source, 0);
  if (dropoutP >= 1) throw new AdaptkitError(`${source}: "lora_dropout" must be below 1, got ${dropoutP}`);
  const cordaCfg = raw.corda_config as { corda_method?: string } | null | undefined;
  const r = optInt(raw, 'r', 8, source, 1);
  return {
    ...base,
    r,
    lora_alpha: optNumber(raw, 'lora_alpha', 8, source),
    lora_dropout: dropoutP,
    bias,
    fan_in_fan_out: optBool(raw, 'fan_in_fan_out', false, source),
    use_rslora: optBool(raw, 'use_rslora', false, source),
    use_dora: optBool(raw, 'use_dora', false, source),
    rank_pattern: numberMap(raw, 'rank_pattern', source, 1),
    alpha_pattern: numberMap(raw, 'alpha_pattern', source),
    init: parseInit(raw.init_lora_weights, source),
    init_lora_weights: raw.init_lora_weights ?? true,
    corda_mode: cordaCfg?.corda_method === 'kpm' ? 'kpm' : 'ipm',
  };
}

/** r and scaling for one target (rank_pattern / alpha_pattern override r / lora_alpha). */
export function rankAndScale(c: LoraConfig, path: string): { r: number; scale: number } {
  const r = patternValue(c.rank_pattern, path) ?? c.r;
  const alpha = patternValue(c.alpha_pattern, path) ?? c.lora_alpha;
  return { r, scale: c.use_rslora ? alpha / Math.sqrt(r) : alpha / r };
}

/** The low-rank delta sBA (+ DoRA's rescaling) on one layer. */
export class LoraDelta extends Module implements LayerDelta {
  lora_magnitude_vector: Tensor | null = null;
  bias: Tensor | null = null;

  constructor(
    readonly adapterName: string,
    public lora_A: Tensor,
    public lora_B: Tensor,
    readonly scale: number,
    readonly dropoutP: number,
    base: LinearLayer,
  ) {
    super();
    this.#base = base;
  }

  /** The base layer (DoRA needs its weight); private so it is not a child in the module tree. */
  readonly #base: LinearLayer;

  get base(): LinearLayer {
    return this.#base;
  }

  /** s·B·A as [out, in]. */
  deltaWeight(): Tensor {
    return mul(matmul(this.lora_B, this.lora_A), this.scale);
  }

  /** DoRA's output rescaling m / ||W + sBA|| (detached), as used at inference. */
  doraRatio(): Tensor {
    return noGrad(() => div(this.lora_magnitude_vector!, this.weightNorm()));
  }

  /** Row norms of W + sBA, detached (as DoRA prescribes). */
  weightNorm(): Tensor {
    const base = this.base;
    // a quantized base: from its packed rows, with no float copy of W (or of BA)
    if (base instanceof QuantLinear) {
      return fromBuffer(base.lowRankRowNorms(this.lora_B.toArray() as Float32Array, this.lora_A.toArray() as Float32Array, this.lora_A.shape[0]!, this.scale), [base.outFeatures]);
    }
    return noGrad(() => {
      const w = add(weightOutIn(this.base), this.deltaWeight());
      return sqrt(sum(mul(w, w), 1));
    });
  }

  apply(x: Tensor, y: Tensor): Tensor {
    const xd = this.dropoutP > 0 ? dropout(x, this.dropoutP) : x;
    if (!this.lora_magnitude_vector && !this.bias) {
      // y + s·(x Aᵀ) Bᵀ with the big product accumulated straight into the output
      return addmm(y, mul(linear(xd, this.lora_A), this.scale), transpose(this.lora_B));
    }
    let lora = mul(linear(linear(xd, this.lora_A), this.lora_B), this.scale);
    if (this.lora_magnitude_vector) {
      // y = (m/||W+sBA||) (xWᵀ + s xAᵀBᵀ) + b, written as a correction of the base output y
      const ratio = div(this.lora_magnitude_vector, this.weightNorm());
      const baseNoBias = productNoBias(this.base, xd);
      lora = add(mul(baseNoBias, add(ratio, -1)), mul(lora, ratio));
    }
    let out = add(y, lora);
    // a trained bias replaces the base layer's bias
    if (this.bias) out = add(out, this.base.bias ? add(this.bias, mul(this.base.bias, -1)) : this.bias);
    return out;
  }

  mergeWeight(weight: Tensor): Tensor {
    return noGrad(() => {
      let w = add(weightOutIn(new Linear(weight, null, this.base.fanInFanOut)), this.deltaWeight());
      if (this.lora_magnitude_vector) {
        const norm = sqrt(sum(mul(w, w), 1, true));
        w = mul(div(w, norm), reshape(this.lora_magnitude_vector, [-1, 1]));
      }
      return clone(this.base.fanInFanOut ? transpose(w) : w);
    });
  }

  mergeBias(bias: Tensor | null): Tensor | null {
    if (!this.bias) return bias;
    return noGrad(() => clone(this.bias!));
  }
}

function kaimingA(r: number, inF: number, ctx: CreateContext): Tensor {
  const bound = 1 / Math.sqrt(inF);
  return rand([r, inF], { low: -bound, high: bound, rng: ctx.rng });
}

/** SVD-based init: returns A, B and the residual base weight [out, in]. */
function svdInit(w: Tensor, r: number, scale: number, mode: 'largest' | 'smallest', cov: Float64Array | null): { A: Tensor; B: Tensor; residual: Tensor } {
  const [out, inF] = w.shape as [number, number];
  const W = Float64Array.from(w.toArray());
  // CorDA decomposes W·C and maps back with C⁻¹; PiSSA decomposes W itself
  const target = cov ? matmul64(W, cov, out, inF, inF) : W;
  const d = svd(target, out, inF);
  const k = d.k;
  if (r > k) throw new AdaptkitError(`rank ${r} exceeds min(out, in) = ${k}`);
  const idx = mode === 'largest' ? Array.from({ length: r }, (_, i) => i) : Array.from({ length: r }, (_, i) => k - r + i);
  const cinv = cov ? inverse(cov, inF) : null;
  const A = new Float32Array(r * inF);
  const B = new Float32Array(out * r);
  idx.forEach((c, j) => {
    const sv = Math.sqrt(d.s[c]! / scale);
    // row j of A: sqrt(s) vᵀ (· C⁻¹ for CorDA); column j of B: sqrt(s) u
    const vrow = new Float64Array(inF);
    for (let i = 0; i < inF; i++) vrow[i] = d.v[i * k + c]!;
    const arow = cinv ? matmul64(vrow, cinv, 1, inF, inF) : vrow;
    for (let i = 0; i < inF; i++) A[j * inF + i] = sv * arow[i]!;
    for (let i = 0; i < out; i++) B[i * r + j] = sv * d.u[i * k + c]!;
  });
  const At = fromBuffer(A, [r, inF]);
  const Bt = fromBuffer(B, [out, r]);
  const residual = noGrad(() => clone(add(w, mul(matmul(Bt, At), -scale))));
  return { A: At, B: Bt, residual };
}

export class LoraAdapter implements AdapterInstance {
  readonly method = LORA;
  readonly deltas = new Map<string, LoraDelta>();
  readonly residualBase = new Map<string, Linear>();
  /** A₀, B₀ of an SVD initialization, by target path. */
  readonly initial = new Map<string, { A: Tensor; B: Tensor }>();

  constructor(readonly name: string, readonly config: LoraConfig) {}

  parameters(): Tensor[] {
    return [...this.deltas.values()].flatMap((d) => d.parameters());
  }

  /** The trained parameters under their keys. */
  private params(): Map<string, Tensor> {
    const out = new Map<string, Tensor>();
    for (const [path, d] of this.deltas) {
      out.set(peftKey(path, 'lora_A.weight'), d.lora_A);
      out.set(peftKey(path, 'lora_B.weight'), d.lora_B);
      if (d.lora_magnitude_vector) out.set(peftKey(path, 'lora_magnitude_vector'), d.lora_magnitude_vector);
      if (d.bias) out.set(peftKey(path, 'base_layer.bias'), d.bias);
    }
    return out;
  }

  /**
   * The saved tensors. A PiSSA/CorDA adapter trains over a residual base W - s·B₀A₀ that a
   * saved adapter cannot carry, so it is saved converted, as PEFT converts it: a LoRA of rank 2r
   * over the original weights, A' = [A; A₀], B' = [B, -B₀], which adds s(BA - B₀A₀).
   */
  stateDict(): Map<string, Tensor> {
    if (this.initial.size === 0) return this.params();
    if (this.config.use_dora) throw new AdaptkitError(`adapter "${this.name}": a DoRA adapter with ${this.config.init} initialization cannot be saved for the original weights`);
    const out = new Map<string, Tensor>();
    noGrad(() => {
      for (const [path, d] of this.deltas) {
        const i = this.initial.get(path)!;
        out.set(peftKey(path, 'lora_A.weight'), concat([d.lora_A, i.A], 0));
        out.set(peftKey(path, 'lora_B.weight'), concat([d.lora_B, mul(i.B, -1)], 1));
        if (d.bias) out.set(peftKey(path, 'base_layer.bias'), d.bias);
      }
    });
    return out;
  }

  loadStateDict(tensors: Map<string, Tensor>, source: string): void {
    if (this.initial.size === 0) return loadInto(this.params(), tensors, source);
    // a converted file (see stateDict): the trained factors are the first r rows / columns
    const own = new Map<string, Tensor>();
    for (const [k, t] of tensors) {
      if (k.endsWith('.lora_A.weight')) own.set(k, narrow(t, 0, 0, t.shape[0]! / 2));
      else if (k.endsWith('.lora_B.weight')) own.set(k, contiguous(narrow(t, 1, 0, t.shape[1]! / 2)));
      else own.set(k, t);
    }
    loadInto(this.params(), own, source);
  }

  configJson(): RawAdapterConfig {
    const c = this.config;
    // the converted form of an SVD initialization has twice the rank and the same scaling
    const conv = this.initial.size > 0;
    const rk = (r: number) => (conv ? 2 * r : r);
    const al = (a: number) => (conv ? (c.use_rslora ? a * Math.SQRT2 : 2 * a) : a);
    const mapValues = (m: Record<string, number>, f: (v: number) => number) => Object.fromEntries(Object.entries(m).map(([k, v]) => [k, f(v)]));
    return {
      ...baseJson(c),
      alpha_pattern: mapValues(c.alpha_pattern, al),
      bias: c.bias,
      fan_in_fan_out: c.fan_in_fan_out,
      init_lora_weights: conv ? true : c.init_lora_weights,
      layer_replication: null,
      loftq_config: {},
      lora_alpha: al(c.lora_alpha),
      lora_dropout: c.lora_dropout,
      megatron_config: null,
      megatron_core: 'megatron.core',
      r: rk(c.r),
      rank_pattern: mapValues(c.rank_pattern, rk),
      use_dora: c.use_dora,
      use_rslora: c.use_rslora,
    };
  }
}

function create(name: string, cfg: BaseAdapterConfig, targets: TargetInfo[], ctx: CreateContext): AdapterInstance {
  const c = cfg as LoraConfig;
  const inst = new LoraAdapter(name, c);
  for (const t of targets) {
    if (!isLinearLayer(t.module)) throw new AdaptkitError(`LoRA targets linear layers; "${t.path}" is a ${t.module.constructor.name}`);
    let base: LinearLayer = t.module;
    // a quantized layer's packed weight is [out, in] whatever the float layout was, and A and B have the same shapes either way
    if (!(base instanceof QuantLinear) && c.fan_in_fan_out !== base.fanInFanOut) {
      throw new AdaptkitError(`"${t.path}" stores its weight ${base.fanInFanOut ? '[in, out] (Conv1D)' : '[out, in]'}: set fan_in_fan_out to ${base.fanInFanOut}`);
    }
    const { r, scale } = rankAndScale(c, t.path);
    const inF = base.inFeatures;
    const outF = base.outFeatures;
    let A: Tensor;
    let B: Tensor;
    if ((c.init === 'pissa' || c.init === 'corda') && base instanceof QuantLinear) {
      throw new AdaptkitError(`"${t.path}" is quantized (${base.format}): a ${c.init} initialization would change its frozen weight to a residual that needs requantizing; use the default initialization on a quantized base`);
    }
    if (c.init === 'pissa' || c.init === 'corda') {
      const cov = c.init === 'corda' ? ctx.covariance?.get(t.path) : null;
      if (c.init === 'corda' && !cov) throw new AdaptkitError(`CorDA needs calibration data: no input covariance for "${t.path}"`);
      const w = noGrad(() => clone(weightOutIn(base)));
      const mode = c.init === 'pissa' || c.corda_mode === 'ipm' ? 'largest' : 'smallest';
      const res = svdInit(w, r, scale, mode, cov ?? null);
      w.dispose();
      A = res.A;
      B = res.B;
      const resW = base.fanInFanOut ? noGrad(() => clone(transpose(res.residual))) : res.residual;
      base = new Linear(resW.keep(), base.bias, base.fanInFanOut);
      inst.residualBase.set(t.path, base);
      inst.initial.set(t.path, { A: noGrad(() => clone(A)).keep(), B: noGrad(() => clone(B)).keep() });
    } else {
      A = c.init === 'gaussian' ? randn([r, inF], { std: 1 / r, rng: ctx.rng }) : c.init === 'zeros' ? zeros([r, inF]) : kaimingA(r, inF, ctx);
      B = zeros([outF, r]);
    }
    const d = new LoraDelta(name, parameter(A, `${t.path}.lora_A`), parameter(B, `${t.path}.lora_B`), scale, c.lora_dropout, base);
    if (c.use_dora) d.lora_magnitude_vector = parameter(noGrad(() => clone(d.weightNorm())), `${t.path}.lora_magnitude_vector`);
    if (c.bias !== 'none') d.bias = parameter(base.bias ? noGrad(() => clone(base.bias!)) : zeros([outF]), `${t.path}.bias`);
    inst.deltas.set(t.path, d);
  }
  return inst;
}

/**
 * Many LoRA adapters in one batch: per target, stacks A [slots, R, in], B [slots, out, R] and the
 * scale (zero-padded to the largest rank R); DoRA and trained biases (key "full") add the DoRA
 * rescaling [slots, out] and the bias change [slots, out].
 */
export class RowLoraDelta extends Module implements LayerDelta {
  readonly adapterName = '*rows*';

  constructor(readonly stacks: Record<string, Tensor>, readonly routing: RowRouting, readonly baseBias: Tensor | null) {
    super();
  }

  apply(x: Tensor, y: Tensor): Tensor {
    const rows = this.routing.rows;
    if (!rows) throw new AdaptkitError('a row-batched layer ran without row routing');
    const B = x.shape[0]!;
    if (rows.shape[0] !== B) throw new AdaptkitError(`row routing has ${rows.shape[0]} rows, the batch has ${B}`);
    const x3 = x.ndim === 3 ? x : reshape(x, [B, 1, -1]);
    const st = this.stacks;
    // each row's update, or for a mixture the weighted sum of its slots' updates
    const part = (r: Tensor, w: Tensor | null) => {
      const a = indexSelect(st.A!, 0, r);
      const b = indexSelect(st.B!, 0, r);
      let s = indexSelect(st.scale!, 0, r);
      if (w) s = mul(reshape(s, [B]), w);
      return matmul(mul(matmul(x3, transpose(a)), reshape(s, [B, 1, 1])), transpose(b));
    };
    let d = part(rows, this.routing.weights);
    for (const m of this.routing.more) d = add(d, part(m.rows, m.weights));
    if (x.ndim !== 3) d = reshape(d, y.shape);
    if (!st.ratio) return add(y, d);
    const shape = x.ndim === 3 ? [B, 1, -1] : [B, -1];
    const ratio = reshape(indexSelect(st.ratio, 0, rows), shape);
    const bias = reshape(indexSelect(st.bias!, 0, rows), shape);
    // DoRA: (m/||W+sBA||)·(xWᵀ + s·xAᵀBᵀ) written as a correction of y = xWᵀ + b
    const xw = this.baseBias ? add(y, mul(this.baseBias, -1)) : y;
    return add(add(add(y, mul(xw, add(ratio, -1))), mul(d, ratio)), bias);
  }
}

function rankOf(d: LoraDelta): number {
  return d.lora_A.shape[0]!;
}

const ROWS: RowBatchedForm = {
  key: (inst) => ((inst as LoraAdapter).config.use_dora || (inst as LoraAdapter).config.bias !== 'none' ? 'full' : 'plain'),
  // plain LoRA updates add up: a mixture is the weighted sum of its adapters' sBA
  mixable: (key) => key === 'plain',
  sizes: (inst) => ({ r: Math.max(0, ...[...(inst as LoraAdapter).deltas.values()].map(rankOf)) }),
  limits: (_key, maxRank) => ({ r: maxRank }),
  layout(layer, sizes, key) {
    const R = sizes.r!;
    const out = {
      A: { shape: [R, layer.inFeatures], identity: 0 },
      B: { shape: [layer.outFeatures, R], identity: 0 },
      scale: { shape: [1], identity: 0 },
    };
    return key === 'full' ? { ...out, ratio: { shape: [layer.outFeatures], identity: 1 }, bias: { shape: [layer.outFeatures], identity: 0 } } : out;
  },
  write(inst, path, slot, sizes) {
    const d = (inst as LoraAdapter).deltas.get(path)!;
    const R = sizes.r!;
    const r = rankOf(d);
    const outF = d.lora_B.shape[0]!;
    slot.A!.set(d.lora_A.toArray() as Float32Array); // rows 0..r-1 of [R, in]
    const b = d.lora_B.toArray() as Float32Array;
    for (let o = 0; o < outF; o++) slot.B!.set(b.subarray(o * r, (o + 1) * r), o * R);
    slot.scale![0] = d.scale;
    if (slot.ratio) {
      if (d.lora_magnitude_vector) slot.ratio.set(d.doraRatio().toArray() as Float32Array);
      if (d.bias) {
        const trained = d.bias.toArray() as Float32Array;
        const base = d.base.bias ? (d.base.bias.toArray() as Float32Array) : null;
        for (let o = 0; o < outF; o++) slot.bias![o] = trained[o]! - (base ? base[o]! : 0);
      }
    }
  },
  delta: (layer, stacks, routing) => new RowLoraDelta(stacks, routing, layer.bias),
};

function preset(name: string, description: string, extra: RawAdapterConfig): MethodPreset {
  return {
    name,
    description,
    config: (o: PresetOptions, model) => {
      const r = num(o, 'r', 8);
      return {
        peft_type: 'LORA', r, lora_alpha: num(o, 'alpha', 2 * r), lora_dropout: num(o, 'dropout', 0), fan_in_fan_out: model.fanInFanOut,
        ...targetsOption(o, 'all-linear'), ...extra,
      };
    },
  };
}

export const LORA: AdapterMethod = {
  peftType: 'LORA',
  description: 'low-rank updates sBA of linear weights (Hu et al. 2021), with rsLoRA, DoRA, PiSSA and CorDA',
  kind: 'tuner',
  parseConfig: parseLoraConfig,
  create,
  presets: [
    preset('lora', 'LoRA on every linear layer (r 8, alpha 2r)', {}),
    preset('rslora', 'LoRA with rank-stabilized scaling alpha/sqrt(r)', { use_rslora: true }),
    preset('dora', 'DoRA: a learned magnitude per output over the direction of W + sBA', { use_dora: true }),
    preset('pissa', 'LoRA initialized from the principal singular vectors of W (the residual stays frozen)', { init_lora_weights: 'pissa' }),
  ],
  options: [RANK, ALPHA, DROPOUT, TARGETS],
  floatKeys: ['lora_dropout', 'lora_alpha'],
  lowRank(raw, tensors, source) {
    const c = parseLoraConfig(raw, source);
    if (c.use_dora) throw new AdaptkitError(`${source}: use_dora is true: plain low-rank factors hold no DoRA magnitudes (merge the adapter into the model instead)`);
    if (c.bias !== 'none') throw new AdaptkitError(`${source}: bias is "${c.bias}": plain low-rank factors hold no trained biases`);
    if (c.modules_to_save?.length) throw new AdaptkitError(`${source}: modules_to_save (${c.modules_to_save.join(', ')}): plain low-rank factors hold no full module copies`);
    const factors: LowRankFactors[] = [];
    for (const [key, a] of tensors) {
      if (splitPeftKey(key, 'lora_B.weight') !== null) continue;
      const mod = splitPeftKey(key, 'lora_A.weight');
      if (mod === null) throw new AdaptkitError(`${source}: tensor ${key} is not a low-rank factor (only lora_A and lora_B of linear layers are)`);
      const b = tensors.get(key.replace(/lora_A\.weight$/, 'lora_B.weight'));
      if (!b) throw new AdaptkitError(`${source}: ${key} has no lora_B.weight`);
      if (a.ndim !== 2 || b.ndim !== 2 || b.shape[1] !== a.shape[0]) throw new AdaptkitError(`${source}: ${mod}: lora_A [${a.shape.join(', ')}] and lora_B [${b.shape.join(', ')}] are not [r, in] and [out, r]`);
      factors.push({ module: mod, a: Float32Array.from(a.toArray()), b: Float32Array.from(b.toArray()), r: a.shape[0]!, scale: rankAndScale(c, mod).scale });
    }
    return { alpha: c.lora_alpha, factors };
  },
  prepareLoad(raw) {
    // a saved PiSSA/CorDA adapter is plain LoRA over the base it was saved for: its SVD already ran
    return {
      config: { ...raw, init_lora_weights: true },
      finish: (inst) => Object.assign(inst.config, { init_lora_weights: raw.init_lora_weights ?? true }),
    };
  },
  mergeable: true,
  rowBatched: ROWS,
  combine: (target, names, weights, newName, o) => combineLora(target, names, weights, newName, o),
  combinations: LORA_COMBINATIONS,
  summary(cfg) {
    const c = cfg as LoraConfig;
    return { r: c.r, lora_alpha: c.lora_alpha, use_rslora: c.use_rslora, use_dora: c.use_dora, init_lora_weights: c.init_lora_weights };
  },
  countParameters(cfg, targets) {
    const c = cfg as LoraConfig;
    let n = 0;
    for (const t of targets) {
      const m = t.module as Linear;
      const { r } = rankAndScale(c, t.path);
      n += r * (m.inFeatures + m.outFeatures);
      if (c.use_dora) n += m.outFeatures;
      if (c.bias !== 'none') n += m.outFeatures;
    }
    return n;
  },
};

registerMethod(LORA);
