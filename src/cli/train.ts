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
import { evaluateLoss, exactMatch, labelAccuracy } from '../train/evaluate.js';
import { plotMetrics } from '../train/plot.js';
import { makeProgress } from '../train/progress.js';
import { FULL_FINE_TUNING, LABELS_FILE, checkRunDir, labelSequences, labelsInOrder, notAFolder, readLabelsFile, runTraining } from '../train/run.js';
import { type DemoTask, demoModelDir, runDemo } from '../train/demo.js';
import { dataDir } from '../io/data.js';
import type { ScheduleName } from '../train/schedule.js';
import { SAMPLING_RANGES } from '../models/sampling-rules.js';
import { resolveModel } from './models.js';
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

function addDataOptions(c: Command): Command {
  return c
    .requiredOption('--data <file>', 'JSONL ({"prompt","completion"}, {"messages"}, {"text"}, {"text","label"}, {"question","answer"}) or CSV/TSV')
    .option('--format <f>', 'jsonl, csv or tsv (default: from the file extension)')
    .option('--text-column <c>', 'CSV/TSV column with the text (name or index)')
    .option('--label-column <c>', 'CSV/TSV column with a label (classification as label words)')
    .option('--completion-column <c>', 'CSV/TSV column with a completion for the text column')
    .option('--no-header', 'CSV/TSV without a header line')
    .option('--no-quote', 'CSV/TSV: read quotes as plain text (files written without RFC 4180 quoting)')
    .option('--skip-bad-lines', 'skip (and count) malformed lines instead of stopping at the first')
    .option('--seq-len <n>', ranged('longest sequence in tokens', RANGES.seqLen, ", at most the model's context (the default is cut down to it)"), '256')
    .option('--no-truncate', 'fail on examples longer than --seq-len instead of cutting them (with a warning)')
    .option('--label-cue <text>', 'text between a classification input and its label', DEFAULT_LABEL_CUE)
    .option('--label-words <file>', 'label map: train on (and score) these words instead of the label names; a JSON object {"label": "words"} or a TSV of label<TAB>words lines');
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
  f: DataFlags, seqLen: number, tok: Parameters<typeof toExample>[1], chat: { template: string | null }, labelWords?: LabelWords,
): { examples: Example[]; labels: string[]; labelWords?: LabelWords } {
  const records = readData(f);
  const words = labelWords ?? labelWordsFor(f, recordLabels(records));
  const ex = records.map((r) => toExample(r, tok, { labelCue: f.labelCue, labelWords: words, chatTemplate: chat.template }));
  const { examples, truncated } = fitExamples(ex, seqLen, f.truncate, f.data);
  if (truncated) process.stderr.write(`adaptkit: warning: ${truncated} example(s) longer than ${seqLen} tokens were truncated (--no-truncate makes this an error)\n`);
  const labels = [...new Set(examples.map((e) => e.label).filter((l): l is string => l !== undefined))].sort();
  return { examples, labels, labelWords: words };
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
  addDataOptions(program.command('train').description('train an adapter (or the whole model) and save it in PEFT format'))
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
    .option('--stream', 'stream a JSONL file larger than memory (read in shuffled chunks; validation from --val-data)')
    .option('--val-data <file>', 'validation data file (with --stream)')
    .option('--gradient-checkpointing', 'recompute each block in backward to save memory on long sequences')
    .option('--seed <n>', ranged('seed for data order, initialization and dropout', RANGES.seed), '0')
    .option('--classification-head', `classify with a linear head on the last token's hidden state of a decoder (Llama family, GPT-2) instead of label words; the head trains as PEFT's modules_to_save "${DECODER_CLASSIFIER_HEAD}" with task_type SEQ_CLS`)
    .option('--json', 'JSON-lines metrics even on a terminal');
  const train = program.commands.find((c) => c.name() === 'train')!;
  for (const opt of methodOptions()) {
    const ranges = opt.type === 'int' || opt.type === 'number';
    train.option(`--${opt.name} <${opt.type === 'list' ? 'list' : 'x'}>`, ranges && (opt.min !== undefined || opt.max !== undefined) ? ranged(opt.description, methodOptionRange(opt)) : opt.description);
  }
  train.action(async (o: Record<string, string | boolean | undefined> & DataFlags, cmd: Command) => {
      // every check that needs neither the model nor the data comes first, so a mistake fails at once
      if (o.method !== FULL_FINE_TUNING) resolvePreset(String(o.method)); // an unknown name lists the registered ones
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
      const { model: loaded } = loadAnyModel(modelPath);
      // an encoder with a classification head already has one; a decoder gets `score`
      const model = o.classificationHead && describeModel(loaded).task === 'causal-lm' ? new CausalLMForSequenceClassification(loaded as CausalModel, 2) : loaded;
      const classifier = describeModel(model).task === 'sequence-classification';
      if (classifier && o.labelWords) throw new AdaptkitError('--label-words is for label-word training; a classification head predicts label indices, not words');
      if (o.gradientCheckpointing && !classifier) (model as { gradientCheckpointing: boolean }).gradientCheckpointing = true;
      const seqLen = seqLenFor(model, o.seqLen, cmd.getOptionValueSource('seqLen') === 'cli');
      const tok = loadTokenizer(modelPath, o.tokenizer as string | undefined, model.config.vocabSize);
      const chat = { template: (tok as { chatTemplate?: string | null }).chatTemplate ?? null };
      let examples: Example[];
      let labels: string[];
      let labelWords: LabelWords | undefined;
      let stream: StreamingExamples | null = null;
      const seed = numbers.seed;
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
        bucket: !!o.bucket, pack: !!o.pack, maxLen: seqLen,
      };
      const identity = {
        model: String(o.model), data: o.data, method: o.method, methodOptions: methodOpts, adapterConfig, config: { ...config },
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

  addDataOptions(program.command('eval').description('loss / perplexity (and label accuracy) of a model with an optional adapter on a data file'))
    .requiredOption('--model <path>', 'base model')
    .option('--tokenizer <path>', 'tokenizer (default: the model folder)')
    .option('--adapter <dir>', 'PEFT adapter folder')
    .option('--batch-size <n>', ranged('examples per batch', RANGES.batchSize), '16')
    .option('--exact-match', 'also generate an answer for each prompt and compare its final number with the reference (math data)')
    .option('--max-new-tokens <n>', ranged('answer length for --exact-match', RANGES.maxNewTokens), '128')
    .option('--limit <n>', ranged('evaluate only the first N examples', RANGES.limit))
    .option('--json', 'print JSON')
    .action(async (o: DataFlags & { model: string; tokenizer?: string; adapter?: string; batchSize: string; json?: boolean; exactMatch?: boolean; maxNewTokens: string; limit?: string }, cmd: Command) => {
      const limit = o.limit === undefined ? Infinity : numberOption('limit', o.limit, RANGES.limit);
      const batchSize = numberOption('batch-size', o.batchSize, RANGES.batchSize);
      const maxNewTokens = numberOption('max-new-tokens', o.maxNewTokens, RANGES.maxNewTokens);
      numberOption('seq-len', o.seqLen, RANGES.seqLen);
      if (o.adapter) expectFolder('adapter', o.adapter, 'an adapter is a folder with adapter_config.json and adapter_model.safetensors');
      const modelPath = await resolveModel(o.model);
      const { model: loaded } = loadAnyModel(modelPath);
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
        const examples = classificationExamples(records, tok, labels, seqLen);
        const r = classificationAccuracy(am as unknown as Classifier, examples, (tok as { padId?: number | null }).padId ?? 0, batchSize);
        Object.assign(out, { examples: examples.length, accuracy: r.accuracy, loss: r.loss });
      } else {
        const am = new AdapterModel(model);
        if (o.adapter) am.load(o.adapter);
        // the label map and cue the adapter was trained with, unless given here
        const f: DataFlags = { ...o };
        if (saved?.label_cue !== undefined && cmd.getOptionValueSource('labelCue') !== 'cli') f.labelCue = saved.label_cue;
        const savedWords = !o.labelWords && saved?.label_words ? new Map(Object.entries(saved.label_words)) : undefined;
        const all = loadExamples(f, seqLen, tok, { template: (tok as { chatTemplate?: string | null }).chatTemplate ?? null }, savedWords);
        const examples = all.examples.slice(0, limit);
        const labels = [...new Set([...(savedLabels ?? []), ...examples.map((e) => e.label).filter((l): l is string => l !== undefined)])];
        const pad = tok.eosId ?? 0;
        const l = evaluateLoss(am, examples, pad, batchSize);
        Object.assign(out, { examples: examples.length, loss: l.loss, perplexity: l.perplexity, tokens: l.tokens });
        if (labels.length > 1) {
          const words = all.labelWords;
          const make = (label: string) => toExample({ kind: 'label', text: '', label }, tok, { labelCue: f.labelCue, labelWords: words }).completion;
          out.accuracy = labelAccuracy(am, examples, labelSequences(examples, labels, make), pad).accuracy;
        }
        if (o.exactMatch) {
          const items = readRecords(o.data, { format: o.format as ReadOptions['format'], skipBadLines: o.skipBadLines }).records
            .filter((r): r is Extract<typeof r, { kind: 'completion' }> => r.kind === 'completion').slice(0, limit)
            .map((r) => ({ prompt: r.prompt, answer: r.completion }));
          out.exact_match = exactMatch(am, tok, items, maxNewTokens);
        }
      }
      if (o.json) console.log(JSON.stringify(out));
      else for (const [k, v] of Object.entries(out)) console.log(`${k}: ${v}`);
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
    .action(async (task: string, o: { dataDir?: string; out: string; steps?: string; seed: string; json?: boolean }) => {
      if (task !== 'sms' && task !== 'gsm8k') throw new AdaptkitError(`demo task must be sms or gsm8k, got "${task}"`);
      const steps = o.steps === undefined ? (task === 'sms' ? 150 : 80) : numberOption('steps', o.steps, RANGES.steps);
      const seed = numberOption('seed', o.seed, RANGES.seed);
      const out = o.out || join('runs', `demo-${task}`);
      expectFolder('out', out, 'the demo writes its run (checkpoints, metrics, adapter) into a folder');
      const modelDir = await demoModelDir(dataDir(o.dataDir));
      const r = runDemo({ task: task as DemoTask, dataDir: o.dataDir, modelDir, outDir: out, steps, seed, progress: makeProgress(steps, { json: !!o.json }) });
      if (o.json) {
        console.log(JSON.stringify({ task: r.task, before: r.before, after: r.after, seconds: r.seconds, adapter_dir: r.adapter_dir }));
        return;
      }
      const fmt = (v: number) => (r.metric === 'accuracy' ? v.toFixed(3) : `${v.toFixed(3)} nats/token`);
      console.log(`\n${task === 'sms' ? 'SMS spam, 1,000 held-out messages' : 'GSM8K, held-out questions'} (stories260K + LoRA r=8, ${steps} steps)`);
      console.log(`  ${r.metric.padEnd(14)} before  ${fmt(r.before)}`);
      console.log(`  ${''.padEnd(14)} after   ${fmt(r.after)}`);
      console.log(`  time ${r.seconds.toFixed(1)} s; adapter: ${r.adapter_dir}; curves: ${join(out, 'curves.svg')}`);
    });
}
