/**
 * The demo: adapt the pretrained TinyStories model stories260K (llama2.c) to a task it has never
 * seen and measure held-out quality before and after.
 *   sms   — LoRA on SMS spam framed as label words; accuracy on 1,000 held-out messages.
 *   gsm8k — LoRA on GSM8K questions; held-out NLL per token.
 */
import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { snapshotDownload } from '../io/hub.js';
import { join, resolve } from 'node:path';
import { AdaptkitError } from '../tensor/index.js';
import { loadModel, loadTokenizer } from '../models/load.js';
import { AdapterModel } from '../adapters/index.js';
import { dataDir, packageRoot } from '../io/data.js';
import { type DataRecord, readRecords } from './data.js';
import { type Example, fitExamples, shuffleInPlace, toExample } from './examples.js';
import { evaluateLoss, labelAccuracy } from './evaluate.js';
import { type Progress } from './progress.js';
import { labelFirstTokens, runTraining } from './run.js';

export type DemoTask = 'sms' | 'gsm8k';

export interface DemoOptions {
  task: DemoTask;
  dataDir?: string;
  outDir: string;
  steps?: number;
  seed?: number;
  progress?: Progress;
  overwrite?: boolean;
  /** Quantize the base model's linear layers first (QLoRA with nf4). */
  quantize?: string;
}

export interface DemoResult {
  task: DemoTask;
  /** The model and data files the run read. */
  model_file: string;
  data_file: string;
  metric: string;
  before: number;
  after: number;
  seconds: number;
  adapter_dir: string;
  train_examples: number;
  eval_examples: number;
}


/** The demo model's files, as llama2.c published them (sha256 checked after a download). */
export const STORIES260K = {
  repo: 'karpathy/tinyllamas',
  files: { 'stories260K/stories260K.bin': 'b0a507e7ad0f626624f17112325e66691f9076d622e1d3274d103d00299f2696', 'stories260K/tok512.bin': '037cb335abb25d1fa9e8ecae30ed2a3a8ace9302862ebcdc05d51a6bbb10c312' } as Record<string, string>,
};

/** The demo's own files, embedded in the package (assets/NOTICE.md has their origin and licenses). */
export function embeddedAsset(...parts: string[]): string {
  return join(packageRoot(), 'assets', ...parts);
}

/** Whether a data folder was named (--data-dir or ADAPTKIT_DATA) rather than defaulted. */
function namedDataDir(root: string): boolean {
  return process.env.ADAPTKIT_DATA !== undefined || resolve(root) !== dataDir();
}

/**
 * The folder holding stories260K.bin and tok512.bin: a named data folder's copy (downloaded from
 * the Hub into the HF cache, sha256-checked, when that folder lacks them), or else the copy
 * embedded in the package.
 */
export async function demoModelDir(root: string): Promise<string> {
  const local = join(root, 'models', 'stories260K');
  const embedded = embeddedAsset('stories260K');
  if (existsSync(join(local, 'stories260K.bin')) && namedDataDir(root)) return local;
  // a named data folder without the files means the Hub; otherwise the package's own copy
  if (!namedDataDir(root)) {
    if (existsSync(join(embedded, 'stories260K.bin'))) return embedded;
    if (existsSync(join(local, 'stories260K.bin'))) return local;
  }
  const snap = await snapshotDownload(STORIES260K.repo, { filter: (f) => f in STORIES260K.files });
  for (const [f, sum] of Object.entries(STORIES260K.files)) {
    const got = createHash('sha256').update(readFileSync(join(snap, f))).digest('hex');
    if (got !== sum) throw new AdaptkitError(`${f} from ${STORIES260K.repo} has sha256 ${got}, expected ${sum}`);
  }
  return join(snap, 'stories260K');
}

export function runDemo(o: DemoOptions & { modelDir?: string }): DemoResult {
  const t0 = Date.now();
  const root = dataDir(o.dataDir);
  const modelDir = o.modelDir ?? join(root, 'models', 'stories260K');
  const bin = join(modelDir, 'stories260K.bin');
  if (!existsSync(bin)) {
    throw new AdaptkitError(`${bin} not found: point --data-dir (or ADAPTKIT_DATA) at the folder holding models/stories260K and datasets/`);
  }
  const smsLocal = join(root, 'datasets', 'sms_spam', 'SMSSpamCollection');
  const smsFile = !namedDataDir(root) && existsSync(embeddedAsset('sms_spam', 'SMSSpamCollection')) ? embeddedAsset('sms_spam', 'SMSSpamCollection') : smsLocal;
  for (const d of [o.task === 'sms' ? smsFile : join(root, 'datasets', 'gsm8k', 'train.jsonl')]) {
    if (!existsSync(d)) throw new AdaptkitError(`${d} not found: the demo reads its dataset from --data-dir (or ADAPTKIT_DATA); see the README`);
  }
  // the demo replaces only its own earlier runs
  if (existsSync(o.outDir) && readdirSync(o.outDir).length > 0) {
    const cfg = join(o.outDir, 'run_config.json');
    const isDemo = existsSync(cfg) && 'demo' in (JSON.parse(readFileSync(cfg, 'utf8')) as object);
    if (!isDemo && !o.overwrite) throw new AdaptkitError(`${o.outDir} is not empty and is not an earlier demo run; choose another --out`);
  }
  const { model } = loadModel(bin, { quantize: o.quantize });
  const tok = loadTokenizer(bin, join(modelDir, 'tok512.bin'), model.config.vocabSize);
  const seed = o.seed ?? 0;
  const padId = tok.eosId ?? 0;
  let train: Example[];
  let evalSet: Example[];
  let labels: string[] | undefined;
  let seqLen: number;
  const steps = o.steps ?? (o.task === 'sms' ? 150 : 80);
  if (o.task === 'sms') {
    const file = smsFile;
    const { records } = readRecords(file, { format: 'tsv', quote: false, textColumn: 'SMS', labelColumn: 'Label' });
    const all = shuffleInPlace(records.slice(), seed);
    seqLen = 64;
    const make = (rs: DataRecord[]) => fitExamples(rs.map((r) => toExample(r, tok, { labelCue: '\nSpam or ham?' })), seqLen, true, file).examples;
    evalSet = make(all.slice(0, 1000));
    train = make(all.slice(1000));
    labels = ['ham', 'spam'];
  } else {
    const trainQ = questionsOf(join(root, 'datasets', 'gsm8k', 'train.jsonl'));
    const testQ = questionsOf(join(root, 'datasets', 'gsm8k', 'test.jsonl'));
    seqLen = 96;
    const make = (qs: string[]) => fitExamples(qs.map((q) => toExample({ kind: 'text', text: q }, tok)), seqLen, true).examples;
    train = make(shuffleInPlace(trainQ, seed));
    evalSet = make(testQ.slice(0, 300));
  }
  const measure = (am: AdapterModel): number =>
    labels ? labelAccuracy(am, evalSet, labelFirstTokens(train, labels), padId).accuracy : evaluateLoss(am, evalSet, padId).loss;
  const before = measure(new AdapterModel(model));
  const run = runTraining({
    model, tokenizer: tok, method: 'lora', methodOptions: { r: 8, alpha: 16, targets: 'all-linear' },
    train, validation: evalSet, outDir: o.outDir, overwrite: true, labels,
    config: {
      steps, batchSize: 16, lr: o.task === 'sms' ? 5e-3 : 3e-3, schedule: 'cosine', warmupSteps: 10, seed,
      evalEvery: Math.max(10, Math.floor(steps / 5)), maxLen: seqLen,
    },
    progress: o.progress,
    identity: { demo: o.task, seed, steps, quantize: o.quantize },
  });
  const am = new AdapterModel(model);
  am.load(run.adapterDir);
  const after = measure(am);
  return {
    task: o.task, model_file: bin, data_file: o.task === 'sms' ? smsFile : join(root, 'datasets', 'gsm8k', 'train.jsonl'), metric: labels ? 'accuracy' : 'nll_per_token', before, after, seconds: (Date.now() - t0) / 1000,
    adapter_dir: run.adapterDir, train_examples: train.length, eval_examples: evalSet.length,
  };
}

/** The questions of a GSM8K file ({"question", "answer"} per line). */
function questionsOf(path: string): string[] {
  const out: string[] = [];
  for (const r of readRecords(path, { format: 'jsonl' }).records) if (r.kind === 'completion') out.push(r.prompt.trimEnd());
  return out;
}
