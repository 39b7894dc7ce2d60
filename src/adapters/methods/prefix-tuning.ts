/**
 * Prefix tuning (Li & Liang 2021): trainable keys and values for num_virtual_tokens positions in
 * every attention layer. They enter through each attention layer's `kv_prefix` hook, which puts
 * them before the layer's keys/values at every step (they are never written into a KV cache, so
 * generation, scoring, training and serving see them alike). The virtual positions carry no
 * position of their own and the real tokens keep positions 0, 1, ...; PEFT instead hands them to
 * HF models as past_key_values, which shifts the real tokens to start at num_virtual_tokens, so
 * an adapter trained in one gives slightly different outputs in the other. With
 * prefix_projection, training goes through a two-layer tanh MLP (the reparameterization); the
 * saved table is its output.
 * PEFT key: prompt_embeddings [num_virtual_tokens, num_layers * 2 * kv_heads * head_dim].
 */
import { AdaptkitError, type Tensor, expand, narrow, noGrad, parameter, permute, randn, reshape, tanh, clone } from '../../tensor/index.js';
import { type KVPrefixHook, Linear, Module } from '../../nn/index.js';
import { baseJson, optBool, optInt, parseBase } from '../config.js';
import { registerMethod } from '../registry.js';
import { loadInto } from '../state.js';
import { VIRTUAL_TOKENS, num } from '../options.js';
import { type AttentionInfo, attentionInfo } from '../prompt-common.js';
import type { AdapterInstance, AdapterMethod, BaseAdapterConfig, LayerDelta, RawAdapterConfig } from '../types.js';

export interface PrefixTuningConfig extends BaseAdapterConfig {
  num_virtual_tokens: number;
  token_dim: number | null;
  num_layers: number | null;
  num_attention_heads: number | null;
  encoder_hidden_size: number | null;
  prefix_projection: boolean;
}

function parse(raw: RawAdapterConfig, source: string): PrefixTuningConfig {
  const base = parseBase(raw, 'PREFIX_TUNING', source);
  const opt = (k: string) => (raw[k] === undefined || raw[k] === null ? null : optInt(raw, k, 0, source, 1));
  return {
    ...base,
    num_virtual_tokens: optInt(raw, 'num_virtual_tokens', 20, source, 1),
    token_dim: opt('token_dim'),
    num_layers: opt('num_layers'),
    num_attention_heads: opt('num_attention_heads'),
    encoder_hidden_size: opt('encoder_hidden_size'),
    prefix_projection: optBool(raw, 'prefix_projection', false, source),
  };
}

/** The reparameterization MLP of prefix_projection. */
export class PrefixEncoder extends Module {
  constructor(public embedding: Tensor, public transform_0: Linear, public transform_2: Linear) {
    super();
  }

  table(): Tensor {
    return this.transform_2.forward(tanh(this.transform_0.forward(this.embedding)));
  }
}

/** The hook in one attention layer's `kv_prefix` slot: that layer's part of the adapter's table. */
class PrefixHook extends Module implements KVPrefixHook {
  // not a property: the table's parameters belong to the adapter, not to every layer's module tree
  readonly #adapter: PrefixAdapter;

  constructor(adapter: PrefixAdapter) {
    super();
    this.#adapter = adapter;
  }

  prefix(layer: number, batch: number): { k: Tensor; v: Tensor; mask: Tensor | null } {
    const a = this.#adapter;
    const { layers, kvHeads: H, headDim: D } = a.info;
    const P = a.length;
    const t = reshape(a.table(), [P, layers * 2, H, D]);
    const part = (i: number) => expand(permute(narrow(t, 1, i, 1), [1, 2, 0, 3]), [batch, H, P, D]);
    return { k: part(2 * layer), v: part(2 * layer + 1), mask: null };
  }
}

export class PrefixAdapter implements AdapterInstance {
  readonly method = PREFIX_TUNING;
  readonly deltas = new Map<string, LayerDelta & Module>();
  readonly hooks = new Map<string, Module>();

  constructor(
    readonly name: string,
    readonly config: PrefixTuningConfig,
    readonly info: AttentionInfo,
    /** [P, L·2·kvDim], trained directly (no projection) */
    public prompt: Tensor | null,
    public encoder: PrefixEncoder | null,
  ) {
    const hook = new PrefixHook(this);
    for (const slot of info.slots) this.hooks.set(slot, hook);
  }

  get length(): number {
    return this.config.num_virtual_tokens;
  }

  /** The key/value table [P, L·2·kvDim] (through the MLP when projecting). */
  table(): Tensor {
    return this.encoder ? this.encoder.table() : this.prompt!;
  }

  parameters(): Tensor[] {
    return this.encoder ? this.encoder.parameters() : [this.prompt!];
  }

  stateDict(): Map<string, Tensor> {
    // PEFT saves the table itself, whether or not it was trained through the projection
    return new Map([['prompt_embeddings', this.encoder ? noGrad(() => clone(this.encoder!.table())) : this.prompt!]]);
  }

  loadStateDict(t: Map<string, Tensor>, source: string): void {
    if (this.encoder) {
      // a saved table replaces the projection: it is what the projection produced
      this.prompt = parameter(noGrad(() => clone(this.encoder!.table())), 'prompt_embeddings');
      this.encoder = null;
    }
    loadInto(this.stateDict(), t, source);
  }

  configJson(): RawAdapterConfig {
    const c = this.config;
    const { target_modules: _t, exclude_modules: _e, layers_pattern: _p, layers_to_transform: _l, ...rest } = baseJson(c);
    return {
      ...rest, encoder_hidden_size: c.encoder_hidden_size, num_attention_heads: c.num_attention_heads, num_layers: c.num_layers,
      num_transformer_submodules: 1, num_virtual_tokens: c.num_virtual_tokens, prefix_projection: c.prefix_projection, token_dim: c.token_dim,
    };
  }
}

export const PREFIX_TUNING: AdapterMethod = {
  peftType: 'PREFIX_TUNING',
  description: 'trained keys and values before every attention layer (Li & Liang 2021)',
  kind: 'prompt',
  startsAsIdentity: false,
  parseConfig: parse,
  presets: [{
    name: 'prefix',
    description: 'prefix tuning with 20 virtual tokens in every attention layer',
    config: (o) => ({ peft_type: 'PREFIX_TUNING', num_virtual_tokens: num(o, 'virtual-tokens', 20) }),
  }],
  options: [VIRTUAL_TOKENS],
  summary: (cfg) => ({ num_virtual_tokens: (cfg as PrefixTuningConfig).num_virtual_tokens, prefix_projection: (cfg as PrefixTuningConfig).prefix_projection }),
  create(name, cfg, _targets, ctx) {
    const c = cfg as PrefixTuningConfig;
    const info = attentionInfo(ctx.descriptor);
    c.num_layers ??= info.layers;
    c.num_attention_heads ??= info.kvHeads;
    c.token_dim ??= info.kvHeads * info.headDim;
    if (c.num_layers !== info.layers || c.num_attention_heads !== info.kvHeads || c.token_dim !== info.kvHeads * info.headDim) {
      throw new AdaptkitError(
        `prefix config (num_layers ${c.num_layers}, num_attention_heads ${c.num_attention_heads}, token_dim ${c.token_dim}) does not match the model ` +
        `(${info.layers} layers, ${info.kvHeads} key/value heads of ${info.headDim})`,
      );
    }
    const P = c.num_virtual_tokens;
    const width = info.layers * 2 * info.kvHeads * info.headDim;
    if (c.prefix_projection) {
      const hidden = (c.encoder_hidden_size ??= c.token_dim);
      const enc = new PrefixEncoder(
        parameter(randn([P, c.token_dim], { rng: ctx.rng }), 'prefix.embedding'),
        Linear.init(c.token_dim, hidden, { rng: ctx.rng }),
        Linear.init(hidden, width, { rng: ctx.rng }),
      );
      return new PrefixAdapter(name, c, info, null, enc);
    }
    return new PrefixAdapter(name, c, info, parameter(randn([P, width], { rng: ctx.rng }), 'prompt_embeddings'), null);
  },
  countParameters(cfg) {
    const c = cfg as PrefixTuningConfig;
    const width = (c.num_layers ?? 0) * 2 * (c.token_dim ?? 0);
    if (!c.prefix_projection) return c.num_virtual_tokens * width;
    const h = c.encoder_hidden_size ?? c.token_dim ?? 0;
    return c.num_virtual_tokens * (c.token_dim ?? 0) + (c.token_dim ?? 0) * h + h + h * width + width;
  },
};

registerMethod(PREFIX_TUNING);
