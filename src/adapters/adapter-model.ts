/**
 * A base model with named adapters attached: adding, activating (by swapping the modules at
 * their target paths and hook slots), deleting and merging. PEFT file I/O is in peft-io.ts and
 * mixed-adapter batches in mixed.ts; this class offers both as methods.
 */
import { AdaptkitError, Rng, type Tensor, clone, noGrad, parameter } from '../tensor/index.js';
import { type AdapterDescriptor, Linear, type LinearLayer, Module, QuantLinear, describeModel } from '../nn/index.js';
import { getMethod, isMergeable } from './registry.js';
import { baseModules, defaultTargetsFor, findTargets, matches } from './targets.js';
import { type AdapterInstance, type AdapterMethod, type BaseAdapterConfig, type LayerDelta, type RawAdapterConfig, PaddingMask, PromptSpans, TaskRouting } from './types.js';
import { AdaptedLayer } from './wrapper.js';
import { loadAdapter, saveAdapter } from './peft-io.js';
import { forwardMixed, withRowAdapters } from './mixed.js';

export interface AddAdapterOptions {
  seed?: number;
  /** Where the config came from, for messages (an adapter_config.json path). */
  source?: string;
  /** Input covariance per target path, for CorDA initialization. */
  covariance?: Map<string, Float64Array>;
}

/** The forward every supported model has, with the options adapters pass through. */
interface ForwardModel {
  forward(ids: Tensor, o?: object): Tensor;
  newCache?(): { dispose(): void };
}

function copyTrainable(m: Module, path: string): Module {
  const copy = Object.assign(Object.create(Object.getPrototypeOf(m) as object), m) as Record<string, unknown>;
  for (const [k, v] of Object.entries(copy)) {
    if (v && typeof v === 'object' && 'storage' in v && 'shape' in v) copy[k] = parameter(noGrad(() => clone(v as Tensor)), `${path}.${k}`);
  }
  return copy as unknown as Module;
}

/** A value that asks for nothing (PEFT writes such defaults for settings adaptkit has no use for). */
function asksNothing(v: unknown): boolean {
  return v === null || v === undefined || v === false || v === '' || (Array.isArray(v) && v.length === 0) ||
    (typeof v === 'object' && v !== null && !Array.isArray(v) && Object.keys(v).length === 0);
}

/**
 * Keys of a config that its method neither read nor writes back, with a value that asks for
 * something: a misspelt key, or a setting the method would silently ignore.
 */
function unusedKeys(raw: RawAdapterConfig, reads: ReadonlySet<string>, written: RawAdapterConfig): string[] {
  return Object.keys(raw).filter((k) => !reads.has(k) && !(k in written) && !asksNothing(raw[k]));
}

/** Configs bigger than this many times the base model are refused before anything is allocated. */
const MAX_ADAPTER_TO_MODEL = 4;

export class AdapterModel<M extends Module = Module> {
  readonly adapters = new Map<string, AdapterInstance>();
  /** Per-row task ids that task-routed adapters read during a forward (see `forward`). */
  readonly tasks = new TaskRouting();
  /** Per-row prompt lengths that instruction-conditioned adapters read during a forward. */
  readonly prompts = new PromptSpans();
  /** The attention mask of the forward that is running, for adapters that read one position per row. */
  readonly padding = new PaddingMask();
  /** Trainable copies of modules_to_save, per adapter, by path. */
  readonly saved = new Map<string, Map<string, Module>>();
  private originals = new Map<string, Module | null>();
  private activeNames: string[] = [];

  constructor(readonly model: M) {}

  get active(): readonly string[] {
    return this.activeNames;
  }

  /** Attach a new adapter from a PEFT config (its parameters freshly initialized). */
  add(name: string, raw: RawAdapterConfig, opts: AddAdapterOptions = {}): AdapterInstance {
    if (this.adapters.has(name)) throw new AdaptkitError(`an adapter named "${name}" already exists`);
    if (!/^[\w.-]{1,128}$/.test(name)) throw new AdaptkitError(`adapter name "${name}" may only use letters, digits, _ . - (at most 128)`);
    if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) throw new AdaptkitError(`adapter "${name}" config must be an object`);
    const method = getMethod(raw.peft_type);
    const source = opts.source ?? `adapter "${name}" config`;
    // which keys the method reads while it parses the config and creates the adapter
    const reads = new Set<string>(['peft_type']);
    let tracking = true;
    const tracked = new Proxy(raw, {
      get(t, k, r) {
        if (tracking && typeof k === 'string') reads.add(k);
        return Reflect.get(t, k, r);
      },
      has(t, k) {
        if (tracking && typeof k === 'string') reads.add(k);
        return Reflect.has(t, k);
      },
    });
    const descriptor = describeModel(this.model);
    this.restoreAll();
    try {
      const config = method.parseConfig(tracked, source);
      const inst = this.attach(name, method, config, descriptor, opts);
      tracking = false;
      const unread = unusedKeys(raw, reads, inst.configJson());
      if (unread.length) {
        this.adapters.delete(name);
        this.saved.delete(name);
        this.activeNames = this.activeNames.filter((n) => n !== name);
        throw new AdaptkitError(`${source}: ${method.peftType} does not read ${unread.map((k) => `"${k}"`).join(', ')} (a misspelt key, or a setting adaptkit does not support)`);
      }
      return inst;
    } catch (e) {
      // every error says which config it is about
      if (e instanceof AdaptkitError && !e.message.includes(source)) throw new AdaptkitError(`${source}: ${e.message}`, { cause: e });
      throw e;
    } finally {
      this.apply();
    }
  }

  private attach(name: string, method: AdapterMethod, config: BaseAdapterConfig, descriptor: AdapterDescriptor, opts: AddAdapterOptions): AdapterInstance {
    {
      const targets = method.kind === 'tuner' ? findTargets(this.model, config, defaultTargetsFor(method, this.model, config)) : [];
      if (method.countParameters) {
        const n = method.countParameters(config, targets, descriptor);
        const base = this.model.numParameters();
        if (n > MAX_ADAPTER_TO_MODEL * Math.max(base, 1 << 20)) {
          throw new AdaptkitError(`adapter "${name}": its config asks for ${n} parameters, ${Math.round(n / base)}x the base model's ${base}; check the size fields (r, bottleneck size, virtual tokens)`);
        }
      }
      const inst = method.create(name, config, targets, { rng: new Rng(opts.seed ?? 0), tasks: this.tasks, prompts: this.prompts, padding: this.padding, model: this.model, descriptor, covariance: opts.covariance });
      this.adapters.set(name, inst);
      if (config.modules_to_save?.length) {
        const copies = new Map<string, Module>();
        for (const [path, m] of baseModules(this.model)) {
          if (matches(config.modules_to_save, path, 'modules_to_save') !== null && !(m instanceof AdaptedLayer)) copies.set(path, copyTrainable(m, path));
        }
        if (copies.size === 0) {
          this.adapters.delete(name);
          throw new AdaptkitError(`modules_to_save ${JSON.stringify(config.modules_to_save)} matched no module`);
        }
        this.saved.set(name, copies);
      }
      if (this.activeNames.length === 0) this.activeNames = [name];
      return inst;
    }
  }

  /** Make exactly these adapters active (in this order); [] runs the bare base model. */
  setActive(names: readonly string[]): void {
    for (const n of names) if (!this.adapters.has(n)) throw new AdaptkitError(`no adapter named "${n}" (have: ${[...this.adapters.keys()].join(', ') || 'none'})`);
    this.restoreAll();
    this.activeNames = [...names];
    this.apply();
  }

  delete(name: string): void {
    const inst = this.adapters.get(name);
    if (!inst) throw new AdaptkitError(`no adapter named "${name}"`);
    this.restoreAll();
    this.adapters.delete(name);
    this.saved.delete(name);
    this.activeNames = this.activeNames.filter((n) => n !== name);
    for (const p of inst.parameters()) p.dispose();
    this.apply();
  }

  /** Run fn with these adapters active, then restore the previous ones. */
  withActive<T>(names: readonly string[], fn: () => T): T {
    const prev = this.activeNames;
    this.setActive(names);
    try {
      return fn();
    } finally {
      this.setActive(prev);
    }
  }

  /** Run fn with no adapter active, then restore. */
  withoutAdapters<T>(fn: () => T): T {
    return this.withActive([], fn);
  }

  /**
   * Run fn with these deltas on these layers instead of the active adapters (the stacked deltas
   * of mixed batches), then restore.
   */
  withDeltas<T>(deltas: ReadonlyMap<string, readonly (LayerDelta & Module)[]>, fn: () => T): T {
    this.restoreAll();
    try {
      for (const [path, ds] of deltas) {
        const orig = this.model.get(path);
        this.originals.set(path, orig);
        this.model.replace(path, new AdaptedLayer(orig as Linear, [...ds]));
      }
      return fn();
    } finally {
      this.restoreAll();
      this.apply();
    }
  }

  /** Trainable parameters of the active adapters (and their modules_to_save copies). */
  trainableParameters(): Tensor[] {
    const out: Tensor[] = [];
    for (const n of this.activeNames) {
      out.push(...this.adapters.get(n)!.parameters());
      for (const m of this.saved.get(n)?.values() ?? []) out.push(...m.parameters());
    }
    return out;
  }

  numTrainable(name?: string): number {
    const names = name ? [name] : this.activeNames;
    let n = 0;
    for (const a of names) {
      n += this.adapters.get(a)!.parameters().reduce((s, t) => s + t.size, 0);
      for (const m of this.saved.get(a)?.values() ?? []) n += m.parameters().reduce((s, t) => s + t.size, 0);
    }
    return n;
  }

  private put(path: string, m: Module): void {
    if (!this.originals.has(path)) this.originals.set(path, this.model.setSlot(path, m));
    else this.model.setSlot(path, m);
  }

  private restoreAll(): void {
    for (const [path, orig] of this.originals) this.model.setSlot(path, orig);
    this.originals.clear();
  }

  /** Install the modules for the active adapters. */
  private apply(): void {
    const byPath = new Map<string, (LayerDelta & Module)[]>();
    const residual = new Map<string, { adapter: string; layer: Linear }>();
    const hookOwner = new Map<string, string>();
    for (const n of this.activeNames) {
      const inst = this.adapters.get(n)!;
      for (const [path, d] of inst.deltas) {
        if (!byPath.has(path)) byPath.set(path, []);
        byPath.get(path)!.push(d);
      }
      for (const [path, layer] of inst.residualBase ?? []) {
        const prev = residual.get(path);
        if (prev) throw new AdaptkitError(`adapters "${prev.adapter}" and "${n}" both replace the base weight of "${path}" (PiSSA/CorDA); activate one at a time`);
        residual.set(path, { adapter: n, layer });
      }
      for (const [path, hook] of inst.hooks ?? []) {
        const prev = hookOwner.get(path);
        if (prev) throw new AdaptkitError(`adapters "${prev}" and "${n}" both use the hook at "${path}"; activate one at a time`);
        hookOwner.set(path, n);
        this.put(path, hook);
      }
      for (const [path, copy] of this.saved.get(n) ?? []) this.put(path, copy);
    }
    for (const [path, deltas] of byPath) {
      const orig = this.model.get(path);
      if (orig instanceof AdaptedLayer) {
        throw new AdaptkitError(`"${path}" already carries adapters of another AdapterModel on this model; use one AdapterModel per model (or deactivate the other)`);
      }
      this.originals.set(path, orig);
      const base = residual.get(path)?.layer ?? orig;
      this.model.replace(path, new AdaptedLayer(base as Linear, deltas));
    }
  }

  /**
   * Fold the active adapters into new base weights and return the plain model (the adapter
   * model stays usable: call `unmerge()` to put the adapter modules back). Only methods with the
   * merge capability fold; any other active adapter is an error naming it. A quantized base layer
   * is merged as PEFT merges into bitsandbytes layers: dequantized, added to, requantized in its
   * own format; `onRequantize` hears the largest change that requantizing made to its weights.
   */
  merge(opts: { onRequantize?(path: string, maxAbsChange: number): void } = {}): M {
    for (const n of this.activeNames) {
      const inst = this.adapters.get(n)!;
      if (!isMergeable(inst)) {
        throw new AdaptkitError(`adapter "${n}" (${inst.method.peftType}) cannot be merged into the base weights: the method is not a reparameterization of linear weights`);
      }
    }
    const wrapped = baseModules(this.model).filter(([, m]) => m instanceof AdaptedLayer) as [string, AdaptedLayer][];
    for (const [path, w] of wrapped) {
      const base = w.base_layer as LinearLayer;
      const quantized = base instanceof QuantLinear;
      let weight = quantized ? base.dequantizedWeight() : base.weight;
      let bias = base.bias;
      for (const d of w.deltas) {
        if (!d.mergeWeight) throw new AdaptkitError(`adapter "${d.adapterName}" cannot be merged into "${path}" (not a linear reparameterization)`);
        const next = d.mergeWeight(weight);
        if (quantized && weight !== next) weight.dispose();
        weight = next;
        bias = d.mergeBias ? d.mergeBias(bias) : bias;
      }
      if (quantized) {
        const { layer, maxAbsError } = base.requantize(weight, bias ? bias.keep() : null);
        weight.dispose();
        opts.onRequantize?.(path, maxAbsError);
        this.model.replace(path, layer);
      } else {
        this.model.replace(path, new Linear(weight.keep(), bias ? bias.keep() : null, base.fanInFanOut));
      }
    }
    return this.model;
  }

  unmerge(): void {
    this.restoreAll();
    this.apply();
  }

  /** A KV cache for the model (prefix adapters sit in attention hooks, not in the cache). */
  newCache(): { dispose(): void } {
    const m = this.model as unknown as ForwardModel;
    if (!m.newCache) throw new AdaptkitError('this model has no KV cache');
    return m.newCache();
  }

  /**
   * The model's forward with the active adapters. `taskIds` (one per row, or one for all rows)
   * routes task-conditioned methods and `promptLengths` (one per row) marks each row's prompt,
   * for this forward only; adapters that read one position per row see `attentionMask` too.
   */
  forward(ids: Tensor, opts: { cache?: unknown; attentionMask?: Tensor | null; tokenTypeIds?: Tensor | null; positions?: Tensor | null; taskIds?: ArrayLike<number> | null; promptLengths?: ArrayLike<number> | null } = {}): Tensor {
    const { taskIds, promptLengths, ...rest } = opts;
    const run = () => (this.model as unknown as ForwardModel).forward(ids, rest);
    const before = { tasks: this.tasks.ids, prompts: this.prompts.lengths, padding: this.padding.mask };
    if (taskIds !== undefined) this.tasks.ids = taskIds === null ? null : Int32Array.from(taskIds);
    if (promptLengths !== undefined) this.prompts.lengths = promptLengths === null ? null : Int32Array.from(promptLengths);
    this.padding.mask = rest.attentionMask ?? null;
    try {
      return run();
    } finally {
      this.tasks.ids = before.tasks;
      this.prompts.lengths = before.prompts;
      this.padding.mask = before.padding;
    }
  }

  /** Run fn with a mixed-adapter batch: row i uses adapter rowAdapters[i] (null: none); all row-batched. */
  withRowAdapters<T>(rowAdapters: readonly (string | null)[], fn: () => T): T {
    return withRowAdapters(this, rowAdapters, fn);
  }

  /**
   * One forward over a batch whose rows use different adapters (null: none). Adapters with the
   * row-batched capability share the base GEMMs; others run their rows as groups.
   */
  forwardMixed(ids: Tensor, rowAdapters: readonly (string | null)[], opts: { attentionMask?: Tensor | null } = {}): Tensor {
    return forwardMixed(this, ids, rowAdapters, opts);
  }

  /** Save one adapter as adapter_config.json + adapter_model.safetensors (atomically). */
  save(dir: string, name = this.activeNames[0]): void {
    if (!name) throw new AdaptkitError('no adapter to save');
    saveAdapter(this, dir, name);
  }

  /** Load a PEFT adapter folder under `name` (strict: every saved tensor must be used). */
  load(dir: string, name = 'default'): AdapterInstance {
    return loadAdapter(this, dir, name);
  }
}
