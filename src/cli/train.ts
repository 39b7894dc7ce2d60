/** CLI commands for training: train, eval, plot, demo. */
import type { Command } from 'commander';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { AdaptkitError } from '../tensor/index.js';
import { writeFileAtomic } from '../io/atomic.js';
import {
  AdapterModel, type MethodOption, type PresetOptions, adapterWeightsFile, methodNames, methodOptions, peftKey, presetNames, readAdapterConfig, registeredMethods, resolvePreset,
} from '../adapters/index.js';
import { SafetensorsFile } from '../io/safetensors.js';
import { describeModel } from '../nn/index.js';
import { type CausalModel, loadAnyModel, loadTokenizer } from '../models/load.js';
import { CausalLMForSequenceClassification, DECODER_CLASSIFIER_HEAD } from '../models/sequence-classification.js';
import { type Classifier, classificationAccuracy, classificationExamples } from '../train/classify.js';
import { StreamingExamples } from '../train/stream.js';
import { type DataRecord, readRecords, type ReadOptions } from '../train/data.js';
import { DEFAULT_LABEL_CUE, type Example, type LabelWords, fitExamples, readLabelWords, splitExamples, toExample } from '../train/examples.js';
import { LOSS_AVERAGES, type LossAverage, evaluateLoss, exactMatch, labelAccuracy } from '../train/evaluate.js';
import { plotMetrics } from '../train/plot.js';
import { makeProgress } from '../train/progress.js';
import { FULL_FINE_TUNING, LABELS_FILE, type RunOptions, checkRunDir, labelSequences, labelsInOrder, notAFolder, readLabelsFile, runTraining } from '../train/run.js';
import { type DemoTask, demoModelDir, runDemo } from '../train/demo.js';
import {
  DEFAULT_TASK_TEMPERATURE, type ManifestTask, TASKS_FILE, TASK_SAMPLINGS, type TaskData, type TaskSampling, type TasksFile, type TasksFileTask, checkTaskName, checkUniqueNames, prefixRecord,
  readTaskManifest, readTasksFile,
} from '../train/multitask.js';
import { dataDir } from '../io/data.js';
import type { ScheduleName } from '../train/schedule.js';
import { SAMPLING_RANGES } from '../models/sampling-rules.js';
import { resolveModel } from './models.js';
import { QUANTIZE_HELP, quantizeLoadOptions, reportQuantization } from './quantize.js';
import { isQuantized } from '../models/quantize.js';
import { type ImageFlags, addImageOptions, evalOnImages, refuseTextData, trainOnImages } from './images.js';
import { type OptionRange, atLeast, describeOptionRange, numberOption } from './options.js';

/** The accepted values of the numeric options; the help text and the error messages both read them. */
const RANGES = {
  steps: atLeast(1),
  batchSize: atLeast(1),
  gradAccum: atLeast(1),
  // above 10 is a typo (3e3 for 3e-3), not a learning rate
  lr: { min: 0, max: 10, minExclusive: true },
  weightDecay: { min: 0, max: Infinity },
  // a momentum of 1 or more never forgets a gradient, so SGD diverges
  momentum: { min: 0, max: 1, maxExclusive: true },
  maxGradNorm: { min: 0, max: Infinity },
  evalEvery: atLeast(0),
  earlyStopping: atLeast(0),
  checkpointEvery: atLeast(0),
  keepCheckpoints: atLeast(1),
  seed: SAMPLING_RANGES.seed,
  // one token of input and one to predict
  seqLen: atLeast(2),
  taskTemperature: { min: 0, max: Infinity, minExclusive: true },
  taskId: atLeast(0),
  maxNewTokens: atLeast(1),
  limit: atLeast(1),
} satisfies Record<string, OptionRange>;

const VAL_SPLIT = 'a fraction in [0, 1) or a count of examples (an integer >= 1)';

/** --val-split: a fraction of the examples below 1, a count from 1 up. */
function valSplit(v: string): number {
  const n = String(v).trim() === '' ? NaN : Number(v);
  if (!Number.isFinite(n) || n < 0 || (n >= 1 && !Number.isInteger(n))) throw new AdaptkitError(`--val-split must be ${VAL_SPLIT}, got "${v}"`);
  return n;
}

/** Help text that states the range an option accepts. */
function ranged(what: string, r: OptionRange, more = ''): string {
  return `${what}: ${describeOptionRange(r)}${more}`;
}

/**
 * --seq-len against the model's context: a value given on the command line must fit it, the
 * default is cut down to it.
 */
function seqLenFor(model: { config: unknown }, v: string, fromCli: boolean): number {
  const n = numberOption('seq-len', v, RANGES.seqLen);
  const context = (model.config as { maxPositions?: number }).maxPositions;
  if (context === undefined || n <= context) return n;
  if (fromCli) throw new AdaptkitError(`--seq-len must be an integer in [2, ${context}] (the model's context), got "${v}"`);
  return context;
}

/** The flag behind each training setting of a run's identity (a resume names those that changed). */
const CONFIG_FLAGS: Record<string, string> = { warmupSteps: 'warmup', earlyStoppingPatience: 'early-stopping', maxLen: 'seq-len' };

function kebab(name: string): string {
  return name.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`);
}

function settingFlag(path: string): string {
  const [head = '', key, ...rest] = path.split('.');
  if (head === 'tasks' && key) return rest.length ? `the ${kebab(rest.join('.'))} of task ${key}` : `task ${key}`;
  if (head === 'taskOrder') return 'the tasks (--data NAME=FILE or --tasks)';
  if (head === 'config' && key) return `--${CONFIG_FLAGS[key] ?? kebab(key)}`;
  if (head === 'methodOptions' && key) return `--${key}`;
  if (head === 'adapterConfig' && key) return `"${[key, ...rest].join('.')}" of --adapter-config`;
  return `--${kebab(head)}`;
}

/** A folder the command reads or writes, checked before any work: a file there is named. */
function expectFolder(option: string, path: string, what: string): void {
  const bad = notAFolder(path);
  if (bad) throw new AdaptkitError(`--${option} ${bad}; ${what}`);
}

interface DataFlags {
  data: string;
  format?: string;
  textColumn?: string;
  labelColumn?: string;
  completionColumn?: string;
  header?: boolean;
  quote?: boolean;
  skipBadLines?: boolean;
  seqLen: string;
  truncate: boolean;
  labelCue?: string;
  labelWords?: string;
}

const DATA_HELP = 'JSONL ({"prompt","completion"}, {"messages"}, {"text"}, {"text","label"}, {"question","answer"}) or CSV/TSV';
const LABEL_WORDS_HELP = 'label map: train on (and score) these words instead of the label names; a JSON object {"label": "words"} or a TSV of label<TAB>words lines';

function collect(v: string, acc: string[]): string[] {
  return [...acc, v];
}

/**
 * Data options; `multi` (train) makes --data and --label-words repeatable, as NAME=FILE for one
 * task each of a multi-task run.
 */
function addDataOptions(c: Command, multi = false): Command {
  const data = multi
    ? c.option('--data <file>', `${DATA_HELP}; repeat as --data NAME=FILE for multi-task training (task ids 0, 1, ... in the order given)`, collect, [] as string[])
    : c.option('--data <file>', `${DATA_HELP} (or --images for image data)`);
  const withData = data
    .option('--format <f>', 'jsonl, csv or tsv (default: from the file extension)')
    .option('--text-column <c>', 'CSV/TSV column with the text (name or index)')
    .option('--label-column <c>', 'CSV/TSV column with a label (classification as label words)')
    .option('--completion-column <c>', 'CSV/TSV column with a completion for the text column')
    .option('--no-header', 'CSV/TSV without a header line')
    .option('--no-quote', 'CSV/TSV: read quotes as plain text (files written without RFC 4180 quoting)')
    .option('--skip-bad-lines', 'skip (and count) malformed lines instead of stopping at the first')
    .option('--seq-len <n>', ranged('longest sequence in tokens', RANGES.seqLen, ", at most the model's context (the default is cut down to it)"), '256')
    .option('--no-truncate', 'fail on examples longer than --seq-len instead of cutting them (with a warning)')
    .option('--label-cue <text>', 'text between a classification input and its label', DEFAULT_LABEL_CUE);
  return multi
    ? withData.option('--label-words <file>', `${LABEL_WORDS_HELP}; with several tasks NAME=FILE for one task (repeatable), a plain FILE for every label task`, collect, [] as string[])
    : withData.option('--label-words <file>', LABEL_WORDS_HELP);
}

/** `NAME=FILE` split, or null for a plain file (an existing file is always a file, even with "=" in its name). */
function namedValue(option: string, v: string): { name: string; value: string } | null {
  const eq = v.indexOf('=');
  if (eq < 0 || existsSync(v)) return null;
  const name = v.slice(0, eq);
  // a path with "=" in a folder name is a file, not a task
  if (name.includes('/') || name.includes('\\')) return null;
  checkTaskName(name, `--${option} ${v}`);
  const value = v.slice(eq + 1);
  if (value === '') throw new AdaptkitError(`--${option} ${v}: no file after "${name}="`);
  return { name, value };
}

/** A task of `adaptkit train` before its data is read: where it comes from and how to read it. */
interface TaskSpec extends ManifestTask {
  /** The option that named it, for messages. */
  origin: string;
}

interface MultiTaskFlags {
  data?: string[];
  tasks?: string;
  valData?: string[];
  labelWords?: string[];
  taskSampling?: string;
  taskTemperature?: string;
  taskPrefix?: boolean;
}

/**
 * The tasks of a multi-task run (--data NAME=FILE repeated, or --tasks MANIFEST), or null for a
 * run on one plain --data FILE, which trains as it always did.
 */
function taskSpecs(o: MultiTaskFlags): TaskSpec[] | null {
  const data = o.data ?? [];
  const valData = o.valData ?? [];
  const labelWords = o.labelWords ?? [];
  if (o.tasks !== undefined && data.length) throw new AdaptkitError('give the data either as --data (FILE, or NAME=FILE per task) or as --tasks MANIFEST, not both');
  if (o.tasks === undefined && data.length === 0) throw new AdaptkitError('no data: give --data FILE (or --data NAME=FILE once per task) or --tasks MANIFEST');
  let specs: TaskSpec[];
  if (o.tasks !== undefined) {
    for (const [flag, v] of [['val-data', valData], ['label-words', labelWords]] as const) {
      if (v.length) throw new AdaptkitError(`--${flag} does not go with --tasks: set "${flag.replace('-', '_')}" on the task in ${o.tasks}`);
    }
    specs = readTaskManifest(o.tasks).map((t, i) => ({ ...t, origin: `--tasks ${o.tasks}: tasks[${i}]` }));
  } else {
    const named = data.map((d) => namedValue('data', d));
    if (named.every((n) => n === null) && data.length === 1) return null;
    const plain = data.find((_, i) => named[i] === null);
    if (plain !== undefined) throw new AdaptkitError(`--data ${plain}: with several data files each one names its task, as --data NAME=FILE`);
    specs = named.map((n) => ({ name: n!.name, data: n!.value, origin: `--data ${n!.name}=${n!.value}` }));
    checkUniqueNames(specs.map((t) => t.name), (i) => specs[i]!.origin);
    const byName = new Map(specs.map((t) => [t.name, t]));
    /** Values of a per-task option: NAME=FILE for one task; a plain FILE (where allowed) for every task, which a named one overrides. */
    const perTask = (flag: string, values: string[], key: 'valData' | 'labelWords', plainForAll: boolean) => {
      const named = new Set<string>();
      const split = values.map((v) => ({ v, n: namedValue(flag, v) }));
      const plains = split.filter((x) => x.n === null);
      if (plains.length && !plainForAll) throw new AdaptkitError(`--${flag} ${plains[0]!.v}: with several tasks, name the task it is for, as --${flag} NAME=FILE`);
      if (plains.length > 1) throw new AdaptkitError(`--${flag} is given for every task twice (${plains.map((x) => x.v).join(', ')})`);
      if (plains.length) for (const t of specs) t[key] = plains[0]!.v;
      for (const { v, n } of split) {
        if (n === null) continue;
        const t = byName.get(n.name);
        if (!t) throw new AdaptkitError(`--${flag} ${v}: no task is named "${n.name}" (tasks: ${specs.map((x) => x.name).join(', ')})`);
        if (named.has(n.name)) throw new AdaptkitError(`--${flag} ${v}: task "${n.name}" is given --${flag} twice`);
        named.add(n.name);
        t[key] = n.value;
      }
    };
    perTask('val-data', valData, 'valData', false);
    perTask('label-words', labelWords, 'labelWords', true);
  }
  return specs;
}

/** --task-sampling and --task-temperature (a temperature alone means temperature sampling). */
function taskSamplingOf(o: MultiTaskFlags): { sampling: TaskSampling; temperature?: number } {
  const given = o.taskSampling;
  if (given !== undefined && !TASK_SAMPLINGS.includes(given as TaskSampling)) throw new AdaptkitError(`--task-sampling must be ${TASK_SAMPLINGS.join(', ')}, got "${given}"`);
  const temperature = o.taskTemperature === undefined ? undefined : numberOption('task-temperature', o.taskTemperature, RANGES.taskTemperature);
  const sampling = (given ?? (temperature !== undefined ? 'temperature' : 'size')) as TaskSampling;
  if (temperature !== undefined && sampling !== 'temperature') throw new AdaptkitError(`--task-temperature applies to --task-sampling temperature, not ${sampling}`);
  return sampling === 'temperature' ? { sampling, temperature: temperature ?? DEFAULT_TASK_TEMPERATURE } : { sampling };
}

/** `--loss-average` as a config field (absent when not given, so earlier runs keep their settings). */
function lossAverage(v: unknown): { lossAverage?: LossAverage } {
  if (v === undefined) return {};
  if (!(LOSS_AVERAGES as readonly unknown[]).includes(v)) throw new AdaptkitError(`--loss-average must be ${LOSS_AVERAGES.join(' or ')}, got "${String(v)}"`);
  return { lossAverage: v as LossAverage };
}

/** The label map of --label-words, checked to cover every label of the data. */
function labelWordsFor(f: DataFlags, labels: readonly string[]): Map<string, string> | undefined {
  if (!f.labelWords) return undefined;
  const words = readLabelWords(f.labelWords);
  const missing = labels.filter((l) => !words.has(l));
  if (missing.length) throw new AdaptkitError(`--label-words ${f.labelWords} has no words for label(s) ${missing.slice(0, 5).join(', ')}${missing.length > 5 ? ` and ${missing.length - 5} more` : ''}`);
  return words;
}

function readData(f: DataFlags): DataRecord[] {
  if (f.format && !['jsonl', 'csv', 'tsv'].includes(f.format)) throw new AdaptkitError(`--format must be jsonl, csv or tsv, got "${f.format}"`);
  const ro: ReadOptions = {
    format: f.format as ReadOptions['format'], textColumn: f.textColumn, labelColumn: f.labelColumn,
    completionColumn: f.completionColumn, header: f.header !== false, quote: f.quote !== false, skipBadLines: f.skipBadLines,
  };
  const { records, skipped, skippedReasons } = readRecords(f.data, ro);
  if (skipped) process.stderr.write(`adaptkit: skipped ${skipped} bad line(s) of ${f.data}, e.g. ${skippedReasons[0]}\n`);
  return records;
}

function recordLabels(records: readonly DataRecord[]): string[] {
  return [...new Set(records.map((r) => (r.kind === 'label' ? r.label : null)).filter((l): l is string => l !== null))].sort();
}

function loadExamples(
  f: DataFlags, seqLen: number, tok: Parameters<typeof toExample>[1], chat: { template: string | null }, labelWords?: LabelWords, transform?: (r: DataRecord) => DataRecord,
): { examples: Example[]; labels: string[]; labelWords?: LabelWords } {
  const read = readData(f);
  const records = transform ? read.map(transform) : read;
  const words = labelWords ?? labelWordsFor(f, recordLabels(records));
  const ex = records.map((r) => toExample(r, tok, { labelCue: f.labelCue, labelWords: words, chatTemplate: chat.template }));
  const { examples, truncated } = fitExamples(ex, seqLen, f.truncate, f.data);
  if (truncated) process.stderr.write(`adaptkit: warning: ${truncated} example(s) longer than ${seqLen} tokens were truncated (--no-truncate makes this an error)\n`);
  const labels = [...new Set(examples.map((e) => e.label).filter((l): l is string => l !== undefined))].sort();
  return { examples, labels, labelWords: words };
}

interface TaskLoad {
  seqLen: number;
  tok: Parameters<typeof toExample>[1];
  chat: { template: string | null };
  /** --val-split, for a task without validation data of its own. */
  val: number;
  seed: number;
  prefix: boolean;
}

/**
 * One task's examples: its data read with its own format options (a manifest's, else the
 * command line's), its validation data or split, and its labels and label words.
 */
function loadTask(t: TaskSpec, o: DataFlags, l: TaskLoad): TaskData {
  const f: DataFlags = {
    ...o, data: t.data, format: t.format ?? o.format, textColumn: t.textColumn ?? o.textColumn, labelColumn: t.labelColumn ?? o.labelColumn,
    completionColumn: t.completionColumn ?? o.completionColumn, header: t.header ?? o.header, quote: t.quote ?? o.quote,
    labelCue: t.labelCue ?? o.labelCue, labelWords: t.labelWords,
  };
  const transform = l.prefix ? (r: DataRecord) => prefixRecord(r, t.name) : undefined;
  try {
    const all = loadExamples(f, l.seqLen, l.tok, l.chat, undefined, transform);
    const split = t.valData !== undefined
      ? { train: all.examples, validation: loadExamples({ ...f, data: t.valData }, l.seqLen, l.tok, l.chat, all.labelWords, transform).examples }
      : l.val > 0 ? splitExamples(all.examples, l.val, l.seed) : { train: all.examples, validation: [] };
    if (split.train.length === 0) throw new AdaptkitError('no training examples left after the validation split');
    const seen = new Set(split.train.map((e) => e.label));
    const unseen = all.labels.filter((x) => !seen.has(x));
    if (unseen.length) throw new AdaptkitError(`label(s) ${unseen.join(', ')} appear only in the validation split; add training examples for them`);
    return {
      name: t.name, train: split.train, validation: split.validation, data: t.data, valData: t.valData, weight: t.weight,
      ...(all.labels.length ? { labels: all.labels, labelWords: all.labelWords, labelCue: f.labelCue } : {}),
    };
  } catch (e) {
    if (e instanceof AdaptkitError) throw new AdaptkitError(`task "${t.name}" (${t.origin}): ${e.message}`);
    throw e;
  }
}

/**
 * The task `adaptkit eval` evaluates as: --task NAME (from tasks.json) or --task-id N (checked
 * against the adapter's task count where it is known); none when neither is given.
 */
function evalTask(o: { adapter?: string; task?: string; taskId?: string }): { task: TasksFileTask | null; taskId?: number; tasksFile: TasksFile | null } {
  const found = o.adapter ? readTasksFile(o.adapter) : null;
  const tasksFile = found?.file ?? null;
  if (o.task === undefined && o.taskId === undefined) return { task: null, tasksFile };
  if (o.task !== undefined && o.taskId !== undefined) throw new AdaptkitError('give --task NAME or --task-id N, not both');
  const flag = o.task !== undefined ? `--task ${o.task}` : `--task-id ${o.taskId}`;
  if (!o.adapter) throw new AdaptkitError(`${flag} picks a task of an adapter; give --adapter`);
  if (o.task !== undefined) {
    if (!found) throw new AdaptkitError(`--task ${o.task}: neither ${o.adapter} nor its run folder has a ${TASKS_FILE} to name tasks; give the task's id with --task-id`);
    const task = found.file.tasks.find((t) => t.name === o.task);
    if (!task) throw new AdaptkitError(`--task ${o.task}: no such task in ${found.path} (tasks: ${found.file.tasks.map((t) => t.name).join(', ')})`);
    return { task, taskId: task.id, tasksFile };
  }
  const id = numberOption('task-id', o.taskId!, RANGES.taskId);
  let count: number | undefined;
  let source = '';
  if (found) {
    count = found.file.tasks.length;
    source = `the tasks of ${found.path}`;
  } else {
    const n = readAdapterConfig(o.adapter).n_tasks;
    if (typeof n === 'number' && Number.isInteger(n) && n >= 1) {
      count = n;
      source = `n_tasks of ${join(o.adapter, 'adapter_config.json')}`;
    }
  }
  if (count !== undefined && id >= count) throw new AdaptkitError(`--task-id must be an integer in [0, ${count - 1}] (${source}), got "${o.taskId}"`);
  return { task: found?.file.tasks.find((t) => t.id === id) ?? null, taskId: id, tasksFile };
}

/** Rows of the classification head an adapter saves as modules_to_save, or null if it saves none. */
function savedHeadLabels(adapterDir: string, head: string | undefined): number | null {
  if (!head) return null;
  const f = new SafetensorsFile(adapterWeightsFile(adapterDir));
  try {
    const key = peftKey(head, 'weight');
    return f.keys().includes(key) ? f.info(key).shape[0]! : null;
  } finally {
    f.close();
  }
}

function readJsonObject(file: string): Record<string, unknown> {
  if (!existsSync(file)) throw new AdaptkitError(`--adapter-config ${file}: no such file`);
  let v: unknown;
  try {
    v = JSON.parse(readFileSync(file, 'utf8'));
  } catch (e) {
    throw new AdaptkitError(`--adapter-config ${file}: not valid JSON (${(e as Error).message})`);
  }
  if (v === null || typeof v !== 'object' || Array.isArray(v)) throw new AdaptkitError(`--adapter-config ${file}: must be a JSON object`);
  return v as Record<string, unknown>;
}

function camel(name: string): string {
  return name.replace(/-([a-z])/g, (_, c: string) => c.toUpperCase());
}

/** A method option's value from the command line, checked against its type and range. */
function optionValue(opt: MethodOption, v: unknown): PresetOptions[string] {
  if (v === undefined) return undefined;
  const s = String(v);
  if (opt.type === 'list') return s === 'all-linear' ? 'all-linear' : s.split(',').map((x) => x.trim()).filter(Boolean);
  if (opt.type === 'string') return s;
  return numberOption(opt.name, s, methodOptionRange(opt));
}

function methodOptionRange(opt: MethodOption): OptionRange {
  return { min: opt.min ?? -Infinity, max: opt.max ?? Infinity, integer: opt.type === 'int' };
}

/** `--method` help: every registered preset with its description. */
function methodHelp(): string {
  const presets = registeredMethods().flatMap((m) => (m.presets ?? []).map((p) => `${p.name} (${p.description})`));
  return `adapter method: ${presets.join('; ')}; or ${FULL_FINE_TUNING} (every weight); or any peft_type (${methodNames().join(', ')})`;
}

export function registerTrainCommands(program: Command): void {
  addDataOptions(program.command('train').description('train an adapter (or the whole model) and save it in PEFT format'), true)
    .option('--tasks <manifest>', 'multi-task training from a JSON manifest {"tasks": [{"name", "data", "val_data"?, "label_words"?, "label_cue"?, "weight"?, "format"?, "text_column"?, "label_column"?, "completion_column"?, "header"?, "quote"?}]} (paths relative to it; task ids 0, 1, ... in its order)')
    .option('--task-sampling <s>', `multi-task: how each batch row picks its task: ${TASK_SAMPLINGS.join(', ')} (p ∝ weight · n^(1/T); size is T=1, uniform T=∞; default size)`)
    .option('--task-temperature <T>', ranged(`multi-task: T of --task-sampling temperature (default ${DEFAULT_TASK_TEMPERATURE}; implies it)`, RANGES.taskTemperature))
    .option('--task-prefix', 'multi-task: begin every input with "<task name>: " (training and evaluation), so one shared adapter knows its task')
    .requiredOption('--model <path>', 'base model (HF folder, Hub id or llama2.c .bin)')
    .option('--tokenizer <path>', 'tokenizer (default: the model folder)')
    .option('--method <m>', methodHelp(), presetNames()[0])
    .option('--adapter-config <file>', 'a PEFT adapter_config.json to train with instead of the method options')
    .requiredOption('--out <dir>', 'run folder (checkpoints, metrics, curves, final adapter)')
    .option('--overwrite', 'replace a run already in --out (files adaptkit did not write there are kept)')
    .option('--resume', 'continue the run in --out from its last checkpoint, with the same settings (a new run if there is none)')
    .option('--steps <n>', ranged('optimizer steps', RANGES.steps), '100')
    .option('--batch-size <n>', ranged('examples per micro-batch', RANGES.batchSize), '16')
    .option('--grad-accum <n>', ranged('micro-batches per step', RANGES.gradAccum), '1')
    .option('--lr <x>', ranged('peak learning rate', RANGES.lr), '1e-3')
    .option('--schedule <s>', 'constant, linear or cosine', 'cosine')
    .option('--warmup <n>', 'linear warmup steps: an integer in [0, --steps]', '0')
    .option('--optimizer <o>', 'adamw or sgd', 'adamw')
    .option('--weight-decay <x>', ranged('decoupled weight decay (AdamW) or L2 (SGD)', RANGES.weightDecay), '0')
    .option('--momentum <x>', ranged('SGD momentum', RANGES.momentum), '0.9')
    .option('--max-grad-norm <x>', ranged('clip gradients to this global norm (0: off)', RANGES.maxGradNorm), '1')
    .option('--val-split <x>', `validation examples: ${VAL_SPLIT}`, '0.1')
    .option('--eval-every <n>', ranged('evaluate every N steps (0: at the end only)', RANGES.evalEvery), '0')
    .option('--early-stopping <n>', ranged('stop after N evaluations without improvement (0: never)', RANGES.earlyStopping), '0')
    .option('--checkpoint-every <n>', ranged('checkpoint every N steps (0: never; --resume needs checkpoints)', RANGES.checkpointEvery), '50')
    .option('--keep-checkpoints <n>', ranged('checkpoints to keep', RANGES.keepCheckpoints), '2')
    .option('--bucket', 'group examples of similar length into batches')
    .option('--pack', 'pack several examples into each row')
    .option('--loss-average <mode>', 'how a batch\'s loss averages its tokens: token (each counted token weighs the same; the default) or row (each row\'s mean, then the mean over rows, so a task whose target is a label word weighs as much per example as one of long texts)')
    .option('--stream', 'stream a JSONL file larger than memory (read in shuffled chunks; validation from --val-data)')
    .option('--val-data <file>', 'validation data file (with --stream); multi-task: NAME=FILE for one task (repeatable; the others split --val-split)', collect, [] as string[])
    .option('--gradient-checkpointing', 'recompute each block in backward to save memory on long sequences')
    .option('--quantize <format>', `${QUANTIZE_HELP}; adapters then train on the quantized base (QLoRA with nf4)`)
    .option('--seed <n>', ranged('seed for data order, initialization and dropout', RANGES.seed), '0')
    .option('--classification-head', `classify with a linear head on the last token's hidden state of a decoder (Llama family, GPT-2) instead of label words; the head trains as PEFT's modules_to_save "${DECODER_CLASSIFIER_HEAD}" with task_type SEQ_CLS`)
    .option('--json', 'JSON-lines metrics even on a terminal');
  const train = program.commands.find((c) => c.name() === 'train')!;
  addImageOptions(train);
  for (const opt of methodOptions()) {
    const ranges = opt.type === 'int' || opt.type === 'number';
    train.option(`--${opt.name} <${opt.type === 'list' ? 'list' : 'x'}>`, ranges && (opt.min !== undefined || opt.max !== undefined) ? ranged(opt.description, methodOptionRange(opt)) : opt.description);
  }
  train.action(async (o: Record<string, string | boolean | undefined> & DataFlags, cmd: Command) => {
      // every check that needs neither the model nor the data comes first, so a mistake fails at once
      lossAverage(o.lossAverage);
      const lists = o as unknown as { data: string[]; valData: string[]; labelWords: string[] };
      const mt: MultiTaskFlags = {
        data: lists.data, tasks: o.tasks as string | undefined, valData: lists.valData, labelWords: lists.labelWords,
        taskSampling: o.taskSampling as string | undefined, taskTemperature: o.taskTemperature as string | undefined, taskPrefix: !!o.taskPrefix,
      };
      // image data is one labelled set, never several tasks
      const specs = o.images !== undefined ? null : taskSpecs(mt);
      if (!specs) {
        // one plain data file: the run of a single task, as it always was
        for (const [flag, v] of [['task-sampling', o.taskSampling], ['task-temperature', o.taskTemperature], ['task-prefix', o.taskPrefix]] as const) {
          if (v !== undefined && v !== false) throw new AdaptkitError(`--${flag} is for multi-task training (--data NAME=FILE per task, or --tasks MANIFEST)`);
        }
        for (const [flag, v] of [['val-data', lists.valData], ['label-words', lists.labelWords]] as const) {
          if (v.length > 1) throw new AdaptkitError(`--${flag} is given ${v.length} times for one data file`);
          const n = v[0] === undefined ? null : namedValue(flag, v[0]);
          if (n) throw new AdaptkitError(`--${flag} ${v[0]} names a task, but --data ${lists.data[0]} is one unnamed file (name tasks as --data NAME=FILE)`);
        }
        o.data = lists.data[0]!;
        o.valData = lists.valData[0];
        o.labelWords = lists.labelWords[0];
      } else {
        if (o.stream) throw new AdaptkitError('--stream reads one file; multi-task training reads its tasks into memory');
        if (o.classificationHead) throw new AdaptkitError('--classification-head trains one head for one label set; multi-task training trains label words per task');
        if (o.bucket) throw new AdaptkitError('--bucket groups one dataset\'s batches by length; multi-task rows are drawn one by one, so it does not apply');
      }
      const sampling = specs ? taskSamplingOf(mt) : null;
      if (o.method !== FULL_FINE_TUNING) resolvePreset(String(o.method)); // an unknown name lists the registered ones
      const load = quantizeLoadOptions(o.quantize);
      if (load.quantize && o.method === FULL_FINE_TUNING) {
        throw new AdaptkitError(`--quantize ${load.quantize} keeps the linear weights packed and frozen, and --method ${FULL_FINE_TUNING} trains every weight; train an adapter on the quantized base instead (QLoRA: --method lora --quantize nf4)`);
      }
      if (!o.adapterConfig && o.method !== FULL_FINE_TUNING) {
        const { method } = resolvePreset(String(o.method));
        const own = new Set((method.options ?? []).map((x) => x.name));
        const foreign = methodOptions().filter((x) => o[camel(x.name)] !== undefined && !own.has(x.name)).map((x) => `--${x.name}`);
        if (foreign.length) throw new AdaptkitError(`${foreign.join(', ')} ${foreign.length === 1 ? 'does' : 'do'} not apply to --method ${o.method} (its options: ${[...own].map((n) => `--${n}`).join(', ') || 'none'})`);
      }
      const sched = String(o.schedule);
      if (!['constant', 'linear', 'cosine'].includes(sched)) throw new AdaptkitError(`--schedule must be constant, linear or cosine, got "${sched}"`);
      if (o.optimizer !== 'adamw' && o.optimizer !== 'sgd') throw new AdaptkitError(`--optimizer must be adamw or sgd, got "${o.optimizer}"`);
      const flag = (name: keyof typeof RANGES) => numberOption(kebab(name), String(o[name]), RANGES[name]);
      const steps = flag('steps');
      const numbers = {
        steps, batchSize: flag('batchSize'), gradAccum: flag('gradAccum'), lr: flag('lr'),
        warmupSteps: numberOption('warmup', String(o.warmup), { min: 0, max: steps, integer: true }),
        weightDecay: flag('weightDecay'), momentum: flag('momentum'), maxGradNorm: flag('maxGradNorm'), seed: flag('seed'),
        evalEvery: flag('evalEvery'), earlyStoppingPatience: flag('earlyStopping'),
        checkpointEvery: flag('checkpointEvery'), keepCheckpoints: flag('keepCheckpoints'),
      };
      const val = valSplit(String(o.valSplit));
      numberOption('seq-len', o.seqLen, RANGES.seqLen);
      const methodOpts: PresetOptions = {};
      for (const opt of methodOptions()) {
        const v = optionValue(opt, o[camel(opt.name)]);
        if (v !== undefined) methodOpts[opt.name] = v;
      }
      const adapterConfig = o.adapterConfig ? readJsonObject(String(o.adapterConfig)) : undefined;
      const outDir = String(o.out);
      expectFolder('out', outDir, 'a run is a folder for its checkpoints, metrics and adapter');
      checkRunDir({ outDir, resume: !!o.resume, overwrite: !!o.overwrite });
      const modelPath = await resolveModel(String(o.model));
      const loadedModel = loadAnyModel(modelPath, load);
      reportQuantization(loadedModel);
      const { model: loaded, config: rawConfig } = loadedModel;
      if (o.method === FULL_FINE_TUNING && isQuantized(loaded)) throw new AdaptkitError(`${modelPath} holds quantized linear layers, which are frozen; --method ${FULL_FINE_TUNING} trains every weight: train an adapter on it instead`);
      // an encoder with a classification head already has one; a decoder gets `score`
      const model = o.classificationHead && describeModel(loaded).task === 'causal-lm' ? new CausalLMForSequenceClassification(loaded as CausalModel, 2) : loaded;
      const classifier = describeModel(model).task === 'sequence-classification';
      if (o.images !== undefined) {
        return trainOnImages({
          model, modelPath, rawConfig, flags: o, val,
          config: { ...numbers, schedule: sched as ScheduleName, optimizer: o.optimizer as 'adamw' | 'sgd' },
          run: {
            method: String(o.method), methodOptions: methodOpts, adapterConfig, outDir, resume: !!o.resume, overwrite: !!o.overwrite, settingName: settingFlag,
            onNotice: (m: string) => process.stderr.write(`adaptkit: ${m}\n`), json: !!o.json, modelArg: String(o.model),
          },
        });
      }
      refuseTextData(model);
      if (classifier && specs) throw new AdaptkitError(`${modelPath} is a sequence classifier; multi-task training trains language-model tasks (label words for labels)`);
      if (classifier && o.labelWords) throw new AdaptkitError('--label-words is for label-word training; a classification head predicts label indices, not words');
      if (o.gradientCheckpointing && !classifier) (model as { gradientCheckpointing: boolean }).gradientCheckpointing = true;
      const seqLen = seqLenFor(model, o.seqLen, cmd.getOptionValueSource('seqLen') === 'cli');
      const tok = loadTokenizer(modelPath, o.tokenizer as string | undefined, model.config.vocabSize);
      const chat = { template: (tok as { chatTemplate?: string | null }).chatTemplate ?? null };
      const seed = numbers.seed;
      if (specs) {
        const tasks = specs.map((t) => loadTask(t, o, { seqLen, tok, chat, val, seed, prefix: !!o.taskPrefix }));
        const validationCount = tasks.reduce((n, t) => n + t.validation.length, 0);
        const config = {
          ...numbers, schedule: sched as ScheduleName, optimizer: o.optimizer as 'adamw' | 'sgd',
          evalEvery: numbers.evalEvery || (validationCount ? steps : 0), bucket: false, pack: !!o.pack, maxLen: seqLen, ...lossAverage(o.lossAverage),
        };
        const identity = {
          model: String(o.model), quantize: load.quantize, taskOrder: specs.map((t) => t.name),
          tasks: Object.fromEntries(specs.map(({ origin: _o, name, ...rest }) => [name, { ...rest, labelCue: rest.labelCue ?? o.labelCue }])),
          taskSampling: sampling!.sampling, taskTemperature: sampling!.temperature, taskPrefix: !!o.taskPrefix, valSplit: val,
          method: o.method, methodOptions: methodOpts, adapterConfig, config: { ...config },
        };
        const runOpts: RunOptions = {
          model, tokenizer: tok, method: String(o.method), methodOptions: methodOpts, adapterConfig, tasks, taskSampling: sampling!, taskPrefix: !!o.taskPrefix,
          outDir, config, resume: !!o.resume, overwrite: !!o.overwrite, progress: makeProgress(steps, { json: !!o.json }), identity, settingName: settingFlag,
          onNotice: (m: string) => process.stderr.write(`adaptkit: ${m}\n`),
        };
        const preset = o.method === FULL_FINE_TUNING || adapterConfig ? null : resolvePreset(String(o.method)).preset;
        const r = preset?.train ? preset.train(runOpts, runTraining, methodOpts) : runTraining(runOpts);
        process.stderr.write(`adaptkit: trained ${r.result.steps} steps on ${tasks.length} task(s) (${tasks.map((t, i) => `${i} ${t.name}`).join(', ')}; ids in ${join(outDir, TASKS_FILE)}) in ${r.result.seconds.toFixed(1)} s; adapter in ${r.adapterDir}, curves in ${join(outDir, 'curves.svg')}\n`);
        if (r.report.final_eval) process.stderr.write(`adaptkit: final evaluation ${JSON.stringify(r.report.final_eval)}\n`);
        return;
      }
      let examples: Example[];
      let labels: string[];
      let labelWords: LabelWords | undefined;
      let stream: StreamingExamples | null = null;
      if (o.stream) {
        if (classifier) throw new AdaptkitError('--stream is for language-model data, not classification heads');
        // a streamed file's labels are not known up front: a label missing from the map fails when read
        labelWords = o.labelWords ? readLabelWords(o.labelWords) : undefined;
        stream = new StreamingExamples(o.data, (r) => fitExamples([toExample(r, tok, { labelCue: o.labelCue, labelWords, chatTemplate: chat.template })], seqLen, true).examples[0]!, {
          seed, skipBadLines: o.skipBadLines,
        });
        examples = o.valData ? loadExamples({ ...o, data: String(o.valData) }, seqLen, tok, chat, labelWords).examples : [];
        labels = [];
      } else if (classifier) {
        // a model with a classification head: the text alone in, the label's index out
        const records = readData(o);
        labels = recordLabels(records);
        examples = classificationExamples(records, tok, labels, seqLen);
      } else {
        ({ examples, labels, labelWords } = loadExamples(o, seqLen, tok, chat));
      }
      const split = stream ? { train: [] as Example[], validation: examples } : val > 0 ? splitExamples(examples, val, seed) : { train: examples, validation: [] };
      const { validation } = split;
      const train = stream ?? split.train;
      if (!stream && split.train.length === 0) throw new AdaptkitError('no training examples left after the validation split');
      if (labels.length && !stream) {
        const seen = new Set(split.train.map((e) => e.label));
        const unseen = labels.filter((l) => !seen.has(l));
        if (unseen.length) throw new AdaptkitError(`label(s) ${unseen.join(', ')} appear only in the validation split; add training examples for them`);
      }
      const config = {
        ...numbers, schedule: sched as ScheduleName, optimizer: o.optimizer as 'adamw' | 'sgd',
        evalEvery: numbers.evalEvery || (validation.length ? steps : 0),
        bucket: !!o.bucket, pack: !!o.pack, maxLen: seqLen, ...lossAverage(o.lossAverage),
      };
      const identity = {
        model: String(o.model), quantize: load.quantize, data: o.data, method: o.method, methodOptions: methodOpts, adapterConfig, config: { ...config },
        labelWords: o.labelWords, classificationHead: o.classificationHead || undefined,
      };
      const runOpts = {
        model, tokenizer: tok, method: String(o.method), methodOptions: methodOpts, adapterConfig, train, validation, outDir,
        config, resume: !!o.resume, overwrite: !!o.overwrite, labels: labels.length ? labels : undefined, labelWords, labelCue: o.labelCue,
        progress: makeProgress(steps, { json: !!o.json }), identity, settingName: settingFlag,
        onNotice: (m: string) => process.stderr.write(`adaptkit: ${m}\n`),
      };
      // a method whose training is more than one run (LT-SFT's phases) runs it itself
      const preset = o.method === FULL_FINE_TUNING || adapterConfig ? null : resolvePreset(String(o.method)).preset;
      const r = preset?.train ? preset.train(runOpts, runTraining, methodOpts) : runTraining(runOpts);
      process.stderr.write(`adaptkit: trained ${r.result.steps} steps in ${r.result.seconds.toFixed(1)} s; adapter in ${r.adapterDir}, curves in ${join(outDir, 'curves.svg')}\n`);
      if (r.report.final_eval) process.stderr.write(`adaptkit: final evaluation ${JSON.stringify(r.report.final_eval)}\n`);
    });

  addImageOptions(addDataOptions(program.command('eval').description('loss / perplexity (and label accuracy) of a model with an optional adapter on a data file, or accuracy on images')))
    .requiredOption('--model <path>', 'base model')
    .option('--tokenizer <path>', 'tokenizer (default: the model folder)')
    .option('--adapter <dir>', 'PEFT adapter folder')
    .option('--batch-size <n>', ranged('examples per batch', RANGES.batchSize), '16')
    .option('--exact-match', 'also generate an answer for each prompt and compare its final number with the reference (math data)')
    .option('--max-new-tokens <n>', ranged('answer length for --exact-match', RANGES.maxNewTokens), '128')
    .option('--limit <n>', ranged('evaluate only the first N examples', RANGES.limit))
    .option('--task <name>', `evaluate as this task of a multi-task adapter: its task id, label words, cue and task prefix, from the ${TASKS_FILE} of the adapter folder or of its run folder`)
    .option('--task-id <n>', `route every row to task N (task-conditioned adapters): ${describeOptionRange(RANGES.taskId)} below the adapter's task count (from ${TASKS_FILE}, else its config's n_tasks)`)
    .option('--json', 'print JSON')
    .option('--quantize <format>', QUANTIZE_HELP)
    .action(async (o: DataFlags & ImageFlags & { model: string; tokenizer?: string; adapter?: string; batchSize: string; json?: boolean; exactMatch?: boolean; maxNewTokens: string; limit?: string; task?: string; taskId?: string; quantize?: string }, cmd: Command) => {
      const load = quantizeLoadOptions(o.quantize);
      if (o.data === undefined && o.images === undefined) throw new AdaptkitError('eval needs data: --data FILE (text) or --images SOURCE (images)');
      const limit = o.limit === undefined ? Infinity : numberOption('limit', o.limit, RANGES.limit);
      const batchSize = numberOption('batch-size', o.batchSize, RANGES.batchSize);
      const maxNewTokens = numberOption('max-new-tokens', o.maxNewTokens, RANGES.maxNewTokens);
      numberOption('seq-len', o.seqLen, RANGES.seqLen);
      if (o.adapter) expectFolder('adapter', o.adapter, 'an adapter is a folder with adapter_config.json and adapter_model.safetensors');
      const { task, taskId, tasksFile } = evalTask(o);
      if (tasksFile && taskId === undefined) {
        process.stderr.write(`adaptkit: ${o.adapter} was trained on tasks ${tasksFile.tasks.map((t) => `${t.id} ${t.name}`).join(', ')}; pass --task NAME to evaluate it as one of them\n`);
      }
      const modelPath = await resolveModel(o.model);
      const loadedModel = loadAnyModel(modelPath, load);
      reportQuantization(loadedModel);
      const { model: loaded } = loadedModel;
      if (o.images !== undefined) {
        const r: Record<string, number> = evalOnImages({ model: loaded, modelPath, adapter: o.adapter, flags: o as unknown as Record<string, unknown>, batchSize, limit, taskId });
        if (taskId !== undefined) r.task_id = taskId;
        if (o.json) console.log(JSON.stringify(r));
        else for (const [k, v] of Object.entries(r)) console.log(`${k}: ${v}`);
        return;
      }
      refuseTextData(loaded);
      const adapterConfig = o.adapter ? readAdapterConfig(o.adapter) : null;
      const saved = o.adapter ? readLabelsFile(o.adapter) : null;
      const savedLabels = saved ? labelsInOrder(saved) : null;
      // an adapter trained with a decoder classification head carries `score` as modules_to_save
      const headAdapter = adapterConfig?.task_type === 'SEQ_CLS' && Array.isArray(adapterConfig.modules_to_save) && adapterConfig.modules_to_save.includes(DECODER_CLASSIFIER_HEAD);
      const model = headAdapter && describeModel(loaded).task === 'causal-lm' ? new CausalLMForSequenceClassification(loaded as CausalModel, 2) : loaded;
      const seqLen = seqLenFor(model, o.seqLen, cmd.getOptionValueSource('seqLen') === 'cli');
      const tok = loadTokenizer(modelPath, o.tokenizer, model.config.vocabSize);
      const out: Record<string, number> = {};
      if (describeModel(model).task === 'sequence-classification') {
        const records = readData(o).slice(0, limit);
        const labels = savedLabels ?? recordLabels(records);
        const head = o.adapter ? savedHeadLabels(o.adapter, describeModel(model).classifierHead) : null;
        const have = head ?? (model.config as { numLabels?: number }).numLabels;
        if (have !== labels.length) {
          throw new AdaptkitError(`${o.adapter ?? modelPath}: the classification head has ${have} labels, the data ${labels.length}${o.adapter ? ` (${LABELS_FILE} in the adapter folder lists the head's labels in order)` : ''}`);
        }
        // the adapter's saved head replaces this one, which only has to have its shape
        if (head !== null) (model as unknown as { resizeClassifier(n: number): void }).resizeClassifier(head);
        const am = new AdapterModel(model);
        if (o.adapter) am.load(o.adapter);
        if (taskId !== undefined) am.tasks.ids = Int32Array.of(taskId);
        const examples = classificationExamples(records, tok, labels, seqLen);
        const r = classificationAccuracy(am as unknown as Classifier, examples, (tok as { padId?: number | null }).padId ?? 0, batchSize);
        Object.assign(out, { examples: examples.length, accuracy: r.accuracy, loss: r.loss });
      } else {
        const am = new AdapterModel(model);
        if (o.adapter) am.load(o.adapter);
        // generation (--exact-match) runs its own forwards: the routing stays set for them
        if (taskId !== undefined) am.tasks.ids = Int32Array.of(taskId);
        // the label map and cue the adapter (or its task) was trained with, unless given here
        const f: DataFlags = { ...o };
        const cue = task?.label_cue ?? saved?.label_cue;
        if (cue !== undefined && cmd.getOptionValueSource('labelCue') !== 'cli') f.labelCue = cue;
        const trainedWords = task?.label_words ?? saved?.label_words;
        const savedWords = !o.labelWords && trainedWords ? new Map(Object.entries(trainedWords)) : undefined;
        const prefix = task && tasksFile?.task_prefix ? (r: DataRecord) => prefixRecord(r, task.name) : undefined;
        const all = loadExamples(f, seqLen, tok, { template: (tok as { chatTemplate?: string | null }).chatTemplate ?? null }, savedWords, prefix);
        const examples = all.examples.slice(0, limit).map((e) => (taskId === undefined ? e : { ...e, task: taskId }));
        const trainedLabels = task?.labels ?? savedLabels;
        const labels = [...new Set([...(trainedLabels ?? []), ...examples.map((e) => e.label).filter((l): l is string => l !== undefined)])];
        const pad = tok.eosId ?? 0;
        const l = evaluateLoss(am, examples, pad, batchSize);
        Object.assign(out, { examples: examples.length, loss: l.loss, perplexity: l.perplexity, tokens: l.tokens });
        if (labels.length > 1) {
          const words = all.labelWords;
          const make = (label: string) => toExample({ kind: 'label', text: '', label }, tok, { labelCue: f.labelCue, labelWords: words }).completion;
          out.accuracy = labelAccuracy(am, examples, labelSequences(examples, labels, make), pad).accuracy;
        }
        if (o.exactMatch) {
          const items = readRecords(o.data, { format: o.format as ReadOptions['format'], skipBadLines: o.skipBadLines }).records.map((r) => prefix?.(r) ?? r)
            .filter((r): r is Extract<typeof r, { kind: 'completion' }> => r.kind === 'completion').slice(0, limit)
            .map((r) => ({ prompt: r.prompt, answer: r.completion }));
          out.exact_match = exactMatch(am, tok, items, maxNewTokens);
        }
      }
      if (taskId !== undefined) out.task_id = taskId;
      if (o.json) console.log(JSON.stringify(task ? { ...out, task: task.name } : out));
      else for (const [k, v] of Object.entries(task ? { ...out, task: task.name } : out)) console.log(`${k}: ${v}`);
    });

  program
    .command('plot')
    .description('render the loss and metric curves of a run folder to an SVG')
    .argument('<run-dir>', 'a folder written by adaptkit train')
    .option('--out <file>', 'SVG file (default: RUN_DIR/curves.svg)')
    .action((dir: string, o: { out?: string }) => {
      const m = join(dir, 'metrics.jsonl');
      if (!existsSync(m)) throw new AdaptkitError(`${dir}: no metrics.jsonl (is it a run folder?)`);
      const out = o.out ?? join(dir, 'curves.svg');
      writeFileAtomic(out, Buffer.from(plotMetrics(m, dir)));
      console.log(`wrote ${out}`);
    });

  program
    .command('demo')
    .description('adapt the stories260K model to SMS spam (default) or GSM8K and show the gain')
    .argument('[task]', 'sms or gsm8k', 'sms')
    .option('--data-dir <dir>', 'offline data folder (default $ADAPTKIT_DATA or ../shared/data)')
    .option('--out <dir>', 'run folder', '')
    .option('--steps <n>', ranged('training steps', RANGES.steps, ' (default 150 for sms, 80 for gsm8k)'))
    .option('--seed <n>', ranged('seed', RANGES.seed), '0')
    .option('--json', 'JSON-lines progress and a final JSON line')
    .option('--quantize <format>', `${QUANTIZE_HELP}; the LoRA then trains on the quantized base (QLoRA with nf4)`)
    .action(async (task: string, o: { dataDir?: string; out: string; steps?: string; seed: string; json?: boolean; quantize?: string }) => {
      if (task !== 'sms' && task !== 'gsm8k') throw new AdaptkitError(`demo task must be sms or gsm8k, got "${task}"`);
      const { quantize } = quantizeLoadOptions(o.quantize);
      const steps = o.steps === undefined ? (task === 'sms' ? 150 : 80) : numberOption('steps', o.steps, RANGES.steps);
      const seed = numberOption('seed', o.seed, RANGES.seed);
      const out = o.out || join('runs', `demo-${task}`);
      expectFolder('out', out, 'the demo writes its run (checkpoints, metrics, adapter) into a folder');
      const modelDir = await demoModelDir(dataDir(o.dataDir));
      const r = runDemo({ task: task as DemoTask, dataDir: o.dataDir, modelDir, outDir: out, steps, seed, quantize, progress: makeProgress(steps, { json: !!o.json }) });
      if (o.json) {
        console.log(JSON.stringify({ task: r.task, before: r.before, after: r.after, seconds: r.seconds, adapter_dir: r.adapter_dir }));
        return;
      }
      const fmt = (v: number) => (r.metric === 'accuracy' ? v.toFixed(3) : `${v.toFixed(3)} nats/token`);
      console.log(`\n${task === 'sms' ? 'SMS spam, 1,000 held-out messages' : 'GSM8K, held-out questions'} (stories260K${quantize ? ` quantized to ${quantize}` : ''} + LoRA r=8, ${steps} steps)`);
      console.log(`  ${r.metric.padEnd(14)} before  ${fmt(r.before)}`);
      console.log(`  ${''.padEnd(14)} after   ${fmt(r.after)}`);
      console.log(`  time ${r.seconds.toFixed(1)} s; adapter: ${r.adapter_dir}; curves: ${join(out, 'curves.svg')}`);
    });
}
