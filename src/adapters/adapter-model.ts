/**
 * A base model with named adapters attached. Adapters are created from PEFT configs, made active
 * or inactive by swapping the modules at their target paths, saved and loaded in PEFT's format,
 * and merged into plain weights.
 */
import { join } from 'node:path';
import { AdaptkitError, Rng, type Tensor, clone, concat, indexSelect, noGrad, ones, parameter, tensor } from '../tensor/index.js';
import { Linear, Module } from '../nn/index.js';
import { writeFileAtomic } from '../io/atomic.js';
import { serializeSafetensors } from '../io/safetensors.js';
import { getMethod } from './registry.js';
import { findTargets, matches, baseModules } from './targets.js';
import type { AdapterInstance, LayerDelta, RawAdapterConfig } from './types.js';
import { AdaptedLayer } from './wrapper.js';
import { pythonJson } from './pyjson.js';
import { loadInto } from './state.js';
import { adapterWeightsFile, readAdapterConfig, readTensorMap } from './files.js';
import { RowRouting, buildMixedDeltas } from './mixed.js';
import { PrefixAdapter } from './methods/prefix-tuning.js';
import type { KVCacheLike } from './prompt-common.js';

const FLOAT_KEYS = ['lora_dropout', 'lora_alpha', 'dropout', 'scaling', 'init_scale', 'adapter_scaling'];

export interface AddAdapterOptions {
  seed?: number;
  /** Input covariance per target path, for CorDA initialization. */
  covariance?: Map<string, Float64Array>;
}

/** Models export the module names adapters target when a config names none. */
function defaultTargets(model: Module): string[] | null {
  const t = (model.constructor as { defaultAdapterTargets?: string[] }).defaultAdapterTargets;
  return t ?? null;
}

function copyTrainable(m: Module, path: string): Module {
  const copy = Object.assign(Object.create(Object.getPrototypeOf(m) as object), m) as Record<string, unknown>;
  for (const [k, v] of Object.entries(copy)) {
    if (v && typeof v === 'object' && 'storage' in v && 'shape' in v) copy[k] = parameter(noGrad(() => clone(v as Tensor)), `${path}.${k}`);
  }
  return copy as unknown as Module;
}

export class AdapterModel<M extends Module = Module> {
  readonly adapters = new Map<string, AdapterInstance>();
  /** Trainable copies of modules_to_save, per adapter, by path. */
  private saved = new Map<string, Map<string, Module>>();
  private originals = new Map<string, Module>();
  private activeNames: string[] = [];

  constructor(readonly model: M) {}

  get active(): readonly string[] {
    return this.activeNames;
  }

  /** Attach a new adapter from a PEFT config (its parameters freshly initialized). */
  add(name: string, raw: RawAdapterConfig, opts: AddAdapterOptions = {}): AdapterInstance {
    if (this.adapters.has(name)) throw new AdaptkitError(`an adapter named "${name}" already exists`);
    if (!/^[\w.-]+$/.test(name)) throw new AdaptkitError(`adapter name "${name}" may only use letters, digits, _ . -`);
    const method = getMethod(raw.peft_type);
    const config = method.parseConfig(raw, `adapter "${name}" config`);
    this.restoreAll();
    try {
      const targets = method.kind === 'tuner' ? findTargets(this.model, config, method.defaultTargets ? method.defaultTargets(this.model, config) : defaultTargets(this.model)) : [];
      const inst = method.create(name, config, targets, { rng: new Rng(opts.seed ?? 0), model: this.model, covariance: opts.covariance });
      this.adapters.set(name, inst);
      if (config.modules_to_save?.length) {
        const copies = new Map<string, Module>();
        for (const [path, m] of baseModules(this.model)) {
          if (matches(config.modules_to_save, path) !== null && !(m instanceof AdaptedLayer)) copies.set(path, copyTrainable(m, path));
        }
        if (copies.size === 0) throw new AdaptkitError(`modules_to_save ${JSON.stringify(config.modules_to_save)} matched no module`);
        this.saved.set(name, copies);
      }
      if (this.activeNames.length === 0) this.activeNames = [name];
      return inst;
    } finally {
      this.apply();
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

  /** Run fn with no adapter active, then restore. */
  withoutAdapters<T>(fn: () => T): T {
    const prev = this.activeNames;
    this.setActive([]);
    try {
      return fn();
    } finally {
      this.setActive(prev);
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

  private setAt(path: string, m: Module): void {
    this.model.replace(path, m);
  }

  private restoreAll(): void {
    for (const [path, orig] of this.originals) this.setAt(path, orig);
    this.originals.clear();
  }

  /** Install the modules for the active adapters. */
  private apply(): void {
    const byPath = new Map<string, (LayerDelta & Module)[]>();
    const residual = new Map<string, { adapter: string; layer: Linear }>();
    for (const n of this.activeNames) {
      const inst = this.adapters.get(n)!;
      for (const [path, d] of inst.deltas) {
        if (!byPath.has(path)) byPath.set(path, []);
        byPath.get(path)!.push(d as LayerDelta & Module);
      }
      for (const [path, layer] of inst.residualBase ?? []) {
        const prev = residual.get(path);
        if (prev) throw new AdaptkitError(`adapters "${prev.adapter}" and "${n}" both replace the base weight of "${path}" (PiSSA/CorDA); activate one at a time`);
        residual.set(path, { adapter: n, layer });
      }
      for (const [path, hook] of inst.hooks ?? []) {
        if (!this.originals.has(path)) this.originals.set(path, this.model.get(path));
        this.setAt(path, hook);
      }
      for (const [path, copy] of this.saved.get(n) ?? []) {
        if (!this.originals.has(path)) this.originals.set(path, this.model.get(path));
        this.setAt(path, copy);
      }
    }
    for (const [path, deltas] of byPath) {
      const orig = this.model.get(path);
      if (orig instanceof AdaptedLayer) {
        throw new AdaptkitError(`"${path}" already carries adapters of another AdapterModel on this model; use one AdapterModel per model (or deactivate the other)`);
      }
      this.originals.set(path, orig);
      const base = residual.get(path)?.layer ?? orig;
      this.setAt(path, new AdaptedLayer(base as Linear, deltas));
    }
  }

  /**
   * Fold the active linear adapters into new base weights and return the plain model (the adapter
   * model stays usable: call `unmerge()` to put the adapter modules back).
   */
  merge(): M {
    const wrapped = baseModules(this.model).filter(([, m]) => m instanceof AdaptedLayer) as [string, AdaptedLayer][];
    for (const [path, w] of wrapped) {
      const base = w.base_layer as Linear;
      let weight = base.weight;
      let bias = base.bias;
      for (const d of w.deltas) {
        if (!d.mergeWeight) throw new AdaptkitError(`adapter "${d.adapterName}" cannot be merged into "${path}" (not a linear reparameterization)`);
        weight = d.mergeWeight(weight);
        bias = d.mergeBias ? d.mergeBias(bias) : bias;
      }
      this.setAt(path, new Linear(weight.keep(), bias ? bias.keep() : null, base.fanInFanOut));
    }
    return this.model;
  }

  unmerge(): void {
    this.restoreAll();
    this.apply();
  }

  /** The active prefix-tuning adapter, if any (it primes KV caches). */
  private activePrefix(): PrefixAdapter | null {
    const p = this.activeNames.map((n) => this.adapters.get(n)!).filter((a): a is PrefixAdapter => a instanceof PrefixAdapter);
    if (p.length > 1) throw new AdaptkitError(`only one prefix-tuning adapter can be active (have ${p.map((a) => a.name).join(', ')})`);
    return p[0] ?? null;
  }

  /** A KV cache for the model, primed with the active prefix adapter's keys/values for `batch` rows. */
  newCache(batch = 1): KVCacheLike {
    const m = this.model as unknown as { newCache?: () => KVCacheLike };
    if (!m.newCache) throw new AdaptkitError('this model has no KV cache');
    const cache = m.newCache();
    this.activePrefix()?.prime(cache, batch);
    return cache;
  }

  /**
   * The model's forward with the active adapters, prompt-learning ones included: a prefix adapter
   * primes the cache (a fresh one when none is given) and the attention mask grows to cover it.
   */
  forward(ids: Tensor, opts: { cache?: KVCacheLike | null; attentionMask?: Tensor | null; tokenTypeIds?: Tensor | null } = {}): Tensor {
    const m = this.model as unknown as { forward(ids: Tensor, o?: object): Tensor };
    const prefix = this.activePrefix();
    if (!prefix) return m.forward(ids, opts);
    const own = !opts.cache;
    const cache = opts.cache ?? this.newCache(ids.shape[0]!);
    let mask = opts.attentionMask ?? null;
    if (mask && mask.shape[1] === ids.shape[1] && cache.length > 0) {
      mask = concat([ones([ids.shape[0]!, cache.length]), mask], 1);
    }
    try {
      return m.forward(ids, { ...opts, cache, attentionMask: mask });
    } finally {
      if (own) cache.release();
    }
  }

  /**
   * Run fn with a mixed-adapter batch: row i of the batch uses adapter rowAdapters[i] (null: none).
   * Base GEMMs are shared; each row's LoRA update is gathered per row.
   */
  withRowAdapters<T>(rowAdapters: readonly (string | null)[], fn: () => T): T {
    const distinct = [...new Set(rowAdapters.filter((a): a is string => a !== null))];
    for (const n of distinct) if (!this.adapters.has(n)) throw new AdaptkitError(`no adapter named "${n}"`);
    const routing = new RowRouting();
    const deltas = buildMixedDeltas(distinct.map((n) => this.adapters.get(n)!), routing);
    routing.rows = tensor(rowAdapters.map((a) => (a === null ? 0 : distinct.indexOf(a) + 1)), [rowAdapters.length], { dtype: 'i32' });
    const prev = this.activeNames;
    this.restoreAll();
    for (const [path, d] of deltas) {
      const orig = this.model.get(path);
      this.originals.set(path, orig);
      this.setAt(path, new AdaptedLayer(orig as Linear, [d]));
    }
    try {
      return fn();
    } finally {
      this.restoreAll();
      this.activeNames = prev;
      this.apply();
      for (const d of deltas.values()) {
        d.stackA.dispose();
        d.stackB.dispose();
        d.scales.dispose();
      }
      routing.rows.dispose();
    }
  }

  /**
   * One forward over a batch whose rows use different adapters (null: none). Plain LoRA adapters
   * share the base GEMMs (gathered per-row updates); other methods run their rows as groups and
   * the results are put back in row order.
   */
  forwardMixed(ids: Tensor, rowAdapters: readonly (string | null)[], opts: { attentionMask?: Tensor | null } = {}): Tensor {
    if (rowAdapters.length !== ids.shape[0]) throw new AdaptkitError(`${rowAdapters.length} row adapters for a batch of ${ids.shape[0]} rows`);
    const names = [...new Set(rowAdapters.filter((a): a is string => a !== null))];
    for (const n of names) if (!this.adapters.has(n)) throw new AdaptkitError(`no adapter named "${n}"`);
    const gatherable = names.every((n) => {
      try {
        buildMixedDeltas([this.adapters.get(n)!], new RowRouting()).forEach((d) => { d.stackA.dispose(); d.stackB.dispose(); d.scales.dispose(); });
        return true;
      } catch {
        return false;
      }
    });
    const m = this.model as unknown as { forward(ids: Tensor, o?: object): Tensor };
    if (gatherable) return this.withRowAdapters(rowAdapters, () => m.forward(ids, opts));
    const groups = new Map<string | null, number[]>();
    rowAdapters.forEach((a, i) => groups.set(a, [...(groups.get(a) ?? []), i]));
    const prev = this.activeNames;
    const parts: Tensor[] = [];
    const order: number[] = [];
    try {
      for (const [name, rows] of groups) {
        this.setActive(name === null ? [] : [name]);
        const idx = tensor(rows, [rows.length], { dtype: 'i32' });
        const mask = opts.attentionMask ? indexSelect(opts.attentionMask, 0, idx) : null;
        parts.push(this.forward(indexSelect(ids, 0, idx), { attentionMask: mask }));
        order.push(...rows);
      }
    } finally {
      this.setActive(prev);
    }
    const shape = parts[0]!.shape.slice(1);
    for (const p of parts) {
      if (p.shape.slice(1).some((d, i) => d !== shape[i])) {
        throw new AdaptkitError('rows of this mixed batch produce outputs of different lengths (prompt-learning adapters add positions); batch them separately');
      }
    }
    const inverse = new Array<number>(order.length);
    order.forEach((row, at) => (inverse[row] = at));
    return indexSelect(concat(parts, 0), 0, tensor(inverse, [inverse.length], { dtype: 'i32' }));
  }

  /** Save one adapter as adapter_config.json + adapter_model.safetensors (atomically). */
  save(dir: string, name = this.activeNames[0]): void {
    if (!name) throw new AdaptkitError('no adapter to save');
    const inst = this.adapters.get(name);
    if (!inst) throw new AdaptkitError(`no adapter named "${name}"`);
    const tensors: Record<string, Tensor> = {};
    for (const [k, t] of inst.stateDict()) tensors[k] = t;
    for (const [path, m] of this.saved.get(name) ?? []) {
      for (const [k, t] of m.namedParameters()) tensors[`base_model.model.${path}.${k}`] = t;
    }
    writeFileAtomic(join(dir, 'adapter_model.safetensors'), serializeSafetensors(tensors, { metadata: { format: 'pt' } }));
    writeFileAtomic(join(dir, 'adapter_config.json'), Buffer.from(pythonJson(inst.configJson(), FLOAT_KEYS)));
  }

  /** Load a PEFT adapter folder under `name` (strict: every saved tensor must be used). */
  load(dir: string, name = 'default'): AdapterInstance {
    const raw = readAdapterConfig(dir);
    const wfile = adapterWeightsFile(dir);
    const tensors = readTensorMap(wfile);
    // PiSSA/CorDA adapters are loaded as plain LoRA over the given base: their init already ran
    const rawForLoad = raw.peft_type === 'LORA' ? { ...raw, init_lora_weights: true } : raw;
    const inst = this.add(name, rawForLoad);
    Object.assign(inst.config, { raw }, raw.peft_type === 'LORA' ? { init_lora_weights: raw.init_lora_weights ?? true } : {});
    const savedParams = new Map<string, Tensor>();
    for (const [path, m] of this.saved.get(name) ?? []) {
      for (const [k, t] of m.namedParameters()) savedParams.set(`base_model.model.${path}.${k}`, t);
    }
    try {
      const mine = new Map<string, Tensor>();
      const theirs = new Map<string, Tensor>();
      for (const [k, t] of tensors) (savedParams.has(k) ? theirs : mine).set(k, t);
      inst.loadStateDict(mine, wfile);
      if (savedParams.size) loadInto(savedParams, theirs, wfile);
    } catch (e) {
      this.delete(name);
      throw e;
    }
    for (const t of tensors.values()) t.dispose();
    return inst;
  }
}
