/** Models and files the GGUF tests share: stories260K's paths, a random Llama-shaped HF folder, logits. */
import { existsSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as ak from '../src/index.js';
import { parseLlamaConfig } from '../src/models/llama/config.js';
import { buildLlama } from '../src/models/llama/load.js';
import type { LlamaForCausalLM } from '../src/models/llama/model.js';
import { WeightMap } from '../src/models/weights.js';
import { saveModelFolder } from '../src/models/save.js';
import { llama2cToTokenizerJson } from '../src/io/tokenizer-convert.js';
import { Llama2cTokenizer } from '../src/io/tokenizer-llama2c.js';
import { dataDir } from '../src/io/data.js';

export const STORIES_DIR = join(dataDir(), 'models', 'stories260K');
export const STORIES_BIN = join(STORIES_DIR, 'stories260K.bin');
export const STORIES_TOK = join(STORIES_DIR, 'tok512.bin');
export const HAVE_STORIES = existsSync(STORIES_BIN) && existsSync(STORIES_TOK);

export function tmp(prefix = 'adaptkit-gguf-'): string {
  return mkdtempSync(join(tmpdir(), prefix));
}

/** A Llama config of the random test model: grouped-query attention, untied head, non-default RoPE base and epsilon. */
export function randomLlamaConfig(over: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    architectures: ['LlamaForCausalLM'], model_type: 'llama', hidden_size: 64, intermediate_size: 128, num_hidden_layers: 2,
    num_attention_heads: 4, num_key_value_heads: 2, vocab_size: 512, max_position_embeddings: 256, rms_norm_eps: 1e-6,
    rope_theta: 50000, hidden_act: 'silu', tie_word_embeddings: false, bos_token_id: 1, eos_token_id: 2, ...over,
  };
}

/** A Llama-family model with seeded random weights (norm weights near 1, projections ~ 1/sqrt(in)). */
export function randomLlama(raw: Record<string, unknown>, seed: number): LlamaForCausalLM {
  const c = parseLlamaConfig(raw);
  const rng = new ak.Rng(seed);
  const w = new Map<string, ak.Tensor>();
  const put = (name: string, shape: number[], std: number, mean = 0) => {
    const n = shape.reduce((p, q) => p * q, 1);
    w.set(name, ak.fromBuffer(Float32Array.from({ length: n }, () => mean + std * rng.normal()), shape));
  };
  const H = c.hiddenSize;
  const q = c.numHeads * c.headDim;
  const kv = c.numKvHeads * c.headDim;
  put('model.embed_tokens.weight', [c.vocabSize, H], 1);
  for (let l = 0; l < c.numLayers; l++) {
    const p = `model.layers.${l}`;
    put(`${p}.input_layernorm.weight`, [H], 0.1, 1);
    put(`${p}.post_attention_layernorm.weight`, [H], 0.1, 1);
    put(`${p}.self_attn.q_proj.weight`, [q, H], 1 / Math.sqrt(H));
    put(`${p}.self_attn.k_proj.weight`, [kv, H], 1 / Math.sqrt(H));
    put(`${p}.self_attn.v_proj.weight`, [kv, H], 1 / Math.sqrt(H));
    put(`${p}.self_attn.o_proj.weight`, [H, q], 1 / Math.sqrt(q));
    if (c.qkvBias) for (const [n, d] of [['q', q], ['k', kv], ['v', kv]] as const) put(`${p}.self_attn.${n}_proj.bias`, [d], 0.1);
    if (c.oBias) put(`${p}.self_attn.o_proj.bias`, [H], 0.1);
    put(`${p}.mlp.gate_proj.weight`, [c.intermediateSize, H], 1 / Math.sqrt(H));
    put(`${p}.mlp.up_proj.weight`, [c.intermediateSize, H], 1 / Math.sqrt(H));
    put(`${p}.mlp.down_proj.weight`, [H, c.intermediateSize], 1 / Math.sqrt(c.intermediateSize));
  }
  put('model.norm.weight', [H], 0.1, 1);
  if (!c.tieWordEmbeddings) put('lm_head.weight', [c.vocabSize, H], 2 / Math.sqrt(H));
  return buildLlama(c, WeightMap.fromMap(w, 'random model'));
}

/** The random model as an HF folder (model.safetensors, config.json) with stories260K's vocabulary as tokenizer.json. */
export function randomLlamaFolder(dir: string, raw: Record<string, unknown>, seed: number): string {
  saveModelFolder(randomLlama(raw, seed), raw, dir, { overwrite: true });
  const { tokenizer, config } = llama2cToTokenizerJson(Llama2cTokenizer.fromFile(STORIES_TOK, 512));
  writeFileSync(join(dir, 'tokenizer.json'), JSON.stringify(tokenizer));
  writeFileSync(join(dir, 'tokenizer_config.json'), JSON.stringify(config));
  return dir;
}

/** Logits [T, V] of one sequence, flattened. */
export function logitsOf(model: { forward(ids: ak.Tensor): ak.Tensor }, ids: number[]): Float32Array {
  return ak.tidy(() => ak.noGrad(() => Float32Array.from(model.forward(ak.tensor(ids, [1, ids.length], { dtype: 'i32' })).toArray())));
}

/** Largest |a - b| over two arrays of equal length. */
export function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) throw new Error(`lengths ${a.length} and ${b.length}`);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  return m;
}

/** Every trainable adapter parameter moved by seeded noise, so that an adapter changes the model. */
export function perturbAdapters(am: ak.AdapterModel, seed: number, std: number): void {
  const rng = new ak.Rng(seed);
  ak.noGrad(() => {
    for (const p of am.trainableParameters()) {
      const d = p.storage.data as Float32Array;
      for (let i = 0; i < p.size; i++) d[p.offset + i] = d[p.offset + i]! + std * rng.normal();
    }
  });
}
