import { AdaptkitError } from '../../tensor/index.js';
import { ConfigReader, type RawConfig } from '../config.js';
import { preview } from '../../io/json.js';

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

/** The rope_scaling types rope.ts computes. */
const ROPE_TYPES = ['default', 'linear', 'dynamic', 'llama3', 'yarn'];

/** rope_scaling, checked here so a bad value is named with its file before any table is built. */
function ropeScaling(c: ConfigReader, source: string): RawConfig | null {
  const s = c.nested('rope_scaling');
  if (!s) return null;
  const type = s.raw.rope_type ?? s.raw.type ?? 'default';
  if (typeof type !== 'string' || !ROPE_TYPES.includes(type)) {
    throw new AdaptkitError(`${source}: rope_scaling type ${preview(type)} is not supported (${ROPE_TYPES.join(', ')})`);
  }
  if (s.raw.factor !== undefined && s.raw.factor !== null && !(s.num('factor') > 0)) s.fail('factor', `must be positive, got ${s.num('factor')}`);
  for (const k of ['low_freq_factor', 'high_freq_factor', 'beta_fast', 'beta_slow', 'attention_factor']) {
    if (s.raw[k] !== undefined) s.num(k);
  }
  if (s.raw.original_max_position_embeddings !== undefined) s.positive('original_max_position_embeddings');
  return s.raw;
}

export function parseLlamaConfig(raw: RawConfig, source = 'config.json'): LlamaConfig {
  const c = new ConfigReader(raw, source);
  const modelType = c.str('model_type', 'llama');
  const hiddenSize = c.positive('hidden_size');
  const numHeads = c.positive('num_attention_heads');
  const numKvHeads = c.positive('num_key_value_heads', numHeads);
  if (numHeads % numKvHeads !== 0) {
    throw new AdaptkitError(`${source}: num_attention_heads (${numHeads}) must be a positive multiple of num_key_value_heads (${numKvHeads})`);
  }
  const headDim = c.int('head_dim', Math.floor(hiddenSize / numHeads));
  // RoPE rotates pairs of features
  if (headDim < 2 || headDim % 2 !== 0) c.fail('head_dim', `must be a positive even number (RoPE rotates pairs), got ${headDim}${c.raw.head_dim === undefined ? ' from hidden_size / num_attention_heads' : ''}`);
  const hiddenAct = c.str('hidden_act', 'silu');
  if (hiddenAct !== 'silu' && hiddenAct !== 'swish') throw new AdaptkitError(`${source}: hidden_act ${preview(hiddenAct)} is not supported for ${preview(modelType)} (silu)`);
  const attentionBias = c.bool('attention_bias', false);
  const bos = c.ints('bos_token_id');
  const ropeTheta = c.num('rope_theta', 10000);
  if (!(ropeTheta > 0)) c.fail('rope_theta', `must be positive, got ${ropeTheta}`);
  return {
    modelType,
    vocabSize: c.positive('vocab_size'),
    hiddenSize,
    intermediateSize: c.positive('intermediate_size'),
    numLayers: c.int('num_hidden_layers'),
    numHeads,
    numKvHeads,
    headDim,
    maxPositions: c.positive('max_position_embeddings', 2048),
    rmsNormEps: c.num('rms_norm_eps', 1e-6),
    ropeTheta,
    ropeScaling: ropeScaling(c, source),
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
