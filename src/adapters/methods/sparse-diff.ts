/**
 * A sparse difference φ = θ − θ0 of some base weights: the artefact of sparse fine-tuning
 * (S²FT, LT-SFT), loaded as an adapter that adds φ to the weights it touches, and composed with
 * other differences by addition (`composeSparse`).
 *
 * Folder format (peft_type "SPARSE_DIFF"; neither PEFT nor AdapterHub has one for learned masks):
 *   adapter_model.safetensors
 *     base_model.model.<module path>.weight.sft_indices  i32 [nnz], flat indices into the weight as
 *                                                         stored (row-major; GPT-2's Conv1D keeps
 *                                                         its [in, out] layout), strictly increasing
 *     base_model.model.<module path>.weight.sft_values   f32 [nnz], θ − θ0 at those indices
 *     base_model.model.<module path>.<param>             dense tensors of a task head
 *                                                         (modules_to_save), written whole
 *   adapter_config.json: every shared PEFT field, target_modules = the touched module paths, and
 *     sparse_tensors  { "<module path>.weight": { "shape": [..], "nnz": n, "base_sha256": hex } }:
 *                     the shape of the base weight, the number of stored entries and the SHA-256 of
 *                     the base weight's float32 bytes (little-endian, as stored) the difference was
 *                     taken against. Loading onto a base whose tensor has another checksum or shape
 *                     is an error naming the config file and the field.
 *     source_method   the method that trained it ("S2FT", "LT_SFT", "COMPOSED"), informational.
 * An entry may hold 0 (S²FT stores every entry of its trained rows/columns, so a difference keeps
 * its structure through save and load).
 *
 * As an adapter, each touched layer gets a delta whose forward is y + x·ΔWᵀ with ΔW scattered
 * densely from the values (dense at this scale), and whose merge adds ΔW to the weight exactly.
 * The values are trainable, so a loaded difference can be fine-tuned further on its own support.
 */
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import {
  AdaptkitError, type Tensor, add, clone, fromBuffer, indexAdd, linear, noGrad, parameter, reshape, transpose, zeros,
} from '../../tensor/index.js';
import { Linear, Module } from '../../nn/index.js';
import { serializeSafetensors } from '../../io/safetensors.js';
import { writeFileAtomic } from '../../io/atomic.js';
import { AdapterConfigError, baseJson, fail, parseBase } from '../config.js';
import { registerMethod } from '../registry.js';
import { PEFT_MODEL_PREFIX, adapterWeightsFile, peftKey, readAdapterConfig, readTensorMap } from '../files.js';
import { pythonJson } from '../pyjson.js';
import type { AdapterInstance, AdapterMethod, BaseAdapterConfig, LayerDelta, RawAdapterConfig, TargetInfo } from '../types.js';

export const SPARSE_DIFF = 'SPARSE_DIFF';
export const INDICES = 'sft_indices';
export const VALUES = 'sft_values';

/** What the config records of one touched weight. */
export interface SparseTensorInfo {
  shape: number[];
  nnz: number;
  base_sha256: string;
}

export interface SparseDiffConfig extends BaseAdapterConfig {
  /** By weight path (`<module path>.weight`). */
  sparse_tensors: Record<string, SparseTensorInfo>;
  source_method: string | null;
  /** The config file (or config) the errors name. */
  source: string;
}

/** SHA-256 of a weight's float32 values in stored order. */
export function tensorChecksum(w: Tensor): string {
  const a = noGrad(() => w.toArray()) as Float32Array;
  return createHash('sha256').update(Buffer.from(a.buffer, a.byteOffset, a.byteLength)).digest('hex');
}

export function weightPath(modulePath: string): string {
  return `${modulePath}.weight`;
}

/** The shared config of a sparse difference (one function, so every writer produces the same bytes). */
export function sparseConfigJson(c: BaseAdapterConfig, tensors: Record<string, SparseTensorInfo>, sourceMethod: string | null): RawAdapterConfig {
  const sorted = Object.fromEntries(Object.keys(tensors).sort().map((k) => [k, { base_sha256: tensors[k]!.base_sha256, nnz: tensors[k]!.nnz, shape: [...tensors[k]!.shape] }]));
  return {
    ...baseJson({ ...c, peft_type: SPARSE_DIFF }),
    layers_to_transform: null,
    layers_pattern: null,
    exclude_modules: null,
    target_modules: Object.keys(sorted).map((k) => k.slice(0, -'.weight'.length)),
    sparse_tensors: sorted,
    source_method: sourceMethod,
  };
}

function parseTensors(raw: RawAdapterConfig, source: string): Record<string, SparseTensorInfo> {
  const v = raw.sparse_tensors;
  if (v === null || typeof v !== 'object' || Array.isArray(v)) fail(source, 'sparse_tensors', 'must map weight paths to {"shape", "nnz", "base_sha256"}');
  const out: Record<string, SparseTensorInfo> = {};
  for (const [k, e] of Object.entries(v as Record<string, unknown>)) {
    const field = `sparse_tensors["${k}"]`;
    if (!k.endsWith('.weight')) fail(source, field, 'must name a weight (a path ending in ".weight")');
    const o = e as Partial<SparseTensorInfo> | null;
    if (o === null || typeof o !== 'object') fail(source, field, 'must be {"shape", "nnz", "base_sha256"}');
    if (!Array.isArray(o.shape) || o.shape.length === 0 || !o.shape.every((d) => Number.isInteger(d) && d > 0)) fail(source, `${field}.shape`, 'must be a list of positive integers');
    const numel = o.shape.reduce((a, b) => a * b, 1);
    if (!Number.isInteger(o.nnz) || o.nnz! < 0 || o.nnz! > numel) fail(source, `${field}.nnz`, `must be an integer from 0 to ${numel} (the weight's size), got ${String(o.nnz)}`);
    if (typeof o.base_sha256 !== 'string' || !/^[0-9a-f]{64}$/.test(o.base_sha256)) fail(source, `${field}.base_sha256`, 'must be a SHA-256 hex digest');
    out[k] = { shape: o.shape, nnz: o.nnz!, base_sha256: o.base_sha256 };
  }
  if (Object.keys(out).length === 0) fail(source, 'sparse_tensors', 'names no weight');
  return out;
}

export function parseSparseDiff(raw: RawAdapterConfig, source: string): SparseDiffConfig {
  const base = parseBase(raw, SPARSE_DIFF, source);
  const tensors = parseTensors(raw, source);
  const paths = Object.keys(tensors).map((k) => k.slice(0, -'.weight'.length));
  return {
    ...base,
    // the difference touches exactly the weights it lists, whatever else the config says
    target_modules: paths,
    layers_to_transform: null,
    layers_pattern: null,
    exclude_modules: null,
    sparse_tensors: tensors,
    source_method: typeof raw.source_method === 'string' ? raw.source_method : null,
    source,
  };
}

/** The base weight of a target, checked against what the difference was taken from. */
export function checkBase(t: TargetInfo, info: SparseTensorInfo, c: { source: string; base_model_name_or_path: string | null }): Linear {
  if (!(t.module instanceof Linear)) throw new AdaptkitError(`${c.source}: "${t.path}" is not a linear layer, so a sparse difference cannot be added to it`);
  const key = weightPath(t.path);
  const w = t.module.weight;
  if (w.shape.length !== info.shape.length || w.shape.some((d, i) => d !== info.shape[i])) {
    throw new AdapterConfigError(`${c.source}: "sparse_tensors["${key}"].shape" is [${info.shape.join(', ')}], but this base model's ${key} is [${w.shape.join(', ')}]`);
  }
  const sum = tensorChecksum(w);
  if (sum !== info.base_sha256) {
    const made = c.base_model_name_or_path ? ` (made for base_model_name_or_path ${JSON.stringify(c.base_model_name_or_path)})` : '';
    throw new AdapterConfigError(`${c.source}: "sparse_tensors["${key}"].base_sha256" is ${info.base_sha256.slice(0, 16)}..., but this base model's ${key} has ${sum.slice(0, 16)}...: the difference was taken against another base model${made}`);
  }
  return t.module;
}

/** Sorted, distinct, in-range indices of a saved tensor, or an error naming the file and the key. */
export function checkIndices(t: Tensor | undefined, key: string, numel: number, nnz: number, source: string): Int32Array {
  if (!t) throw new AdaptkitError(`${source}: "${key}" is missing`);
  if (t.dtype !== 'i32' || t.ndim !== 1) throw new AdaptkitError(`${source}: "${key}" must be a 1-D int32 tensor, got ${t.dtype} [${t.shape.join(', ')}]`);
  if (t.size !== nnz) throw new AdaptkitError(`${source}: "${key}" holds ${t.size} indices, the config's nnz is ${nnz}`);
  const idx = Int32Array.from(t.toArray());
  for (let i = 0; i < idx.length; i++) {
    const v = idx[i]!;
    if (v < 0 || v >= numel) throw new AdaptkitError(`${source}: "${key}"[${i}] is ${v}, out of range for a weight of ${numel} entries`);
    if (i > 0 && v <= idx[i - 1]!) throw new AdaptkitError(`${source}: "${key}" must be strictly increasing, but entry ${i} (${v}) follows ${idx[i - 1]}`);
  }
  return idx;
}

export function checkValues(t: Tensor | undefined, key: string, nnz: number, source: string): Float32Array {
  if (!t) throw new AdaptkitError(`${source}: "${key}" is missing`);
  if (t.dtype !== 'f32' || t.ndim !== 1) throw new AdaptkitError(`${source}: "${key}" must be a 1-D float32 tensor, got ${t.dtype} [${t.shape.join(', ')}]`);
  if (t.size !== nnz) throw new AdaptkitError(`${source}: "${key}" holds ${t.size} values, but the indices (and the config's nnz) number ${nnz}`);
  return Float32Array.from(t.toArray());
}

/** y + x·ΔWᵀ for a ΔW made of `values` at flat `indices` of the stored weight. */
export class SparseDiffDelta extends Module implements LayerDelta {
  #indices: Tensor;
  readonly #shape: number[];

  constructor(readonly adapterName: string, public sft_values: Tensor, indices: Int32Array, readonly base: Linear) {
    super();
    this.#indices = fromBuffer(indices, [indices.length]).keep();
    this.#shape = [...base.weight.shape];
  }

  get indices(): Int32Array {
    return this.#indices.toArray() as Int32Array;
  }

  /** Move the values onto another support of the same size (the saved indices, once read). */
  setIndices(indices: Int32Array): void {
    if (indices.length !== this.sft_values.size) throw new AdaptkitError(`${indices.length} indices for ${this.sft_values.size} values`);
    this.#indices.dispose();
    this.#indices = fromBuffer(indices.slice(), [indices.length]).keep();
  }

  /** ΔW in the stored layout of the base weight. */
  deltaWeight(): Tensor {
    const n = this.#shape[0]! * this.#shape[1]!;
    return reshape(indexAdd(zeros([n]), 0, this.#indices, this.sft_values), this.#shape);
  }

  apply(x: Tensor, y: Tensor): Tensor {
    const d = this.deltaWeight();
    return add(y, linear(x, this.base.fanInFanOut ? transpose(d) : d));
  }

  mergeWeight(weight: Tensor): Tensor {
    return noGrad(() => clone(add(weight, this.deltaWeight())));
  }

  mergeBias(bias: Tensor | null): Tensor | null {
    return bias;
  }
}

class SparseDiffAdapter implements AdapterInstance {
  readonly method = SPARSE_DIFF_METHOD;
  readonly deltas = new Map<string, SparseDiffDelta>();
  constructor(readonly name: string, readonly config: SparseDiffConfig) {}

  parameters(): Tensor[] {
    return [...this.deltas.values()].map((d) => d.sft_values);
  }

  stateDict(): Map<string, Tensor> {
    const out = new Map<string, Tensor>();
    for (const [path, d] of [...this.deltas].sort(([a], [b]) => (a < b ? -1 : 1))) {
      out.set(peftKey(path, `weight.${INDICES}`), fromBuffer(d.indices.slice(), [d.indices.length]));
      out.set(peftKey(path, `weight.${VALUES}`), d.sft_values);
    }
    return out;
  }

  loadStateDict(tensors: Map<string, Tensor>, source: string): void {
    const used = new Set<string>();
    const fills: [SparseDiffDelta, Int32Array, Float32Array][] = [];
    for (const [path, d] of this.deltas) {
      const info = this.config.sparse_tensors[weightPath(path)]!;
      const ik = peftKey(path, `weight.${INDICES}`);
      const vk = peftKey(path, `weight.${VALUES}`);
      const idx = checkIndices(tensors.get(ik), ik, info.shape.reduce((a, b) => a * b, 1), info.nnz, source);
      const val = checkValues(tensors.get(vk), vk, idx.length, source);
      used.add(ik).add(vk);
      fills.push([d, idx, val]);
    }
    const extra = [...tensors.keys()].filter((k) => !used.has(k));
    if (extra.length) throw new AdaptkitError(`${source}: unexpected tensors ${extra.slice(0, 6).join(', ')}${extra.length > 6 ? ` and ${extra.length - 6} more` : ''} (a sparse difference holds <module path>.weight.${INDICES} / .${VALUES} of the weights its config lists)`);
    for (const [d, idx, val] of fills) {
      d.setIndices(idx);
      noGrad(() => (d.sft_values.storage.data as Float32Array).set(val, d.sft_values.offset));
    }
  }

  configJson(): RawAdapterConfig {
    return sparseConfigJson(this.config, this.config.sparse_tensors, this.config.source_method);
  }
}

export const SPARSE_DIFF_METHOD: AdapterMethod = {
  savedFormOnly: true,
  peftType: SPARSE_DIFF,
  description: 'a sparse difference of base weights (S²FT, LT-SFT), added to them',
  kind: 'tuner',
  parseConfig: (raw, source) => parseSparseDiff(raw, source),
  defaultTargets: (_m, c) => (c as SparseDiffConfig).target_modules as string[],
  create(name, cfg, targets) {
    const c = cfg as SparseDiffConfig;
    const inst = new SparseDiffAdapter(name, c);
    const seen = new Set<string>();
    for (const t of targets) {
      const key = weightPath(t.path);
      const info = c.sparse_tensors[key];
      if (!info) continue;
      seen.add(key);
      const base = checkBase(t, info, c);
      // placeholder support until the saved indices arrive (a fresh difference is all zero)
      const idx = Int32Array.from({ length: info.nnz }, (_, i) => i);
      inst.deltas.set(t.path, new SparseDiffDelta(name, parameter(zeros([info.nnz]), `${t.path}.weight.${VALUES}`), idx, base));
    }
    const missing = Object.keys(c.sparse_tensors).filter((k) => !seen.has(k));
    if (missing.length) throw new AdapterConfigError(`${c.source}: "sparse_tensors" names ${missing.slice(0, 4).join(', ')}${missing.length > 4 ? ` and ${missing.length - 4} more` : ''}, which this base model lacks`);
    return inst;
  },
  countParameters: (cfg) => Object.values((cfg as SparseDiffConfig).sparse_tensors).reduce((n, t) => n + t.nnz, 0),
  mergeable: true,
  summary: (cfg) => {
    const c = cfg as SparseDiffConfig;
    const nnz = Object.values(c.sparse_tensors).reduce((n, t) => n + t.nnz, 0);
    const size = Object.values(c.sparse_tensors).reduce((n, t) => n + t.shape.reduce((a, b) => a * b, 1), 0);
    return { tensors: Object.keys(c.sparse_tensors).length, nnz, density: nnz / size, source_method: c.source_method };
  },
};

registerMethod(SPARSE_DIFF_METHOD);

/** One sparse difference read from its folder, checked. */
export interface SparseDiffFile {
  dir: string;
  raw: RawAdapterConfig;
  config: SparseDiffConfig;
  /** By weight path: sorted flat indices and their values. */
  tensors: Map<string, { indices: Int32Array; values: Float32Array }>;
  /** Dense tensors (a task head) by saved key. */
  dense: Map<string, Tensor>;
}

export function readSparseDiff(dir: string): SparseDiffFile {
  const raw = readAdapterConfig(dir);
  const cfgPath = join(dir, 'adapter_config.json');
  if (raw.peft_type !== SPARSE_DIFF) fail(cfgPath, 'peft_type', `is ${JSON.stringify(raw.peft_type)}, a sparse difference has "${SPARSE_DIFF}"`);
  const config = parseSparseDiff(raw, cfgPath);
  const wfile = adapterWeightsFile(dir);
  const all = readTensorMap(wfile);
  const tensors = new Map<string, { indices: Int32Array; values: Float32Array }>();
  for (const [key, info] of Object.entries(config.sparse_tensors)) {
    const ik = `${PEFT_MODEL_PREFIX}${key}.${INDICES}`;
    const vk = `${PEFT_MODEL_PREFIX}${key}.${VALUES}`;
    const indices = checkIndices(all.get(ik), ik, info.shape.reduce((a, b) => a * b, 1), info.nnz, wfile);
    const values = checkValues(all.get(vk), vk, indices.length, wfile);
    tensors.set(key, { indices, values });
    all.delete(ik);
    all.delete(vk);
  }
  for (const k of all.keys()) if (k.endsWith(`.${INDICES}`) || k.endsWith(`.${VALUES}`)) throw new AdaptkitError(`${wfile}: "${k}" belongs to a weight that ${cfgPath} does not list in "sparse_tensors"`);
  return { dir, raw, config, tensors, dense: all };
}

export interface ComposeOptions {
  /** Differences to subtract (reverting them). */
  subtract?: readonly string[];
  /** The folder to write the composed difference to. */
  out: string;
  overwrite?: boolean;
}

/**
 * θ0 + Σ φ_added − Σ φ_subtracted as one sparse difference, summed in float64 so that adding and
 * subtracting the same difference in one call restores the others exactly. Every weight two
 * differences share must come from the same base tensor (equal checksums and shapes). An entry is
 * kept when some added difference holds it and the sum is not an exact cancellation of
 * subtracted ones; weights left with no entry are dropped. Dense tensors (task heads) are copied
 * from the one added difference that has them (two with the same key is an error: heads do not
 * compose by addition); a subtracted difference removes its own.
 */
export function composeSparse(dirs: readonly string[], opts: ComposeOptions): { dir: string; tensors: number; nnz: number } {
  const add = dirs.map(readSparseDiff);
  const sub = (opts.subtract ?? []).map(readSparseDiff);
  if (add.length === 0) throw new AdaptkitError('composeSparse: no difference to compose');
  const infos = new Map<string, { info: SparseTensorInfo; from: string }>();
  for (const f of [...add, ...sub]) {
    for (const [k, info] of Object.entries(f.config.sparse_tensors)) {
      const prev = infos.get(k);
      if (!prev) infos.set(k, { info, from: f.dir });
      else if (prev.info.base_sha256 !== info.base_sha256 || prev.info.shape.join() !== info.shape.join()) {
        throw new AdaptkitError(`${join(f.dir, 'adapter_config.json')}: "sparse_tensors["${k}"].base_sha256" differs from ${join(prev.from, 'adapter_config.json')}'s: the two differences were taken against different base weights and cannot be composed`);
      }
    }
  }
  const outTensors: Record<string, SparseTensorInfo> = {};
  const saved: Record<string, Tensor> = {};
  let total = 0;
  for (const [k, { info }] of [...infos].sort(([a], [b]) => (a < b ? -1 : 1))) {
    const acc = new Map<number, number>();
    const held = new Set<number>();
    for (const [files, sign] of [[add, 1], [sub, -1]] as const) {
      for (const f of files) {
        const t = f.tensors.get(k);
        if (!t) continue;
        for (let i = 0; i < t.indices.length; i++) {
          const j = t.indices[i]!;
          acc.set(j, (acc.get(j) ?? 0) + sign * t.values[i]!);
          if (sign > 0) held.add(j);
        }
      }
    }
    const subHeld = new Set<number>();
    for (const f of sub) for (const j of f.tensors.get(k)?.indices ?? []) subHeld.add(j);
    const keep = [...held].filter((j) => !(subHeld.has(j) && acc.get(j) === 0)).sort((a, b) => a - b);
    if (keep.length === 0) continue;
    outTensors[k] = { ...info, nnz: keep.length };
    saved[`${PEFT_MODEL_PREFIX}${k}.${INDICES}`] = fromBuffer(Int32Array.from(keep), [keep.length]);
    saved[`${PEFT_MODEL_PREFIX}${k}.${VALUES}`] = fromBuffer(Float32Array.from(keep, (j) => acc.get(j)!), [keep.length]);
    total += keep.length;
  }
  if (total === 0) throw new AdaptkitError('composeSparse: the composed difference is empty (everything cancelled)');
  const dense = new Map<string, { t: Tensor; from: string }>();
  for (const f of add) {
    for (const [k, t] of f.dense) {
      if (dense.has(k)) throw new AdaptkitError(`${f.dir} and ${dense.get(k)!.from} both hold the dense tensor "${k}" (a task head); heads are not composed by addition`);
      dense.set(k, { t, from: f.dir });
    }
  }
  for (const f of sub) for (const k of f.dense.keys()) dense.delete(k);
  for (const [k, { t }] of dense) saved[k] = t;
  const first = add[0]!.config;
  const modulesToSave = dense.size ? [...new Set(add.flatMap((f) => (f.dense.size ? f.config.modules_to_save ?? [] : [])))] : null;
  const cfg = sparseConfigJson({ ...first, modules_to_save: modulesToSave?.length ? modulesToSave : null }, outTensors, 'COMPOSED');
  if (existsSync(join(opts.out, 'adapter_config.json')) && !opts.overwrite) throw new AdaptkitError(`${opts.out} already holds an adapter (pass overwrite to replace it)`);
  mkdirSync(opts.out, { recursive: true });
  writeFileAtomic(join(opts.out, 'adapter_model.safetensors'), serializeSafetensors(saved, { metadata: { format: 'pt' } }));
  writeFileAtomic(join(opts.out, 'adapter_config.json'), Buffer.from(pythonJson(cfg, [])));
  return { dir: opts.out, tensors: Object.keys(outTensors).length, nnz: total };
}
