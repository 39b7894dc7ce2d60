/**
 * The adapter-method contract. A method is one file that calls `registerMethod()`: it parses its
 * config (PEFT field names), creates its parameters for each matched target module, says how its
 * parameters are named in PEFT files, and declares what else it can do (merge, row-batched
 * serving, combination, CLI presets). Everything outside the method file learns about a method
 * only from this object. Layers change behaviour only through the module objects the adapter
 * model swaps in (rule: no state flags in forward).
 */
import type { AdapterDescriptor, Linear, Module, TargetSpec } from '../nn/index.js';
import { AdaptkitError, type Rng, type Tensor } from '../tensor/index.js';
import type { AdapterModel } from './adapter-model.js';

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

/**
 * The task of every row of the next forward, for methods that route by task (Poly/MHR). The
 * caller sets it (multi-task training, evaluation, a request's task id); null: no task given.
 */
export class TaskRouting {
  ids: Int32Array | null = null;

  /** Task id of row `row`, checked against the method's task count. */
  task(row: number, nTasks: number, who: string): number {
    const ids = this.ids;
    if (!ids) {
      if (nTasks === 1) return 0;
      throw new AdaptkitError(`${who} routes by task (n_tasks ${nTasks}) but the forward was given no task ids`);
    }
    const t = ids.length === 1 ? ids[0]! : ids[row];
    if (t === undefined) throw new AdaptkitError(`${who}: ${ids.length} task ids for a batch with row ${row}`);
    if (t < 0 || t >= nTasks) throw new AdaptkitError(`${who}: task id ${t} is outside 0..${nTasks - 1}`);
    return t;
  }
}

/**
 * How many leading tokens of every row of the next forward are its prompt (the instruction, as
 * opposed to the response the loss is taken on), for methods conditioned on the instruction
 * alone (IAPT). The caller sets it (training batches, generation prefill); null: not given.
 */
export class PromptSpans {
  lengths: Int32Array | null = null;
}

/**
 * Which positions of every row of the next forward are real tokens: the forward's attention
 * mask (1 = token, 0 = padding; with a KV cache it also covers the cached positions), for
 * methods that read one position of each sequence (MixDA's gate reads each row's last token).
 * AdapterModel.forward sets it; null: no mask given, every position is real.
 */
export class PaddingMask {
  mask: Tensor | null = null;
}

export interface CreateContext {
  rng: Rng;
  /** The attention mask of each forward (shared by all adapters of the model; absent: none). */
  padding?: PaddingMask;
  /** Per-row prompt lengths of each forward (shared by all adapters of the model). */
  prompts: PromptSpans;
  /** Per-row task ids of each forward (shared by all adapters of the model). */
  tasks: TaskRouting;
  model: Module;
  descriptor: AdapterDescriptor;
  /** Input covariance per target path (CorDA), when calibration data was given. */
  covariance?: Map<string, Float64Array>;
}

/** One adapter attached to a model. */
export interface AdapterInstance {
  readonly name: string;
  readonly method: AdapterMethod;
  readonly config: BaseAdapterConfig;
  /** Deltas by target path, for the layers this adapter wraps. */
  readonly deltas: Map<string, LayerDelta & Module>;
  /** Replacement base layers (PiSSA/CorDA residual weights) by target path. */
  readonly residualBase?: Map<string, Linear>;
  /** Modules for hook slots by path (the input embedding, attention `kv_prefix` slots). */
  readonly hooks?: Map<string, Module>;
  /** Positions the adapter puts before a sequence's first token (prompt tuning's virtual tokens). */
  readonly addedPositions?: number;
  /** Trainable parameters. */
  parameters(): Tensor[];
  /** Parameters under PEFT's saved key names (adapter name stripped). */
  stateDict(): Map<string, Tensor>;
  /** Fill parameters from PEFT keys; every key must be used and every parameter filled. */
  loadStateDict(tensors: Map<string, Tensor>, source: string): void;
  /** The config as PEFT writes it in adapter_config.json. */
  configJson(): RawAdapterConfig;
  /**
   * Files saved next to adapter_config.json and adapter_model.safetensors (plain names, e.g. a
   * packed low-bit form of the weights), written atomically with them.
   */
  extraFiles?(): Map<string, Uint8Array>;
  /**
   * The training objective of one step when it is not the plain loss of one forward (two passes
   * with a consistency term, say): `logits()` runs the model on the step's batch, `loss(l)` is
   * the data loss of logits `l`, `weights` [B, T] is 1 at the positions the loss counts,
   * `taskIds` [B] the task of each row (multi-task training; 0 on a single task), `ids` and
   * `mask` [B, T] the batch's token ids and padding mask (1: token), for objectives that run the
   * model on other sequences made from the batch. Called inside the training scope.
   */
  objective?(step: { logits(): Tensor; loss(logits: Tensor): Tensor; weights?: Tensor; taskIds?: Int32Array; ids?: Tensor; mask?: Tensor }): Tensor;
  /**
   * Everything training needs to resume exactly, when the saved adapter is not all of it (the
   * experts behind a merged adapter); checkpoints store it and load it back.
   */
  checkpointState?(): Map<string, Tensor>;
  loadCheckpointState?(tensors: Map<string, Tensor>, source: string): void;
  /**
   * Capability of generators of adapters (Generative Adapter): the base model alone reads the
   * context, token ids [C, T] with `mask` [C, T] 0 at padding, and every forward after it runs
   * the adapter generated from it (one context for all rows when C = 1, else one per batch row)
   * until the next call; null goes back to no context, where the adapter changes nothing.
   */
  condition?(am: AdapterModel, contextIds: Tensor | null, mask?: Tensor | null): void;
  /**
   * The adapter generated from the current one-row context, as an ordinary adapter of another
   * method (its PEFT config and tensors), to add, save and serve like any other.
   */
  generated?(): { config: RawAdapterConfig; tensors: Map<string, Tensor> };
}

/** One low-rank-adapted linear layer: A [r, in] and B [out, r], applied as scale·B·A. */
export interface LowRankFactors {
  /** Module path in the base model, e.g. "model.layers.0.self_attn.q_proj". */
  module: string;
  a: Float32Array;
  b: Float32Array;
  r: number;
  scale: number;
}

/** A CLI option a method's presets read (`adaptkit train --<name> <value>`). */
export interface MethodOption {
  /** As spelled after `--` (`r`, `virtual-tokens`). */
  name: string;
  type: 'int' | 'number' | 'string' | 'list';
  description: string;
  /** Smallest accepted value of a number. */
  min?: number;
  /** Largest accepted value of a number. */
  max?: number;
}

/** Option values by option name; absent options are undefined. */
export type PresetOptions = Record<string, number | string | string[] | undefined>;

/** A named way to train a method (`--method <name>`): lora, rslora, dora and pissa are LoRA presets. */
export interface MethodPreset {
  name: string;
  description: string;
  /** The PEFT config for these option values on a model. */
  config(o: PresetOptions, model: AdapterDescriptor): RawAdapterConfig;
  /**
   * Training that is more than one run (LT-SFT's two phases): given the run's options and the
   * runner, it runs what it needs and returns the result whose adapter is the method's artefact.
   */
  train?<O extends { method: string; outDir: string; adapterConfig?: RawAdapterConfig }, R extends { adapterDir: string }>(o: O, run: (o: O) => R, options: PresetOptions): R;
}

/** One stacked tensor of a row-batched form: its shape per slot and the value of an empty slot. */
export interface SlotTensor {
  shape: number[];
  /** Slot 0 (and every free slot) holds this value everywhere, which leaves the layer unchanged. */
  identity: number;
}

/** Which slot of each stack every row of a batch uses (0: the identity slot). */
export class RowRouting {
  rows: Tensor | null = null;
  /** Per-row weights of `rows`' slots (null: 1), and further weighted slots per row (mixtures). */
  weights: Tensor | null = null;
  more: { rows: Tensor; weights: Tensor }[] = [];
}

/**
 * The optional capability of applying many adapters of a method in one forward, each row with
 * its own: the adapters' tensors at a target are stacked into slots (S-LoRA/Punica layout) and
 * each row gathers its slot. Adapters whose `key` is equal share stacks.
 */
export interface RowBatchedForm {
  /** Adapters of one method with the same key share stacks (e.g. plain LoRA apart from DoRA). */
  key(inst: AdapterInstance): string;
  /**
   * Whether stacks of this key apply weighted sums of several slots per row (a per-request
   * mixture of adapters), which needs a delta linear in the adapter's tensors.
   */
  mixable?(key: string): boolean;
  /** Per-adapter sizes that fix the slot shapes (e.g. `{ r: 8 }`), named as the config fields are. */
  sizes(inst: AdapterInstance): Record<string, number>;
  /** The sizes of a server's slots when every rank-like size is at most `maxRank`. */
  limits(key: string, maxRank: number): Record<string, number>;
  /** The stacked tensors at a target layer for the largest sizes in a stack. */
  layout(layer: Linear, sizes: Record<string, number>, key: string): Record<string, SlotTensor>;
  /** Write an adapter's values at `path` into one slot (views of the stacks, already at identity). */
  write(inst: AdapterInstance, path: string, slot: Record<string, Float32Array>, sizes: Record<string, number>): void;
  /** The delta that applies the stacks to a batch routed by `routing`. */
  delta(layer: Linear, stacks: Record<string, Tensor>, routing: RowRouting, key: string): LayerDelta & Module;
}

export interface CombineOptions {
  combination: string;
  /** Fraction kept by pruning (ties, dare_*, magnitude_prune). */
  density?: number;
  /** "total" (sign of the sum) or "frequency" (most common sign). */
  majoritySignMethod?: 'total' | 'frequency';
  /** Rank of an svd combination (default: the largest input rank). */
  svdRank?: number;
  seed?: number;
}

/** What a combination needs of the adapter model it writes into. */
export interface CombineTarget {
  readonly adapters: ReadonlyMap<string, AdapterInstance>;
  add(name: string, raw: RawAdapterConfig): AdapterInstance;
}

export interface AdapterMethod {
  /** PEFT's peft_type ("LORA", "IA3", ...). */
  readonly peftType: string;
  /** One line for `--help` and the README. */
  readonly description?: string;
  /** Whether it attaches to target modules (tuners) or to model-level hooks (prompt learning). */
  readonly kind: 'tuner' | 'prompt';
  parseConfig(raw: RawAdapterConfig, source: string): BaseAdapterConfig;
  /** Default target_modules for a model when the config has none (default: the model's own). */
  defaultTargets?(model: AdapterDescriptor, config: BaseAdapterConfig): TargetSpec | null;
  create(name: string, config: BaseAdapterConfig, targets: TargetInfo[], ctx: CreateContext): AdapterInstance;
  /** Trainable parameters this config adds to these targets (the method's formula). */
  countParameters?(config: BaseAdapterConfig, targets: TargetInfo[], model: AdapterDescriptor): number;
  /**
   * A method that is only read from files other methods save (a sparse difference written by
   * S²FT or LT-SFT): it has no preset of its own, and those methods' contract cases cover it.
   */
  readonly savedFormOnly?: boolean;
  /** `adaptkit train --method` names and the options they read. */
  readonly presets?: readonly MethodPreset[];
  readonly options?: readonly MethodOption[];
  /** Config keys that adapter_config.json writes as floats (Python writes 8 as 8.0 there). */
  readonly floatKeys?: readonly string[];
  /**
   * Loading a saved adapter: the config to create it from (an initialization that already ran,
   * such as PiSSA, must not run again) and a fix-up of the instance after creation.
   */
  prepareLoad?(raw: RawAdapterConfig): { config: RawAdapterConfig; finish?(inst: AdapterInstance): void };
  /**
   * False when a freshly created adapter changes the model's output by design (prompt methods
   * add positions; low-bit adapters cannot start at exactly zero). Default true.
   */
  readonly startsAsIdentity?: boolean;
  /**
   * The backward is a straight-through estimate, not the derivative of the forward (weights
   * quantized in forward): finite differences of the output cannot check it, so the contract
   * requires finite, non-zero gradients and the method's own tests check the estimator.
   */
  readonly straightThrough?: boolean;
  /** Capability: every delta folds into the base weights (mergeWeight/mergeBias). */
  readonly mergeable?: boolean | ((inst: AdapterInstance) => boolean);
  /** Capability: mixed batches and the server apply several adapters of this method per row. */
  readonly rowBatched?: RowBatchedForm;
  /**
   * Capability: the adapter rewritten exactly as an adapter of another method, by that method's
   * peft_type (ZeroI2V's folded weight change as a LoRA).
   */
  readonly exports?: Readonly<Record<string, (am: AdapterModel, name: string) => { config: RawAdapterConfig; tensors: Map<string, Tensor> }>>;
  /**
   * Capability: the adapter (its config and PEFT tensors) as plain low-rank factors of linear
   * layers, W' = W + scale·B·A, the form llama.cpp's GGUF LoRA adapters hold; what that form
   * cannot hold is refused, naming the field. Methods without it reach it through `exports`.
   */
  lowRank?(config: RawAdapterConfig, tensors: ReadonlyMap<string, Tensor>, source: string): { alpha: number; factors: LowRankFactors[] };
  /** Capability: weighted combination of adapters of this method into a new one. */
  combine?(target: CombineTarget, names: readonly string[], weights: readonly number[], newName: string, o: CombineOptions): AdapterInstance;
  /** Names of the combinations `combine` knows. */
  readonly combinations?: readonly string[];
  /** The settings `adaptkit inspect` shows. */
  summary?(config: BaseAdapterConfig): Record<string, unknown>;
}
