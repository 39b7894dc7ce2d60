/** GPT-2: learned positions, pre-LayerNorm blocks, Conv1D ([in, out]) weights, tanh-GELU, tied head. */
import {
  AdaptkitError, type Tensor, add, attention, checkpoint, gelu, geluTanh, narrow, permute, reshape, shapeStr, tensor,
} from '../../tensor/index.js';
import { type AdapterDescriptor, Embedding, type EmbeddingLike, type KVPrefixHook, LayerNorm, Linear, type LinearLike, Module } from '../../nn/index.js';
import { withKVPrefix } from '../prefix.js';
import { keyMaskFor } from '../mask.js';
import { type KVCacheLike, tiedWeight } from '../llama/model.js';
import { ConfigReader, type RawConfig } from '../config.js';
import { KVCache } from '../cache.js';
import type { WeightMap } from '../weights.js';

export interface GPT2Config {
  vocabSize: number;
  hiddenSize: number;
  numLayers: number;
  numHeads: number;
  maxPositions: number;
  innerSize: number;
  layerNormEps: number;
  activation: string;
  bosTokenId: number | null;
  eosTokenIds: number[];
  raw: RawConfig;
}

export function parseGPT2Config(raw: RawConfig, source = 'config.json'): GPT2Config {
  const c = new ConfigReader(raw, source);
  const hidden = c.positive('n_embd');
  const heads = c.positive('n_head');
  if (hidden % heads !== 0) throw new AdaptkitError(`${source}: n_embd (${hidden}) must be a multiple of n_head (${heads})`);
  const act = c.oneOf('activation_function', ['gelu_new', 'gelu_pytorch_tanh', 'gelu', 'relu'], 'gelu_new');
  return {
    vocabSize: c.positive('vocab_size'),
    hiddenSize: hidden,
    numLayers: c.int('n_layer'),
    numHeads: heads,
    maxPositions: c.positive('n_positions', 1024),
    innerSize: c.positive('n_inner', 4 * hidden),
    layerNormEps: c.num('layer_norm_epsilon', 1e-5),
    activation: act,
    bosTokenId: c.ints('bos_token_id')[0] ?? null,
    eosTokenIds: c.ints('eos_token_id'),
    raw,
  };
}

interface Ctx {
  cache: KVCacheLike | null;
  keyMask: Tensor | null;
}

export class GPT2Attention extends Module {
  /** Hook slot for keys/values put before every step's keys (prefix tuning). */
  kv_prefix: KVPrefixHook | null = null;

  constructor(
    public c_attn: LinearLike, public c_proj: LinearLike, readonly numHeads: number, readonly layerIndex: number, readonly hidden: number,
  ) {
    super();
  }

  /** Shape of this layer's cached keys and values (per batch row: [kvHeads, T, headDim]). */
  kvShape(): { kvHeads: number; headDim: number } {
    return { kvHeads: this.numHeads, headDim: this.hidden / this.numHeads };
  }

  /** Keys and values of vectors h [B, P, hidden] through this layer's fused projection. */
  projectKV(h: Tensor): { k: Tensor; v: Tensor } {
    const [B, P, H] = h.shape as [number, number, number];
    const kv = narrow(this.c_attn.forward(h), 2, H, 2 * H);
    const part = (i: number) => permute(reshape(narrow(kv, 2, i * H, H), [B, P, this.numHeads, H / this.numHeads]), [0, 2, 1, 3]);
    return { k: part(0), v: part(1) };
  }

  forward(x: Tensor, ctx: Ctx): Tensor {
    const [B, T, H] = x.shape as [number, number, number];
    const hd = H / this.numHeads;
    const qkv = this.c_attn.forward(x);
    const part = (i: number) => permute(reshape(narrow(qkv, 2, i * H, H), [B, T, this.numHeads, hd]), [0, 2, 1, 3]);
    let k = part(1);
    let v = part(2);
    const start = ctx.cache?.length ?? 0;
    if (ctx.cache) ({ k, v } = ctx.cache.append(this.layerIndex, k, v));
    let keyMask = ctx.keyMask;
    if (this.kv_prefix) {
      ({ k, v, keyMask } = withKVPrefix(this.kv_prefix, this.layerIndex, k, v, { x, keyMask, start, cache: ctx.cache, project: (h) => this.projectKV(h) }));
    }
    const o = attention(part(0), k, v, { causal: true, keyMask });
    return this.c_proj.forward(reshape(permute(o, [0, 2, 1, 3]), [B, T, H]));
  }
}

export class GPT2MLP extends Module {
  constructor(public c_fc: LinearLike, public c_proj: LinearLike, readonly activation: string) {
    super();
  }

  forward(x: Tensor): Tensor {
    const h = this.c_fc.forward(x);
    return this.c_proj.forward(this.activation === 'relu' ? h.relu() : this.activation === 'gelu' ? gelu(h) : geluTanh(h));
  }
}

export class GPT2Block extends Module {
  constructor(public ln_1: LayerNorm, public attn: GPT2Attention, public ln_2: LayerNorm, public mlp: GPT2MLP) {
    super();
  }

  forward(h: Tensor, ctx: Ctx): Tensor {
    const a = add(h, this.attn.forward(this.ln_1.forward(h), ctx));
    return add(a, this.mlp.forward(this.ln_2.forward(a)));
  }
}

export class GPT2Model extends Module {
  constructor(public wte: EmbeddingLike, public wpe: Embedding, public h: GPT2Block[], public ln_f: LayerNorm) {
    super();
  }
}

export class GPT2LMHeadModel extends Module {
  /** Recompute each block's activations in backward instead of keeping them (training). */
  gradientCheckpointing = false;

  constructor(public transformer: GPT2Model, public lm_head: LinearLike | null, readonly config: GPT2Config) {
    super();
  }

  adapterDescriptor(): AdapterDescriptor {
    const c = this.config;
    return {
      family: 'gpt2',
      task: 'causal-lm',
      roles: {
        // c_attn is the fused q/k/v projection
        'attn.q': ['c_attn'], 'attn.k': ['c_attn'], 'attn.v': ['c_attn'], 'attn.o': ['attn.c_proj'],
        'mlp.up': ['c_fc'], 'mlp.down': ['mlp.c_proj'],
        'ffn.in': ['mlp.c_proj'], 'block.attn_out': ['attn.c_proj'], 'block.ffn_out': ['mlp.c_proj'], 'block.ffn': ['mlp'],
        'block.input_norm': ['ln_1'],
      },
      defaultTargets: ['c_attn'],
      layersPattern: ['h'],
      fanInFanOut: true,
      embedding: { path: 'transformer.wte', dim: c.hiddenSize },
      heads: ['lm_head'],
      attention: {
        layers: this.transformer.h.map((_, l) => ({ path: `transformer.h.${l}.attn`, layer: l })),
        kvHeads: c.numHeads,
        headDim: c.hiddenSize / c.numHeads,
      },
    };
  }

  newCache(): KVCache {
    return new KVCache(this.config.numLayers);
  }

  hidden(ids: Tensor, opts: { cache?: KVCacheLike | null; attentionMask?: Tensor | null; positions?: Tensor | null } = {}): Tensor {
    if (ids.dtype !== 'i32' || ids.ndim !== 2) throw new AdaptkitError(`GPT2LMHeadModel: ids must be i32 [B, T], got ${ids.dtype} ${shapeStr(ids.shape)}`);
    const cache = opts.cache ?? null;
    const start = cache?.length ?? 0;
    const tok = this.transformer.wte.forward(ids, start);
    const T = tok.shape[1]!;
    const pos = opts.positions ?? tensor(Array.from({ length: T }, (_, i) => start + i), [T], { dtype: 'i32' });
    const maxPos = opts.positions ? Math.max(...(opts.positions.toArray() as Int32Array)) + 1 : start + T;
    if (maxPos > this.config.maxPositions) throw new AdaptkitError(`GPT-2 supports ${this.config.maxPositions} positions, got ${maxPos}`);
    let h = add(tok, this.transformer.wpe.forward(pos));
    const ctx: Ctx = { cache, keyMask: keyMaskFor(opts.attentionMask, ids.shape[0]!, start, ids.shape[1]!, T - ids.shape[1]!) };
    for (const block of this.transformer.h) h = this.gradientCheckpointing && !cache ? checkpoint((x) => block.forward(x, ctx), [h]) : block.forward(h, ctx);
    if (cache) cache.length = start + T;
    return this.transformer.ln_f.forward(h);
  }

  forward(ids: Tensor, opts: { cache?: KVCacheLike | null; attentionMask?: Tensor | null; positions?: Tensor | null } = {}): Tensor {
    const h = this.hidden(ids, opts);
    return this.lm_head ? this.lm_head.forward(h) : new Linear(tiedWeight(this.transformer.wte)).forward(h);
  }
}

export function buildGPT2(c: GPT2Config, w: WeightMap): GPT2LMHeadModel {
  const H = c.hiddenSize;
  const conv = (name: string, inp: number, out: number) => new Linear(w.get(`${name}.weight`, [inp, out]), w.get(`${name}.bias`, [out]), true);
  const ln = (name: string) => new LayerNorm(w.get(`${name}.weight`, [H]), w.get(`${name}.bias`, [H]), c.layerNormEps);
  // checkpoints name weights with or without the "transformer." prefix
  const p = w.has('transformer.wte.weight') ? 'transformer.' : '';
  const blocks: GPT2Block[] = [];
  for (let l = 0; l < c.numLayers; l++) {
    const b = `${p}h.${l}`;
    blocks.push(new GPT2Block(
      ln(`${b}.ln_1`),
      new GPT2Attention(conv(`${b}.attn.c_attn`, H, 3 * H), conv(`${b}.attn.c_proj`, H, H), c.numHeads, l, H),
      ln(`${b}.ln_2`),
      new GPT2MLP(conv(`${b}.mlp.c_fc`, H, c.innerSize), conv(`${b}.mlp.c_proj`, c.innerSize, H), c.activation),
    ));
  }
  const model = new GPT2Model(
    new Embedding(w.get(`${p}wte.weight`, [c.vocabSize, H])),
    new Embedding(w.get(`${p}wpe.weight`, [c.maxPositions, H])),
    blocks,
    ln(`${p}ln_f`),
  );
  return new GPT2LMHeadModel(model, null, c);
}
