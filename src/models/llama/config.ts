import { AdaptkitError } from '../../tensor/index.js';
import { ConfigReader, type RawConfig } from '../config.js';

/** The Llama family (Llama 2/3, Mistral, Qwen2, SmolLM) from an HF config.json. */
export interface LlamaConfig {
  modelType: string;
  vocabSize: number;
  hiddenSize: number;
  intermediateSize: number;
  numLayers: number;
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  maxPositions: number;
  rmsNormEps: number;
  ropeTheta: number;
  ropeScaling: RawConfig | null;
  tieWordEmbeddings: boolean;
  /** Bias on q/k/v projections (Qwen2, or attention_bias). */
  qkvBias: boolean;
  /** Bias on o_proj (attention_bias). */
  oBias: boolean;
  mlpBias: boolean;
  hiddenAct: string;
  bosTokenId: number | null;
  eosTokenIds: number[];
  raw: RawConfig;
}

export function parseLlamaConfig(raw: RawConfig, source = 'config.json'): LlamaConfig {
  const c = new ConfigReader(raw, source);
  const modelType = c.str('model_type', 'llama');
  const hiddenSize = c.int('hidden_size');
  const numHeads = c.int('num_attention_heads');
  const numKvHeads = c.int('num_key_value_heads', numHeads);
  const headDim = c.int('head_dim', numHeads > 0 ? Math.floor(hiddenSize / numHeads) : 0);
  if (numHeads === 0 || numKvHeads === 0 || numHeads % numKvHeads !== 0) {
    throw new AdaptkitError(`${source}: num_attention_heads (${numHeads}) must be a positive multiple of num_key_value_heads (${numKvHeads})`);
  }
  const hiddenAct = c.str('hidden_act', 'silu');
  if (hiddenAct !== 'silu' && hiddenAct !== 'swish') throw new AdaptkitError(`${source}: hidden_act "${hiddenAct}" is not supported for ${modelType} (silu)`);
  const attentionBias = c.bool('attention_bias', false);
  const bos = c.ints('bos_token_id');
  return {
    modelType,
    vocabSize: c.int('vocab_size'),
    hiddenSize,
    intermediateSize: c.int('intermediate_size'),
    numLayers: c.int('num_hidden_layers'),
    numHeads,
    numKvHeads,
    headDim,
    maxPositions: c.int('max_position_embeddings', 2048),
    rmsNormEps: c.num('rms_norm_eps', 1e-6),
    ropeTheta: c.num('rope_theta', 10000),
    ropeScaling: c.object('rope_scaling'),
    tieWordEmbeddings: c.bool('tie_word_embeddings', false),
    qkvBias: modelType === 'qwen2' || attentionBias,
    oBias: attentionBias,
    mlpBias: c.bool('mlp_bias', false),
    hiddenAct,
    bosTokenId: bos[0] ?? null,
    eosTokenIds: c.ints('eos_token_id'),
    raw,
  };
}
