/**
 * IAPT, instruction-aware prompt tuning (Zhu et al., ACL 2024): every attention layer gets
 * num_virtual_tokens soft tokens made from the instruction by a small per-layer generator, so
 * the prompt adapts to each request. The authors published no code; the paper fixes the pipeline
 * (down-projection, self-attention pooling to a fixed number of vectors, a learned rational
 * activation, up-projection, the tokens inserted at every layer) and 4 tokens. Everything else
 * is chosen here:
 *
 * - Generator input: the attention layer's own input (the block's normalized hidden states),
 *   which is what the `kv_prefix` hook sees, at the instruction positions only.
 * - Pooling: P learned queries [P, m] attend (scaled dot product, 1/sqrt(m)) over the
 *   down-projected instruction states z = x·W_downᵀ + b_down and pool z itself (no separate
 *   key/value maps): u_p = Σ_t softmax_t(q_p·z_t/√m) z_t over instruction tokens t. Padding and
 *   every token at or after a row's prompt length are masked out, so a response never leaks into
 *   its own prompt.
 * - Activation: per layer one learned rational-type function shared by all channels, degrees
 *   3/2 with a denominator that never falls below 1,
 *   φ(u) = (a0 + a1·u + a2·u² + a3·u³) / sqrt(1 + (b1·u + b2·u²)²). It is the safe Padé unit
 *   (denominator 1 + |b1·u + b2·u²|) with the absolute value smoothed: that one has a kink
 *   wherever b1·u + b2·u² crosses 0, where the gradient of b and of everything below the
 *   activation jumps (finite differences of the model disagree with its gradient near one);
 *   this one has the same growth for large |u| and a continuous gradient everywhere. It starts
 *   as its least-squares fit of GELU on [-3, 3] (max error 0.035 there); b must not start at 0,
 *   where its gradient vanishes.
 * - Up-projection: s_p = W_up·φ(u_p) + b_up, the soft tokens [P, hidden]. W_up and b_up start at
 *   zero (the LoRA B recipe): a new adapter's tokens are zero vectors for every input, and the
 *   generator learns once the up-projection moves.
 * - Insertion: the soft tokens become extra key/value positions of that layer through the layer's
 *   own key and value projections (with any adapter on them), without rotary or learned
 *   positions, before the cached and new keys, visible to every query — as prefix tuning's keys
 *   in this codebase. Each layer has its own tokens (layer l's do not replace layer l−1's: there
 *   is no residual stream position for them). No cross-layer parameter sharing.
 * - The instruction of a forward is the per-row prompt length that `AdapterModel.forward(ids,
 *   { promptLengths })` sets (training, evaluation); without one, every non-padding token of the
 *   forward is (generation: the prefill is the prompt).
 * - Generation: the tokens are computed once, at a sequence's first forward into a KV cache, and
 *   kept per sequence for the cache's later forwards (cached decode equals a full recompute
 *   with the same prompt length). A sequence is the cache object and row, or the cache's `seqs`
 *   entry for the row when the cache names them (the serving engine's per-step views). A named
 *   sequence keeps its tokens for its whole life, so the engine's recompute after preemption
 *   (prompt and generated tokens as one new first forward) reuses them instead of pooling over
 *   the generated tokens; an unnamed cache emptied and filled again starts a new sequence. A
 *   later forward of a sequence whose prompt this adapter never saw is an error, not a silent
 *   recompute from the new tokens alone.
 *
 * Even zero tokens are attended to (their keys score 0 against every query), so a new adapter is
 * not the identity (`startsAsIdentity: false`), as with prefix tuning.
 *
 * Config (adaptkit-native, peft_type "IAPT"; PEFT has no instruction-conditioned prompts):
 *   num_virtual_tokens  soft tokens per layer, integer >= 1, default 4 (the paper's l_sp)
 *   bottleneck_size     generator width m, integer >= 1, default 8
 *   token_dim           hidden size (null: the model's; checked against it)
 *   num_layers          attention layers (null: the model's; checked against it)
 * Keys, per attention module path A (`model.layers.0.self_attn`), under base_model.model.:
 *   A.iapt.down.weight [m, hidden], A.iapt.down.bias [m], A.iapt.queries [P, m],
 *   A.iapt.numerator [4] (a0..a3), A.iapt.denominator [2] (b1, b2),
 *   A.iapt.up.weight [hidden, m], A.iapt.up.bias [hidden].
 * Parameters: num_layers · (2·hidden·m + m + P·m + 6 + hidden).
 */
import {
  AdaptkitError, type Tensor, add, attention, concat, clone, div, expand, mul, narrow, parameter, randn, reshape, sqrt, tensor, zeros,
} from '../../tensor/index.js';
import { type AdapterDescriptor, type KVPrefixHook, type KVPrefixStep, Linear, Module, type PrefixCache } from '../../nn/index.js';
import { AdapterConfigError, baseJson, optInt, parseBase } from '../config.js';
import { registerMethod } from '../registry.js';
import { loadInto } from '../state.js';
import { peftKey } from '../files.js';
import { VIRTUAL_TOKENS, num } from '../options.js';
import { attentionInfo } from '../prompt-common.js';
import type { AdapterInstance, AdapterMethod, BaseAdapterConfig, LayerDelta, MethodOption, PromptSpans, RawAdapterConfig } from '../types.js';

export interface IaptConfig extends BaseAdapterConfig {
  num_virtual_tokens: number;
  bottleneck_size: number;
  token_dim: number | null;
  num_layers: number | null;
}

export const GENERATOR_WIDTH: MethodOption = { name: 'generator-width', type: 'int', min: 1, description: 'IAPT: width m of each layer\'s prompt generator (default 8)' };

/** φ at creation: the least-squares fit of GELU on [-3, 3]. */
const NUMERATOR_INIT = [0.005, 0.4964, 0.3866, 0.0757];
const DENOMINATOR_INIT = [-0.4861, -0.0732];

function parse(raw: RawAdapterConfig, source: string): IaptConfig {
  const base = parseBase(raw, 'IAPT', source);
  const opt = (k: string) => (raw[k] === undefined || raw[k] === null ? null : optInt(raw, k, 0, source, 1));
  return {
    ...base,
    num_virtual_tokens: optInt(raw, 'num_virtual_tokens', 4, source, 1),
    bottleneck_size: optInt(raw, 'bottleneck_size', 8, source, 1),
    token_dim: opt('token_dim'),
    num_layers: opt('num_layers'),
  };
}

/** φ(u) = (a0 + a1·u + a2·u² + a3·u³) / sqrt(1 + (b1·u + b2·u²)²), elementwise. */
export function rational(u: Tensor, a: Tensor, b: Tensor): Tensor {
  const c = (t: Tensor, i: number) => narrow(t, 0, i, 1);
  const p = add(c(a, 0), mul(u, add(c(a, 1), mul(u, add(c(a, 2), mul(u, c(a, 3)))))));
  const s = mul(u, add(c(b, 0), mul(u, c(b, 1))));
  return div(p, sqrt(add(mul(s, s), 1)));
}

/** One layer's generator: instruction states [B, T, hidden] → soft tokens [B, P, hidden]. */
export class PromptGenerator extends Module {
  constructor(public down: Linear, public queries: Tensor, public numerator: Tensor, public denominator: Tensor, public up: Linear) {
    super();
  }

  /** `instruction` [B, T]: 1 at the tokens to pool over (every row has at least one). */
  tokens(x: Tensor, instruction: Tensor): Tensor {
    const [B, T] = x.shape as [number, number];
    const [P, m] = this.queries.shape as [number, number];
    const z = reshape(this.down.forward(x), [B, 1, T, m]);
    const q = expand(reshape(this.queries, [1, 1, P, m]), [B, 1, P, m]);
    const pooled = reshape(attention(q, z, z, { keyMask: instruction, scale: 1 / Math.sqrt(m) }), [B, P, m]);
    return this.up.forward(rational(pooled, this.numerator, this.denominator));
  }
}

interface KV {
  k: Tensor;
  v: Tensor;
}

/** The hook in one attention layer's `kv_prefix` slot. */
class IaptHook extends Module implements KVPrefixHook {
  // not properties: the generator's parameters belong to the adapter, not to the model's module tree
  readonly #adapter: IaptAdapter;
  readonly #layer: number;

  constructor(adapter: IaptAdapter, layer: number) {
    super();
    this.#adapter = adapter;
    this.#layer = layer;
  }

  prefix(_layer: number, batch: number, step?: KVPrefixStep): { k: Tensor; v: Tensor; mask: Tensor | null } {
    if (!step) throw new AdaptkitError(`IAPT adapter "${this.#adapter.name}": this attention layer gives its kv_prefix hook no input to generate prompts from`);
    const { k, v } = this.#adapter.prefixKV(this.#layer, batch, step);
    return { k, v, mask: null };
  }
}

export class IaptAdapter implements AdapterInstance {
  readonly method = IAPT;
  readonly deltas = new Map<string, LayerDelta & Module>();
  readonly hooks = new Map<string, Module>();
  /** Per-sequence soft keys/values [1, kvHeads, P, headDim] by layer, from the sequence's first forward. */
  readonly #stored = new WeakMap<object, (KV | undefined)[]>();
  /** Row identities of caches that do not name their rows' sequences. */
  readonly #rows = new WeakMap<object, object[]>();

  constructor(
    readonly name: string,
    readonly config: IaptConfig,
    /** Attention module paths, by layer. */
    readonly paths: readonly string[],
    readonly generators: readonly PromptGenerator[],
    private readonly prompts: PromptSpans,
    slots: readonly string[],
  ) {
    slots.forEach((slot, l) => this.hooks.set(slot, new IaptHook(this, l)));
  }

  /** This layer's soft keys/values for a step: generated from the instruction, or those its sequences stored. */
  prefixKV(layer: number, B: number, step: KVPrefixStep): KV {
    const cache = step.cache;
    if (cache && step.start > 0) return this.reuse(layer, B, cache, step.start);
    // a named sequence keeps the tokens of its prompt: a first forward again is a recompute
    // (after preemption) over its prompt and what it generated, which must not be pooled over
    if (cache?.seqs && cache.seqs.length === B && cache.seqs.every((r) => this.#stored.get(r)?.[layer])) return this.reuse(layer, B, cache, 0);
    const kv = step.project(this.generators[layer]!.tokens(step.x, this.instruction(B, step)));
    if (cache) {
      const rows = this.rowKeys(cache, B);
      rows.forEach((row, b) => {
        let byLayer = this.#stored.get(row);
        if (!byLayer) this.#stored.set(row, (byLayer = []));
        byLayer[layer] = { k: clone(narrow(kv.k, 0, b, 1)).keep(), v: clone(narrow(kv.v, 0, b, 1)).keep() };
      });
    }
    return kv;
  }

  private reuse(layer: number, B: number, cache: PrefixCache, start: number): KV {
    const rows = cache.seqs ?? this.#rows.get(cache);
    const found = rows && rows.length === B ? rows.map((r) => this.#stored.get(r)?.[layer]) : [];
    if (found.length !== B || found.some((e) => !e)) {
      throw new AdaptkitError(
        `IAPT adapter "${this.name}": this forward continues ${B} cached sequence(s) (${start} positions) whose prompts this adapter did not see; ` +
        'run each prompt into the cache first (the soft tokens come from the prompt), or let the cache name its rows\' sequences (seqs)',
      );
    }
    const kv = found as KV[];
    return B === 1 ? kv[0]! : { k: concat(kv.map((e) => e.k), 0), v: concat(kv.map((e) => e.v), 0) };
  }

  private rowKeys(cache: PrefixCache, B: number): readonly object[] {
    if (cache.seqs) {
      if (cache.seqs.length !== B) throw new AdaptkitError(`IAPT adapter "${this.name}": the cache names ${cache.seqs.length} sequences for a batch of ${B} rows`);
      return cache.seqs;
    }
    let rows = this.#rows.get(cache);
    if (!rows || rows.length !== B) this.#rows.set(cache, (rows = Array.from({ length: B }, () => ({}))));
    return rows;
  }

  /** [B, T]: 1 at the instruction tokens of this forward (inside the prompt length, not padding). */
  private instruction(B: number, step: KVPrefixStep): Tensor {
    const T = step.x.shape[1]!;
    const lengths = this.prompts.lengths;
    if (lengths && lengths.length !== B && lengths.length !== 1) {
      throw new AdaptkitError(`IAPT adapter "${this.name}": ${lengths.length} prompt lengths for a batch of ${B} rows`);
    }
    const keys = step.keyMask ? (step.keyMask.toArray() as Float32Array) : null;
    const w = new Float32Array(B * T);
    for (let b = 0; b < B; b++) {
      const n = lengths ? lengths[lengths.length === 1 ? 0 : b]! : T;
      if (!(n >= 1 && n <= T)) {
        throw new AdaptkitError(`IAPT adapter "${this.name}": prompt length ${n} of row ${b} is outside 1..${T} (the row's tokens in this forward)`);
      }
      let any = false;
      for (let t = 0; t < n; t++) {
        const on = keys ? keys[b * T + t]! : 1;
        w[b * T + t] = on;
        any ||= on !== 0;
      }
      if (!any) throw new AdaptkitError(`IAPT adapter "${this.name}": row ${b} has no instruction token (its first ${n} positions are all padding)`);
    }
    return tensor(w, [B, T]);
  }

  parameters(): Tensor[] {
    return this.generators.flatMap((g) => g.parameters());
  }

  stateDict(): Map<string, Tensor> {
    const out = new Map<string, Tensor>();
    this.generators.forEach((g, l) => {
      for (const [k, t] of g.namedParameters()) out.set(peftKey(`${this.paths[l]}.iapt`, k), t);
    });
    return out;
  }

  loadStateDict(t: Map<string, Tensor>, source: string): void {
    loadInto(this.stateDict(), t, source);
  }

  configJson(): RawAdapterConfig {
    const c = this.config;
    const { target_modules: _t, exclude_modules: _e, layers_pattern: _p, layers_to_transform: _l, ...rest } = baseJson(c);
    return { ...rest, bottleneck_size: c.bottleneck_size, num_layers: c.num_layers, num_virtual_tokens: c.num_virtual_tokens, token_dim: c.token_dim };
  }
}

function hiddenSize(model: AdapterDescriptor): number {
  return model.embedding.dim;
}

export const IAPT: AdapterMethod = {
  peftType: 'IAPT',
  description: 'instruction-aware prompt tuning: per-layer soft tokens generated from the instruction (Zhu et al. 2024)',
  kind: 'prompt',
  startsAsIdentity: false,
  parseConfig: parse,
  presets: [{
    name: 'iapt',
    description: 'IAPT: 4 soft tokens per attention layer generated from the prompt (generator width 8)',
    config: (o) => ({ peft_type: 'IAPT', num_virtual_tokens: num(o, 'virtual-tokens', 4), bottleneck_size: num(o, 'generator-width', 8) }),
  }],
  options: [VIRTUAL_TOKENS, GENERATOR_WIDTH],
  summary: (cfg) => ({ num_virtual_tokens: (cfg as IaptConfig).num_virtual_tokens, bottleneck_size: (cfg as IaptConfig).bottleneck_size }),
  create(name, cfg, _targets, ctx) {
    const c = cfg as IaptConfig;
    const info = attentionInfo(ctx.descriptor);
    const d = hiddenSize(ctx.descriptor);
    c.num_layers ??= info.layers;
    c.token_dim ??= d;
    if (c.num_layers !== info.layers) throw new AdapterConfigError(`"num_layers" is ${c.num_layers}, the model has ${info.layers} attention layers`);
    if (c.token_dim !== d) throw new AdapterConfigError(`"token_dim" is ${c.token_dim}, the model's hidden size is ${d}`);
    const P = c.num_virtual_tokens;
    const m = c.bottleneck_size;
    const paths = ctx.descriptor.attention!.layers.map((l) => l.path);
    const generators = paths.map((path) => {
      const at = (k: string) => `${path}.iapt.${k}`;
      const down = Linear.init(d, m, { rng: ctx.rng });
      down.weight.name = at('down.weight');
      down.bias!.name = at('down.bias');
      return new PromptGenerator(
        down,
        parameter(randn([P, m], { rng: ctx.rng }), at('queries')),
        parameter(tensor(NUMERATOR_INIT), at('numerator')),
        parameter(tensor(DENOMINATOR_INIT), at('denominator')),
        new Linear(parameter(zeros([d, m]), at('up.weight')), parameter(zeros([d]), at('up.bias'))),
      );
    });
    return new IaptAdapter(name, c, paths, generators, ctx.prompts, info.slots);
  },
  countParameters(cfg, _targets, model) {
    const c = cfg as IaptConfig;
    const d = hiddenSize(model);
    const m = c.bottleneck_size;
    return attentionInfo(model).layers * (2 * d * m + m + c.num_virtual_tokens * m + NUMERATOR_INIT.length + DENOMINATOR_INIT.length + d);
  },
};

registerMethod(IAPT);
