import { Embedding, Linear, RMSNorm } from '../../nn/index.js';
import type { WeightMap } from '../weights.js';
import type { LlamaConfig } from './config.js';
import { LlamaAttention, LlamaDecoderLayer, LlamaForCausalLM, LlamaMLP, LlamaModel } from './model.js';

/** Build a Llama-family model from HF-named weights, checking every shape. */
export function buildLlama(c: LlamaConfig, w: WeightMap): LlamaForCausalLM {
  const H = c.hiddenSize;
  const qDim = c.numHeads * c.headDim;
  const kvDim = c.numKvHeads * c.headDim;
  const lin = (name: string, out: number, inp: number, bias: boolean) =>
    new Linear(w.get(`${name}.weight`, [out, inp]), bias ? w.get(`${name}.bias`, [out]) : null);
  const layers: LlamaDecoderLayer[] = [];
  for (let l = 0; l < c.numLayers; l++) {
    const p = `model.layers.${l}`;
    const attn = new LlamaAttention(
      lin(`${p}.self_attn.q_proj`, qDim, H, c.qkvBias),
      lin(`${p}.self_attn.k_proj`, kvDim, H, c.qkvBias),
      lin(`${p}.self_attn.v_proj`, kvDim, H, c.qkvBias),
      lin(`${p}.self_attn.o_proj`, H, qDim, c.oBias),
      c.numHeads, c.numKvHeads, c.headDim, l,
    );
    const mlp = new LlamaMLP(
      lin(`${p}.mlp.gate_proj`, c.intermediateSize, H, c.mlpBias),
      lin(`${p}.mlp.up_proj`, c.intermediateSize, H, c.mlpBias),
      lin(`${p}.mlp.down_proj`, H, c.intermediateSize, c.mlpBias),
    );
    layers.push(new LlamaDecoderLayer(
      new RMSNorm(w.get(`${p}.input_layernorm.weight`, [H]), c.rmsNormEps),
      attn,
      new RMSNorm(w.get(`${p}.post_attention_layernorm.weight`, [H]), c.rmsNormEps),
      mlp,
    ));
  }
  const model = new LlamaModel(
    new Embedding(w.get('model.embed_tokens.weight', [c.vocabSize, H])),
    layers,
    new RMSNorm(w.get('model.norm.weight', [H]), c.rmsNormEps),
  );
  const head = c.tieWordEmbeddings && !w.has('lm_head.weight') ? null : lin('lm_head', c.vocabSize, H, false);
  return new LlamaForCausalLM(model, head, c);
}
