/** What prompt-learning methods need from a model, found through its module tree. */
import { AdaptkitError, type Tensor } from '../tensor/index.js';
import type { Module } from '../nn/index.js';
import { baseModules } from './targets.js';

/** The KV cache as prefix tuning sees it (the models' KVCache has this shape). */
export interface KVCacheLike {
  readonly layers: number;
  length: number;
  append(layer: number, k: Tensor, v: Tensor): unknown;
  /** Forget the cache, leaving its tensors to the enclosing tidy() scope. */
  release(): void;
  dispose(): void;
}

export interface AttentionInfo {
  layers: number;
  kvHeads: number;
  headDim: number;
}

/** Layer count and key/value shape from the attention modules (those with kvShape()). */
export function attentionInfo(model: Module): AttentionInfo {
  const atts = baseModules(model).map(([, m]) => m).filter((m) => typeof (m as unknown as { kvShape?: unknown }).kvShape === 'function');
  if (atts.length === 0) throw new AdaptkitError('this model exposes no cached attention (prefix tuning needs a causal LM with a KV cache)');
  const { kvHeads, headDim } = (atts[0] as unknown as { kvShape(): { kvHeads: number; headDim: number } }).kvShape();
  return { layers: atts.length, kvHeads, headDim };
}

const EMBEDDING_NAMES = ['embed_tokens', 'wte', 'word_embeddings'];

/** Path and hidden size of the input token embedding. */
export function inputEmbedding(model: Module): { path: string; module: Module; dim: number } {
  for (const [path, m] of baseModules(model)) {
    if (EMBEDDING_NAMES.includes(path.split('.').pop()!)) {
      const w = (m as unknown as { weight?: Tensor }).weight;
      if (w && w.ndim === 2) return { path, module: m, dim: w.shape[1]! };
    }
  }
  throw new AdaptkitError(`no input embedding found (looked for modules named ${EMBEDDING_NAMES.join(', ')})`);
}
