/**
 * Prompt tuning (Lester et al. 2021): num_virtual_tokens trainable embeddings put in front of the
 * input. It goes through the embedding hook: the input-embedding module is swapped for one that
 * prepends the virtual tokens when a sequence starts (position 0); models treat the extra
 * positions generically (always visible). PEFT key: prompt_embeddings [num_virtual_tokens, token_dim].
 */
import { AdaptkitError, type Rng, type Tensor, concat, expand, indexSelect, parameter, randn, reshape, tensor, noGrad, clone } from '../../tensor/index.js';
import { Module, type EmbeddingLike } from '../../nn/index.js';
import { baseJson, optInt, optString, parseBase } from '../config.js';
import { VIRTUAL_TOKENS, num } from '../options.js';
import { registerMethod } from '../registry.js';
import { loadInto } from '../state.js';
import { inputEmbedding } from '../prompt-common.js';
import type { AdapterInstance, AdapterMethod, BaseAdapterConfig, LayerDelta, RawAdapterConfig } from '../types.js';

export interface PromptTuningConfig extends BaseAdapterConfig {
  num_virtual_tokens: number;
  token_dim: number | null;
  prompt_tuning_init: 'RANDOM' | 'SAMPLE_VOCAB' | 'TEXT';
  prompt_tuning_init_text: string | null;
  /** Token ids of prompt_tuning_init_text (tokenized by the caller). */
  init_token_ids: number[] | null;
  num_transformer_submodules: number;
}

function parse(raw: RawAdapterConfig, source: string): PromptTuningConfig {
  const base = parseBase(raw, 'PROMPT_TUNING', source);
  const ids = raw.init_token_ids;
  return {
    ...base,
    num_virtual_tokens: optInt(raw, 'num_virtual_tokens', 20, source, 1),
    token_dim: raw.token_dim === undefined || raw.token_dim === null ? null : optInt(raw, 'token_dim', 0, source, 1),
    prompt_tuning_init: optString(raw, 'prompt_tuning_init', 'RANDOM', ['RANDOM', 'SAMPLE_VOCAB', 'TEXT'] as const, source),
    prompt_tuning_init_text: typeof raw.prompt_tuning_init_text === 'string' ? raw.prompt_tuning_init_text : null,
    init_token_ids: Array.isArray(ids) && ids.every((x) => Number.isInteger(x)) ? (ids as number[]) : null,
    num_transformer_submodules: optInt(raw, 'num_transformer_submodules', 1, source, 1),
  };
}

/** The embedding hook: prepends the virtual tokens at the start of a sequence. */
export class PromptEmbedding extends Module {
  constructor(public base_layer: EmbeddingLike, public prompt_embeddings: Tensor) {
    super();
  }

  forward(ids: Tensor, start = 0): Tensor {
    const e = this.base_layer.forward(ids, start);
    if (start > 0) return e;
    const [P, H] = this.prompt_embeddings.shape as [number, number];
    const B = ids.shape[0]!;
    return concat([expand(reshape(this.prompt_embeddings, [1, P, H]), [B, P, H]), e], 1);
  }
}

class PromptAdapter implements AdapterInstance {
  readonly method = PROMPT_TUNING;
  readonly deltas = new Map<string, LayerDelta & Module>();
  readonly hooks = new Map<string, Module>();
  constructor(readonly name: string, readonly config: PromptTuningConfig, readonly prompt: Tensor) {}
  get addedPositions(): number {
    return this.config.num_virtual_tokens;
  }
  parameters(): Tensor[] {
    return [this.prompt];
  }
  stateDict(): Map<string, Tensor> {
    return new Map([['prompt_embeddings', this.prompt]]);
  }
  loadStateDict(t: Map<string, Tensor>, source: string): void {
    loadInto(this.stateDict(), t, source);
  }
  configJson(): RawAdapterConfig {
    const c = this.config;
    const { target_modules: _t, exclude_modules: _e, layers_pattern: _p, layers_to_transform: _l, ...rest } = baseJson(c);
    return {
      ...rest, num_attention_heads: null, num_layers: null, num_transformer_submodules: c.num_transformer_submodules,
      num_virtual_tokens: c.num_virtual_tokens, prompt_tuning_init: c.prompt_tuning_init,
      prompt_tuning_init_text: c.prompt_tuning_init_text, token_dim: c.token_dim, tokenizer_kwargs: null, tokenizer_name_or_path: null,
    };
  }
}

function initPrompt(c: PromptTuningConfig, table: Tensor, rng: Rng): Tensor {
  const P = c.num_virtual_tokens;
  const [V, H] = table.shape as [number, number];
  if (c.prompt_tuning_init === 'RANDOM') return randn([P, H], { rng });
  let ids: number[];
  if (c.prompt_tuning_init === 'TEXT') {
    if (!c.init_token_ids?.length) throw new AdaptkitError('prompt_tuning_init "TEXT" needs init_token_ids (the tokenized prompt_tuning_init_text)');
    ids = Array.from({ length: P }, (_, i) => c.init_token_ids![i % c.init_token_ids!.length]!);
  } else {
    ids = Array.from({ length: P }, () => rng.int(V));
  }
  return noGrad(() => clone(indexSelect(table, 0, tensor(ids, [P], { dtype: 'i32' }))));
}

export const PROMPT_TUNING: AdapterMethod = {
  peftType: 'PROMPT_TUNING',
  description: 'trained virtual-token embeddings before the input (Lester et al. 2021)',
  kind: 'prompt',
  startsAsIdentity: false,
  parseConfig: parse,
  presets: [{
    name: 'prompt',
    description: 'prompt tuning with 20 virtual tokens initialized from vocabulary embeddings',
    config: (o) => ({ peft_type: 'PROMPT_TUNING', num_virtual_tokens: num(o, 'virtual-tokens', 20), prompt_tuning_init: 'SAMPLE_VOCAB' }),
  }],
  options: [VIRTUAL_TOKENS],
  summary: (cfg) => ({ num_virtual_tokens: (cfg as PromptTuningConfig).num_virtual_tokens, prompt_tuning_init: (cfg as PromptTuningConfig).prompt_tuning_init }),
  create(name, cfg, _targets, ctx) {
    const c = cfg as PromptTuningConfig;
    const emb = inputEmbedding(ctx.model, ctx.descriptor);
    if (c.token_dim === null) c.token_dim = emb.dim;
    if (c.token_dim !== emb.dim) throw new AdaptkitError(`token_dim ${c.token_dim} does not match the model's embedding size ${emb.dim}`);
    const prompt = parameter(initPrompt(c, (emb.module as unknown as { weight: Tensor }).weight, ctx.rng), 'prompt_embeddings');
    const inst = new PromptAdapter(name, c, prompt);
    inst.hooks.set(emb.path, new PromptEmbedding(emb.module as EmbeddingLike, prompt));
    return inst;
  },
  countParameters(cfg) {
    const c = cfg as PromptTuningConfig;
    return c.num_virtual_tokens * (c.token_dim ?? 0);
  },
};

registerMethod(PROMPT_TUNING);
