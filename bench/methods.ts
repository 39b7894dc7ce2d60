/**
 * Adapter methods side by side on stories260K: every method config trains on every task with
 * several seeds, and each run reports held-out quality next to what it cost (trainable
 * parameters, bytes of the saved adapter folder, train tokens/s, peak RSS, inference tokens/s).
 * One JSON object per (method, task, seed), one summary per (method, task), then a Markdown table.
 *
 * Each run is its own child process: its peak RSS is its own, and nothing (RNG state, adapter
 * modules, allocator pools) carries from one run into the next. Each task's data split is fixed
 * (split seed 0, independent of the run seed) and written once to a file the runs read, so every
 * run of a task trains and is scored on the same examples. The untrained base model is measured
 * in the same invocation as the baseline of every task.
 *
 * Methods come from the registry (a preset name with options) or as raw PEFT configs, so a method
 * added by `--plugin` runs here unchanged: the plugin modules are imported in every run.
 */
import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  AdaptkitError, type Tensor, concat, expand, getBackend, narrow, nativeBackend, noGrad, setBackend, tensor, tidy,
  type BackendName,
} from '../src/index.js';
import { AdapterModel, type PresetOptions, resolvePreset } from '../src/adapters/index.js';
import { dataDir } from '../src/io/data.js';
import { loadedPlugins } from '../src/io/plugins.js';
import { loadModel, loadTokenizer } from '../src/models/load.js';
import { describeMachine } from './machine.js';
import { generate } from '../src/models/generate.js';
import type { Tokenizer } from '../src/models/tokenizer.js';
import { describeModel, type Module } from '../src/nn/index.js';
import { type DataRecord, readRecords } from '../src/train/data.js';
import { demoModelDir } from '../src/train/demo.js';
import { evaluateLoss, labelAccuracy } from '../src/train/evaluate.js';
import { type Example, fitExamples, shuffleInPlace, toExample } from '../src/train/examples.js';
import { labelFirstTokens, runTraining } from '../src/train/run.js';
import { prefixRecord } from '../src/train/multitask.js';

// ---------------------------------------------------------------------------------------------
// Method configs

/** One row of the comparison: a registry method with options, or a raw PEFT config. */
export interface MethodEntry {
  /** The row's name in the output. */
  name: string;
  /** A preset or peft_type from the method registry (default: `name`). */
  method?: string;
  /** The preset's options (`r`, `alpha`, `targets`, `virtual-tokens`, `reduction-factor`, ...). */
  options?: PresetOptions;
  /** A PEFT adapter config to train as is (then `method` and `options` are not read). */
  config?: Record<string, unknown>;
  /**
   * The name of another entry whose trainable-parameter count this one matches: its rank option
   * `r` is set to the value whose count is nearest (at least 1). Counts come from instantiating
   * the configs on the model, so any method that reads `r` can be matched to any other method.
   */
  match_params_of?: string;
  /** Peak learning rate (default 5e-3). */
  lr?: number;
}

/**
 * The reference rows. Learning rates are one fixed value per method for every task, chosen on
 * SMS spam in a short probe (docs/methods.md), not tuned per task.
 */
export const DEFAULT_METHODS: readonly MethodEntry[] = [
  { name: 'lora', method: 'lora', options: { r: 8 }, lr: 5e-3 },
  { name: 'ia3', method: 'ia3', lr: 3e-2 },
  { name: 'bottleneck', method: 'bottleneck', lr: 1e-2 },
  { name: 'prompt', method: 'prompt', lr: 1e-1 },
];

const DEFAULT_LR = 5e-3;

/** A method entry resolved to the PEFT config every seed of it trains. */
export interface ResolvedMethod {
  name: string;
  config: Record<string, unknown>;
  lr: number;
  /** Trainable parameters of the config on the benchmark model (counted by instantiating it). */
  parameters: number;
  matched?: { to: string; target_parameters: number; r: number };
}

/** Entries from `--methods` names: a default entry by its name, else a registry preset with its defaults. */
export function methodEntries(names: readonly string[]): MethodEntry[] {
  return names.map((n) => DEFAULT_METHODS.find((e) => e.name === n) ?? { name: n, method: n });
}

/** Entries of a `--configs` file: a JSON list of entries, or `{"methods": [...]}`. */
export function readMethodEntries(file: string): MethodEntry[] {
  let parsed: unknown;
  try {
    parsed = JSON.parse(readFileSync(file, 'utf8'));
  } catch (e) {
    throw new AdaptkitError(`${file}: ${(e as Error).message}`);
  }
  const list = Array.isArray(parsed) ? parsed : (parsed as { methods?: unknown } | null)?.methods;
  if (!Array.isArray(list)) throw new AdaptkitError(`${file}: expected a JSON list of method entries (or {"methods": [...]})`);
  return list.map((e, i) => {
    const o = e as MethodEntry;
    if (!o || typeof o !== 'object' || typeof o.name !== 'string' || !o.name) throw new AdaptkitError(`${file}: entry ${i + 1} needs a "name"`);
    if (o.config !== undefined && (typeof o.config !== 'object' || o.config === null || Array.isArray(o.config))) throw new AdaptkitError(`${file}: entry "${o.name}": "config" must be a PEFT config object`);
    if (o.lr !== undefined && !(typeof o.lr === 'number' && o.lr > 0)) throw new AdaptkitError(`${file}: entry "${o.name}": "lr" must be a positive number`);
    return o;
  });
}

function countTrainable(model: Module, config: Record<string, unknown>): number {
  const am = new AdapterModel(model);
  const name = 'count';
  am.add(name, config, { seed: 0 });
  try {
    return am.numTrainable(name);
  } finally {
    am.delete(name);
  }
}

function entryConfig(e: MethodEntry, model: Module, options: PresetOptions = e.options ?? {}): Record<string, unknown> {
  if (e.config) return e.config;
  return resolvePreset(e.method ?? e.name).preset.config(options, describeModel(model));
}

/** PEFT configs, parameter counts and matched ranks of the entries on a model. */
export function resolveMethods(entries: readonly MethodEntry[], model: Module): ResolvedMethod[] {
  const names = new Set<string>();
  for (const e of entries) {
    if (names.has(e.name)) throw new AdaptkitError(`method "${e.name}" is listed twice; give each entry its own name`);
    names.add(e.name);
  }
  const out = new Map<string, ResolvedMethod>();
  const resolving = new Set<string>();
  const resolve = (e: MethodEntry): ResolvedMethod => {
    const done = out.get(e.name);
    if (done) return done;
    if (resolving.has(e.name)) throw new AdaptkitError(`method "${e.name}": match_params_of forms a cycle`);
    resolving.add(e.name);
    let r: ResolvedMethod;
    if (e.match_params_of !== undefined) {
      const other = entries.find((x) => x.name === e.match_params_of);
      if (!other) throw new AdaptkitError(`method "${e.name}": match_params_of names "${e.match_params_of}", which is not in the list (${entries.map((x) => x.name).join(', ')})`);
      if (e.config) throw new AdaptkitError(`method "${e.name}": match_params_of sets the rank option r of a preset; it cannot change a raw config`);
      const target = resolve(other).parameters;
      // parameter counts are affine in the rank (a + b·r), so two counts give the nearest rank
      const at = (rank: number) => countTrainable(model, entryConfig(e, model, { ...e.options, r: rank }));
      const one = at(1);
      const slope = at(2) - one;
      if (slope <= 0) throw new AdaptkitError(`method "${e.name}": its parameter count does not grow with the option r, so it cannot be matched to "${other.name}"`);
      const rank = Math.max(1, Math.round((target - one) / slope) + 1);
      const config = entryConfig(e, model, { ...e.options, r: rank });
      r = { name: e.name, config, lr: e.lr ?? DEFAULT_LR, parameters: countTrainable(model, config), matched: { to: other.name, target_parameters: target, r: rank } };
    } else {
      const config = entryConfig(e, model);
      r = { name: e.name, config, lr: e.lr ?? DEFAULT_LR, parameters: countTrainable(model, config) };
    }
    resolving.delete(e.name);
    out.set(e.name, r);
    return r;
  };
  return entries.map(resolve);
}

// ---------------------------------------------------------------------------------------------
// Tasks

export const TASK_NAMES = ['sms', 'agnews', 'banking77', 'gsm8k'] as const;
export type TaskName = (typeof TASK_NAMES)[number];

type Scoring = 'first-token' | 'label-sequence' | 'nll';

export interface TaskDef {
  metric: 'accuracy' | 'nll_per_token';
  scoring: Scoring;
  inference: 'scoring' | 'greedy-decode';
  /** Default training steps (batch 16). */
  steps: number;
  /** Size of the held-out pool; `heldOut` evaluates on its first N. */
  heldOut: number;
  maxLen: number;
  /** What the split is, in words, for the JSON lines and the docs. */
  split: string;
  /**
   * The fixed split as token examples; `prefix` (the shared multi-task adapter's task prompt)
   * goes before every input.
   */
  load(root: string, tok: Tokenizer, heldOut: number, prefix?: string): { train: Example[]; heldOut: Example[]; labels?: string[]; files: string[] };
}

/** The split seed: fixed, so that every method and run seed sees the same examples. */
export const SPLIT_SEED = 0;


function labelExamples(records: DataRecord[], tok: Tokenizer, cue: string, maxLen: number, file: string, prefix?: string): Example[] {
  return fitExamples(records.map((r) => toExample(prefix === undefined ? r : prefixRecord(r, prefix), tok, { labelCue: cue })), maxLen, true, file).examples;
}

function relabel(records: DataRecord[], f: (label: string) => string): DataRecord[] {
  return records.map((r) => (r.kind === 'label' ? { ...r, label: f(r.label) } : r));
}

/** AG News classes 1-4 as lower-case words, which differ in their first token for tok512. */
const AG_NEWS_WORDS: Record<string, string> = { 1: 'world', 2: 'sports', 3: 'business', 4: 'tech' };

export const TASKS: Record<TaskName, TaskDef> = {
  sms: {
    metric: 'accuracy', scoring: 'first-token', inference: 'scoring', steps: 60, heldOut: 1000, maxLen: 64,
    split: 'the demo\'s: SMSSpamCollection shuffled with seed 0, the first 1,000 messages held out, the other 4,574 for training',
    load(root, tok, heldOut, prefix) {
      const file = join(root, 'datasets', 'sms_spam', 'SMSSpamCollection');
      const { records } = readRecords(file, { format: 'tsv', quote: false, textColumn: 'SMS', labelColumn: 'Label' });
      const all = shuffleInPlace(records.slice(), SPLIT_SEED);
      const make = (rs: DataRecord[]) => labelExamples(rs, tok, '\nSpam or ham?', this.maxLen, file, prefix);
      return { train: make(all.slice(this.heldOut)), heldOut: make(all.slice(0, Math.min(heldOut, this.heldOut))), labels: ['ham', 'spam'], files: [file] };
    },
  },
  agnews: {
    metric: 'accuracy', scoring: 'first-token', inference: 'scoring', steps: 50, heldOut: 1000, maxLen: 64,
    split: 'AG News test.csv (the only split present) shuffled with seed 0: the first 1,000 rows held out, the other 6,600 for training; text = description, label 1-4 as world/sports/business/tech',
    load(root, tok, heldOut, prefix) {
      const file = join(root, 'datasets', 'ag_news_test', 'test.csv');
      const { records } = readRecords(file, { format: 'csv', textColumn: 'description', labelColumn: 'label' });
      const all = shuffleInPlace(relabel(records, (l) => {
        const w = AG_NEWS_WORDS[l];
        if (!w) throw new AdaptkitError(`${file}: label "${l}" is not an AG News class (1-4)`);
        return w;
      }), SPLIT_SEED);
      const make = (rs: DataRecord[]) => labelExamples(rs, tok, '\nTopic:', this.maxLen, file, prefix);
      return { train: make(all.slice(this.heldOut)), heldOut: make(all.slice(0, Math.min(heldOut, this.heldOut))), labels: Object.values(AG_NEWS_WORDS), files: [file] };
    },
  },
  banking77: {
    metric: 'accuracy', scoring: 'label-sequence', inference: 'scoring', steps: 50, heldOut: 200, maxLen: 80,
    split: 'BANKING77 train.tsv (9,003 texts) for training; test.tsv shuffled with seed 0, its first 200 texts held out (each is scored against all 77 label sequences); dev.tsv unused; labels with "_" read as spaces',
    load(root, tok, heldOut, prefix) {
      const dir = join(root, 'datasets', 'banking77');
      const read = (f: string) => relabel(readRecords(join(dir, f), { format: 'tsv', textColumn: 'text', labelColumn: 'label' }).records, (l) => l.replace(/_/g, ' '));
      const train = shuffleInPlace(read('train.tsv'), SPLIT_SEED);
      const test = shuffleInPlace(read('test.tsv'), SPLIT_SEED).slice(0, Math.min(heldOut, this.heldOut));
      const labels = [...new Set(train.map((r) => (r as { label: string }).label))].sort();
      return {
        train: labelExamples(train, tok, '\nIntent:', this.maxLen, join(dir, 'train.tsv'), prefix),
        heldOut: labelExamples(test, tok, '\nIntent:', this.maxLen, join(dir, 'test.tsv'), prefix),
        labels, files: [join(dir, 'train.tsv'), join(dir, 'test.tsv')],
      };
    },
  },
  gsm8k: {
    metric: 'nll_per_token', scoring: 'nll', inference: 'greedy-decode', steps: 40, heldOut: 300, maxLen: 96,
    split: 'the demo\'s: GSM8K train.jsonl questions (shuffled with seed 0) for training; the first 300 questions of test.jsonl held out',
    load(root, tok, heldOut, prefix) {
      const q = (f: string) => readRecords(join(root, 'datasets', 'gsm8k', f), { format: 'jsonl' }).records
        .flatMap((r) => (r.kind === 'completion' ? [r.prompt.trimEnd()] : []));
      const make = (qs: string[]) => fitExamples(qs.map((text) => toExample(prefix === undefined ? { kind: 'text', text } : prefixRecord({ kind: 'text', text }, prefix), tok)), this.maxLen, true).examples;
      return {
        train: make(shuffleInPlace(q('train.jsonl'), SPLIT_SEED)),
        heldOut: make(q('test.jsonl').slice(0, Math.min(heldOut, this.heldOut))),
        files: [join(root, 'datasets', 'gsm8k', 'train.jsonl'), join(root, 'datasets', 'gsm8k', 'test.jsonl')],
      };
    },
  },
};

/** What the runs of one task read: the fixed split as token examples. */
interface TaskFile {
  task: TaskName;
  train: Example[];
  heldOut: Example[];
  labels: string[] | null;
}

// ---------------------------------------------------------------------------------------------
// Scoring

/** What the scorers need of a model: a forward that takes a KV cache. */
export interface ScoredLM {
  forward(ids: Tensor, opts?: { cache?: unknown }): Tensor;
}

/** Records one prompt's keys and values (the first forward of a scored example). */
class PromptCache {
  length = 0;
  /** The prompt's one sequence, which every continuation row continues (for prompt hooks). */
  readonly seqs: readonly object[] = [{}];
  readonly k: Tensor[] = [];
  readonly v: Tensor[] = [];

  append(layer: number, k: Tensor, v: Tensor): { k: Tensor; v: Tensor } {
    this.k[layer] = k.keep();
    this.v[layer] = v.keep();
    return { k, v };
  }

  dispose(): void {
    for (const t of [...this.k, ...this.v]) t?.dispose();
  }
}

/** One prompt's keys and values in front of every row of a batch of continuations. */
class SharedPrefixCache {
  readonly seqs: readonly object[];
  constructor(private readonly prompt: PromptCache, private readonly rows: number, public length: number) {
    this.seqs = Array.from({ length: rows }, () => prompt.seqs[0]!);
  }

  append(layer: number, k: Tensor, v: Tensor): { k: Tensor; v: Tensor } {
    const wide = (t: Tensor) => expand(t, [this.rows, ...t.shape.slice(1)]);
    return { k: concat([wide(this.prompt.k[layer]!), k], 2), v: concat([wide(this.prompt.v[layer]!), v], 2) };
  }
}

function logSumExp(row: Float32Array, at: number, n: number): number {
  let m = -Infinity;
  for (let i = 0; i < n; i++) if (row[at + i]! > m) m = row[at + i]!;
  let s = 0;
  for (let i = 0; i < n; i++) s += Math.exp(row[at + i]! - m);
  return m + Math.log(s);
}

/** The token sequence of each label as it follows the label cue (from a training example of it). */
export function labelWordSequences(train: readonly Example[], labels: readonly string[]): Map<string, number[]> {
  const out = new Map<string, number[]>();
  for (const l of labels) {
    const e = train.find((x) => x.label === l);
    if (!e || e.completion.length === 0) throw new AdaptkitError(`label "${l}" has no training example`);
    out.set(l, e.completion);
  }
  return out;
}

/**
 * Each label's whole-sequence score for each example: the sum of its tokens' log-probabilities
 * given the prompt (head + body + tail) and the label tokens before them. Per example the prompt
 * runs once; its keys and values then serve every label's continuation, in batches of labels of
 * similar length (right padding is harmless: a causal model never looks ahead).
 */
export function labelSequenceScores(
  model: ScoredLM, examples: readonly Example[], labelSeqs: ReadonlyMap<string, readonly number[]>, padId: number,
): { labels: string[]; scores: Float64Array[]; tokens: number } {
  const labels = [...labelSeqs.keys()];
  const seqs = labels.map((l) => labelSeqs.get(l)!);
  if (seqs.some((q) => q.length === 0)) throw new AdaptkitError('every label needs at least one token');
  // batches of about 24 labels sorted by length keep the padding small
  const order = labels.map((_, i) => i).filter((i) => seqs[i]!.length > 1).sort((a, b) => seqs[a]!.length - seqs[b]!.length);
  const groups: number[][] = [];
  const per = Math.ceil(order.length / Math.max(1, Math.round(order.length / 24)));
  for (let i = 0; i < order.length; i += per) groups.push(order.slice(i, i + per));
  const continuationTokens = seqs.reduce((n, q) => n + q.length - 1, 0);
  let tokens = 0;
  const scores: Float64Array[] = [];
  for (const e of examples) {
    const prompt = [...e.head, ...e.body, ...e.tail];
    const score = new Float64Array(labels.length);
    const pc = new PromptCache();
    try {
      tidy(() => noGrad(() => {
        const logits = model.forward(tensor(prompt, [1, prompt.length], { dtype: 'i32' }), { cache: pc });
        const V = logits.shape[2]!;
        const last = narrow(logits, 1, logits.shape[1]! - 1, 1).toArray() as Float32Array;
        const lse = logSumExp(last, 0, V);
        seqs.forEach((q, i) => { score[i] = last[q[0]!]! - lse; });
        for (const g of groups) {
          const L = seqs[g[g.length - 1]!]!.length - 1;
          const ids = new Int32Array(g.length * L).fill(padId);
          g.forEach((li, b) => { for (let j = 0; j < seqs[li]!.length - 1; j++) ids[b * L + j] = seqs[li]![j]!; });
          const out = model.forward(tensor(ids, [g.length, L], { dtype: 'i32' }), { cache: new SharedPrefixCache(pc, g.length, pc.length) });
          const T = out.shape[1]!;
          const rows = (T === L ? out : narrow(out, 1, T - L, L)).toArray() as Float32Array;
          g.forEach((li, b) => {
            const q = seqs[li]!;
            for (let j = 0; j + 1 < q.length; j++) {
              const at = (b * L + j) * V;
              score[li] += rows[at + q[j + 1]!]! - logSumExp(rows, at, V);
            }
          });
        }
      }));
    } finally {
      pc.dispose();
    }
    scores.push(score);
    tokens += prompt.length + continuationTokens;
  }
  return { labels, scores, tokens };
}

/**
 * Accuracy of choosing a label by its whole token sequence: the label with the largest sum of
 * token log-probabilities given the text wins, so labels may share any prefix (the 77 BANKING77
 * intents collide on their first token, which `labelAccuracy` needs to differ).
 */
export function labelSequenceAccuracy(
  model: ScoredLM, examples: readonly Example[], labelSeqs: ReadonlyMap<string, readonly number[]>, padId: number,
): { accuracy: number; predictions: string[]; tokens: number } {
  const { labels, scores, tokens } = labelSequenceScores(model, examples, labelSeqs, padId);
  let right = 0;
  const predictions = scores.map((score, k) => {
    let best = 0;
    for (let i = 1; i < labels.length; i++) if (score[i]! > score[best]!) best = i;
    if (labels[best] === examples[k]!.label) right++;
    return labels[best]!;
  });
  return { accuracy: examples.length ? right / examples.length : NaN, predictions, tokens };
}

interface Measured {
  value: number;
  eval_seconds: number;
  inference_tokens_per_s: number;
  inference_detail: string;
}

const DECODE = { promptTokens: 16, newTokens: 64, reps: 3 };

function measureTask(am: AdapterModel, def: TaskDef, data: TaskFile, tok: Tokenizer, padId: number): Measured {
  const t0 = process.hrtime.bigint();
  const since = () => Number(process.hrtime.bigint() - t0) / 1e9;
  const promptTokens = data.heldOut.reduce((n, e) => n + e.head.length + e.body.length + e.tail.length, 0);
  if (def.scoring === 'first-token') {
    const r = labelAccuracy(am, data.heldOut, labelFirstTokens(data.train, data.labels!), padId);
    const s = since();
    return { value: r.accuracy, eval_seconds: s, inference_tokens_per_s: promptTokens / s, inference_detail: 'held-out prompt tokens scored per second (one forward per batch of 32)' };
  }
  if (def.scoring === 'label-sequence') {
    const r = labelSequenceAccuracy(am, data.heldOut, labelWordSequences(data.train, data.labels!), padId);
    const s = since();
    return { value: r.accuracy, eval_seconds: s, inference_tokens_per_s: r.tokens / s, inference_detail: `prompt + label tokens scored per second (${data.labels!.length} label sequences per text)` };
  }
  const loss = evaluateLoss(am, data.heldOut, padId).loss;
  const evalSeconds = since();
  // greedy decoding with the adapter: a held-out question's opening, a fixed number of new tokens
  const first = data.heldOut[0]!;
  const prompt = [...first.head, ...first.completion].slice(0, DECODE.promptTokens + first.head.length);
  const rates: number[] = [];
  for (let i = 0; i <= DECODE.reps; i++) {
    const d0 = process.hrtime.bigint();
    const out = generate(am, tok, prompt, { maxTokens: DECODE.newTokens, temperature: 0, stopTokens: [] });
    if (i > 0) rates.push(out.tokens.length / (Number(process.hrtime.bigint() - d0) / 1e9));
  }
  return {
    value: loss, eval_seconds: evalSeconds, inference_tokens_per_s: median(rates),
    inference_detail: `greedy decode: ${prompt.length}-token prompt, ${DECODE.newTokens} new tokens per second (median of ${DECODE.reps})`,
  };
}

// ---------------------------------------------------------------------------------------------
// One run (child process)

interface RunSpec {
  task: TaskName;
  taskFile: string;
  modelDir: string;
  /** null: the base model without an adapter. */
  method: ResolvedMethod | null;
  seed: number;
  steps: number;
  batchSize: number;
  trainExamples: number;
  outDir: string;
  backend: BackendName;
  threads: number | null;
  plugins: string[];
}

interface RunResult {
  value: number;
  trainable_parameters: number;
  adapter_bytes: number;
  /** Bytes of each file in the adapter folder (a packed low-bit file next to its float form, say). */
  adapter_files: Record<string, number>;
  train_tokens_per_s: number | null;
  train_seconds: number | null;
  final_train_loss: number | null;
  peak_rss_mb: number;
  inference_tokens_per_s: number;
  inference_detail: string;
  eval_seconds: number;
  warmup_steps: number;
}

export function folderBytes(dir: string): number {
  let n = 0;
  for (const f of readdirSync(dir)) {
    const p = join(dir, f);
    const s = statSync(p);
    n += s.isDirectory() ? folderBytes(p) : s.size;
  }
  return n;
}

/** Tokens per second over the steps after the first (whose time includes one-off set-up). */
function trainRate(history: readonly { kind: string }[]): number {
  const steps = history.filter((h) => h.kind === 'train') as unknown as { tokens: number; elapsed_s: number }[];
  if (steps.length === 1) return steps[0]!.tokens / Math.max(steps[0]!.elapsed_s, 1e-3);
  const tokens = steps.slice(1).reduce((n, s) => n + s.tokens, 0);
  return tokens / Math.max(steps[steps.length - 1]!.elapsed_s - steps[0]!.elapsed_s, 1e-3);
}

async function runOne(s: RunSpec): Promise<RunResult> {
  // the modules that registered methods in the parent register them here too
  for (const url of s.plugins) await import(url);
  setBackend(s.backend);
  if (s.threads !== null) nativeBackend()?.setThreads(s.threads);
  const def = TASKS[s.task];
  const bin = join(s.modelDir, 'stories260K.bin');
  const { model } = loadModel(bin);
  const tok = loadTokenizer(bin, join(s.modelDir, 'tok512.bin'), model.config.vocabSize);
  const padId = tok.eosId ?? 0;
  const data = JSON.parse(readFileSync(s.taskFile, 'utf8')) as TaskFile;
  const am = new AdapterModel(model);
  const warmupSteps = Math.min(10, Math.floor(s.steps / 10));
  let trained: Pick<RunResult, 'trainable_parameters' | 'adapter_bytes' | 'adapter_files' | 'train_tokens_per_s' | 'train_seconds' | 'final_train_loss' | 'peak_rss_mb'> = {
    trainable_parameters: 0, adapter_bytes: 0, adapter_files: {}, train_tokens_per_s: null, train_seconds: null, final_train_loss: null, peak_rss_mb: 0,
  };
  if (s.method) {
    const run = runTraining({
      model, tokenizer: tok, method: s.method.name, methodOptions: {}, adapterConfig: s.method.config,
      train: data.train.slice(0, s.trainExamples), validation: [], outDir: s.outDir, overwrite: true,
      config: { steps: s.steps, batchSize: s.batchSize, lr: s.method.lr, schedule: 'cosine', warmupSteps, seed: s.seed, evalEvery: 0, maxLen: def.maxLen },
      identity: { bench: 'methods', task: s.task, method: s.method.name, seed: s.seed },
    });
    trained = {
      trainable_parameters: Number(run.report.trainable_parameters),
      adapter_bytes: folderBytes(run.adapterDir),
      adapter_files: Object.fromEntries(readdirSync(run.adapterDir).sort().map((f) => [f, statSync(join(run.adapterDir, f)).size])),
      train_tokens_per_s: trainRate(run.result.history),
      train_seconds: run.result.seconds,
      final_train_loss: Number(run.report.final_train_loss),
      peak_rss_mb: process.resourceUsage().maxRSS / 1024,
    };
    // scored as saved: the adapter folder loaded back, not the in-memory training copy
    am.load(run.adapterDir);
  }
  const m = measureTask(am, def, data, tok, padId);
  if (!s.method) trained.peak_rss_mb = process.resourceUsage().maxRSS / 1024;
  return { ...trained, ...m, warmup_steps: warmupSteps };
}

/** The interpreter flags a run needs to load this file (the TypeScript loader when run from source). */
function childArgs(self: string): string[] {
  const args = process.execArgv.filter((a) => !a.startsWith('--test') && !a.startsWith('--inspect') && !a.startsWith('--watch'));
  if (self.endsWith('.ts') && !args.some((a) => a.includes('tsx'))) args.push('--import', 'tsx');
  return args;
}

function spawnRun(spec: RunSpec, specFile: string): RunResult {
  writeFileSync(specFile, JSON.stringify(spec));
  const self = fileURLToPath(import.meta.url);
  const child = spawnSync(process.execPath, [...childArgs(self), self, '--methods-run', specFile], { encoding: 'utf8', maxBuffer: 1 << 26 });
  const lines = (child.stdout ?? '').trim().split('\n').filter(Boolean);
  if (child.status !== 0 || lines.length === 0) {
    const why = (child.stderr || child.error?.message || `exit status ${child.status}`).trim().split('\n').filter(Boolean).slice(-3).join(' | ');
    throw new AdaptkitError(why);
  }
  return JSON.parse(lines[lines.length - 1]!) as RunResult;
}

// ---------------------------------------------------------------------------------------------
// The machine

// ---------------------------------------------------------------------------------------------
// The benchmark

export interface MethodsBenchOptions {
  tasks?: TaskName[];
  /** Method entries (default: DEFAULT_METHODS). */
  methods?: MethodEntry[];
  seeds?: number;
  /** Training steps of every task (default: each task's own). */
  steps?: number;
  batchSize?: number;
  /** At most this many training examples (the first of the fixed training split). */
  trainExamples?: number;
  /** At most this many held-out examples (the first of the fixed held-out split). */
  heldOut?: number;
  /** Smoke-test sizes: 1 seed, 5 steps, 64 training and 24 held-out examples (explicit sizes win). */
  quick?: boolean;
  dataDir?: string;
  /** Where run folders (adapters, metrics) are kept; default a temporary folder, removed at the end. */
  outDir?: string;
  /** Receives every JSON line (default: stdout). */
  write?: (line: string) => void;
  /** Receives progress lines (default: stderr). */
  log?: (line: string) => void;
}

export interface RunLine {
  bench: 'methods';
  kind: 'run';
  task: TaskName;
  method: string;
  seed: number | null;
  [field: string]: unknown;
}

export interface SummaryLine {
  bench: 'methods';
  kind: 'summary';
  task: TaskName;
  method: string;
  metric: string;
  higher_is_better: boolean;
  seeds: (number | null)[];
  n: number;
  mean: number;
  /** Sample standard deviation (n - 1) over seeds; null with one seed. */
  std: number | null;
  [field: string]: unknown;
}

export interface MethodsBenchResult {
  runs: RunLine[];
  summaries: SummaryLine[];
  markdown: string;
  machine: Record<string, unknown>;
}

/** The base model's row name. */
export const BASE = 'base';

export async function runMethodsBench(o: MethodsBenchOptions = {}): Promise<MethodsBenchResult> {
  const write = o.write ?? ((l: string) => process.stdout.write(`${l}\n`));
  const log = o.log ?? ((l: string) => process.stderr.write(`${l}\n`));
  const tasks = o.tasks ?? [...TASK_NAMES];
  for (const t of tasks) if (!(t in TASKS)) throw new AdaptkitError(`unknown task "${t}" (tasks: ${TASK_NAMES.join(', ')})`);
  const seeds = o.seeds ?? (o.quick ? 1 : 3);
  const batchSize = o.batchSize ?? 16;
  if (!Number.isInteger(seeds) || seeds < 1) throw new AdaptkitError(`seeds must be a positive integer, got ${seeds}`);
  const root = dataDir(o.dataDir);
  const modelDir = await demoModelDir(root);
  const bin = join(modelDir, 'stories260K.bin');
  const { model } = loadModel(bin);
  const tok = loadTokenizer(bin, join(modelDir, 'tok512.bin'), model.config.vocabSize);
  const methods = resolveMethods(o.methods ?? DEFAULT_METHODS, model);
  const machine = describeMachine();
  const be = getBackend().name as BackendName;
  const threads = nativeBackend()?.threads() ?? null;
  const work = o.outDir ?? mkdtempSync(join(tmpdir(), 'adaptkit-bench-methods-'));
  mkdirSync(work, { recursive: true });
  const runs: RunLine[] = [];
  const total = tasks.length * (1 + methods.length * seeds);
  let done = 0;
  try {
    for (const task of tasks) {
      const def = TASKS[task];
      const heldOut = o.heldOut ?? (o.quick ? 24 : def.heldOut);
      const loaded = def.load(root, tok, heldOut);
      const trainExamples = Math.min(loaded.train.length, o.trainExamples ?? (o.quick ? 64 : loaded.train.length));
      const steps = o.steps ?? (o.quick ? 5 : def.steps);
      const taskFile = join(work, `${task}.task.json`);
      const file: TaskFile = { task, train: loaded.train, heldOut: loaded.heldOut, labels: loaded.labels ?? null };
      writeFileSync(taskFile, JSON.stringify(file));
      const split = {
        seed: SPLIT_SEED, rule: def.split, files: loaded.files.map((f) => f.slice(root.length + 1)),
        train_pool: loaded.train.length, train_examples: trainExamples, held_out: loaded.heldOut.length,
      };
      const common = {
        metric: def.metric, higher_is_better: def.metric === 'accuracy', scoring: def.scoring, inference_kind: def.inference,
        labels: loaded.labels?.length ?? null, split, batch_size: batchSize, max_len: def.maxLen,
      };
      const cases: (ResolvedMethod | null)[] = [null, ...methods];
      for (const m of cases) {
        for (const seed of m ? Array.from({ length: seeds }, (_, i) => i) : [null]) {
          const name = m?.name ?? BASE;
          const outDir = join(work, task, name, `seed${seed ?? 'none'}`);
          const spec: RunSpec = {
            task, taskFile, modelDir, method: m, seed: seed ?? 0, steps, batchSize, trainExamples, outDir,
            backend: be, threads, plugins: loadedPlugins(),
          };
          const t0 = Date.now();
          let line: RunLine;
          try {
            const r = spawnRun(spec, join(work, `${task}.${name}.${seed ?? 'none'}.spec.json`));
            line = {
              bench: 'methods', kind: 'run', task, method: name, seed, ...common,
              value: r.value, steps: m ? steps : 0, warmup_steps: m ? r.warmup_steps : 0, lr: m?.lr ?? null,
              trainable_parameters: r.trainable_parameters, adapter_bytes: r.adapter_bytes, adapter_files: r.adapter_files,
              train_tokens_per_s: r.train_tokens_per_s === null ? null : round(r.train_tokens_per_s, 0),
              train_seconds: r.train_seconds, final_train_loss: r.final_train_loss === null ? null : round(r.final_train_loss, 4),
              peak_rss_mb: round(r.peak_rss_mb, 1), inference_tokens_per_s: round(r.inference_tokens_per_s, 0), inference_detail: r.inference_detail,
              eval_seconds: round(r.eval_seconds, 2), wall_seconds: round((Date.now() - t0) / 1000, 2),
              adapter_config: m?.config ?? null, matched: m?.matched ?? null, backend: be, threads, machine,
            };
            log(`[${++done}/${total}] ${task} ${name}${seed === null ? '' : ` seed ${seed}`}: ${def.metric} ${r.value.toFixed(4)} (${((Date.now() - t0) / 1000).toFixed(1)} s)`);
          } catch (e) {
            line = { bench: 'methods', kind: 'run', task, method: name, seed, ...common, error: (e as Error).message, backend: be, threads, machine };
            log(`[${++done}/${total}] ${task} ${name}${seed === null ? '' : ` seed ${seed}`}: failed: ${(e as Error).message}`);
          }
          runs.push(line);
          write(JSON.stringify(line));
        }
      }
    }
  } finally {
    if (!o.outDir) rmSync(work, { recursive: true, force: true });
  }
  const summaries = summarize(runs, machine);
  for (const s of summaries) write(JSON.stringify(s));
  return { runs, summaries, markdown: markdownTable(summaries, runs, machine), machine };
}

// ---------------------------------------------------------------------------------------------
// Summaries and the table

export function median(xs: readonly number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  if (s.length === 0) return NaN;
  const h = Math.floor(s.length / 2);
  return s.length % 2 ? s[h]! : (s[h - 1]! + s[h]!) / 2;
}

export function meanStd(xs: readonly number[]): { mean: number; std: number | null } {
  const mean = xs.reduce((a, b) => a + b, 0) / xs.length;
  if (xs.length < 2) return { mean, std: null };
  const v = xs.reduce((a, b) => a + (b - mean) ** 2, 0) / (xs.length - 1);
  return { mean, std: Math.sqrt(v) };
}

export function round(x: number, digits: number): number {
  const f = 10 ** digits;
  return Math.round(x * f) / f;
}

/** Metric mean ± std over seeds, and the cost columns as medians over seeds (ratios to the base row). */
export function summarize(runs: readonly RunLine[], machine: Record<string, unknown>): SummaryLine[] {
  const out: SummaryLine[] = [];
  const keys = [...new Set(runs.map((r) => `${r.task}\u0000${r.method}`))];
  for (const k of keys) {
    const [task, method] = k.split('\u0000') as [TaskName, string];
    const ok = runs.filter((r) => r.task === task && r.method === method && r.error === undefined);
    const failed = runs.filter((r) => r.task === task && r.method === method && r.error !== undefined).length;
    if (ok.length === 0) continue;
    const base = runs.find((r) => r.task === task && r.method === BASE && r.error === undefined);
    const num = (r: RunLine, f: string) => r[f] as number;
    const med = (f: string) => (ok.every((r) => typeof r[f] === 'number') ? median(ok.map((r) => num(r, f))) : null);
    const { mean, std } = meanStd(ok.map((r) => num(r, 'value')));
    const inf = med('inference_tokens_per_s');
    out.push({
      bench: 'methods', kind: 'summary', task, method, metric: String(ok[0]!.metric), higher_is_better: Boolean(ok[0]!.higher_is_better),
      seeds: ok.map((r) => r.seed), n: ok.length, failed, mean, std,
      trainable_parameters: med('trainable_parameters'), adapter_bytes: med('adapter_bytes'),
      train_tokens_per_s: med('train_tokens_per_s'), peak_rss_mb: med('peak_rss_mb'),
      inference_tokens_per_s: inf, inference_kind: ok[0]!.inference_kind,
      inference_vs_base: base && inf !== null ? round(inf / num(base, 'inference_tokens_per_s'), 3) : null,
      metric_vs_base: base ? mean - num(base, 'value') : null,
      machine,
    });
  }
  return out;
}

/** The metric as the table prints it: mean ± std (std over seeds; none with one seed). */
export function formatMetric(s: Pick<SummaryLine, 'mean' | 'std'>): string {
  return s.std === null ? s.mean.toFixed(3) : `${s.mean.toFixed(3)} ± ${s.std.toFixed(3)}`;
}

const int = (x: unknown) => (typeof x === 'number' ? Math.round(x).toLocaleString('en-US') : '–');

const METRIC_NOTES: Record<TaskName, string> = {
  sms: 'accuracy on the held-out messages, label words ham / spam scored by their first token (as the demo does)',
  agnews: 'accuracy, label words world / sports / business / tech scored by their first token (distinct in tok512)',
  banking77: 'accuracy, every one of the 77 intents scored by its WHOLE label token sequence (sum of token log-probs given the text, argmax over labels): their first tokens collide, so first-token scoring cannot tell them apart',
  gsm8k: 'mean NLL per token of the held-out question text (its EOS included), nats; lower is better',
};

const INFERENCE_NOTES: Record<TaskName, string> = {
  sms: 'scoring throughput: held-out prompt tokens per second through the model',
  agnews: 'scoring throughput: held-out prompt tokens per second through the model',
  banking77: 'scoring throughput: prompt tokens plus the 77 label continuations per second (prompt keys/values computed once, shared by the labels)',
  gsm8k: 'greedy decode with the adapter: new tokens per second after BOS and the first 16 tokens of a held-out question, 64 new tokens, median of 3',
};

export function markdownTable(summaries: readonly SummaryLine[], runs: readonly RunLine[], machine: Record<string, unknown>): string {
  const lines = [
    '| task | method | held-out metric (mean ± std) | seeds | trainable params | adapter bytes | train tok/s | peak RSS MB | inference tok/s (× base) |',
    '|---|---|---|---:|---:|---:|---:|---:|---:|',
  ];
  for (const s of summaries) {
    const arrow = s.higher_is_better ? '↑' : '↓';
    const inf = s.inference_tokens_per_s === null ? '–' : `${int(s.inference_tokens_per_s)}${s.inference_vs_base === null ? '' : ` (${Number(s.inference_vs_base).toFixed(2)}×)`}`;
    lines.push(`| ${s.task} | ${s.method === BASE ? 'base (no adapter)' : s.method} | ${s.metric} ${arrow} ${formatMetric(s)} | ${s.n}${s.failed ? ` (+${s.failed} failed)` : ''} | ${int(s.trainable_parameters)} | ${int(s.adapter_bytes)} | ${int(s.train_tokens_per_s)} | ${int(s.peak_rss_mb)} | ${inf} |`);
  }
  const failedOnly = [...new Set(runs.filter((r) => r.error !== undefined).map((r) => `${r.task} ${r.method}`))]
    .filter((k) => !summaries.some((s) => `${s.task} ${s.method}` === k));
  for (const k of failedOnly) lines.push(`| ${k.split(' ')[0]} | ${k.split(' ').slice(1).join(' ')} | failed | 0 | – | – | – | – | – |`);
  const tasks = [...new Set(runs.map((r) => r.task))];
  const first = (t: TaskName) => runs.find((r) => r.task === t && r.error === undefined) ?? runs.find((r) => r.task === t)!;
  lines.push('', 'Notes:');
  for (const t of tasks) {
    const r = first(t);
    const sp = r.split as { train_examples: number; held_out: number; rule: string };
    const trained = runs.find((x) => x.task === t && x.method !== BASE && x.error === undefined);
    const matched = runs.filter((x) => x.task === t && x.matched).map((x) => x.matched as { to: string; r: number; target_parameters: number });
    const recipe = trained ? ` Training: ${trained.steps} steps of batch ${trained.batch_size} (${trained.warmup_steps} warmup, cosine decay), AdamW, at most ${trained.max_len} tokens per example.` : '';
    lines.push(`- **${t}**: ${METRIC_NOTES[t]}. Inference: ${INFERENCE_NOTES[t]}. Split: ${sp.rule} (${sp.train_examples.toLocaleString('en-US')} training examples used, ${sp.held_out.toLocaleString('en-US')} held out).${recipe}`);
    if (matched.length) lines.push(`  Matched budgets: ${[...new Set(matched.map((m) => `r ${m.r} matches ${m.to} (${m.target_parameters.toLocaleString('en-US')} parameters)`))].join('; ')}.`);
  }
  lines.push('- metric: mean ± sample standard deviation (n − 1) over seeds; cost columns are medians over seeds; × base is the ratio of inference tokens/s to the untrained base model measured in the same invocation.');
  lines.push('- train tok/s: tokens per second over all steps after the first; peak RSS: the run\'s own process (model, data, training; the base row: scoring only).');
  const m = machine;
  lines.push(`- machine: ${m.cpu} (${m.arch}), ${m.cores} cores, caches ${m.caches ?? 'unknown'}, ${m.backend} backend${m.simd ? ` (${m.simd})` : ''} at ${m.threads} threads, measured FMA peak ${m.fma_peak_gflops ?? '–'} GFLOP/s, copy bandwidth ${m.copy_bandwidth_gbs} GB/s, node ${m.node}.`);
  return `${lines.join('\n')}\n`;
}

/** `adaptkit bench methods` with its option values as the command line gave them. */
export async function runMethodsCli(o: Record<string, string | boolean | undefined>): Promise<MethodsBenchResult> {
  const str = (k: string) => (typeof o[k] === 'string' ? (o[k] as string) : undefined);
  const count = (flag: string, k: string) => {
    const v = str(k);
    if (v === undefined) return undefined;
    const n = Number(v);
    if (!Number.isInteger(n) || n < 1) throw new AdaptkitError(`${flag} must be a positive integer, got "${v}"`);
    return n;
  };
  const list = (k: string) => str(k)?.split(',').map((x) => x.trim()).filter(Boolean);
  const tasks = list('tasks');
  for (const t of tasks ?? []) if (!(TASK_NAMES as readonly string[]).includes(t)) throw new AdaptkitError(`--tasks: unknown task "${t}" (tasks: ${TASK_NAMES.join(', ')})`);
  const configs = str('configs');
  const fromFile = configs ? readMethodEntries(configs) : [];
  const names = list('methods');
  const named = names ? methodEntries(names) : configs ? [] : [...DEFAULT_METHODS];
  const r = await runMethodsBench({
    tasks: tasks as TaskName[] | undefined, methods: [...named, ...fromFile], seeds: count('--seeds', 'seeds'), steps: count('--steps', 'steps'),
    trainExamples: count('--train-examples', 'trainExamples'), heldOut: count('--held-out', 'heldOut'),
    quick: o.quick === true, dataDir: str('dataDir'), outDir: str('out'),
  });
  const md = str('markdown');
  if (md) writeFileSync(md, r.markdown);
  if (o.json !== true) process.stdout.write(`\n${r.markdown}`);
  return r;
}

if (process.argv[2] === '--methods-run') {
  const spec = JSON.parse(readFileSync(process.argv[3]!, 'utf8')) as RunSpec;
  runOne(spec).then(
    (r) => process.stdout.write(`${JSON.stringify(r)}\n`),
    (e: Error) => {
      process.stderr.write(`${e?.message ?? e}\n`);
      process.exitCode = 1;
    },
  );
}
