/**
 * Generative Adapter ("Generative Adapter: Contextualizing Language Models in Parameters with A
 * Single Forward Pass", ICLR'25): a generator that turns a context into a LoRA with one forward
 * pass of the frozen base model.
 *
 * Per target linear layer W (d_in → d_out; by default the attention output projection, role
 * attn.o, of every layer) the generator has A1 [R1, d_in], A2 [R1, D], A3 [R2, D],
 * B [d_out, R2] and an RMSNorm weight g [D], D the model width. The base model alone reads the
 * context, and the states h_t entering the target's decoder layer are kept: they are captured as
 * the input of the block's first norm (descriptor role block.input_norm), i.e. the residual
 * stream, as the authors' decoder layer captures its input, not the target's own input (for
 * o_proj that would be the attention output). With ĥ_t = RMSNorm_g(h_t) and m_t the context mask
 * (0 at padding):
 *   Σ = Σ_t m_t (A2 ĥ_t)(A3 ĥ_t)ᵀ ∈ R^{R1×R2},   S = Σ / ‖Σ‖_F ("frobenius") or Σ / σ_max(Σ) ("spectral"),
 *   y = W x + (α / R2) · B Sᵀ A1 x.
 * That is exactly the LoRA lora_A = Sᵀ A1 [R2, d_in], lora_B = B with r = R2, lora_alpha = α
 * (scale alpha / r), which `generated()` returns as a PEFT LORA config and tensors. The authors
 * scale by α / fastlora_r with R1 = R2 = fastlora_r; α / R2 is that scale, and it makes the
 * generated LoRA's own r and lora_alpha the generator's R2 and α. The spectral norm's σ_max comes
 * from an SVD of Σ and enters as uᵀΣv with the singular vectors held fixed, which is its exact
 * gradient.
 *
 * Contexts: `condition(am, ids, mask)` keeps the captured states (C context rows: one context
 * for every batch row when C = 1, else one per row) and every forward computes S from them, so
 * gradients reach A2, A3 and g through S. Without a context the adapter changes nothing (there is
 * nothing to generate from): a freshly created or loaded generator is the base model until it is
 * given one. A context row must hold a token.
 *
 * Training (the authors' reconstruction pretraining, as `objective`): the tokens t of each batch
 * row become the sequence t ⊕ t (the text, then its copy). The text and the copy are each cut
 * into windows of `window` tokens (the copy starts a window of its own, so a window of the copy
 * never sees the text through attention), and window k runs as a sequence of its own from
 * position 0 with the adapter generated from every token before it (the base reads that prefix
 * as one sequence). Window 0 has no context, so no adapter and no loss (nothing of the generator
 * changes it); the loss is the next-token loss inside windows 1, 2, ... Only the generator
 * trains. Gradient checkpointing recomputes the step's blocks during backward, so the contexts
 * of a step's windows stay set for training-scope forwards until the next step.
 *
 * Config (peft_type "GENERATIVE_ADAPTER", adaptkit's own: PEFT and AdapterHub have no such type):
 *   r1         integer >= 1, default 32: R1 (the authors' CPU plan: R1 = R2 = 32)
 *   r2         integer >= 1, default r1: R2, the rank of the generated LoRA
 *   alpha      number, default 2·r2 (the authors' config defaults r 32, alpha 64)
 *   core_norm  "frobenius" (default) or "spectral"
 *   window     integer >= 2, default 64: training window in tokens
 * Saved keys: <path>.generator_A1.weight [R1, d_in], <path>.generator_A2.weight [R1, D],
 * <path>.generator_A3.weight [R2, D], <path>.generator_B.weight [d_out, R2],
 * <path>.generator_norm.weight [D]. Init: A1, A2, A3 Kaiming-normal (std sqrt(2 / fan_in),
 * PyTorch's kaiming_normal_ default), B zero (the identity at start), g ones; RMSNorm epsilon
 * 1e-6. Preset `generative-adapter`: --r1, --r2, --alpha, --window, --core-norm, --targets.
 * Not implemented: the authors' SVD normalization (every singular value set to 1) and their
 * streaming outer-product state; a context must fit the model's positions.
 */
import {
  AdaptkitError, type Rng, type Tensor, addmm, clone, crossEntropy, div, fromBuffer, indexSelect, inference, isTraining, linear, matmul, mul,
  noGrad, ones, parameter, randn, reshape, rmsNorm, sqrt, sum, svd, tensor, transpose, zeros,
} from '../../tensor/index.js';
import { type AdapterDescriptor, Linear, type LinearLike, Module, isLinearLayer } from '../../nn/index.js';
import { baseJson, optInt, optNumber, optString, parseBase } from '../config.js';
import { registerMethod } from '../registry.js';
import { loadInto } from '../state.js';
import { peftKey } from '../files.js';
import { ALPHA, TARGETS, num, targetsOption } from '../options.js';
import { baseModules, layerIndexOf, matches, roleTargets } from '../targets.js';
import { AdaptedLayer } from '../wrapper.js';
import type { AdapterModel } from '../adapter-model.js';
import type {
  AdapterInstance, AdapterMethod, BaseAdapterConfig, LayerDelta, MethodOption, RawAdapterConfig, TargetInfo,
} from '../types.js';

export type CoreNorm = 'frobenius' | 'spectral';

export interface GenerativeAdapterConfig extends BaseAdapterConfig {
  r1: number;
  r2: number;
  alpha: number;
  core_norm: CoreNorm;
  window: number;
}

const PEFT_TYPE = 'GENERATIVE_ADAPTER';
const NORM_EPS = 1e-6;
/** crossEntropy's default ignored target. */
const IGNORE = -100;

export function parseGenerativeAdapter(raw: RawAdapterConfig, source: string): GenerativeAdapterConfig {
  const base = parseBase(raw, PEFT_TYPE, source);
  const r1 = optInt(raw, 'r1', 32, source, 1);
  const r2 = optInt(raw, 'r2', r1, source, 1);
  return {
    ...base,
    r1,
    r2,
    alpha: optNumber(raw, 'alpha', 2 * r2, source),
    core_norm: optString(raw, 'core_norm', 'frobenius', ['frobenius', 'spectral'] as const, source),
    window: optInt(raw, 'window', 64, source, 2),
  };
}

/** The base model's layer-input states over a batch of contexts. */
export interface ContextStates {
  /** By layer index: [C, T, D]. */
  states: Map<number, Tensor>;
  /** [C, T, 1]: 1 for context tokens, 0 for padding. */
  mask: Tensor;
  rows: number;
}

/** What a generator's layers run: nothing (no context), or the adapter generated from a context. */
interface Conditioning {
  apply(d: GenerativeDelta, x: Tensor, y: Tensor): Tensor;
}

const NO_CONTEXT: Conditioning = { apply: (_d, _x, y) => y };

class Conditioned implements Conditioning {
  constructor(readonly context: ContextStates) {}

  apply(d: GenerativeDelta, x: Tensor, y: Tensor): Tensor {
    return d.applyCore(x, y, d.core(this.context));
  }

  dispose(): void {
    for (const t of this.context.states.values()) t.dispose();
    this.context.mask.dispose();
  }
}

/** The conditioning a generator's layers share: one for inference, one for the training scope. */
interface ConditioningSlot {
  inference: Conditioning;
  /** Set by the training objective for its step (null: training forwards use `inference`). */
  training: Conditioning | null;
}

/** One target's generator: A1, A2, A3, B and the context norm. */
export class GenerativeDelta extends Module implements LayerDelta {
  constructor(
    readonly adapterName: string,
    public generator_A1: Tensor,
    public generator_A2: Tensor,
    public generator_A3: Tensor,
    public generator_B: Tensor,
    public generator_norm: Tensor,
    /** The decoder layer whose input states make this target's core. */
    readonly layer: number,
    readonly scale: number,
    readonly coreNorm: CoreNorm,
    slot: ConditioningSlot,
  ) {
    super();
    this.#slot = slot;
  }

  readonly #slot: ConditioningSlot;

  /** The normalized core S [C, R1, R2] of each context row. */
  core(ctx: ContextStates): Tensor {
    const h = ctx.states.get(this.layer);
    if (!h) throw new AdaptkitError(`generative adapter "${this.adapterName}": the context has no states of layer ${this.layer}`);
    const hn = rmsNorm(h, this.generator_norm, NORM_EPS);
    const p = mul(linear(hn, this.generator_A2), ctx.mask);
    const q = linear(hn, this.generator_A3);
    // Σ_t p_t q_tᵀ over the context tokens of each row
    const s = matmul(transpose(p), q);
    return this.coreNorm === 'spectral' ? div(s, spectralNorm(s)) : div(s, sqrt(sum(mul(s, s), [1, 2], true)));
  }

  /** y + (α/R2)·((x A1ᵀ) S) Bᵀ for cores S [C, R1, R2] (C = 1: one for every row). */
  applyCore(x: Tensor, y: Tensor, s: Tensor): Tensor {
    const [C, R1, R2] = s.shape as [number, number, number];
    const u = linear(x, this.generator_A1);
    let v: Tensor;
    if (C === 1) {
      v = matmul(u, reshape(s, [R1, R2]));
    } else {
      if (x.ndim !== 3 || x.shape[0] !== C) throw new AdaptkitError(`generative adapter "${this.adapterName}": ${C} contexts for a batch of ${x.ndim === 3 ? x.shape[0] : 'unbatched'} rows`);
      v = matmul(u, s);
    }
    return addmm(y, mul(v, this.scale), transpose(this.generator_B));
  }

  apply(x: Tensor, y: Tensor): Tensor {
    const slot = this.#slot;
    const c = isTraining() ? (slot.training ?? slot.inference) : slot.inference;
    return c.apply(this, x, y);
  }
}

/** σ_max of each [R1, R2] slice as uᵀ Σ v with the top singular vectors held fixed (its exact gradient). */
function spectralNorm(s: Tensor): Tensor {
  const [C, m, n] = s.shape as [number, number, number];
  const uv = new Float32Array(C * m * n);
  const all = noGrad(() => s.toArray());
  for (let c = 0; c < C; c++) {
    const d = svd(all.subarray(c * m * n, (c + 1) * m * n), m, n);
    for (let i = 0; i < m; i++) for (let j = 0; j < n; j++) uv[c * m * n + i * n + j] = d.u[i * d.k]! * d.v[j * d.k]!;
  }
  return sum(mul(s, fromBuffer(uv, [C, m, n])), [1, 2], true);
}

/** Keeps a copy of the input of the layer it wraps (the frozen base's layer input), unchanged. */
class InputRecorder extends Module implements LayerDelta {
  readonly adapterName = '*context*';
  #seen: Tensor | null = null;

  transformInput(x: Tensor): Tensor {
    this.#seen = clone(x).keep();
    return x;
  }

  apply(_x: Tensor, y: Tensor): Tensor {
    return y;
  }

  take(): Tensor | null {
    const t = this.#seen;
    this.#seen = null;
    return t;
  }
}

interface ForwardModel {
  forward(ids: Tensor, o?: { attentionMask?: Tensor | null }): Tensor;
}

/** The model's block-input norms by layer index, from its descriptor. */
function layerInputPaths(model: Module, d: AdapterDescriptor): Map<number, string> {
  const spec = roleTargets(d, ['block.input_norm']);
  if (!spec) throw new AdaptkitError(`${PEFT_TYPE} reads each decoder layer's input at the block's first norm, and the ${d.family} model publishes none (adapter descriptor role "block.input_norm")`);
  const out = new Map<number, string>();
  for (const [path] of baseModules(model)) {
    if (matches(spec, path) === null) continue;
    const l = layerIndexOf(path, null, d.layersPattern);
    if (l !== null && !out.has(l)) out.set(l, path);
  }
  return out;
}

/**
 * Run the model over `ids` and return the inputs of the modules at `paths`, kept: under noGrad
 * and outside training, so the states are the model's own deterministic ones.
 */
export function captureLayerInputs(model: Module, paths: ReadonlyMap<number, string>, ids: Tensor, mask: Tensor | null): Map<number, Tensor> {
  const recorders = new Map<number, InputRecorder>();
  const swapped: [string, Module][] = [];
  try {
    for (const [l, p] of paths) {
      const orig = model.get(p);
      const r = new InputRecorder();
      model.replace(p, new AdaptedLayer(orig as LinearLike, [r]));
      swapped.push([p, orig]);
      recorders.set(l, r);
    }
    noGrad(() => inference(() => (model as unknown as ForwardModel).forward(ids, { attentionMask: mask }).dispose()));
  } finally {
    for (const [p, orig] of swapped.reverse()) model.replace(p, orig);
  }
  const out = new Map<number, Tensor>();
  for (const [l, r] of recorders) {
    const t = r.take();
    if (!t) throw new AdaptkitError(`the forward over the context never reached "${paths.get(l)}"`);
    out.set(l, t);
  }
  return out;
}

function kaimingNormal(shape: [number, number], rng: Rng): Tensor {
  return randn(shape, { std: Math.sqrt(2 / shape[1]), rng });
}

type ObjectiveStep = Parameters<NonNullable<AdapterInstance['objective']>>[0];

export class GenerativeAdapter implements AdapterInstance {
  readonly method = GENERATIVE_ADAPTER;
  readonly deltas = new Map<string, GenerativeDelta>();
  readonly slot: ConditioningSlot = { inference: NO_CONTEXT, training: null };

  constructor(
    readonly name: string,
    readonly config: GenerativeAdapterConfig,
    private readonly model: Module,
    private readonly descriptor: AdapterDescriptor,
    /** The block-input norm of every targeted layer. */
    readonly inputPaths: Map<number, string>,
  ) {}

  parameters(): Tensor[] {
    return [...this.deltas.values()].flatMap((d) => d.parameters());
  }

  private params(): Map<string, Tensor> {
    const out = new Map<string, Tensor>();
    for (const [path, d] of this.deltas) {
      out.set(peftKey(path, 'generator_A1.weight'), d.generator_A1);
      out.set(peftKey(path, 'generator_A2.weight'), d.generator_A2);
      out.set(peftKey(path, 'generator_A3.weight'), d.generator_A3);
      out.set(peftKey(path, 'generator_B.weight'), d.generator_B);
      out.set(peftKey(path, 'generator_norm.weight'), d.generator_norm);
    }
    return out;
  }

  stateDict(): Map<string, Tensor> {
    return this.params();
  }

  loadStateDict(tensors: Map<string, Tensor>, source: string): void {
    loadInto(this.params(), tensors, source);
  }

  configJson(): RawAdapterConfig {
    const c = this.config;
    return { ...baseJson(c), alpha: c.alpha, core_norm: c.core_norm, r1: c.r1, r2: c.r2, window: c.window };
  }

  /** The base model's states over contexts (rows of `ids`; `mask` 0 at padding), checked. */
  private capture(ids: Tensor, mask: Tensor | null): ContextStates {
    if (ids.dtype !== 'i32' || ids.ndim !== 2) throw new AdaptkitError(`generative adapter "${this.name}": context ids must be i32 [C, T], got ${ids.dtype} [${ids.shape.join(', ')}]`);
    const [C, T] = ids.shape as [number, number];
    if (C === 0 || T === 0) throw new AdaptkitError(`generative adapter "${this.name}": the context is empty (an adapter is generated from at least one token)`);
    if (mask && (mask.ndim !== 2 || mask.shape[0] !== C || mask.shape[1] !== T)) {
      throw new AdaptkitError(`generative adapter "${this.name}": the context mask is [${mask.shape.join(', ')}], the context ids [${C}, ${T}]`);
    }
    const m = mask ? Float32Array.from(mask.toArray()) : new Float32Array(C * T).fill(1);
    for (let c = 0; c < C; c++) {
      let n = 0;
      for (let t = 0; t < T; t++) {
        const v = m[c * T + t]!;
        if (v !== 0 && v !== 1) throw new AdaptkitError(`generative adapter "${this.name}": the context mask holds ${v}; it must be 1 (token) or 0 (padding)`);
        n += v;
      }
      if (n === 0) throw new AdaptkitError(`generative adapter "${this.name}": context row ${c} is all padding (an adapter is generated from at least one token)`);
    }
    const maskT = tensor(m, [C, T]);
    const states = this.withoutContext(() => captureLayerInputs(this.model, this.inputPaths, ids, maskT));
    maskT.dispose();
    this.checkWidth(states);
    return { states, mask: fromBuffer(m, [C, T, 1]).keep(), rows: C };
  }

  private checkWidth(states: Map<number, Tensor>): void {
    const D = this.descriptor.embedding.dim;
    for (const [l, h] of states) {
      if (h.shape[h.ndim - 1] !== D) throw new AdaptkitError(`generative adapter "${this.name}": the input of "${this.inputPaths.get(l)}" is ${h.shape[h.ndim - 1]} wide, the model's width is ${D}`);
    }
  }

  /** Run fn with this generator's layers unchanged (the frozen base reads a context). */
  private withoutContext<T>(fn: () => T): T {
    const saved = { ...this.slot };
    this.slot.inference = NO_CONTEXT;
    this.slot.training = null;
    try {
      return fn();
    } finally {
      Object.assign(this.slot, saved);
    }
  }

  condition(am: AdapterModel, contextIds: Tensor | null, mask: Tensor | null = null): void {
    if (am.adapters.get(this.name) !== this) throw new AdaptkitError(`generative adapter "${this.name}" is not an adapter of that model`);
    const next = contextIds === null ? NO_CONTEXT : new Conditioned(am.withoutAdapters(() => this.capture(contextIds, mask)));
    const prev = this.slot.inference;
    this.slot.inference = next;
    if (prev instanceof Conditioned) prev.dispose();
  }

  generated(): { config: RawAdapterConfig; tensors: Map<string, Tensor> } {
    const c = this.slot.inference;
    if (!(c instanceof Conditioned)) throw new AdaptkitError(`generative adapter "${this.name}" has no context to generate an adapter from (condition it on one first)`);
    if (c.context.rows !== 1) throw new AdaptkitError(`generative adapter "${this.name}" holds ${c.context.rows} contexts; one adapter is generated from one context`);
    const cfg = this.config;
    const tensors = new Map<string, Tensor>();
    noGrad(() => {
      for (const [path, d] of this.deltas) {
        const s = reshape(d.core(c.context), [cfg.r1, cfg.r2]);
        tensors.set(peftKey(path, 'lora_A.weight'), clone(matmul(transpose(s), d.generator_A1)));
        tensors.set(peftKey(path, 'lora_B.weight'), clone(d.generator_B));
      }
    });
    return {
      config: {
        peft_type: 'LORA', r: cfg.r2, lora_alpha: cfg.alpha, lora_dropout: 0, bias: 'none', fan_in_fan_out: this.descriptor.fanInFanOut,
        target_modules: [...this.deltas.keys()], base_model_name_or_path: cfg.base_model_name_or_path, task_type: cfg.task_type,
      },
      tensors,
    };
  }

  /** The LoRA generated from one context (token ids [1, T]; `mask` 0 at padding). */
  toLora(am: AdapterModel, contextIds: Tensor, mask: Tensor | null = null): { config: RawAdapterConfig; tensors: Map<string, Tensor> } {
    this.condition(am, contextIds, mask);
    return this.generated();
  }

  /** Reconstruction pretraining over the step's batch (see the header). */
  objective(step: ObjectiveStep): Tensor {
    if (!step.ids) throw new AdaptkitError(`${PEFT_TYPE} trains on the batch's token ids, and this trainer gives its objective none`);
    const [B, T] = step.ids.shape as [number, number];
    const ids = step.ids.toArray() as Int32Array;
    const maskArr = step.mask ? step.mask.toArray() : null;
    const w = this.config.window;
    const texts: number[][] = [];
    for (let b = 0; b < B; b++) {
      const t: number[] = [];
      for (let j = 0; j < T; j++) if (!maskArr || maskArr[b * T + j] !== 0) t.push(ids[b * T + j]!);
      texts.push(t);
    }
    // the windows that get an adapter: [start, end) of a row's text ⊕ copy, start > 0
    const windows: { seq: number; start: number; end: number }[] = [];
    texts.forEach((t, seq) => {
      const n = t.length;
      for (const half of [0, n]) for (let s = half; s < half + n; s += w) if (s > 0) windows.push({ seq, start: s, end: Math.min(s + w, half + n) });
    });
    const Ts = 2 * Math.max(...texts.map((t) => t.length));
    const seqIds = new Int32Array(B * Ts);
    const seqMask = new Float32Array(B * Ts);
    texts.forEach((t, b) => {
      const n = t.length;
      for (let j = 0; j < 2 * n; j++) {
        seqIds[b * Ts + j] = t[j % n]!;
        seqMask[b * Ts + j] = 1;
      }
    });
    const R = windows.length;
    // rows as wide as the longest window (short texts make short windows)
    const W = Math.max(1, ...windows.map((win) => win.end - win.start));
    const rowIds = new Int32Array(R * W);
    const rowMask = new Float32Array(R * W);
    const targets = new Int32Array(R * W).fill(IGNORE);
    const ctxMask = new Float32Array(R * Ts);
    let predicted = 0;
    windows.forEach((win, r) => {
      const t = texts[win.seq]!;
      const tok = (j: number) => t[j % t.length]!;
      const len = win.end - win.start;
      for (let p = 0; p < len; p++) {
        rowIds[r * W + p] = tok(win.start + p);
        rowMask[r * W + p] = 1;
        if (p + 1 < len) {
          targets[r * W + p] = tok(win.start + p + 1);
          predicted++;
        }
      }
      for (let j = 0; j < win.start; j++) ctxMask[r * Ts + j] = 1;
    });
    if (predicted === 0) throw new AdaptkitError(`${PEFT_TYPE}: the batch's texts are too short to train on (a window needs two tokens)`);
    const seqMaskT = fromBuffer(seqMask, [B, Ts]);
    const captured = this.withoutContext(() => captureLayerInputs(this.model, this.inputPaths, fromBuffer(seqIds, [B, Ts]), seqMaskT));
    this.checkWidth(captured);
    const rowSeq = tensor(windows.map((win) => win.seq), [R], { dtype: 'i32' });
    const states = new Map<number, Tensor>();
    for (const [l, h] of captured) {
      states.set(l, indexSelect(h, 0, rowSeq));
      h.dispose();
    }
    // kept until the next step: a checkpointed block's recomputation in backward reads them
    this.slot.training = new Conditioned({ states, mask: fromBuffer(ctxMask, [R, Ts, 1]), rows: R });
    const logits = (this.model as unknown as ForwardModel).forward(fromBuffer(rowIds, [R, W]), { attentionMask: fromBuffer(rowMask, [R, W]) });
    return crossEntropy(logits, fromBuffer(targets, [R, W]), { ignoreIndex: IGNORE });
  }
}

export const R1_OPTION: MethodOption = { name: 'r1', type: 'int', min: 1, description: 'Generative Adapter: rank R1 of A1 and A2 (default 32)' };
export const R2_OPTION: MethodOption = { name: 'r2', type: 'int', min: 1, description: 'Generative Adapter: rank R2 of A3 and B, the rank of the generated LoRA (default r1)' };
export const WINDOW_OPTION: MethodOption = { name: 'window', type: 'int', min: 2, description: 'Generative Adapter: training window in tokens; window k runs with the adapter generated from windows before it (default 64)' };
export const CORE_NORM_OPTION: MethodOption = { name: 'core-norm', type: 'string', description: 'Generative Adapter: normalization of the context core, frobenius (default) or spectral' };

function parameterCount(c: GenerativeAdapterConfig, targets: TargetInfo[], model: AdapterDescriptor): number {
  const D = model.embedding.dim;
  return targets.reduce((n, t) => {
    const m = t.module as Linear;
    return n + c.r1 * m.inFeatures + c.r1 * D + c.r2 * D + m.outFeatures * c.r2 + D;
  }, 0);
}

export const GENERATIVE_ADAPTER: AdapterMethod = {
  peftType: PEFT_TYPE,
  description: 'Generative Adapter: a generator that maps a context to a LoRA in one forward pass of the frozen base',
  kind: 'tuner',
  parseConfig: (raw, source) => parseGenerativeAdapter(raw, source),
  defaultTargets: (d) => roleTargets(d, ['attn.o']),
  create(name, cfg, targets, ctx) {
    const c = cfg as GenerativeAdapterConfig;
    const paths = layerInputPaths(ctx.model, ctx.descriptor);
    const used = new Map<number, string>();
    const inst = new GenerativeAdapter(name, c, ctx.model, ctx.descriptor, used);
    const D = ctx.descriptor.embedding.dim;
    const scale = c.alpha / c.r2;
    for (const t of targets) {
      if (!isLinearLayer(t.module)) throw new AdaptkitError(`${PEFT_TYPE} targets linear layers; "${t.path}" is not one`);
      const input = t.layerIndex === null ? undefined : paths.get(t.layerIndex);
      if (input === undefined) throw new AdaptkitError(`${PEFT_TYPE}: "${t.path}" is in no decoder layer with an input norm, so it has no context states`);
      used.set(t.layerIndex!, input);
      const base = t.module;
      const p = (v: Tensor, what: string) => parameter(v, `${t.path}.${what}`);
      inst.deltas.set(t.path, new GenerativeDelta(
        name,
        p(kaimingNormal([c.r1, base.inFeatures], ctx.rng), 'generator_A1'),
        p(kaimingNormal([c.r1, D], ctx.rng), 'generator_A2'),
        p(kaimingNormal([c.r2, D], ctx.rng), 'generator_A3'),
        p(zeros([base.outFeatures, c.r2]), 'generator_B'),
        p(ones([D]), 'generator_norm'),
        t.layerIndex!, scale, c.core_norm, inst.slot,
      ));
    }
    return inst;
  },
  countParameters: (cfg, targets, model) => parameterCount(cfg as GenerativeAdapterConfig, targets, model),
  presets: [{
    name: 'generative-adapter',
    description: 'Generative Adapter: a generator of LoRAs for the attention output projections, trained to reconstruct a text from the adapter generated from it (r1 = r2 = 32, alpha 2·r2, 64-token windows)',
    config: (o) => {
      const r1 = num(o, 'r1', 32);
      const r2 = num(o, 'r2', r1);
      return {
        peft_type: PEFT_TYPE, r1, r2, alpha: num(o, 'alpha', 2 * r2), window: num(o, 'window', 64),
        core_norm: typeof o['core-norm'] === 'string' ? o['core-norm'] : 'frobenius', ...targetsOption(o, undefined),
      };
    },
  }],
  options: [R1_OPTION, R2_OPTION, ALPHA, WINDOW_OPTION, CORE_NORM_OPTION, TARGETS],
  floatKeys: ['alpha'],
  mergeable: false,
  exports: {
    LORA: (am, name) => {
      const inst = am.adapters.get(name);
      if (!(inst instanceof GenerativeAdapter)) throw new AdaptkitError(`adapter "${name}" is not a generative adapter`);
      return inst.generated();
    },
  },
  summary: (cfg) => {
    const c = cfg as GenerativeAdapterConfig;
    return { r1: c.r1, r2: c.r2, alpha: c.alpha, core_norm: c.core_norm, window: c.window };
  },
};

registerMethod(GENERATIVE_ADAPTER);
