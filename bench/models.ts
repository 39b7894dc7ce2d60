/** Model shapes shared by benchmarks: a GPT-2-small-shaped model with random weights. */
import { type Tensor, Rng, ones, randn, zeros } from '../src/tensor/index.js';
import { GPT2LMHeadModel, buildGPT2, parseGPT2Config } from '../src/models/gpt2/model.js';
import { WeightMap } from '../src/models/weights.js';

export const GPT2_SMALL = { vocab: 50257, hidden: 768, layers: 12, heads: 12, positions: 1024 };

export function gpt2Random(shape = GPT2_SMALL, seed = 0): GPT2LMHeadModel {
  const rng = new Rng(seed);
  const H = shape.hidden;
  const w = new Map<string, Tensor>();
  const r = (name: string, s: number[]) => w.set(name, randn(s, { rng, std: 0.02 }));
  r('transformer.wte.weight', [shape.vocab, H]);
  r('transformer.wpe.weight', [shape.positions, H]);
  for (let l = 0; l < shape.layers; l++) {
    const p = `transformer.h.${l}`;
    for (const ln of ['ln_1', 'ln_2']) {
      w.set(`${p}.${ln}.weight`, ones([H]));
      w.set(`${p}.${ln}.bias`, zeros([H]));
    }
    r(`${p}.attn.c_attn.weight`, [H, 3 * H]);
    w.set(`${p}.attn.c_attn.bias`, zeros([3 * H]));
    r(`${p}.attn.c_proj.weight`, [H, H]);
    w.set(`${p}.attn.c_proj.bias`, zeros([H]));
    r(`${p}.mlp.c_fc.weight`, [H, 4 * H]);
    w.set(`${p}.mlp.c_fc.bias`, zeros([4 * H]));
    r(`${p}.mlp.c_proj.weight`, [4 * H, H]);
    w.set(`${p}.mlp.c_proj.bias`, zeros([H]));
  }
  w.set('transformer.ln_f.weight', ones([H]));
  w.set('transformer.ln_f.bias', zeros([H]));
  const config = parseGPT2Config({
    model_type: 'gpt2', n_embd: H, n_head: shape.heads, n_layer: shape.layers, n_positions: shape.positions,
    vocab_size: shape.vocab, activation_function: 'gelu_new',
  }, 'gpt2-small-random');
  return buildGPT2(config, WeightMap.fromMap(w, 'gpt2-small-random'));
}
