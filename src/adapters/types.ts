/**
 * The adapter-method contract. A method is one file that calls `registerMethod()`: it parses its
 * config (PEFT field names), creates its parameters for each matched target module, and says how
 * its parameters are named in PEFT files. Layers change behaviour only through the module objects
 * the adapter model swaps in (rule: no state flags in forward).
 */
import type { Module } from '../nn/index.js';
import type { Linear } from '../nn/index.js';
import type { Rng, Tensor } from '../tensor/index.js';

export type RawAdapterConfig = Record<string, unknown>;

/** Fields every PEFT config has, plus the target selection of tuner-based methods. */
export interface BaseAdapterConfig {
  peft_type: string;
  task_type: string | null;
  base_model_name_or_path: string | null;
  revision: string | null;
  inference_mode: boolean;
  target_modules: string[] | string | null;
  exclude_modules: string[] | string | null;
  layers_to_transform: number[] | number | null;
  layers_pattern: string[] | string | null;
  modules_to_save: string[] | null;
  /** Every other key as given (written back unchanged). */
  raw: RawAdapterConfig;
}

/** Changes a wrapped layer's output: y' = f(x, y) where y = base(x). */
export interface LayerDelta {
  readonly adapterName: string;
  /** Rewrite the layer's input before the base layer runs (IA3 on feed-forward inputs). */
  transformInput?(x: Tensor): Tensor;
  /** The layer's output given its (transformed) input x and the base output y. */
  apply(x: Tensor, y: Tensor): Tensor;
  /** The base weight with this delta folded in (same layout as the base weight), if linear. */
  mergeWeight?(weight: Tensor): Tensor;
  /** The base bias with this delta folded in (null: no bias). */
  mergeBias?(bias: Tensor | null): Tensor | null;
}

/** What a method needs to know when it attaches to one target. */
export interface TargetInfo {
  /** Dotted module path inside the base model (`model.layers.0.self_attn.q_proj`). */
  path: string;
  module: Module;
  /** Short name (last path component, or the matched target_modules entry). */
  name: string;
  layerIndex: number | null;
}

export interface CreateContext {
  rng: Rng;
  model: Module;
  /** Input covariance per target path (CorDA), when calibration data was given. */
  covariance?: Map<string, Float64Array>;
}

/** One adapter attached to a model. */
export interface AdapterInstance {
  readonly name: string;
  readonly method: AdapterMethod;
  readonly config: BaseAdapterConfig;
  /** Deltas by target path, for the layers this adapter wraps. */
  readonly deltas: Map<string, LayerDelta>;
  /** Replacement base layers (PiSSA/CorDA residual weights) by target path. */
  readonly residualBase?: Map<string, Linear>;
  /** Module hooks by target path (prompt/prefix methods attach to an embedding or attention slot). */
  readonly hooks?: Map<string, Module>;
  /** Trainable parameters. */
  parameters(): Tensor[];
  /** Parameters under PEFT's saved key names (adapter name stripped). */
  stateDict(): Map<string, Tensor>;
  /** Fill parameters from PEFT keys; every key must be used and every parameter filled. */
  loadStateDict(tensors: Map<string, Tensor>, source: string): void;
  /** The config as PEFT writes it in adapter_config.json. */
  configJson(): RawAdapterConfig;
}

export interface AdapterMethod {
  /** PEFT's peft_type ("LORA", "IA3", ...). */
  readonly peftType: string;
  /** Whether it attaches to target modules (tuners) or to a model-level hook (prompt learning). */
  readonly kind: 'tuner' | 'prompt';
  parseConfig(raw: RawAdapterConfig, source: string): BaseAdapterConfig;
  /** Default target_modules for a model when the config has none. */
  defaultTargets?(model: Module, config: BaseAdapterConfig): string[] | string | null;
  create(name: string, config: BaseAdapterConfig, targets: TargetInfo[], ctx: CreateContext): AdapterInstance;
  /** Trainable parameters this config adds to these targets (the method's formula). */
  countParameters?(config: BaseAdapterConfig, targets: TargetInfo[]): number;
}
