/**
 * A whole training run: model, tokenizer, adapter (or full fine-tuning), data, trainer, final
 * PEFT adapter, training report and curves. Used by `adaptkit train` and the demo.
 */
import { existsSync, mkdirSync, readFileSync, readdirSync, rmSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { AdaptkitError, Rng, type Tensor, crossEntropy, parameter, tensor } from '../tensor/index.js';
import { AdapterModel, type AdapterInstance, type PresetOptions, resolvePreset } from '../adapters/index.js';
import { readTensorMap } from '../adapters/files.js';
import { writeError, writeFileAtomic } from '../io/atomic.js';
import { serializeSafetensors } from '../io/safetensors.js';
import type { Tokenizer } from '../models/tokenizer.js';
import type { AnyModel } from '../models/load.js';
import { type DescribedModel, type Module, describeModel } from '../nn/index.js';
import { classificationAccuracy, classificationLoss, classificationTokens } from './classify.js';
import { saveModelFolder } from '../models/save.js';
import { type Example } from './examples.js';
import { StreamingExamples } from './stream.js';
import { collisionMessage, evaluateLoss, labelAccuracy, realLogits } from './evaluate.js';
import { IGNORE, collate } from './batch.js';
import { plotMetrics } from './plot.js';
import { type Progress } from './progress.js';
import { CHECKPOINTS, listCheckpoints } from './checkpoint.js';
import { DEFAULT_TRAIN, type TrainConfig, type TrainResult, Trainer } from './trainer.js';
import { DEFAULT_TASK_TEMPERATURE, type EvalTask, type TaskData, type TaskSampling, TASKS_FILE, type TasksFile, TaskSampler, checkTaskName, checkUniqueNames, taskMetrics, taskProbabilities, withTask } from './multitask.js';

/** Training every weight of the model instead of an adapter. */
export const FULL_FINE_TUNING = 'full';

/** Option values of the method's presets, by option name (`r`, `virtual-tokens`, ...). */
export type MethodOptions = PresetOptions;

/**
 * The PEFT config for a `--method` name (a preset or peft_type) and options, or the given config
 * as is; null for full fine-tuning.
 */
export function methodConfig(method: string, o: MethodOptions, model: Module, config?: Record<string, unknown>): Record<string, unknown> | null {
  if (config) return config;
  if (method === FULL_FINE_TUNING) return null;
  return resolvePreset(method).preset.config(o, describeModel(model));
}

export interface RunOptions {
  model: AnyModel | DescribedModel;
  /** Absent for models of images, whose inputs have no tokens and no padding. */
  tokenizer?: Tokenizer;
  /** A preset or peft_type (`lora`, `dora`, `PREFIX_TUNING`, ...) or `full`. */
  method: string;
  methodOptions: MethodOptions;
  /** A PEFT adapter config to train with instead of the method and its options. */
  adapterConfig?: Record<string, unknown>;
  /** Examples in memory, or a stream over a large JSONL file (not with `tasks`). */
  train?: Example[] | StreamingExamples;
  validation?: Example[];
  /**
   * Several tasks trained at once, in place of `train` and `validation`: task ids 0..n-1 in this
   * order, each batch row drawn by task (see multitask.ts), each task evaluated on its own.
   */
  tasks?: readonly TaskData[];
  /** How tasks are drawn (default: in proportion to their sizes). */
  taskSampling?: { sampling?: TaskSampling; temperature?: number };
  /** Recorded in tasks.json: the inputs were made to begin with "<task name>: ". */
  taskPrefix?: boolean;
  outDir: string;
  /** The config.json written with a fully fine-tuned model (its `model` folder and checkpoints). */
  modelConfig?: Record<string, unknown>;
  config: Partial<TrainConfig>;
  resume?: boolean;
  overwrite?: boolean;
  /** Labels of classification data: accuracy is evaluated when given. */
  labels?: string[];
  /** The label map and cue the examples were made with, recorded in the adapter's labels.json. */
  labelWords?: ReadonlyMap<string, string>;
  labelCue?: string;
  progress?: Progress;
  /** Settings recorded in the run folder to recognize the same run again. */
  identity?: Record<string, unknown>;
  /** The name a user knows a setting of `identity` by, from its dotted path (for a refused resume). */
  settingName?: (path: string) => string;
  /** Where a notice goes (a resume that finds nothing to resume); default: a process warning. */
  onNotice?: (message: string) => void;
  stopAfter?: number;
}

export interface RunResult {
  result: TrainResult;
  adapterDir: string;
  report: Record<string, unknown>;
}

const ADAPTER = 'default';
/** A checkpoint's file for a method's training state beyond its saved adapter. */
const TRAINING_STATE = 'adapter_training_state.safetensors';

/** First completion token of each label (labels must differ in it; the error names those that do not). */
export function labelFirstTokens(train: readonly Example[], labels: readonly string[]): Map<string, number> {
  const seqs = labelSequences(train, labels);
  const firsts = labels.map((l) => seqs.get(l)![0]!);
  if (new Set(firsts).size !== firsts.length) throw new AdaptkitError(collisionMessage(labels, firsts));
  return new Map(labels.map((l, i) => [l, firsts[i]!]));
}

/**
 * Each label's completion tokens as its first training example has them (its words, then EOS):
 * what label accuracy scores. Labels with no example take `make(label)` when given. Two labels
 * with the same tokens cannot be told apart: the error names those labels.
 */
export function labelSequences(examples: readonly Example[], labels: readonly string[], make?: (label: string) => number[]): Map<string, number[]> {
  const first = new Map<string, number[]>();
  for (const e of examples) if (e.label !== undefined && !first.has(e.label)) first.set(e.label, e.completion);
  const out = new Map<string, number[]>();
  const byTokens = new Map<string, string>();
  for (const l of labels) {
    const seq = first.get(l) ?? make?.(l);
    if (!seq || seq.length === 0) throw new AdaptkitError(`label "${l}" has no training example`);
    const key = seq.join(',');
    const twin = byTokens.get(key);
    if (twin !== undefined) throw new AdaptkitError(`labels "${twin}" and "${l}" are trained on the same tokens, so no score can tell them apart; give them different label words`);
    byTokens.set(key, l);
    out.set(l, [...seq]);
  }
  return out;
}

/** Written into the adapter folder of label training: the labels in order, and their words. */
export const LABELS_FILE = 'labels.json';

export interface LabelsFile {
  /** Class index to label, as transformers' config.json writes it (the head's rows, in order). */
  id2label: Record<string, string>;
  label_words?: Record<string, string>;
  label_cue?: string;
}

/** The labels file of an adapter folder, or null when it has none. */
export function readLabelsFile(adapterDir: string): LabelsFile | null {
  const p = join(adapterDir, LABELS_FILE);
  if (!existsSync(p)) return null;
  let v: unknown;
  try {
    v = JSON.parse(readFileSync(p, 'utf8'));
  } catch (e) {
    throw new AdaptkitError(`${p}: not valid JSON (${(e as Error).message})`);
  }
  const f = v as Partial<LabelsFile> | null;
  if (!f || typeof f !== 'object' || !f.id2label || typeof f.id2label !== 'object') throw new AdaptkitError(`${p}: expected {"id2label": {"0": "label", ...}}`);
  return f as LabelsFile;
}

/** The labels of a labels file in index order. */
export function labelsInOrder(f: LabelsFile): string[] {
  return Object.keys(f.id2label).map(Number).sort((a, b) => a - b).map((i) => String(f.id2label[String(i)]));
}

/** What a run writes into its folder; anything else there was put there by someone else. */
const RUN_CONFIG = 'run_config.json';
const RUN_ENTRIES = [RUN_CONFIG, TASKS_FILE, 'metrics.jsonl', CHECKPOINTS, 'adapter', 'model', 'training_report.json', 'curves.svg'];
/** Written when a run starts, before its first step: alone they do not make a folder a run. */
const START_ENTRIES = [RUN_CONFIG, TASKS_FILE];

/**
 * Why `path` cannot be (or become) a folder: it, or the nearest of its parents that exists, is a
 * file. Null when it can.
 */
export function notAFolder(path: string): string | null {
  for (let p = path; ; p = dirname(p)) {
    let st;
    try {
      st = statSync(p);
    } catch {
      if (dirname(p) === p) return null;
      continue;
    }
    if (st.isDirectory()) return null;
    return p === path ? `${path} is a file, not a folder` : `${path}: ${p} is a file, not a folder`;
  }
}

function listNames(names: readonly string[], most = 3): string {
  return names.length > most ? `${names.slice(0, most).join(', ')} and ${names.length - most} more` : names.join(', ');
}

function showValue(v: unknown): string {
  if (v === undefined) return 'unset';
  const s = JSON.stringify(v);
  return s.length > 60 ? `${s.slice(0, 57)}...` : s;
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return v !== null && typeof v === 'object' && !Array.isArray(v);
}

/** Dotted paths of the settings that differ between two identities, with their old and new values. */
function settingChanges(old: unknown, now: unknown, path = ''): { path: string; old: unknown; now: unknown }[] {
  if (isPlainObject(old) && isPlainObject(now)) {
    const keys = [...new Set([...Object.keys(old), ...Object.keys(now)])];
    return keys.flatMap((k) => settingChanges(old[k], now[k], path ? `${path}.${k}` : k));
  }
  return JSON.stringify(old) === JSON.stringify(now) ? [] : [{ path, old, now }];
}

export interface RunDirCheck {
  outDir: string;
  resume?: boolean;
  overwrite?: boolean;
  /** Compared with the one recorded in the folder before a resume; not compared when absent. */
  identity?: Record<string, unknown>;
  /** The name a user knows a setting by (a command-line flag), from its dotted path in the identity. */
  settingName?: (path: string) => string;
}

export interface RunDirPlan {
  /** Said when the run starts (a resume that finds nothing to resume). */
  notice?: string;
  /** The earlier run's entries to remove when the run starts (--overwrite). */
  remove: string[];
}

/**
 * Decide what a run may do with its folder, writing nothing: a missing or empty folder (or one
 * holding only the run_config.json of a run that stopped before its first step) starts a new run;
 * a run is resumed with the same settings or replaced with --overwrite; a folder of other files
 * is not taken for a run. Files adaptkit did not write are never removed.
 */
export function checkRunDir(o: RunDirCheck): RunDirPlan {
  const dir = o.outDir;
  const bad = notAFolder(dir);
  if (bad) throw new AdaptkitError(`${bad}; a run needs a folder for its checkpoints, metrics and adapter`);
  const entries = existsSync(dir) ? readdirSync(dir).sort() : [];
  const ours = entries.filter((e) => RUN_ENTRIES.includes(e));
  const others = entries.filter((e) => !RUN_ENTRIES.includes(e));
  const isRun = ours.some((e) => !START_ENTRIES.includes(e));
  if (!isRun) {
    if (others.length && !o.overwrite) {
      throw new AdaptkitError(`${dir} is not empty and is not an adaptkit run (it holds ${listNames(others)}); use an empty or new folder, or --overwrite to write the run next to these files`);
    }
    return { notice: o.resume && !o.overwrite ? `nothing to resume in ${dir}: starting a new run` : undefined, remove: ours };
  }
  if (o.overwrite) return { remove: ours };
  if (!o.resume) throw new AdaptkitError(`${dir} already holds a run (pass --resume to continue it or --overwrite to start over)`);
  const cfgPath = join(dir, RUN_CONFIG);
  if (o.identity && existsSync(cfgPath)) {
    let old: unknown;
    try {
      old = JSON.parse(readFileSync(cfgPath, 'utf8'));
    } catch (e) {
      throw new AdaptkitError(`${cfgPath}: not valid JSON (${(e as Error).message}); refusing to resume a run whose settings are unknown (use another --out or --overwrite)`);
    }
    const changes = settingChanges(old, JSON.parse(JSON.stringify(o.identity)));
    if (changes.length) {
      const name = o.settingName ?? ((p: string) => p);
      const list = changes.slice(0, 8).map((c) => `${name(c.path)} was ${showValue(c.old)}, now ${showValue(c.now)}`);
      if (changes.length > 8) list.push(`and ${changes.length - 8} more`);
      throw new AdaptkitError(`${dir} holds a run with different settings (${list.join('; ')}); refusing to resume it (resume with its settings, or use another --out or --overwrite)`);
    }
  }
  return { notice: listCheckpoints(dir).length ? undefined : `no checkpoint to resume in ${dir}: starting the run over`, remove: [] };
}

/** Make the folder a run's, once every check that can fail has passed. */
function startRunDir(o: RunOptions, plan: RunDirPlan, tasks: TasksFile | null): void {
  if (plan.notice) (o.onNotice ?? ((m: string) => process.emitWarning(m, { code: 'ADAPTKIT_RUN' })))(plan.notice);
  for (const e of plan.remove) rmSync(join(o.outDir, e), { recursive: true, force: true });
  try {
    mkdirSync(o.outDir, { recursive: true });
  } catch (e) {
    throw writeError(o.outDir, e);
  }
  writeFileAtomic(join(o.outDir, RUN_CONFIG), Buffer.from(JSON.stringify(o.identity ?? {})));
  if (tasks) writeFileAtomic(join(o.outDir, TASKS_FILE), Buffer.from(`${JSON.stringify(tasks, null, 2)}\n`));
}

interface PreparedTasks {
  sampler: TaskSampler;
  validation: Example[];
  eval: EvalTask[];
  file: TasksFile;
}

/** The tasks of a multi-task run checked, their examples given their task ids, and the sampler over them. */
function prepareTasks(o: RunOptions, seed: number): PreparedTasks {
  const tasks = o.tasks!;
  if (tasks.length === 0) throw new AdaptkitError('multi-task training needs at least one task');
  if (o.train !== undefined || o.validation !== undefined) throw new AdaptkitError('give a run either tasks or train and validation examples, not both');
  tasks.forEach((t, i) => checkTaskName(t.name, `task ${i}`));
  checkUniqueNames(tasks.map((t) => t.name), (i) => `task ${i}`);
  tasks.forEach((t) => {
    if (t.train.length === 0) throw new AdaptkitError(`task "${t.name}" has no training examples${t.data ? ` (${t.data})` : ''}`);
  });
  const probs = taskProbabilities(tasks.map((t) => t.train.length), { ...o.taskSampling, weights: tasks.map((t) => t.weight ?? 1) });
  const train = tasks.map((t, i) => withTask(t.train, i));
  const val = tasks.map((t, i) => withTask(t.validation, i));
  const sampling = o.taskSampling?.sampling ?? 'size';
  const file: TasksFile = {
    sampling,
    ...(sampling === 'temperature' ? { temperature: o.taskSampling?.temperature ?? DEFAULT_TASK_TEMPERATURE } : {}),
    task_prefix: !!o.taskPrefix,
    tasks: tasks.map((t, i) => ({
      id: i, name: t.name, ...(t.data ? { data: t.data } : {}), ...(t.valData ? { val_data: t.valData } : {}),
      train_examples: t.train.length, validation_examples: t.validation.length, weight: t.weight ?? 1, probability: probs[i]!,
      ...(t.labels?.length ? {
        labels: t.labels,
        ...(t.labelWords ? { label_words: Object.fromEntries(t.labels.map((l) => [l, t.labelWords!.get(l) ?? l])) } : {}),
        ...(t.labelCue !== undefined ? { label_cue: t.labelCue } : {}),
      } : {}),
    })),
  };
  return {
    sampler: new TaskSampler(train, probs, seed),
    validation: val.flat(),
    eval: tasks.map((t, i) => ({ name: t.name, validation: val[i]!, labelTokens: t.labels?.length ? labelSequences(train[i]!, t.labels) : null })),
    file,
  };
}

export function runTraining(o: RunOptions): RunResult {
  const plan = checkRunDir({ ...o, identity: o.identity ?? {} });
  const cfg: TrainConfig = { ...DEFAULT_TRAIN, ...o.config };
  const desc = describeModel(o.model);
  const classifier = desc.task === 'sequence-classification' ? (o.model as Module & { resizeClassifier(n: number, rng?: Rng): void }) : null;
  const multi = o.tasks ? prepareTasks(o, cfg.seed) : null;
  if (multi && classifier) throw new AdaptkitError('multi-task training trains language-model tasks (label words for labels), not a classification head');
  if (multi && cfg.bucket) throw new AdaptkitError('bucketing groups one dataset\'s examples by length; multi-task rows are drawn one by one, so it does not apply');
  if (!multi && !o.train) throw new AdaptkitError('a run needs training examples (train) or tasks');
  const trainData = multi ? multi.sampler : o.train!;
  const validation = multi ? multi.validation : (o.validation ?? []);
  if (classifier) {
    if (!o.labels?.length) throw new AdaptkitError('a sequence classifier trains on {"text", "label"} data');
    // a head of the right size, freshly initialized when the checkpoint's had other labels
    classifier.resizeClassifier(o.labels.length, new Rng(cfg.seed));
  }
  const am = new AdapterModel(o.model);
  let peft = methodConfig(o.method, o.methodOptions, o.model, o.adapterConfig);
  // the classification head trains along with the adapter, as PEFT's modules_to_save
  if (peft && classifier && desc.classifierHead && !peft.modules_to_save) peft = { ...peft, modules_to_save: [desc.classifierHead], task_type: 'SEQ_CLS' };
  let inst: AdapterInstance | null = null;
  let params: Tensor[];
  if (peft) {
    inst = am.add(ADAPTER, peft, { seed: cfg.seed });
    params = am.trainableParameters();
  } else {
    o.model.unfreeze();
    params = o.model.parameters().map((p) => parameter(p));
  }
  if (cfg.lossAverage === 'row' && (classifier || inst?.objective)) {
    throw new AdaptkitError(`loss averaging "row" is for language-model losses; ${classifier ? 'a classification head' : `the ${inst!.method.peftType} method's own objective`} averages its loss itself`);
  }
  const padId = classifier ? ((o.tokenizer as { padId?: number | null } | undefined)?.padId ?? 0) : (o.tokenizer?.eosId ?? 0);
  const labelTokens = o.labels?.length && !classifier && Array.isArray(trainData) ? labelSequences(trainData, o.labels) : null;
  const evaluate = multi && validation.length
    ? () => taskMetrics(am, multi.eval, padId)
    : validation.length && classifier
    ? () => {
        const r = classificationAccuracy(am as unknown as { forward: typeof am.forward }, validation, padId);
        return { accuracy: r.accuracy, loss: r.loss };
      }
    : validation.length
    ? () => {
        const r: Record<string, number> = {};
        if (labelTokens) r.accuracy = labelAccuracy(am, validation, labelTokens, padId).accuracy;
        const l = evaluateLoss(am, validation, padId);
        r.loss = l.loss;
        r.perplexity = l.perplexity;
        return r;
      }
    : undefined;
  const trainer = new Trainer(am, params, trainData, padId, cfg, o.outDir, {
    evaluate,
    loss: classifier
      ? (ex) => ({ loss: classificationLoss(am, ex, padId), tokens: classificationTokens(ex) })
      : inst?.objective
      ? (ex) => {
          // the method's own objective over the step's batch (several passes, consistency terms)
          const b = collate(ex, padId, { pack: cfg.pack, maxLen: cfg.maxLen });
          const loss = inst!.objective!({
            logits: () => realLogits(am, b.ids, b.mask, { taskIds: b.taskIds, promptLengths: b.promptLengths }),
            loss: (l) => crossEntropy(l, b.targets, { ignoreIndex: IGNORE }),
            weights: tensor(Array.from(b.targets.toArray(), (t) => (t === IGNORE ? 0 : 1)), b.targets.shape),
            taskIds: b.taskIds,
            ids: b.ids,
            mask: b.mask,
          });
          return { loss, tokens: b.tokens };
        }
      : undefined,
    onStep: (m) => o.progress?.step(m),
    onEval: (m) => o.progress?.eval(m),
    saveWeights: (dir) => {
      if (!inst) return saveModelFolder(o.model, o.modelConfig ?? {}, dir, { overwrite: true });
      am.save(dir, ADAPTER);
      const st = inst.checkpointState?.();
      if (st) writeFileAtomic(join(dir, TRAINING_STATE), serializeSafetensors(Object.fromEntries(st)));
    },
    loadWeights: (dir) => {
      if (inst?.loadCheckpointState && existsSync(join(dir, TRAINING_STATE))) {
        const file = join(dir, TRAINING_STATE);
        return inst.loadCheckpointState(readTensorMap(file), file);
      }
      const file = join(dir, inst ? 'adapter_model.safetensors' : 'model.safetensors');
      const tensors = readTensorMap(file);
      if (inst) inst.loadStateDict(tensors, file);
      else for (const [k, p] of o.model.namedParameters()) (p.storage.data as Float32Array).set(tensors.get(k)!.toArray() as Float32Array, p.offset);
    },
  });
  // written only now: a run that fails a check above leaves its folder as it found it
  startRunDir(o, plan, multi?.file ?? null);
  let result: TrainResult;
  try {
    result = trainer.run({ resume: o.resume, stopAfter: o.stopAfter });
  } finally {
    o.progress?.stop();
  }
  const adapterDir = join(o.outDir, inst ? 'adapter' : 'model');
  if (inst) {
    mkdirSync(adapterDir, { recursive: true });
    am.save(adapterDir, ADAPTER);
  } else {
    saveModelFolder(o.model, o.modelConfig ?? {}, adapterDir, { overwrite: true });
  }
  if (o.labels?.length) {
    const f: LabelsFile = { id2label: Object.fromEntries(o.labels.map((l, i) => [String(i), l])) };
    if (!classifier) {
      if (o.labelWords) f.label_words = Object.fromEntries(o.labels.map((l) => [l, o.labelWords!.get(l) ?? l]));
      if (o.labelCue !== undefined) f.label_cue = o.labelCue;
    }
    writeFileAtomic(join(adapterDir, LABELS_FILE), Buffer.from(`${JSON.stringify(f, null, 2)}\n`));
  }
  // the adapter folder carries its task ids, so that it can be evaluated and served away from its run
  if (multi) writeFileAtomic(join(adapterDir, TASKS_FILE), Buffer.from(`${JSON.stringify(multi.file, null, 2)}\n`));
  // hand the model back without this run's adapter modules in it
  if (inst) am.setActive([]);
  const evals = result.history.filter((h) => h.kind === 'eval');
  const finalEval = (evals[evals.length - 1] ?? null) as Record<string, unknown> | null;
  const report = {
    method: o.method,
    adapter_config: peft,
    train_config: cfg,
    trainable_parameters: params.reduce((n, p) => n + p.size, 0),
    steps: result.steps,
    stopped_early: result.stoppedEarly,
    seconds: result.seconds,
    train_examples: trainData instanceof StreamingExamples ? 'streamed' : multi ? multi.file.tasks.reduce((n, t) => n + t.train_examples, 0) : (trainData as Example[]).length,
    validation_examples: validation.length,
    final_train_loss: result.history.filter((h) => h.kind === 'train').slice(-10).reduce((s, h, _, a) => s + Number((h as { loss: number }).loss) / a.length, 0),
    final_eval: finalEval,
    ...(multi ? { task_sampling: multi.file.sampling, ...(multi.file.temperature !== undefined ? { task_temperature: multi.file.temperature } : {}), task_prefix: multi.file.task_prefix, tasks: taskReport(multi.file, finalEval) } : {}),
  };
  writeFileAtomic(join(o.outDir, 'training_report.json'), Buffer.from(`${JSON.stringify(report, null, 2)}\n`));
  if (existsSync(join(o.outDir, 'metrics.jsonl'))) writeFileAtomic(join(o.outDir, 'curves.svg'), Buffer.from(plotMetrics(join(o.outDir, 'metrics.jsonl'))));
  return { result, adapterDir, report };
}

/** Each task with its id, sizes, probability and final evaluation numbers (`loss/<name>` as `loss`). */
function taskReport(file: TasksFile, finalEval: Record<string, unknown> | null): Record<string, unknown>[] {
  return file.tasks.map((t) => {
    const final: Record<string, unknown> = {};
    if (finalEval) for (const [k, v] of Object.entries(finalEval)) if (k.endsWith(`/${t.name}`)) final[k.slice(0, -t.name.length - 1)] = v;
    return { id: t.id, name: t.name, train_examples: t.train_examples, validation_examples: t.validation_examples, probability: t.probability, final_eval: Object.keys(final).length ? final : null };
  });
}
