/**
 * Multi-task and transfer methods side by side on stories260K (`adaptkit bench multitask`).
 *
 * Source tasks: SMS spam, AG News, BANKING77 and GSM8K question NLL (the splits of
 * `bench methods`). Three kinds of rows, every one trained with each seed:
 *   single  — one adapter per source task, trained on that task alone (LoRA; the bottleneck
 *             adapters that Fusion and ScaLearn later combine);
 *   joint   — one adapter trained on all source tasks at once (multi-task sampling at
 *             temperature 2, the loss averaged per row so a label word weighs as much as a
 *             question's text), scored on each task: a shared adapter with task prefixes, Poly
 *             and MHR routed by task id, prompt tuning and IAPT;
 *   target  — few-shot transfer to a held-out task (SVAMP question NLL from 64 questions): from
 *             scratch, from the multi-task Poly/MHR inventory (a new routing row, MHR-z, MHR-μ),
 *             by combining the frozen single-task adapters (AdapterFusion, ScaLearn variants),
 *             and MixDA (a GSM8K domain adapter trained first, then a task adapter on top).
 * One JSON line per (row, task, seed), one summary per (row, task), then a Markdown table.
 * Runs share one process (the model is reloaded for every run); no run reads another's
 * state except the adapters a row is declared to build on.
 */
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { AdaptkitError, type Tensor } from '../src/index.js';
import { AdapterModel, type PresetOptions, resolvePreset } from '../src/adapters/index.js';
import { dataDir } from '../src/io/data.js';
import { loadModel, loadTokenizer } from '../src/models/load.js';
import type { Tokenizer } from '../src/models/tokenizer.js';
import { describeModel } from '../src/nn/index.js';
import { readRecords } from '../src/train/data.js';
import { demoModelDir } from '../src/train/demo.js';
import { evaluateLoss, labelAccuracy } from '../src/train/evaluate.js';
import { type Example, fitExamples, shuffleInPlace, toExample } from '../src/train/examples.js';
import { withTask, prefixRecord } from '../src/train/multitask.js';
import { labelFirstTokens, runTraining } from '../src/train/run.js';
import { describeMachine } from './machine.js';
import { TASKS, type TaskDef, type TaskName, SPLIT_SEED, labelSequenceAccuracy, labelWordSequences, meanStd, round } from './methods.js';

export const SOURCE_TASKS: readonly TaskName[] = ['sms', 'agnews', 'banking77', 'gsm8k'];
export const TARGET_TASK = 'svamp';

type Stage = 'single' | 'joint' | 'target';

/** What a row's options may refer to: the adapter folders other rows trained with the same seed. */
interface Built {
  /** `single` rows: adapter folder per source task. */
  single: Map<string, Map<TaskName, string>>;
  /** `joint` and `target` rows: their one adapter folder. */
  one: Map<string, string>;
}

export interface Row {
  name: string;
  stage: Stage;
  /** A registry preset. */
  method: string;
  /** A PEFT config to train instead of the preset's (the preset names the row's method). */
  config?: Record<string, unknown>;
  options?: PresetOptions | ((b: Built) => PresetOptions);
  lr: number;
  /** Rows it builds on (trained first, same seed). */
  needs?: string[];
  /** Inputs begin with "<task>: " (the shared adapter's task prompts). */
  prefix?: boolean;
  /** Scored with each task's id (Poly/MHR routers); the target task's id is the number of sources. */
  routed?: boolean;
  /**
   * Training data of a target row instead of the target's few shots: MixDA's domain stage trains
   * on GSM8K questions (task 0) beside general text it must leave unchanged (AG News, task 1),
   * for as many steps as a joint row.
   */
  data?: 'domain';
  /** What the row stands for, in the notes under the table. */
  about: string;
}

/** A scored split of one task. */
interface TaskSplit {
  name: string;
  def: Pick<TaskDef, 'metric' | 'scoring' | 'maxLen'>;
  train: Example[];
  heldOut: Example[];
  labels?: string[];
  /** The whole training pool, where every label's tokens are read (a small `train` may miss labels). */
  pool?: Example[];
}

const SVAMP = {
  metric: 'nll_per_token' as const, scoring: 'nll' as const, maxLen: 96,
  shots: 64, heldOut: 300,
  split: 'SVAMP.json (1,000 problems; text = Body + " " + Question) shuffled with seed 0: the first 300 held out, 64 of the rest for training',
};

function loadSvamp(root: string, tok: Tokenizer, prefix: boolean, heldOut: number, shots: number): TaskSplit {
  const file = join(root, 'datasets', 'svamp', 'SVAMP.json');
  let rows: { Body?: unknown; Question?: unknown }[];
  try {
    rows = JSON.parse(readFileSync(file, 'utf8'));
  } catch (e) {
    throw new AdaptkitError(`${file}: ${(e as Error).message}`);
  }
  const texts = shuffleInPlace(rows.map((r, i) => {
    if (typeof r.Body !== 'string' || typeof r.Question !== 'string') throw new AdaptkitError(`${file}: problem ${i + 1} has no Body/Question text`);
    return `${r.Body.trim()} ${r.Question.trim()}`;
  }), SPLIT_SEED);
  const make = (ts: string[]) => fitExamples(ts.map((text) => toExample(prefix ? prefixRecord({ kind: 'text', text }, TARGET_TASK) : { kind: 'text', text }, tok)), SVAMP.maxLen, true).examples;
  return { name: TARGET_TASK, def: SVAMP, heldOut: make(texts.slice(0, heldOut)), train: make(texts.slice(SVAMP.heldOut, SVAMP.heldOut + shots)) };
}

/** The held-out metric of a model on a task, routed to `taskId` when given. */
function score(am: AdapterModel, t: TaskSplit, taskId: number | null, padId: number): number {
  const routed = taskId === null ? am : {
    forward: (ids: Tensor, o: Record<string, unknown> = {}) => am.forward(ids, { ...o, taskIds: [taskId] }),
  };
  if (t.def.scoring === 'first-token') return labelAccuracy(routed, t.heldOut, labelFirstTokens(t.pool ?? t.train, t.labels!), padId).accuracy;
  if (t.def.scoring === 'label-sequence') return labelSequenceAccuracy(routed, t.heldOut, labelWordSequences(t.pool ?? t.train, t.labels!), padId).accuracy;
  return evaluateLoss(routed, t.heldOut, padId).loss;
}

export interface MultitaskBenchOptions {
  rows?: Row[];
  seeds?: number;
  /** Steps of each single-task run (default: each task's own), of the joint runs, and of the target runs. */
  singleSteps?: number;
  jointSteps?: number;
  targetSteps?: number;
  /** Held-out examples per source task (default: each task's own). */
  heldOut?: number;
  /** Training examples per source task (default: all). */
  trainExamples?: number;
  quick?: boolean;
  dataDir?: string;
  outDir?: string;
  write?: (line: string) => void;
  log?: (line: string) => void;
}

export interface MultitaskLine {
  bench: 'multitask';
  kind: 'run' | 'summary';
  row: string;
  stage: Stage | 'base';
  task: string;
  [field: string]: unknown;
}

export async function runMultitaskBench(o: MultitaskBenchOptions): Promise<{ lines: MultitaskLine[]; markdown: string }> {
  const write = o.write ?? ((l: string) => process.stdout.write(`${l}\n`));
  const log = o.log ?? ((l: string) => process.stderr.write(`${l}\n`));
  const rows = o.rows ?? DEFAULT_ROWS;
  const seeds = o.seeds ?? (o.quick ? 1 : 3);
  const root = dataDir(o.dataDir);
  const modelDir = await demoModelDir(root);
  const bin = join(modelDir, 'stories260K.bin');
  const fresh = () => loadModel(bin).model;
  const probe = fresh();
  const tok = loadTokenizer(bin, join(modelDir, 'tok512.bin'), probe.config.vocabSize);
  const padId = tok.eosId ?? 0;
  const machine = describeMachine();
  const work = o.outDir ?? mkdtempSync(join(tmpdir(), 'adaptkit-bench-multitask-'));
  mkdirSync(work, { recursive: true });
  const heldOutOf = (t: TaskName) => o.heldOut ?? (o.quick ? 24 : TASKS[t].heldOut);
  const sources = (prefix: boolean): TaskSplit[] => SOURCE_TASKS.map((t) => {
    const d = TASKS[t].load(root, tok, heldOutOf(t), prefix ? t : undefined);
    const n = o.trainExamples ?? (o.quick ? 64 : d.train.length);
    return { name: t, def: TASKS[t], train: d.train.slice(0, n), heldOut: d.heldOut, labels: d.labels, pool: d.train };
  });
  const splits = { plain: sources(false), prefixed: sources(true) };
  const target = { plain: loadSvamp(root, tok, false, o.quick ? 24 : SVAMP.heldOut, o.quick ? 16 : SVAMP.shots), prefixed: loadSvamp(root, tok, true, o.quick ? 24 : SVAMP.heldOut, o.quick ? 16 : SVAMP.shots) };
  const domain = splits.plain.find((s) => s.name === 'gsm8k')!;
  const steps = {
    single: (t: TaskName) => o.singleSteps ?? (o.quick ? 5 : TASKS[t].steps),
    joint: o.jointSteps ?? (o.quick ? 8 : 200),
    target: o.targetSteps ?? (o.quick ? 5 : 40),
  };
  const lines: MultitaskLine[] = [];
  const emit = (l: MultitaskLine) => {
    lines.push(l);
    write(JSON.stringify(l));
  };
  const order = orderRows(rows);
  try {
    // the untrained base on every task
    const base = new AdapterModel(fresh());
    for (const t of [...splits.plain, target.plain]) {
      emit({ bench: 'multitask', kind: 'run', row: 'base', stage: 'base', task: t.name, seed: null, metric: t.def.metric, value: score(base, t, null, padId), trainable_parameters: 0, machine });
    }
    for (let seed = 0; seed < seeds; seed++) {
      const built: Built = { single: new Map(), one: new Map() };
      const failed = new Set<string>();
      for (const row of order) {
        const t0 = Date.now();
        const missing = (row.needs ?? []).filter((n) => failed.has(n));
        if (missing.length) {
          failed.add(row.name);
          emit({ bench: 'multitask', kind: 'run', row: row.name, stage: row.stage, seed, task: '*', error: `needs ${missing.join(', ')}, which failed` });
          continue;
        }
        const options = typeof row.options === 'function' ? row.options(built) : row.options ?? {};
        const train = (name: string, data: { tasks?: TaskSplit[]; one?: TaskSplit }, nSteps: number, out: string) => {
          const model = fresh();
          const config = row.config ?? resolvePreset(row.method).preset.config(options, describeModel(model));
          const warmupSteps = Math.max(1, Math.floor(nSteps / 10));
          const r = runTraining({
            model, tokenizer: tok, method: row.method, methodOptions: {}, adapterConfig: config,
            ...(data.tasks
              ? { tasks: data.tasks.map((s) => ({ name: s.name, train: s.train, validation: [] })), taskPrefix: row.prefix === true }
              : { train: data.one!.train, validation: [] }),
            outDir: out, overwrite: true,
            config: { steps: nSteps, batchSize: 16, lr: row.lr, schedule: 'cosine', warmupSteps, seed, evalEvery: 0, maxLen: 96, ...(row.stage === 'joint' ? { lossAverage: 'row' as const } : {}) },
            identity: { bench: 'multitask', row: name, seed },
          });
          return { dir: r.adapterDir, params: Number(r.report.trainable_parameters), seconds: r.result.seconds, loss: Number(r.report.final_train_loss) };
        };
        const evaluate = (dir: string, t: TaskSplit, taskId: number | null) => {
          const am = new AdapterModel(fresh());
          am.load(dir);
          return score(am, t, taskId, padId);
        };
        const common = { bench: 'multitask' as const, kind: 'run' as const, row: row.name, stage: row.stage, seed, method: row.method, lr: row.lr, machine };
        try {
          if (row.stage === 'single') {
            const dirs = new Map<TaskName, string>();
            for (const s of splits.plain) {
              const r = train(row.name, { one: s }, steps.single(s.name as TaskName), join(work, `seed${seed}`, row.name, s.name));
              dirs.set(s.name as TaskName, r.dir);
              emit({ ...common, task: s.name, metric: s.def.metric, value: evaluate(r.dir, s, null), trainable_parameters: r.params, steps: steps.single(s.name as TaskName), train_seconds: round(r.seconds, 2) });
            }
            built.single.set(row.name, dirs);
          } else if (row.stage === 'joint') {
            const data = row.prefix ? splits.prefixed : splits.plain;
            const r = train(row.name, { tasks: data }, steps.joint, join(work, `seed${seed}`, row.name));
            built.one.set(row.name, r.dir);
            data.forEach((s, i) => emit({ ...common, task: s.name, metric: s.def.metric, value: evaluate(r.dir, s, row.routed ? i : null), trainable_parameters: r.params, steps: steps.joint, train_seconds: round(r.seconds, 2) }));
          } else {
            const t = row.prefix ? target.prefixed : target.plain;
            const general = splits.plain.find((x) => x.name === 'agnews')!;
            const r = row.data === 'domain'
              ? train(row.name, { tasks: [domain, general] }, steps.joint, join(work, `seed${seed}`, row.name))
              : train(row.name, { one: t }, steps.target, join(work, `seed${seed}`, row.name));
            built.one.set(row.name, r.dir);
            if (row.data !== 'domain') {
              emit({ ...common, task: t.name, metric: t.def.metric, value: evaluate(r.dir, t, row.routed ? SOURCE_TASKS.length : null), trainable_parameters: r.params, steps: steps.target, shots: t.train.length, train_seconds: round(r.seconds, 2) });
            } else {
              // a domain stage is scored on its domain and on text outside it (what it must not forget)
              for (const s of [domain, ...splits.plain.filter((x) => x.name !== 'gsm8k'), target.plain]) {
                emit({ ...common, task: s.name, metric: s.def.metric, value: evaluate(r.dir, s, null), trainable_parameters: r.params, steps: steps.target, train_seconds: round(r.seconds, 2) });
              }
            }
          }
          log(`seed ${seed} ${row.name}: ${((Date.now() - t0) / 1000).toFixed(1)} s`);
        } catch (e) {
          failed.add(row.name);
          emit({ ...common, task: '*', error: (e as Error).message });
          log(`seed ${seed} ${row.name}: failed: ${(e as Error).message}`);
        }
      }
    }
  } finally {
    if (!o.outDir) rmSync(work, { recursive: true, force: true });
  }
  const summaries = summarizeMultitask(lines, machine);
  for (const s of summaries) emit(s);
  return { lines, markdown: multitaskTable(summaries, rows, machine) };
}

/** Rows in an order where every row comes after those it needs. */
export function orderRows(rows: readonly Row[]): Row[] {
  const out: Row[] = [];
  const seen = new Set<string>();
  const visit = (r: Row, path: string[]) => {
    if (seen.has(r.name)) return;
    if (path.includes(r.name)) throw new AdaptkitError(`rows ${[...path, r.name].join(' → ')} need each other`);
    for (const n of r.needs ?? []) {
      const dep = rows.find((x) => x.name === n);
      if (!dep) throw new AdaptkitError(`row "${r.name}" needs "${n}", which is not in the list`);
      visit(dep, [...path, r.name]);
    }
    seen.add(r.name);
    out.push(r);
  };
  for (const r of rows) visit(r, []);
  return out;
}

function summarizeMultitask(lines: readonly MultitaskLine[], machine: Record<string, unknown>): MultitaskLine[] {
  const runs = lines.filter((l) => l.kind === 'run' && l.error === undefined);
  const keys = [...new Set(runs.map((r) => `${r.row}\u0000${r.task}`))];
  return keys.map((k) => {
    const [row, task] = k.split('\u0000') as [string, string];
    const ok = runs.filter((r) => r.row === row && r.task === task);
    const { mean, std } = meanStd(ok.map((r) => r.value as number));
    return {
      bench: 'multitask', kind: 'summary', row, stage: ok[0]!.stage, task, metric: ok[0]!.metric, n: ok.length, seeds: ok.map((r) => r.seed),
      mean, std, trainable_parameters: ok[0]!.trainable_parameters, machine,
    } as MultitaskLine;
  });
}

const fmt = (s: MultitaskLine | undefined) => (!s ? '–' : s.std === null ? (s.mean as number).toFixed(3) : `${(s.mean as number).toFixed(3)} ± ${(s.std as number).toFixed(3)}`);

/** One table of source tasks (a column per task) and one of the target task. */
export function multitaskTable(summaries: readonly MultitaskLine[], rows: readonly Row[], machine: Record<string, unknown>): string {
  const get = (row: string, task: string) => summaries.find((s) => s.row === row && s.task === task);
  const params = (row: string) => {
    const ps = summaries.filter((s) => s.row === row).map((s) => s.trainable_parameters as number);
    return ps.length ? Math.round(ps[0]!).toLocaleString('en-US') : '–';
  };
  const src = rows.filter((r) => r.stage !== 'target');
  const out = [
    '| row | stage | trainable params (per adapter) | sms acc ↑ | agnews acc ↑ | banking77 acc ↑ | gsm8k NLL ↓ |',
    '|---|---|---:|---:|---:|---:|---:|',
    `| base (no adapter) | – | 0 | ${SOURCE_TASKS.map((t) => fmt(get('base', t))).join(' | ')} |`,
    ...src.map((r) => `| ${r.name} | ${r.stage} | ${params(r.name)} | ${SOURCE_TASKS.map((t) => fmt(get(r.name, t))).join(' | ')} |`),
    '',
    `| row (few-shot ${TARGET_TASK}) | builds on | trainable params | ${TARGET_TASK} NLL ↓ |`,
    '|---|---|---:|---:|',
    `| base (no adapter) | – | 0 | ${fmt(get('base', TARGET_TASK))} |`,
    ...rows.filter((r) => r.stage === 'target' && r.data !== 'domain').map((r) => `| ${r.name} | ${(r.needs ?? []).join(', ') || '–'} | ${params(r.name)} | ${fmt(get(r.name, TARGET_TASK))} |`),
  ];
  const domainRows = rows.filter((r) => r.data === 'domain');
  if (domainRows.length) {
    out.push('', '| domain stage | trainable params | gsm8k NLL ↓ | sms acc | agnews acc | banking77 acc | svamp NLL ↓ |', '|---|---:|---:|---:|---:|---:|---:|');
    out.push(`| base (no adapter) | 0 | ${['gsm8k', 'sms', 'agnews', 'banking77', TARGET_TASK].map((t) => fmt(get('base', t))).join(' | ')} |`);
    for (const r of domainRows) out.push(`| ${r.name} | ${params(r.name)} | ${['gsm8k', 'sms', 'agnews', 'banking77', TARGET_TASK].map((t) => fmt(get(r.name, t))).join(' | ')} |`);
  }
  out.push('', 'Rows:');
  for (const r of rows) out.push(`- **${r.name}** (${r.method}, lr ${r.lr}): ${r.about}`);
  const m = machine;
  out.push('', `Machine: ${m.cpu} (${m.arch}), ${m.cores} cores, ${m.backend} backend${m.simd ? ` (${m.simd})` : ''}, node ${m.node}. Metrics: mean ± sample std over seeds. ${SVAMP.split}.`);
  return `${out.join('\n')}\n`;
}

/** Pfeiffer bottleneck adapters (after each feed-forward block), AdapterFusion's and ScaLearn's source form. */
const PFEIFFER = { peft_type: 'BOTTLENECK', adapter_type: 'pfeiffer', reduction_factor: 4 };
const SOURCES = 'bottleneck-pfeiffer';
const OWN = 'bottleneck-pfeiffer-target';
const sourceDirs = (b: Built) => ({ 'source-adapters': [...b.single.get(SOURCES)!.values(), b.one.get(OWN)!] });

/**
 * The rows of the comparison. Learning rates: the `bench methods` rates for LoRA, bottleneck and
 * prompt rows; 1e-2 for Poly/MHR (PEFT's 1/r scale is a quarter of LoRA's alpha/r at r 8) and
 * IAPT; ScaLearn at its paper's 6e-3; AdapterFusion at 2e-3 (its paper's 5e-5 was for
 * RoBERTa-base over 30 epochs); the router-only and averaged transfers at 1e-1 and 2e-2.
 */
export const DEFAULT_ROWS: Row[] = [
  { name: 'lora', stage: 'single', method: 'lora', options: { r: 8 }, lr: 5e-3, about: 'one LoRA (r 8, alpha 16, on every linear layer) per source task, trained on that task alone.' },
  { name: SOURCES, stage: 'single', method: 'bottleneck', config: PFEIFFER, lr: 1e-2, about: 'one Pfeiffer bottleneck adapter (reduction 4) per source task: the per-task adapters of VL-Adapter\'s comparison and the sources AdapterFusion and ScaLearn combine.' },
  { name: 'shared-bottleneck', stage: 'joint', method: 'bottleneck', config: PFEIFFER, prefix: true, lr: 1e-2, about: 'one Pfeiffer bottleneck adapter shared by all four source tasks, inputs prefixed with the task name (VL-Adapter\'s single shared adapter): a quarter of the per-task adapters\' parameters.' },
  { name: 'shared-lora', stage: 'joint', method: 'lora', options: { r: 8 }, prefix: true, lr: 5e-3, about: 'one LoRA (r 8 on every linear layer) shared by all four source tasks with task prefixes: a quarter of the per-task LoRAs\' parameters.' },
  { name: 'shared-lora-r5', stage: 'joint', method: 'lora', options: { r: 5, targets: ['q_proj', 'v_proj'] }, prefix: true, lr: 5e-3, about: 'LoRA r 5 on q and v shared by all source tasks with task prefixes: about IAPT\'s parameter count.' },
  { name: 'poly', stage: 'joint', method: 'poly', options: { r: 8, 'n-tasks': 4, 'n-skills': 4 }, routed: true, lr: 1e-2, about: 'Poly: 4 LoRA skills (r 8) per layer mixed per task by a learned router; scored with each task\'s id.' },
  { name: 'mhr', stage: 'joint', method: 'mhr', options: { r: 8, 'n-tasks': 4, 'n-skills': 4, 'n-splits': 4 }, routed: true, lr: 1e-2, about: 'MHR: Poly with each skill cut into 4 heads routed separately.' },
  { name: 'poly-lr5e-2', stage: 'joint', method: 'poly', options: { r: 8, 'n-tasks': 4, 'n-skills': 4 }, routed: true, lr: 5e-2, about: 'Poly at 5× the rate: PEFT\'s scale 1/r makes its weight change per step 16× smaller than LoRA\'s (alpha 16, r 8) at the same rate.' },
  { name: 'mhr-lr5e-2', stage: 'joint', method: 'mhr', options: { r: 8, 'n-tasks': 4, 'n-skills': 4, 'n-splits': 4 }, routed: true, lr: 5e-2, about: 'MHR at 5× the rate (as poly-lr5e-2).' },
  { name: 'shared-prompt', stage: 'joint', method: 'prompt', options: { 'virtual-tokens': 4 }, prefix: true, lr: 1e-1, about: 'prompt tuning (4 virtual tokens) shared by all source tasks with task prefixes.' },
  { name: 'iapt', stage: 'joint', method: 'iapt', options: { 'virtual-tokens': 4, 'generator-width': 8 }, prefix: true, lr: 1e-2, about: 'IAPT: 4 soft tokens per layer generated from the instruction (the prompt part of each row) by a per-layer generator of width 8, shared by all source tasks with task prefixes.' },
  { name: 'lora-target', stage: 'target', method: 'lora', options: { r: 8 }, lr: 5e-3, about: 'LoRA (r 8 on every linear layer) trained from scratch on the 64 target questions.' },
  { name: OWN, stage: 'target', method: 'bottleneck', config: PFEIFFER, lr: 1e-2, about: 'a Pfeiffer bottleneck adapter from scratch on the target: the target\'s own adapter that Fusion and ScaLearn include.' },
  { name: 'poly-transfer', stage: 'target', method: 'poly', needs: ['poly'], options: (b) => ({ from: b.one.get('poly')!, transfer: 'all' }), lr: 1e-2, about: 'the multi-task Poly inventory with a new routing row for the target, everything fine-tuned.' },
  { name: 'mhr-transfer', stage: 'target', method: 'mhr', needs: ['mhr'], options: (b) => ({ from: b.one.get('mhr')!, transfer: 'all' }), lr: 1e-2, about: 'the multi-task MHR inventory with a new routing row, everything fine-tuned.' },
  { name: 'mhr-z', stage: 'target', method: 'mhr', needs: ['mhr'], options: (b) => ({ from: b.one.get('mhr')!, transfer: 'router' }), lr: 1e-1, about: 'MHR-z: only the new task\'s routing logits train; the skills stay frozen.' },
  { name: 'mhr-mu', stage: 'target', method: 'mhr', needs: ['mhr'], options: (b) => ({ from: b.one.get('mhr')!, transfer: 'average' }), lr: 2e-2, about: 'MHR-μ: the skills averaged into one ordinary LoRA, then fine-tuned as a LoRA.' },
  { name: 'poly-transfer-lr5e-2', stage: 'target', method: 'poly', needs: ['poly-lr5e-2'], options: (b) => ({ from: b.one.get('poly-lr5e-2')!, transfer: 'all' }), lr: 5e-2, about: 'poly-transfer from poly-lr5e-2, at its rate.' },
  { name: 'mhr-transfer-lr5e-2', stage: 'target', method: 'mhr', needs: ['mhr-lr5e-2'], options: (b) => ({ from: b.one.get('mhr-lr5e-2')!, transfer: 'all' }), lr: 5e-2, about: 'mhr-transfer from mhr-lr5e-2, at its rate.' },
  { name: 'mhr-z-lr5e-2', stage: 'target', method: 'mhr', needs: ['mhr-lr5e-2'], options: (b) => ({ from: b.one.get('mhr-lr5e-2')!, transfer: 'router' }), lr: 1e-1, about: 'MHR-z from mhr-lr5e-2.' },
  { name: 'mhr-mu-lr5e-2', stage: 'target', method: 'mhr', needs: ['mhr-lr5e-2'], options: (b) => ({ from: b.one.get('mhr-lr5e-2')!, transfer: 'average' }), lr: 8e-2, about: 'MHR-μ from mhr-lr5e-2, fine-tuned at 16× LoRA\'s rate (its LoRA keeps the 1/r scale: 16× below lora-target\'s alpha/r).' },
  { name: 'mixda-domain', stage: 'target', method: 'mixda', data: 'domain', options: { 'gate-hidden': 16 }, lr: 5e-3, about: 'MixDA stage 1: a knowledge adapter beside the feed-forward output projection of the last two layers with its gate (hidden width 16), trained on GSM8K questions (0.5 × next-token loss) while an MSE term keeps the layers\' outputs on AG News text unchanged.' },
  { name: 'mixda', stage: 'target', method: 'mixda-task', needs: ['mixda-domain'], options: (b) => ({ 'domain-adapters': [b.one.get('mixda-domain')!], 'gate-hidden': 16 }), lr: 5e-3, about: 'MixDA stage 2: the frozen GSM8K knowledge adapter, a new gate and a task adapter (reduction 16) trained on the target.' },
  { name: 'mixda-task-alone', stage: 'target', method: 'mixda-task', options: { 'gate-hidden': 16 }, lr: 5e-3, about: 'the MixDA task adapter without a domain adapter: what stage 2 adds the domain knowledge to.' },
  { name: 'fusion', stage: 'target', method: 'fusion', needs: [SOURCES, OWN], options: sourceDirs, lr: 2e-3, about: 'AdapterFusion (dynamic) over the four frozen source adapters and the target\'s own.' },
  { name: 'scalearn', stage: 'target', method: 'scalearn', needs: [SOURCES, OWN], options: sourceDirs, lr: 6e-3, about: 'ScaLearn: a learned scale per source, layer and channel on the frozen adapters\' outputs.' },
  { name: 'scalearn-uniform', stage: 'target', method: 'scalearn-uniform', needs: [SOURCES, OWN], options: sourceDirs, lr: 6e-3, about: 'ScaLearnUniform: one scale per source and layer.' },
  { name: 'scalearn-plus', stage: 'target', method: 'scalearn-plus', needs: [SOURCES, OWN], options: sourceDirs, lr: 6e-3, about: 'ScaLearn++: one scale vector per source shared by all layers.' },
  { name: 'scalearn-uniform-plus', stage: 'target', method: 'scalearn-uniform-plus', needs: [SOURCES, OWN], options: sourceDirs, lr: 6e-3, about: 'ScaLearnUniform++: one number per source.' },
  { name: 'scalearn-lr3e-2', stage: 'target', method: 'scalearn', needs: [SOURCES, OWN], options: sourceDirs, lr: 3e-2, about: 'ScaLearn at 5× its paper\'s rate (40 steps here against 30 epochs there: at 6e-3 a scale can move about 0.24 from its start at 0.4).' },
  { name: 'scalearn-uniform-lr3e-2', stage: 'target', method: 'scalearn-uniform', needs: [SOURCES, OWN], options: sourceDirs, lr: 3e-2, about: 'ScaLearnUniform at 3e-2.' },
  { name: 'scalearn-plus-lr3e-2', stage: 'target', method: 'scalearn-plus', needs: [SOURCES, OWN], options: sourceDirs, lr: 3e-2, about: 'ScaLearn++ at 3e-2.' },
  { name: 'scalearn-uniform-plus-lr3e-2', stage: 'target', method: 'scalearn-uniform-plus', needs: [SOURCES, OWN], options: sourceDirs, lr: 3e-2, about: 'ScaLearnUniform++ at 3e-2.' },
];

/** The default rows named, with the rows they build on, in the default order. */
export function selectRows(names: readonly string[]): Row[] {
  for (const n of names) if (!DEFAULT_ROWS.some((r) => r.name === n)) throw new AdaptkitError(`--rows: unknown row "${n}" (rows: ${DEFAULT_ROWS.map((r) => r.name).join(', ')})`);
  const keep = new Set<string>();
  const add = (n: string) => {
    if (keep.has(n)) return;
    keep.add(n);
    for (const d of DEFAULT_ROWS.find((r) => r.name === n)!.needs ?? []) add(d);
  };
  names.forEach(add);
  return DEFAULT_ROWS.filter((r) => keep.has(r.name));
}

/** `adaptkit bench multitask` with its option values as the command line gave them. */
export async function runMultitaskCli(o: Record<string, string | boolean | undefined>): Promise<{ lines: MultitaskLine[]; markdown: string }> {
  const str = (k: string) => (typeof o[k] === 'string' ? (o[k] as string) : undefined);
  const count = (flag: string, k: string) => {
    const v = str(k);
    if (v === undefined) return undefined;
    const n = Number(v);
    if (!Number.isInteger(n) || n < 1) throw new AdaptkitError(`${flag} must be a positive integer, got "${v}"`);
    return n;
  };
  const names = str('rows')?.split(',').map((x) => x.trim()).filter(Boolean);
  const rows = names ? selectRows(names) : DEFAULT_ROWS;
  const r = await runMultitaskBench({
    rows, seeds: count('--seeds', 'seeds'), jointSteps: count('--joint-steps', 'jointSteps'), targetSteps: count('--target-steps', 'targetSteps'),
    quick: o.quick === true, dataDir: str('dataDir'), outDir: str('out'),
  });
  const md = str('markdown');
  if (md) writeFileSync(md, r.markdown);
  if (o.json !== true) process.stdout.write(`\n${r.markdown}`);
  return r;
}
