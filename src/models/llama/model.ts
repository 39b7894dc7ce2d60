/**
 * Llama-family decoder (Llama 2/3, Mistral, Qwen2, SmolLM): RMSNorm, rotary embeddings,
 * grouped-query attention, SwiGLU MLP, tied or untied LM head. Module paths are HF's names.
 */
import {
  AdaptkitError, type Tensor, add, attention, checkpoint, mul, permute, reshape, rope, sameShape, shapeStr, silu,
} from '../../tensor/index.js';
import { type AdapterDescriptor, type EmbeddingLike, type KVPrefixHook, Linear, type LinearLike, Module, RMSNorm } from '../../nn/index.js';
import { withKVPrefix } from '../prefix.js';
import { keyMaskFor } from '../mask.js';
import { KVCache } from '../cache.js';
import type { LlamaConfig } from './config.js';
import { type RopeTables, ropeCosSin, ropeCosSinAt, ropeTables } from './rope.js';

/** Everything one forward pass shares across layers. */
/** What attention needs from a KV cache: append this step's keys/values, get all keys/values back. */
export interface KVCacheLike {
  length: number;
  append(layer: number, k: Tensor, v: Tensor): { k: Tensor; v: Tensor };
  /** Per-row sequence identity for prefix hooks that keep state per sequence (see `PrefixCache`). */
  readonly seqs?: readonly object[];
}

export interface ForwardContext {
  cos: Tensor;
  sin: Tensor;
  cache: KVCacheLike | null;
  /** [B, Tk] 1 for real keys, 0 for padding (Tk includes cached positions). */
  keyMask: Tensor | null;
}

export class LlamaAttention extends Module {
  /** Hook slot for keys/values put before every step's keys (prefix tuning). */
  kv_prefix: KVPrefixHook | null = null;

  constructor(
    public q_proj: LinearLike,
    public k_proj: LinearLike,
    public v_proj: LinearLike,
    public o_proj: LinearLike,
    readonly numHeads: number,
    readonly numKvHeads: number,
    readonly headDim: number,
    readonly layerIndex: number,
  ) {
    super();
  }

  /** Shape of this layer's cached keys and values (per batch row: [kvHeads, T, headDim]). */
  kvShape(): { kvHeads: number; headDim: number } {
    return { kvHeads: this.numKvHeads, headDim: this.headDim };
  }

  /** Keys and values of vectors h [B, P, hidden] through this layer's projections, without rotary positions. */
  projectKV(h: Tensor): { k: Tensor; v: Tensor } {
    const [B, P] = h.shape as [number, number];
    const heads = (t: Tensor) => permute(reshape(t, [B, P, this.numKvHeads, this.headDim]), [0, 2, 1, 3]);
    return { k: heads(this.k_proj.forward(h)), v: heads(this.v_proj.forward(h)) };
  }

  forward(x: Tensor, ctx: ForwardContext): Tensor {
    const [B, T] = x.shape as [number, number];
    const heads = (t: Tensor, n: number) => permute(reshape(t, [B, T, n, this.headDim]), [0, 2, 1, 3]);
    const q = rope(heads(this.q_proj.forward(x), this.numHeads), ctx.cos, ctx.sin);
    let k = rope(heads(this.k_proj.forward(x), this.numKvHeads), ctx.cos, ctx.sin);
    let v = heads(this.v_proj.forward(x), this.numKvHeads);
    const start = ctx.cache?.length ?? 0;
    if (ctx.cache) ({ k, v } = ctx.cache.append(this.layerIndex, k, v));
    let keyMask = ctx.keyMask;
    if (this.kv_prefix) {
      ({ k, v, keyMask } = withKVPrefix(this.kv_prefix, this.layerIndex, k, v, { x, keyMask, start, cache: ctx.cache, project: (h) => this.projectKV(h) }));
    }
    const o = attention(q, k, v, { causal: true, keyMask });
    return this.o_proj.forward(reshape(permute(o, [0, 2, 1, 3]), [B, T, this.numHeads * this.headDim]));
  }
}

export class LlamaMLP extends Module {
  constructor(public gate_proj: LinearLike, public up_proj: LinearLike, public down_proj: LinearLike) {
    super();
  }

  forward(x: Tensor): Tensor {
    return this.down_proj.forward(mul(silu(this.gate_proj.forward(x)), this.up_proj.forward(x)));
  }
}

export class LlamaDecoderLayer extends Module {
  constructor(
    public input_layernorm: RMSNorm,
    public self_attn: LlamaAttention,
    public post_attention_layernorm: RMSNorm,
    public mlp: LlamaMLP,
  ) {
    super();
  }

  forward(h: Tensor, ctx: ForwardContext): Tensor {
    const a = add(h, this.self_attn.forward(this.input_layernorm.forward(h), ctx));
    return add(a, this.mlp.forward(this.post_attention_layernorm.forward(a)));
  }
}

export class LlamaModel extends Module {
  constructor(public embed_tokens: EmbeddingLike, public layers: LlamaDecoderLayer[], public norm: RMSNorm) {
    super();
  }
}

export interface CausalLMForwardOptions {
  /** A KV cache; its `length` is where new positions start (unless `positions` says otherwise). */
  cache?: KVCacheLike | null;
  /** i32 [B, T] explicit positions, for batches whose rows are at different positions (serving). */
  positions?: Tensor | null;
  /** [B, T] (or [B, Tcache + T]) with 1 for real tokens, 0 for right padding. */
  attentionMask?: Tensor | null;
}

export class LlamaForCausalLM extends Module {
  private rope: RopeTables;

  /** Recompute each decoder block's activations in backward instead of keeping them (training). */
  gradientCheckpointing = false;

  constructor(public model: LlamaModel, public lm_head: LinearLike | null, readonly config: LlamaConfig) {
    super();
    this.rope = ropeTables({ dim: config.headDim, theta: config.ropeTheta, maxPositions: config.maxPositions, scaling: config.ropeScaling });
  }

  adapterDescriptor(): AdapterDescriptor {
    const c = this.config;
    return {
      family: 'llama',
      task: 'causal-lm',
      roles: {
        'attn.q': ['q_proj'], 'attn.k': ['k_proj'], 'attn.v': ['v_proj'], 'attn.o': ['o_proj'],
        'mlp.gate': ['gate_proj'], 'mlp.up': ['up_proj'], 'mlp.down': ['down_proj'],
        'ffn.in': ['down_proj'], 'block.attn_out': ['o_proj'], 'block.ffn_out': ['down_proj'], 'block.ffn': ['mlp'],
        'block.input_norm': ['input_layernorm'],
      },
      defaultTargets: ['q_proj', 'v_proj'],
      layersPattern: ['layers'],
      fanInFanOut: false,
      embedding: { path: 'model.embed_tokens', dim: c.hiddenSize },
      heads: ['lm_head'],
      attention: {
        layers: this.model.layers.map((_, l) => ({ path: `model.layers.${l}.self_attn`, layer: l })),
        kvHeads: c.numKvHeads,
        headDim: c.headDim,
      },
    };
  }

  newCache(): KVCache {
    return new KVCache(this.config.numLayers);
  }

  /** Hidden states after the final norm: ids [B, T] → [B, T, hidden]. */
  hidden(ids: Tensor, opts: CausalLMForwardOptions = {}): Tensor {
    if (ids.dtype !== 'i32' || ids.ndim !== 2) throw new AdaptkitError(`LlamaForCausalLM: ids must be i32 [B, T], got ${ids.dtype} ${shapeStr(ids.shape)}`);
    const cache = opts.cache ?? null;
    const start = cache?.length ?? 0;
    let h = this.model.embed_tokens.forward(ids, start);
    const T = h.shape[1]!;
    if (this.config.ropeScaling && (this.config.ropeScaling.rope_type ?? this.config.ropeScaling.type) === 'dynamic') {
      this.rope = ropeTables({ dim: this.config.headDim, theta: this.config.ropeTheta, maxPositions: this.config.maxPositions, scaling: this.config.ropeScaling }, start + T);
    }
    let tables: { cos: Tensor; sin: Tensor };
    if (opts.positions) {
      const p = opts.positions;
      if (p.dtype !== 'i32' || !sameShape(p.shape, [ids.shape[0]!, T])) throw new AdaptkitError(`positions must be i32 [B, T] = [${ids.shape[0]}, ${T}], got ${p.dtype} ${shapeStr(p.shape)}`);
      tables = ropeCosSinAt(this.rope, p.toArray() as Int32Array, ids.shape[0]!, T);
    } else {
      tables = ropeCosSin(this.rope, start, T);
    }
    const { cos, sin } = tables;
    const keyMask = keyMaskFor(opts.attentionMask, ids.shape[0]!, start, ids.shape[1]!, T - ids.shape[1]!);
    const ctx: ForwardContext = { cos, sin, cache, keyMask };
    for (const layer of this.model.layers) h = this.gradientCheckpointing && !cache ? checkpoint((x) => layer.forward(x, ctx), [h]) : layer.forward(h, ctx);
    if (cache) cache.length = start + T;
    return this.model.norm.forward(h);
  }

  /** Logits [B, T, vocab]. */
  forward(ids: Tensor, opts: CausalLMForwardOptions = {}): Tensor {
    return this.head(this.hidden(ids, opts));
  }

  head(h: Tensor): Tensor {
    return this.lm_head ? this.lm_head.forward(h) : new Linear(tiedWeight(this.model.embed_tokens)).forward(h);
  }
}

/** The token-embedding table behind an embedding module (hooks keep the original as `base_layer`). */
export function tiedWeight(e: EmbeddingLike): Tensor {
  const m = e as unknown as { weight?: Tensor; base_layer?: EmbeddingLike };
  if (m.weight) return m.weight;
  if (m.base_layer) return tiedWeight(m.base_layer);
  throw new AdaptkitError('the token embedding has no weight to tie the output head to');
}
