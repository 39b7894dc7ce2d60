/** What prompt-learning methods need from a model, read from its adapter descriptor. */
import { AdaptkitError } from '../tensor/index.js';
import type { AdapterDescriptor, Module } from '../nn/index.js';

export interface AttentionInfo {
  layers: number;
  kvHeads: number;
  headDim: number;
  /** Paths of the attention modules' `kv_prefix` hook slots, by layer. */
  slots: string[];
}

/** Layer count, key/value shape and hook slots of the model's cached attention. */
export function attentionInfo(d: AdapterDescriptor): AttentionInfo {
  const a = d.attention;
  if (!a) throw new AdaptkitError(`the ${d.family} model has no attention layers with a key/value prefix slot (prefix methods need a causal LM)`);
  return { layers: a.layers.length, kvHeads: a.kvHeads, headDim: a.headDim, slots: a.layers.map((l) => `${l.path}.kv_prefix`) };
}

/** Path, module and hidden size of the input token embedding. */
export function inputEmbedding(model: Module, d: AdapterDescriptor): { path: string; module: Module; dim: number } {
  return { path: d.embedding.path, module: model.get(d.embedding.path), dim: d.embedding.dim };
}
