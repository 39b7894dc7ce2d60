/**
 * Multi-task training: several datasets in one run, each a task with an id (0..n-1 in the order
 * given). Every row of a batch is drawn on its own: first a task, with probability
 * p_i ∝ w_i · n_i^(1/T) (n_i its training examples, w_i its weight; T = 1 is proportional to
 * size, T → ∞ uniform), then that task's next example in a shuffled pass over its examples. So a
 * batch mixes tasks and each row carries its task id, which routes task-conditioned adapters.
 * The draw is a pure function of the seed and the sampler's position, which checkpoints store,
 * so a resumed run replays the same rows.
 */
import { existsSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { AdaptkitError, Rng } from '../tensor/index.js';
import type { DataRecord } from './data.js';
import type { Example, LabelWords } from './examples.js';
import { type LabelTargets, type TrainableLM, evaluateLoss, labelAccuracy } from './evaluate.js';

export type TaskSampling = 'size' | 'temperature' | 'uniform';
export const TASK_SAMPLINGS: readonly TaskSampling[] = ['size', 'temperature', 'uniform'];

/** The temperature of `--task-sampling temperature` when none is given. */
export const DEFAULT_TASK_TEMPERATURE = 2;

/** Names go into metric keys (`loss/<name>`) and file names, so they are kept to one plain word. */
const NAME = /^[A-Za-z0-9_.-]+$/;

/** A task name, checked: `where` names the field or option it came from. */
export function checkTaskName(name: unknown, where: string): string {
  if (typeof name !== 'string' || name === '') throw new AdaptkitError(`${where}: the task name is empty`);
  if (!NAME.test(name)) throw new AdaptkitError(`${where}: task name "${name}" may hold only letters, digits, "_", "-" and "."`);
  return name;
}

/** Refuses two tasks of one name, naming where each was given. */
export function checkUniqueNames(names: readonly string[], where: (i: number) => string): void {
  const seen = new Map<string, number>();
  names.forEach((n, i) => {
    const j = seen.get(n);
    if (j !== undefined) throw new AdaptkitError(`${where(i)}: task name "${n}" is already the name of ${where(j)}; task names must differ`);
    seen.set(n, i);
  });
}

export interface SamplingOptions {
  sampling?: TaskSampling;
  /** T of temperature sampling (default 2). */
  temperature?: number;
  /** A factor on each task's probability before normalizing (default 1 each). */
  weights?: readonly number[];
}

/** p_i ∝ w_i · n_i^(1/T): T = 1 for `size`, T = ∞ (exponent 0) for `uniform`. */
export function taskProbabilities(sizes: readonly number[], o: SamplingOptions = {}): number[] {
  const sampling = o.sampling ?? 'size';
  if (!TASK_SAMPLINGS.includes(sampling)) throw new AdaptkitError(`task sampling must be ${TASK_SAMPLINGS.join(', ')}, got "${sampling}"`);
  const T = sampling === 'temperature' ? (o.temperature ?? DEFAULT_TASK_TEMPERATURE) : 1;
  if (!(T > 0)) throw new AdaptkitError(`the task temperature must be a number > 0, got ${T}`);
  const exponent = sampling === 'uniform' ? 0 : 1 / T;
  if (sizes.length === 0) throw new AdaptkitError('multi-task training needs at least one task');
  const raw = sizes.map((n, i) => {
    if (!(n > 0)) throw new AdaptkitError(`task ${i} has no training examples`);
    const w = o.weights?.[i] ?? 1;
    if (!(w > 0) || !Number.isFinite(w)) throw new AdaptkitError(`task ${i}: the weight must be a number > 0, got ${w}`);
    // in logs, so that large sizes with a small temperature cannot overflow
    return Math.log(w) + exponent * Math.log(n);
  });
  const m = Math.max(...raw);
  const e = raw.map((r) => Math.exp(r - m));
  const s = e.reduce((a, b) => a + b, 0);
  return e.map((x) => x / s);
}

/** Where a sampler is: its generator, and each task's pass and index in that pass. */
export interface SamplerPosition {
  rng: number[];
  tasks: { epoch: number; index: number }[];
}

/** Rows drawn independently by task (see the file comment); an example source for Trainer. */
export class TaskSampler {
  private readonly rng: Rng;
  private readonly cumulative: Float64Array;
  private pos: { epoch: number; index: number }[];
  private orders: (number[] | null)[];

  constructor(
    readonly tasks: readonly (readonly Example[])[],
    readonly probabilities: readonly number[],
    readonly seed: number,
  ) {
    if (tasks.length === 0) throw new AdaptkitError('multi-task training needs at least one task');
    if (probabilities.length !== tasks.length) throw new AdaptkitError(`${probabilities.length} task probabilities for ${tasks.length} tasks`);
    tasks.forEach((t, i) => {
      if (t.length === 0) throw new AdaptkitError(`task ${i} has no training examples`);
    });
    this.cumulative = new Float64Array(tasks.length);
    let c = 0;
    probabilities.forEach((p, i) => (this.cumulative[i] = c += p));
    this.rng = new Rng(seed);
    this.pos = tasks.map(() => ({ epoch: 0, index: 0 }));
    this.orders = tasks.map(() => null);
  }

  /** Back to the first draw. */
  restart(): void {
    this.rng.seed(this.seed);
    this.pos = this.tasks.map(() => ({ epoch: 0, index: 0 }));
    this.orders = this.tasks.map(() => null);
  }

  /** The task of the next row. */
  private drawTask(): number {
    const u = this.rng.uniform() * this.cumulative[this.cumulative.length - 1]!;
    for (let i = 0; i < this.cumulative.length; i++) if (u < this.cumulative[i]!) return i;
    return this.cumulative.length - 1;
  }

  /** Task t's shuffled order for its current pass: a pure function of seed, task and pass. */
  private order(t: number): number[] {
    const have = this.orders[t];
    if (have) return have;
    const rng = new Rng((this.seed * 1000003 + (t + 1) * 7919 + this.pos[t]!.epoch * 104729) >>> 0);
    const idx = Array.from(this.tasks[t]!.keys());
    for (let i = idx.length - 1; i > 0; i--) {
      const j = rng.int(i + 1);
      [idx[i], idx[j]] = [idx[j]!, idx[i]!];
    }
    this.orders[t] = idx;
    return idx;
  }

  next(n: number): Example[] {
    const out: Example[] = [];
    for (let k = 0; k < n; k++) {
      const t = this.drawTask();
      const p = this.pos[t]!;
      if (p.index >= this.tasks[t]!.length) {
        p.epoch++;
        p.index = 0;
        this.orders[t] = null;
      }
      out.push(this.tasks[t]![this.order(t)[p.index++]!]!);
    }
    return out;
  }

  position(): SamplerPosition {
    return { rng: this.rng.getState(), tasks: this.pos.map((p) => ({ ...p })) };
  }

  seek(p: SamplerPosition): void {
    if (!p || !Array.isArray(p.tasks) || p.tasks.length !== this.tasks.length || !Array.isArray(p.rng)) {
      throw new AdaptkitError(`the checkpoint's sampler position is not one of ${this.tasks.length} tasks`);
    }
    this.rng.setState(p.rng);
    this.pos = p.tasks.map((q) => ({ epoch: q.epoch, index: q.index }));
    this.orders = this.tasks.map(() => null);
  }
}

/** The examples with their task id set. */
export function withTask(examples: readonly Example[], task: number): Example[] {
  return examples.map((e) => ({ ...e, task }));
}

/** What `--task-prefix` puts before each input: the task's name and a colon. */
export function taskPrefixText(name: string): string {
  return `${name}: `;
}

/**
 * A record with the task prefix before its input (VL-Adapter's task prompts, so one shared
 * adapter knows its task): the prompt of a completion, the text of a label record, the first
 * user message of a chat. A plain text record is all completion, so the prefix becomes its
 * prompt and stays out of the loss.
 */
export function prefixRecord(r: DataRecord, name: string): DataRecord {
  const p = taskPrefixText(name);
  switch (r.kind) {
    case 'completion':
      return { ...r, prompt: p + r.prompt };
    case 'label':
      return { ...r, text: p + r.text };
    case 'text':
      return { kind: 'completion', prompt: p, completion: r.text };
    case 'chat': {
      const at = Math.max(0, r.messages.findIndex((m) => m.role === 'user'));
      return { ...r, messages: r.messages.map((m, i) => (i === at ? { ...m, content: p + m.content } : m)) };
    }
  }
}

/** One task of a multi-task run, as runTraining takes it. */
export interface TaskData {
  name: string;
  train: Example[];
  validation: Example[];
  /** The labels of a label-word task (its accuracy is evaluated). */
  labels?: string[];
  labelWords?: LabelWords;
  labelCue?: string;
  /** A factor on its sampling probability (default 1). */
  weight?: number;
  /** Where its data came from, for tasks.json. */
  data?: string;
  valData?: string;
}

/** Written into the run folder and the adapter folder of a multi-task run. */
export const TASKS_FILE = 'tasks.json';

export interface TasksFileTask {
  id: number;
  name: string;
  data?: string;
  val_data?: string;
  train_examples: number;
  validation_examples: number;
  weight: number;
  probability: number;
  labels?: string[];
  label_words?: Record<string, string>;
  label_cue?: string;
}

export interface TasksFile {
  sampling: TaskSampling;
  temperature?: number;
  /** Whether inputs begin with "<task name>: " (training and evaluation alike). */
  task_prefix: boolean;
  tasks: TasksFileTask[];
}

/**
 * The tasks file of an adapter folder, or of the run folder it was saved in (its parent, when
 * that holds a run's run_config.json: a tasks.json elsewhere may be a manifest); null when
 * neither has one.
 */
export function readTasksFile(adapterDir: string): { file: TasksFile; path: string } | null {
  const run = dirname(resolve(adapterDir));
  const places = [join(adapterDir, TASKS_FILE), ...(existsSync(join(run, 'run_config.json')) ? [join(run, TASKS_FILE)] : [])];
  for (const p of places) {
    if (!existsSync(p)) continue;
    let v: unknown;
    try {
      v = JSON.parse(readFileSync(p, 'utf8'));
    } catch (e) {
      throw new AdaptkitError(`${p}: not valid JSON (${(e as Error).message})`);
    }
    const f = v as Partial<TasksFile> | null;
    if (!f || typeof f !== 'object' || !Array.isArray(f.tasks) || !f.tasks.every((t) => t && typeof t.name === 'string' && Number.isInteger(t.id))) {
      throw new AdaptkitError(`${p}: expected {"tasks": [{"id": 0, "name": "...", ...}, ...]}`);
    }
    return { file: f as TasksFile, path: p };
  }
  return null;
}

/** One entry of a `--tasks` manifest, with its paths resolved against the manifest's folder. */
export interface ManifestTask {
  name: string;
  data: string;
  valData?: string;
  labelWords?: string;
  labelCue?: string;
  weight?: number;
  format?: string;
  textColumn?: string;
  labelColumn?: string;
  completionColumn?: string;
  header?: boolean;
  quote?: boolean;
}

const MANIFEST_FIELDS: Record<string, { key: keyof ManifestTask; type: 'string' | 'path' | 'number' | 'boolean' }> = {
  name: { key: 'name', type: 'string' },
  data: { key: 'data', type: 'path' },
  val_data: { key: 'valData', type: 'path' },
  label_words: { key: 'labelWords', type: 'path' },
  label_cue: { key: 'labelCue', type: 'string' },
  weight: { key: 'weight', type: 'number' },
  format: { key: 'format', type: 'string' },
  text_column: { key: 'textColumn', type: 'string' },
  label_column: { key: 'labelColumn', type: 'string' },
  completion_column: { key: 'completionColumn', type: 'string' },
  header: { key: 'header', type: 'boolean' },
  quote: { key: 'quote', type: 'boolean' },
};

/**
 * `{"tasks": [{"name", "data", "val_data"?, "label_words"?, "label_cue"?, "weight"?, "format"?,
 * "text_column"?, "label_column"?, "completion_column"?, "header"?, "quote"?}, ...]}`; paths are
 * relative to the manifest's folder. An unknown field is an error, not a silently ignored typo.
 */
export function readTaskManifest(file: string): ManifestTask[] {
  if (!existsSync(file)) throw new AdaptkitError(`--tasks ${file}: no such file`);
  if (!statSync(file).isFile()) throw new AdaptkitError(`--tasks ${file} is a folder; --tasks names a JSON manifest`);
  let v: unknown;
  try {
    v = JSON.parse(readFileSync(file, 'utf8').replace(/^\uFEFF/, ''));
  } catch (e) {
    throw new AdaptkitError(`--tasks ${file}: not valid JSON (${(e as Error).message})`);
  }
  const list = (v as { tasks?: unknown } | null)?.tasks;
  if (v === null || typeof v !== 'object' || Array.isArray(v) || !Array.isArray(list)) throw new AdaptkitError(`--tasks ${file}: expected {"tasks": [{"name": ..., "data": ...}, ...]}`);
  const extra = Object.keys(v).filter((k) => k !== 'tasks');
  if (extra.length) throw new AdaptkitError(`--tasks ${file}: unknown field(s) ${extra.map((k) => `"${k}"`).join(', ')} (the manifest holds only "tasks")`);
  if (list.length === 0) throw new AdaptkitError(`--tasks ${file}: "tasks" is empty`);
  const base = dirname(resolve(file));
  const tasks = list.map((entry, i) => {
    const where = `--tasks ${file}: tasks[${i}]`;
    if (entry === null || typeof entry !== 'object' || Array.isArray(entry)) throw new AdaptkitError(`${where} must be an object {"name", "data", ...}`);
    const out: Partial<ManifestTask> = {};
    for (const [k, val] of Object.entries(entry as Record<string, unknown>)) {
      const f = MANIFEST_FIELDS[k];
      if (!f) throw new AdaptkitError(`${where}: unknown field "${k}" (fields: ${Object.keys(MANIFEST_FIELDS).join(', ')})`);
      const want = f.type === 'path' ? 'string' : f.type;
      if (typeof val !== want || (want === 'string' && k !== 'label_cue' && val === '')) throw new AdaptkitError(`${where}.${k} must be a ${want === 'string' ? 'non-empty string' : want}`);
      (out as Record<string, unknown>)[f.key] = f.type === 'path' ? resolve(base, val as string) : val;
    }
    checkTaskName(out.name, `${where}.name`);
    if (out.data === undefined) throw new AdaptkitError(`${where}.data is missing (the task's data file)`);
    if (out.weight !== undefined && !(out.weight > 0 && Number.isFinite(out.weight))) throw new AdaptkitError(`${where}.weight must be a number > 0, got ${out.weight}`);
    return out as ManifestTask;
  });
  checkUniqueNames(tasks.map((t) => t.name), (i) => `--tasks ${file}: tasks[${i}].name`);
  return tasks;
}

/** A task ready for evaluation: its validation examples (task ids set) and, for label tasks, the scored label tokens. */
export interface EvalTask {
  name: string;
  validation: readonly Example[];
  labelTokens?: LabelTargets | null;
}

/**
 * Each task's validation loss, perplexity and (label tasks) accuracy as `loss/<name>`,
 * `perplexity/<name>`, `accuracy/<name>`, after their means over the tasks evaluated (each task
 * weighs the same, whatever its size): `accuracy` first when every task has labels (early stopping
 * watches the first key), else `loss` first. The perplexity is that of the mean loss.
 */
export function taskMetrics(model: TrainableLM, tasks: readonly EvalTask[], padId: number): Record<string, number> {
  const per: Record<string, number> = {};
  const losses: number[] = [];
  const accs: number[] = [];
  let evaluated = 0;
  for (const t of tasks) {
    if (t.validation.length === 0) continue;
    evaluated++;
    if (t.labelTokens) {
      const a = labelAccuracy(model, t.validation, t.labelTokens, padId).accuracy;
      per[`accuracy/${t.name}`] = a;
      accs.push(a);
    }
    const l = evaluateLoss(model, t.validation, padId);
    per[`loss/${t.name}`] = l.loss;
    per[`perplexity/${t.name}`] = l.perplexity;
    losses.push(l.loss);
  }
  const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
  const out: Record<string, number> = {};
  const allLabels = accs.length > 0 && accs.length === evaluated;
  if (allLabels) out.accuracy = mean(accs);
  if (losses.length) {
    out.loss = mean(losses);
    out.perplexity = Math.exp(out.loss);
  }
  if (accs.length && !allLabels) out.accuracy = mean(accs);
  return { ...out, ...per };
}
