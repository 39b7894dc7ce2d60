/**
 * Poly and MHR ("Combining Parameter-efficient Modules for Task-level Generalisation", Ponti et
 * al. 2023; "Multi-Head Adapter Routing for Cross-Task Generalization", Caccia et al. 2023) in
 * PEFT's POLY format: every targeted linear layer holds an inventory of K LoRA "skills", each cut
 * into S heads along its input and output dims, and a router with one row of S·K logits per task.
 *
 * PEFT keys (adapter name stripped): <path>.poly_lora_A [S, K, in/S, r], <path>.poly_lora_B
 * [S, K, r, out/S], <path>.poly_router.module_logits [n_tasks, S·K].
 * Forward, for a row of task t: z = sigmoid(Z[t]) viewed [S, K], w = z / (Σ_k z + 1e-12) per head
 * (normalized over skills, not heads); A_t[q] = Σ_k w[q,k] A[q,k] and B_t[q] = Σ_k w[q,k] B[q,k]
 * are mixed separately (so ΔW_t = B_t A_t, not Σ_k w_k B_k A_k), A_t's heads concatenated along
 * the input dim and B_t's along the output dim, and y = Wx + (x A_t B_t) / r (PEFT's scale; mttl's
 * alpha/r is not a PolyConfig field). Inside `training()` each row draws its own relaxed Bernoulli
 * sample instead (temperature 1): z = sigmoid(Z[t] + log u − log(1 − u)), u uniform from the
 * global generator (the one the trainer seeds, checkpoints and replays), as PEFT's rsample does
 * per row of the batch. Everywhere else the sigmoid is used, so inference is deterministic. A
 * batch may mix tasks: every row reads its task id from the forward's task routing (n_tasks 1
 * needs none), rows of one task share their mixed factors at inference.
 * Init as PEFT: A Kaiming-uniform(a=√5) per (head, skill), so U(±1/√(in/S)); B zero
 * (init_weights false: Kaiming-uniform too, U(±1/√r)); router U(±1e-3).
 * Config (peft_type "POLY", PEFT's PolyConfig): r 8, n_tasks 1, n_skills 4, n_splits 1 (> 1 is
 * MHR), poly_type "poly" (the only one), init_weights true, target_modules / exclude_modules /
 * modules_to_save. n_splits must divide every target's input and output width.
 * Targets: the model's default LoRA targets. GPT-2's Conv1D layers are handled (the factors do
 * not depend on the weight's storage layout; merging folds into the [in, out] weight), but PEFT's
 * Poly wraps only nn.Linear, so such an adapter loads in adaptkit, not in PEFT.
 * Merging: an adapter with one task folds B_t A_t / r into the weight; with several tasks the
 * change depends on the row's task, so merging is refused (write one task as a LoRA with
 * `taskLora` and merge that).
 *
 * A new task from a trained adapter (config keys `transfer_from`, `transfer`, `keep_tasks`, read
 * here and never written back, so the saved adapter_config.json stays a plain PolyConfig or
 * LoraConfig; r, skills, heads and targets come from the source):
 *   transfer "all"      Poly/MHR few-shot fine-tuning: the skills are copied, the router is
 *                       resized to the new task (a fresh row, U(±1e-3), as mttl's
 *                       resize_module_logits does), and everything trains.
 *   transfer "router"   MHR-z: the same, but only the new routing row trains; the skills are
 *                       frozen tensors, not parameters, so they get no gradients or optimizer state.
 *   transfer "average"  MHR-μ: routing dropped for the average selector (w = 1/K), i.e. one LoRA
 *                       with A = mean_k A, B = mean_k B per head, heads concatenated as in the
 *                       forward, scale 1/r kept (lora_alpha 1); it trains and saves as a LORA
 *                       adapter (`averagedLora` writes the same LoRA without training).
 * By default the new adapter routes only the new task (n_tasks 1: every row is task 0, which is
 * what single-task training passes; no task ids are needed and it merges). keep_tasks true keeps
 * the source's rows, frozen, and appends the new task as id n_tasks of the source, so the result
 * still serves the old tasks; its forward then needs task ids like any multi-task adapter (and a
 * single-task run, which gives every row task 0, would train the source's first task: the new
 * task's examples must carry id n_tasks of the source).
 * CLI: the `poly` and `mhr` presets read --from DIR and --transfer all|router|average.
 * Not implemented: mttl's extras (module-logit dropout / L2 norm, straight-through routing,
 * average correction, a shared skill, LoRA warm-up) and a row-batched form (mixed-adapter batches
 * run POLY rows as their own sub-batches).
 */
import { join } from 'node:path';
import {
  AdaptkitError, type Tensor, add, addmm, clone, concat, defaultRng, div, full, indexSelect, isTraining, matmul, mul, noGrad, parameter,
  permute, rand, reshape, sigmoid, sum, tensor, transpose, zeros,
} from '../../tensor/index.js';
import { type AdapterDescriptor, Linear, Module, isLinearLayer, type LinearLayer } from '../../nn/index.js';
import { AdapterConfigError, baseJson, fail, optBool, optInt, optString, parseBase, showValue } from '../config.js';
import { registerMethod } from '../registry.js';
import { loadInto } from '../state.js';
import { adapterWeightsFile, peftKey, readAdapterConfig, readTensorMap } from '../files.js';
import { writeFileAtomic } from '../../io/atomic.js';
import { serializeSafetensors } from '../../io/safetensors.js';
import { pythonJson } from '../pyjson.js';
import { RANK, TARGETS, num, targetsOption } from '../options.js';
import { LORA, LoraAdapter, parseLoraConfig } from './lora.js';
import type {
  AdapterInstance, AdapterMethod, BaseAdapterConfig, CreateContext, LayerDelta, MethodOption, MethodPreset, PresetOptions, RawAdapterConfig,
  TargetInfo, TaskRouting,
} from '../types.js';
import type { AdapterModel } from '../adapter-model.js';

export type PolyTransfer = 'all' | 'router' | 'average';
const TRANSFERS: readonly PolyTransfer[] = ['all', 'router', 'average'];

export interface PolyTransferPlan {
  /** Folder of the trained POLY adapter the new task starts from. */
  from: string;
  mode: PolyTransfer;
  /** Keep the source's task rows (frozen) and append the new task after them. */
  keepTasks: boolean;
  source: PolyConfig;
}

export interface PolyConfig extends BaseAdapterConfig {
  r: number;
  n_tasks: number;
  n_skills: number;
  n_splits: number;
  poly_type: 'poly';
  init_weights: boolean;
  /** A new task from a trained adapter (never saved). */
  transfer: PolyTransferPlan | null;
}

/** Keys of a new-task config that name its source; they never reach a saved config. */
const TRANSFER_KEYS = ['transfer_from', 'transfer', 'keep_tasks'] as const;

export function parsePolyConfig(raw: RawAdapterConfig, source: string): PolyConfig {
  const base = parseBase(raw, 'POLY', source);
  const own = {
    r: optInt(raw, 'r', 8, source, 1),
    n_tasks: optInt(raw, 'n_tasks', 1, source, 1),
    n_skills: optInt(raw, 'n_skills', 4, source, 1),
    n_splits: optInt(raw, 'n_splits', 1, source, 1),
    poly_type: optString(raw, 'poly_type', 'poly', ['poly'] as const, source),
    init_weights: optBool(raw, 'init_weights', true, source),
  };
  const from = raw.transfer_from === undefined || raw.transfer_from === null ? null : optString(raw, 'transfer_from', '', null, source);
  if (!from) {
    for (const k of TRANSFER_KEYS.slice(1)) if (raw[k] !== undefined && raw[k] !== null) fail(source, k, 'needs "transfer_from", the folder of the trained POLY adapter the new task starts from');
    return { ...base, ...own, transfer: null };
  }
  const mode = optString(raw, 'transfer', 'all', TRANSFERS, source);
  const keepTasks = optBool(raw, 'keep_tasks', false, source);
  if (keepTasks && mode === 'average') fail(source, 'keep_tasks', 'does not apply to transfer "average" (MHR-μ drops the routing)');
  const srcFile = join(from, 'adapter_config.json');
  const srcRaw = readAdapterConfig(from);
  if (srcRaw.peft_type !== 'POLY') throw new AdapterConfigError(`${srcFile}: peft_type is ${showValue(srcRaw.peft_type)}; "transfer_from" of ${source} must name a POLY adapter`);
  const src = parsePolyConfig(srcRaw, srcFile);
  if (src.transfer) throw new AdapterConfigError(`${srcFile}: a saved adapter cannot itself name a "transfer_from"`);
  const implied: Record<string, number> = { r: src.r, n_skills: src.n_skills, n_splits: src.n_splits, n_tasks: keepTasks ? src.n_tasks + 1 : 1 };
  for (const [k, v] of Object.entries(implied)) {
    if (raw[k] !== undefined && raw[k] !== null && raw[k] !== v) fail(source, k, `is ${showValue(raw[k])}, but the new-task adapter from ${from} has ${v}; leave it out`);
  }
  if (base.target_modules !== null && JSON.stringify(base.target_modules) !== JSON.stringify(src.target_modules)) {
    fail(source, 'target_modules', `is ${showValue(base.target_modules)}, but the source adapter ${from} targets ${showValue(src.target_modules)}; leave it out`);
  }
  return {
    ...base,
    // the same base model and task kind as the source, unless the config says otherwise
    task_type: base.task_type ?? src.task_type, base_model_name_or_path: base.base_model_name_or_path ?? src.base_model_name_or_path,
    revision: base.revision ?? src.revision,
    target_modules: src.target_modules, exclude_modules: src.exclude_modules, layers_to_transform: src.layers_to_transform, layers_pattern: src.layers_pattern,
    r: src.r, n_tasks: implied.n_tasks!, n_skills: src.n_skills, n_splits: src.n_splits, poly_type: src.poly_type, init_weights: src.init_weights,
    transfer: { from, mode, keepTasks, source: src },
  };
}

/** A target's widths, checked: a linear layer whose widths the heads divide. */
function layerShape(t: TargetInfo, c: PolyConfig): { layer: LinearLayer; inF: number; outF: number } {
  if (!isLinearLayer(t.module)) throw new AdaptkitError(`POLY targets linear layers; "${t.path}" is a ${t.module.constructor.name}`);
  const layer = t.module;
  const inF = layer.inFeatures;
  const outF = layer.outFeatures;
  if (inF % c.n_splits !== 0 || outF % c.n_splits !== 0) {
    throw new AdapterConfigError(`"n_splits" ${c.n_splits} does not divide the widths of "${t.path}" (in ${inF}, out ${outF}); use a common divisor of every target's widths`);
  }
  return { layer, inF, outF };
}

/**
 * Factors mixed by routing weights w [U, S, K]: A [S, K, in/S, r] and B [S, K, r, out/S] give
 * A_u [U, in, r] (heads along the input dim) and B_u [U, r, out] (heads along the output dim).
 */
export function mixFactors(A: Tensor, B: Tensor, w: Tensor): { A: Tensor; B: Tensor } {
  const [S, K, dIn, r] = A.shape as [number, number, number, number];
  const dOut = B.shape[3]!;
  const U = w.shape[0]!;
  const wS = permute(w, [1, 0, 2]);
  const a = matmul(wS, reshape(A, [S, K, dIn * r]));
  const b = matmul(wS, reshape(B, [S, K, r * dOut]));
  return {
    A: reshape(permute(reshape(a, [S, U, dIn, r]), [1, 0, 2, 3]), [U, S * dIn, r]),
    B: reshape(permute(reshape(b, [S, U, r, dOut]), [1, 2, 0, 3]), [U, r, S * dOut]),
  };
}

/** The relaxed-Bernoulli logistic noise log u − log(1 − u), u clamped away from 0 and 1 as torch's clamp_probs does. */
function logisticNoise(n: number): Float32Array {
  const eps = 2 ** -23;
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    const u = Math.min(Math.max(defaultRng.uniform(), eps), 1 - eps);
    out[i] = Math.log(u) - Math.log1p(-u);
  }
  return out;
}

const EPS = 1e-12;

/** One router per target, as PEFT has: a row of S·K logits per task. */
export class PolyRouter extends Module {
  /** Rows of tasks this adapter does not train (a source's tasks, kept frozen); private so they are not parameters. */
  readonly #kept: Tensor | null;

  constructor(public module_logits: Tensor, kept: Tensor | null, readonly nSplits: number, readonly nSkills: number) {
    super();
    this.#kept = kept;
  }

  get kept(): Tensor | null {
    return this.#kept;
  }

  get nTasks(): number {
    return (this.#kept?.shape[0] ?? 0) + this.module_logits.shape[0]!;
  }

  /** Every task's logits [n_tasks, S·K]. */
  logits(): Tensor {
    return this.#kept ? concat([this.#kept, this.module_logits], 0) : this.module_logits;
  }

  /** Normalized routing weights [U, S, K] of these tasks: sampled (training) or their sigmoid. */
  weights(tasks: Int32Array, sample: boolean): Tensor {
    const S = this.nSplits;
    const K = this.nSkills;
    const U = tasks.length;
    let l = reshape(indexSelect(this.logits(), 0, tensor(tasks, [U], { dtype: 'i32' })), [U, S, K]);
    if (sample) l = add(l, tensor(logisticNoise(U * S * K), [U, S, K]));
    const z = sigmoid(l);
    return div(z, add(sum(z, 2, true), EPS));
  }
}

export class PolyDelta extends Module implements LayerDelta {
  readonly scale: number;
  readonly #tasks: TaskRouting;
  readonly #who: string;

  constructor(
    readonly adapterName: string,
    public poly_lora_A: Tensor,
    public poly_lora_B: Tensor,
    public poly_router: PolyRouter,
    readonly fanInFanOut: boolean,
    tasks: TaskRouting,
  ) {
    super();
    this.scale = 1 / poly_lora_A.shape[3]!;
    this.#tasks = tasks;
    this.#who = `POLY adapter "${adapterName}"`;
  }

  get inFeatures(): number {
    return this.poly_lora_A.shape[0]! * this.poly_lora_A.shape[2]!;
  }

  get outFeatures(): number {
    return this.poly_lora_B.shape[0]! * this.poly_lora_B.shape[3]!;
  }

  get rank(): number {
    return this.poly_lora_A.shape[3]!;
  }

  trainable(): Tensor[] {
    return [this.poly_lora_A, this.poly_lora_B, this.poly_router.module_logits].filter((t) => t.requiresGrad);
  }

  /** The task of every row of the batch being run. */
  rowTasks(rows: number): Int32Array {
    const ids = this.#tasks.ids;
    if (ids && ids.length !== 1 && ids.length !== rows) throw new AdaptkitError(`${this.#who}: ${ids.length} task ids for a batch of ${rows} rows`);
    const n = this.poly_router.nTasks;
    return Int32Array.from({ length: rows }, (_, b) => this.#tasks.task(b, n, this.#who));
  }

  /** Mixed factors A_t [in, r] and B_t [r, out] of one task at inference. */
  taskFactors(task: number): { A: Tensor; B: Tensor } {
    const m = mixFactors(this.poly_lora_A, this.poly_lora_B, this.poly_router.weights(Int32Array.of(task), false));
    return { A: reshape(m.A, [this.inFeatures, this.rank]), B: reshape(m.B, [this.rank, this.outFeatures]) };
  }

  /** Mixed factors of the average selector (every skill 1/K, MHR-μ). */
  averageFactors(): { A: Tensor; B: Tensor } {
    const [S, K] = this.poly_lora_A.shape as [number, number];
    const m = mixFactors(this.poly_lora_A, this.poly_lora_B, full([1, S, K], 1 / K));
    return { A: reshape(m.A, [this.inFeatures, this.rank]), B: reshape(m.B, [this.rank, this.outFeatures]) };
  }

  apply(x: Tensor, y: Tensor): Tensor {
    const rows = x.shape[0]!;
    const inF = this.inFeatures;
    const r = this.rank;
    const tasks = this.rowTasks(rows);
    const sample = isTraining();
    // training samples every row's routing on its own; at inference rows of one task share it
    let units = tasks;
    let rowUnit: Int32Array | null = null;
    if (!sample) {
      const uniq = [...new Set(tasks)];
      units = Int32Array.from(uniq);
      if (uniq.length > 1) rowUnit = Int32Array.from(tasks, (t) => uniq.indexOf(t));
    }
    const m = mixFactors(this.poly_lora_A, this.poly_lora_B, this.poly_router.weights(units, sample));
    if (units.length === 1) return addmm(y, mul(matmul(x, reshape(m.A, [inF, r])), this.scale), reshape(m.B, [r, this.outFeatures]));
    const pick = (t: Tensor) => (rowUnit ? indexSelect(t, 0, tensor(rowUnit, [rows], { dtype: 'i32' })) : t);
    const d = matmul(mul(matmul(reshape(x, [rows, -1, inF]), pick(m.A)), this.scale), pick(m.B));
    return add(y, reshape(d, y.shape));
  }

  /** The weight change of the only task, in the weight's layout. */
  private deltaWeight(): Tensor {
    const { A, B } = this.taskFactors(0);
    const d = mul(matmul(A, B), this.scale);
    return this.fanInFanOut ? d : transpose(d);
  }

  mergeWeight(weight: Tensor): Tensor {
    if (this.poly_router.nTasks !== 1) throw new AdaptkitError(`${this.#who} routes ${this.poly_router.nTasks} tasks: its weight change depends on each row's task, so it does not fold into the weight`);
    return noGrad(() => clone(add(weight, this.deltaWeight())));
  }
}

const KEYS = { A: 'poly_lora_A', B: 'poly_lora_B', router: 'poly_router.module_logits' } as const;

export class PolyAdapter implements AdapterInstance {
  readonly method = POLY;
  readonly deltas = new Map<string, PolyDelta>();

  constructor(readonly name: string, readonly config: PolyConfig) {}

  parameters(): Tensor[] {
    return [...this.deltas.values()].flatMap((d) => d.trainable());
  }

  stateDict(): Map<string, Tensor> {
    const out = new Map<string, Tensor>();
    for (const [path, d] of this.deltas) {
      out.set(peftKey(path, KEYS.A), d.poly_lora_A);
      out.set(peftKey(path, KEYS.B), d.poly_lora_B);
      out.set(peftKey(path, KEYS.router), d.poly_router.kept ? noGrad(() => d.poly_router.logits()) : d.poly_router.module_logits);
    }
    return out;
  }

  loadStateDict(tensors: Map<string, Tensor>, source: string): void {
    const into = new Map<string, Tensor>();
    const split: [Tensor, PolyRouter][] = [];
    for (const [path, d] of this.deltas) {
      into.set(peftKey(path, KEYS.A), d.poly_lora_A);
      into.set(peftKey(path, KEYS.B), d.poly_lora_B);
      const rt = d.poly_router;
      if (!rt.kept) {
        into.set(peftKey(path, KEYS.router), rt.module_logits);
        continue;
      }
      const all = zeros([rt.nTasks, rt.nSplits * rt.nSkills]);
      into.set(peftKey(path, KEYS.router), all);
      split.push([all, rt]);
    }
    loadInto(into, tensors, source);
    for (const [all, rt] of split) {
      const v = all.toArray() as Float32Array;
      const kept = rt.kept!;
      (kept.storage.data as Float32Array).set(v.subarray(0, kept.size), kept.offset);
      const own = rt.module_logits;
      (own.storage.data as Float32Array).set(v.subarray(kept.size), own.offset);
    }
  }

  configJson(): RawAdapterConfig {
    const c = this.config;
    // PolyConfig has no layer selection fields: they are written only when used
    const { layers_pattern, layers_to_transform, ...shared } = baseJson(c);
    return {
      ...shared,
      ...(layers_pattern !== null ? { layers_pattern } : {}),
      ...(layers_to_transform !== null ? { layers_to_transform } : {}),
      init_weights: c.init_weights, n_skills: c.n_skills, n_splits: c.n_splits, n_tasks: c.n_tasks, poly_type: c.poly_type, r: c.r,
    };
  }
}

/** The POLY keys of a trained adapter folder, checked against what the new task needs of each target. */
function readSource(c: PolyConfig, plan: PolyTransferPlan, targets: TargetInfo[]): Map<string, { A: Tensor; B: Tensor; logits: Tensor }> {
  const file = adapterWeightsFile(plan.from);
  const all = readTensorMap(file);
  const src = plan.source;
  const S = c.n_splits;
  const K = c.n_skills;
  const want = new Map<string, Tensor>();
  const out = new Map<string, { A: Tensor; B: Tensor; logits: Tensor }>();
  for (const t of targets) {
    const { inF, outF } = layerShape(t, c);
    const e = { A: zeros([S, K, inF / S, c.r]), B: zeros([S, K, c.r, outF / S]), logits: zeros([src.n_tasks, S * K]) };
    want.set(peftKey(t.path, KEYS.A), e.A);
    want.set(peftKey(t.path, KEYS.B), e.B);
    want.set(peftKey(t.path, KEYS.router), e.logits);
    out.set(t.path, e);
  }
  const poly = new Map<string, Tensor>();
  for (const [k, v] of all) {
    if (Object.values(KEYS).some((s) => k.endsWith(`.${s}`))) poly.set(k, v);
    // a source's modules_to_save belong to its own tasks; the new task trains its own
    else if (!src.modules_to_save?.length) throw new AdaptkitError(`${file}: "${k}" is not a POLY tensor`);
  }
  loadInto(want, poly, file);
  for (const v of all.values()) v.dispose();
  return out;
}

function routerInit(rows: number, width: number, ctx: CreateContext): Tensor {
  return rand([rows, width], { low: -1e-3, high: 1e-3, rng: ctx.rng });
}

function create(name: string, cfg: BaseAdapterConfig, targets: TargetInfo[], ctx: CreateContext): AdapterInstance {
  const c = cfg as PolyConfig;
  const plan = c.transfer;
  if (plan?.mode === 'average') return createAveraged(name, c, plan, targets, ctx);
  const inst = new PolyAdapter(name, c);
  const S = c.n_splits;
  const K = c.n_skills;
  const r = c.r;
  const source = plan ? readSource(c, plan, targets) : null;
  for (const t of targets) {
    const { layer, inF, outF } = layerShape(t, c);
    let A: Tensor;
    let B: Tensor;
    let kept: Tensor | null = null;
    let logits: Tensor;
    const s = source?.get(t.path);
    if (s) {
      A = s.A;
      B = s.B;
      if (plan!.keepTasks) kept = s.logits.keep();
      logits = routerInit(1, S * K, ctx);
    } else {
      A = rand([S, K, inF / S, r], { low: -1 / Math.sqrt(inF / S), high: 1 / Math.sqrt(inF / S), rng: ctx.rng });
      B = c.init_weights ? zeros([S, K, r, outF / S]) : rand([S, K, r, outF / S], { low: -1 / Math.sqrt(r), high: 1 / Math.sqrt(r), rng: ctx.rng });
      logits = routerInit(c.n_tasks, S * K, ctx);
    }
    // MHR-z trains the new task's routing only: the skills stay plain tensors, never parameters
    const frozen = plan?.mode === 'router';
    const own = (x: Tensor, key: string) => (frozen ? x.keep() : parameter(x, `${t.path}.${key}`));
    const router = new PolyRouter(parameter(logits, `${t.path}.${KEYS.router}`), kept, S, K);
    inst.deltas.set(t.path, new PolyDelta(name, own(A, KEYS.A), own(B, KEYS.B), router, layer.fanInFanOut, ctx.tasks));
  }
  return inst;
}

/** A LoRA config with the POLY adapter's targets whose scale alpha/r is PEFT Poly's 1/r. */
function loraConfigFor(c: PolyConfig, fanInFanOut: boolean): RawAdapterConfig {
  const { peft_type: _t, ...shared } = baseJson(c);
  return { ...shared, peft_type: 'LORA', r: c.r, lora_alpha: 1, lora_dropout: 0, bias: 'none', fan_in_fan_out: fanInFanOut, init_lora_weights: true };
}

function layoutOf(layers: readonly { fanInFanOut: boolean }[], who: string): boolean {
  const f = layers[0]?.fanInFanOut ?? false;
  if (layers.some((l) => l.fanInFanOut !== f)) throw new AdaptkitError(`${who}: its targets mix [out, in] and [in, out] (Conv1D) weights, which one LoRA config cannot describe`);
  return f;
}

/** LoRA tensors lora_A.weight [r, in] = Aᵀ and lora_B.weight [out, r] = Bᵀ of mixed factors. */
function loraTensors(path: string, f: { A: Tensor; B: Tensor }): [string, Tensor][] {
  return [
    [peftKey(path, 'lora_A.weight'), clone(transpose(f.A))],
    [peftKey(path, 'lora_B.weight'), clone(transpose(f.B))],
  ];
}

/** MHR-μ: the source's skills averaged into one LoRA, created and filled through the LoRA method. */
function createAveraged(name: string, c: PolyConfig, plan: PolyTransferPlan, targets: TargetInfo[], ctx: CreateContext): AdapterInstance {
  const source = readSource(c, plan, targets);
  const layers = targets.map((t) => layerShape(t, c).layer);
  const lraw = loraConfigFor(c, layoutOf(layers, `POLY adapter "${name}"`));
  const inst = LORA.create(name, parseLoraConfig(lraw, `adapter "${name}" (MHR-μ of ${plan.from})`), targets, ctx);
  const tensors = new Map<string, Tensor>();
  noGrad(() => {
    for (const t of targets) {
      const s = source.get(t.path)!;
      const d = new PolyDelta(name, s.A, s.B, new PolyRouter(s.logits, null, c.n_splits, c.n_skills), false, ctx.tasks);
      for (const [k, v] of loraTensors(t.path, d.averageFactors())) tensors.set(k, v);
    }
  });
  inst.loadStateDict(tensors, adapterWeightsFile(plan.from));
  return inst;
}

function polyOf(am: AdapterModel, name: string): PolyAdapter {
  const inst = am.adapters.get(name);
  if (!inst) throw new AdaptkitError(`no adapter named "${name}"`);
  if (!(inst instanceof PolyAdapter)) throw new AdaptkitError(`adapter "${name}" is ${inst.method.peftType}, not POLY`);
  return inst;
}

function asLora(inst: PolyAdapter, factors: (d: PolyDelta) => { A: Tensor; B: Tensor }): { config: RawAdapterConfig; tensors: Map<string, Tensor> } {
  const tensors = new Map<string, Tensor>();
  noGrad(() => {
    for (const [path, d] of inst.deltas) for (const [k, v] of loraTensors(path, factors(d))) tensors.set(k, v.keep());
  });
  const raw = loraConfigFor(inst.config, layoutOf([...inst.deltas.values()], `adapter "${inst.name}"`));
  return { config: new LoraAdapter(inst.name, parseLoraConfig(raw, `adapter "${inst.name}"`)).configJson(), tensors };
}

/** One task of a POLY adapter as the LoRA it equals exactly at inference (B_t A_t / r). */
export function taskLora(am: AdapterModel, name: string, task: number): { config: RawAdapterConfig; tensors: Map<string, Tensor> } {
  const inst = polyOf(am, name);
  if (!Number.isInteger(task) || task < 0 || task >= inst.config.n_tasks) throw new AdaptkitError(`adapter "${name}": task ${task} is outside 0..${inst.config.n_tasks - 1}`);
  return asLora(inst, (d) => d.taskFactors(task));
}

/** MHR-μ's single LoRA of a POLY adapter: every skill weighted 1/K (the average selector), scale 1/r. */
export function averagedLora(am: AdapterModel, name: string): { config: RawAdapterConfig; tensors: Map<string, Tensor> } {
  return asLora(polyOf(am, name), (d) => d.averageFactors());
}

/** Writes `averagedLora` as a PEFT LORA folder (adapter_config.json + adapter_model.safetensors). */
export function saveAveragedLora(am: AdapterModel, name: string, dir: string): void {
  const { config, tensors } = averagedLora(am, name);
  try {
    writeFileAtomic(join(dir, 'adapter_model.safetensors'), serializeSafetensors(Object.fromEntries(tensors), { metadata: { format: 'pt' } }));
    writeFileAtomic(join(dir, 'adapter_config.json'), Buffer.from(pythonJson(config, LORA.floatKeys ?? [])));
  } finally {
    for (const t of tensors.values()) t.dispose();
  }
}

/**
 * The config of an adapter for a new task started from the trained POLY adapter in `from`:
 * "all" (Poly/MHR fine-tuning), "router" (MHR-z) or "average" (MHR-μ, a LoRA).
 */
export function newTaskConfig(from: string, transfer: PolyTransfer = 'all', o: { keepTasks?: boolean } = {}): RawAdapterConfig {
  return { peft_type: 'POLY', transfer_from: from, transfer, ...(o.keepTasks ? { keep_tasks: true } : {}) };
}

function parameterCount(c: PolyConfig, targets: TargetInfo[]): number {
  const SK = c.n_splits * c.n_skills;
  const mode = c.transfer?.mode;
  // a new task trains one routing row; a fresh adapter every task's
  const rows = c.transfer ? 1 : c.n_tasks;
  return targets.reduce((n, t) => {
    const { inF, outF } = layerShape(t, c);
    if (mode === 'average') return n + c.r * (inF + outF);
    if (mode === 'router') return n + SK;
    return n + c.n_skills * c.r * (inF + outF) + rows * SK;
  }, 0);
}

/** The most heads (4, else 2) that divide the model's hidden and key/value widths. */
function defaultSplits(d: AdapterDescriptor): number {
  const widths = [d.embedding.dim, ...(d.attention ? [d.attention.kvHeads * d.attention.headDim] : [])];
  return [4, 2].find((s) => widths.every((w) => w % s === 0)) ?? 4;
}

const N_TASKS: MethodOption = { name: 'n-tasks', type: 'int', min: 1, description: 'POLY: tasks the router has a row for; a forward routes each row by its task id (default 1)' };
const N_SKILLS: MethodOption = { name: 'n-skills', type: 'int', min: 1, description: 'POLY: LoRA skills in the inventory (default 4)' };
const N_SPLITS: MethodOption = { name: 'n-splits', type: 'int', min: 1, description: 'POLY: heads each skill is split into, dividing every target width (poly 1, mhr 4 or 2)' };
const FROM: MethodOption = { name: 'from', type: 'string', description: 'POLY: a trained POLY adapter folder to start a new task from (its r, skills, heads and targets)' };
const TRANSFER: MethodOption = {
  name: 'transfer', type: 'string',
  description: 'POLY with --from: all (new routing row, train everything), router (MHR-z: only the new row trains), average (MHR-mu: one LoRA of the skills\' mean)',
};

function preset(name: string, description: string, splits: (d: AdapterDescriptor) => number): MethodPreset {
  return {
    name,
    description,
    config: (o: PresetOptions, model) => {
      const given = (opt: string, key: string) => (o[opt] === undefined ? {} : { [key]: o[opt] });
      if (o.from !== undefined) {
        return {
          peft_type: 'POLY', transfer_from: String(o.from), transfer: o.transfer === undefined ? 'all' : String(o.transfer),
          ...given('r', 'r'), ...given('n-tasks', 'n_tasks'), ...given('n-skills', 'n_skills'), ...given('n-splits', 'n_splits'), ...targetsOption(o, undefined),
        };
      }
      if (o.transfer !== undefined) throw new AdapterConfigError('--transfer needs --from, the trained POLY adapter the new task starts from');
      return {
        peft_type: 'POLY', r: num(o, 'r', 8), n_tasks: num(o, 'n-tasks', 1), n_skills: num(o, 'n-skills', 4), n_splits: num(o, 'n-splits', splits(model)),
        ...targetsOption(o, model.defaultTargets),
      };
    },
  };
}

export const POLY: AdapterMethod = {
  peftType: 'POLY',
  description: 'Poly / MHR: per-task routing over an inventory of LoRA skills, split into heads for MHR (PEFT POLY), with MHR-z and MHR-μ transfer',
  kind: 'tuner',
  parseConfig: parsePolyConfig,
  create,
  countParameters: (cfg, targets) => parameterCount(cfg as PolyConfig, targets),
  presets: [
    preset('poly', 'Poly: 4 LoRA skills per default LoRA target mixed by learned per-task routing (r 8, --n-tasks, --n-skills; --from/--transfer for a new task)', () => 1),
    preset('mhr', 'MHR: Poly with each skill split into heads routed separately (--n-splits, default 4 or 2; --from/--transfer for a new task)', defaultSplits),
  ],
  options: [RANK, N_TASKS, N_SKILLS, N_SPLITS, FROM, TRANSFER, TARGETS],
  mergeable: (inst) => inst instanceof PolyAdapter && inst.config.n_tasks === 1,
  exports: {
    LORA: (am, name) => {
      const inst = polyOf(am, name);
      if (inst.config.n_tasks !== 1) throw new AdaptkitError(`adapter "${name}" routes ${inst.config.n_tasks} tasks; no one LoRA equals it (taskLora writes one task, averagedLora MHR-μ's average)`);
      return taskLora(am, name, 0);
    },
  },
  summary: (cfg) => {
    const c = cfg as PolyConfig;
    return { r: c.r, n_tasks: c.n_tasks, n_skills: c.n_skills, n_splits: c.n_splits, poly_type: c.poly_type };
  },
};

registerMethod(POLY);
