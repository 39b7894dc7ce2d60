/**
 * What adapters need to know about a model, published by each model family in its own folder.
 * Adapter methods read roles from here, never class or module names, so a new architecture
 * becomes adaptable by describing itself once.
 */
import { AdaptkitError } from '../tensor/index.js';
import type { Tensor } from '../tensor/index.js';
import type { Module } from './module.js';

/**
 * Roles of linear layers (and of a few blocks) that adapter methods place themselves by.
 * A fused projection (GPT-2's c_attn) is listed under each role it covers.
 */
export type TargetRole =
  | 'attn.q' | 'attn.k' | 'attn.v' | 'attn.o'
  | 'mlp.gate' | 'mlp.up' | 'mlp.down'
  /** The feed-forward layer whose input IA3 rescales (PEFT's feedforward_modules). */
  | 'ffn.in'
  /** The layer whose output ends the attention sub-block / the feed-forward sub-block. */
  | 'block.attn_out' | 'block.ffn_out'
  /** The whole feed-forward block (parallel adapters sit beside it). */
  | 'block.ffn'
  /** The norm a pre-norm block starts with: its input is the block's input (the residual stream). */
  | 'block.input_norm';

/** Target spec with PEFT semantics: a list of name suffixes, or one full-match regex over paths. */
export type TargetSpec = string[] | string;

/** What a KV cache tells a prefix hook about the sequences of its rows. */
export interface PrefixCache {
  /** Positions cached before this forward. */
  readonly length: number;
  /**
   * One object per batch row that stands for that row's sequence across forwards, for caches
   * that are rebuilt every step (a paged cache's step view) or whose rows are rearranged (a
   * prompt's rows repeated for several continuations). Absent: the cache object is the same
   * across a sequence's forwards and row b is the same sequence in each of them.
   */
  readonly seqs?: readonly object[];
}

/** One attention step as its `kv_prefix` hook sees it, for prefixes computed from the input. */
export interface KVPrefixStep {
  /** The attention layer's input [B, T, hidden] (after the block's norm). */
  x: Tensor;
  /** [B, start + T]: 1 for real keys (cached and new), 0 for padding; null: all are real. */
  keyMask: Tensor | null;
  /** Positions the cache held before this step (0: no cache, or a sequence's first forward). */
  start: number;
  cache: PrefixCache | null;
  /**
   * Keys and values [B, kvHeads, P, headDim] that this layer's own key/value projections make
   * of vectors h [B, P, hidden], with no position applied (prefix positions have none).
   */
  project(h: Tensor): { k: Tensor; v: Tensor };
}

/** A key/value prefix fed to an attention layer (prefix tuning and its relatives). */
export interface KVPrefixHook extends Module {
  /**
   * Keys and values [B, kvHeads, P, headDim] to put before this step's keys, and the matching
   * key-mask columns [B, P] (1: attend), for a batch of B rows.
   */
  prefix(layer: number, batch: number, step: KVPrefixStep): { k: Tensor; v: Tensor; mask: Tensor | null };
}

export interface AttentionSlot {
  /** Path of the attention module; it has a `kv_prefix` hook slot. */
  path: string;
  layer: number;
}

export interface AdapterDescriptor {
  /** Model family name ("llama", "gpt2", "bert"). */
  family: string;
  /** 'causal-lm' models generate text; 'sequence-classification' models end in a class head. */
  task: 'causal-lm' | 'sequence-classification';
  /** Module paths (PEFT target specs) for each role the architecture has. */
  roles: Partial<Record<TargetRole, TargetSpec>>;
  /** What a method targets when a config names nothing (PEFT's defaults for LoRA). */
  defaultTargets: TargetSpec;
  /** Path components before the layer index (`layers`, `h`, `layer`). */
  layersPattern: string[];
  /** Linear weights stored [in, out] (GPT-2's Conv1D). */
  fanInFanOut: boolean;
  /** The input token embedding (prompt-learning hooks replace it). */
  embedding: { path: string; dim: number };
  /** Output heads, which `all-linear` leaves alone. */
  heads: string[];
  /** Attention layers with a key/value cache and a `kv_prefix` slot, or null (encoders). */
  attention: { layers: AttentionSlot[]; kvHeads: number; headDim: number } | null;
  /** The trained classification head for modules_to_save (sequence classifiers). */
  classifierHead?: string;
}

export interface DescribedModel extends Module {
  adapterDescriptor(): AdapterDescriptor;
}

export function describeModel(model: Module): AdapterDescriptor {
  const d = (model as unknown as Partial<DescribedModel>).adapterDescriptor;
  if (typeof d !== 'function') throw new AdaptkitError(`${model.constructor.name} publishes no adapter descriptor, so adapters cannot place themselves on it`);
  return d.call(model);
}
