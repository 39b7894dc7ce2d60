/**
 * LT-SFT on stories260K: does a sparse fine-tune compose by addition with less interference than
 * a dense one (seed-methods.md §3)?
 *
 * Two fine-tunes of the same base: φ_T, the SMS-spam task (label words ham / spam, scored by
 * their first token as in `bench methods`), and φ_D, a language-model "domain" fine-tune on GSM8K
 * question text. Each is trained by `trainLtSft` (full fine-tune of every attention and MLP
 * projection, keep the K entries that moved most, rewind to θ0, train only those K) at several
 * densities K / entries; the full phase is the same run for every density of a seed, so it runs
 * once and is reused. The dense reference is that full phase itself: every entry moved, same steps
 * and learning rate. The two differences are composed by addition (`composeSparse`) and every
 * model is scored on both held-out sets:
 *   SMS accuracy under θ+φ_T and θ+φ_T+φ_D, GSM8K NLL per token under θ+φ_D and θ+φ_T+φ_D;
 * interference is what adding the other difference costs: acc(T) − acc(T+D) and
 * nll(T+D) − nll(D). One JSON line per (seed, density), one summary per density, then a table.
 *
 * The splits are those of `bench methods` (split seed 0): SMS shuffled with the demo's shuffle,
 * first 1,000 held out; GSM8K train questions shuffled for training, the first 300 test
 * questions held out.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { AdaptkitError } from '../src/index.js';
import { AdapterModel, composeSparse, trainLtSft } from '../src/adapters/index.js';
import { dataDir } from '../src/io/data.js';
import { loadModel, loadTokenizer } from '../src/models/load.js';
import type { Tokenizer } from '../src/models/tokenizer.js';
import { type DataRecord, readRecords } from '../src/train/data.js';
import { demoModelDir } from '../src/train/demo.js';
import { evaluateLoss, labelAccuracy } from '../src/train/evaluate.js';
import { type Example, fitExamples, shuffleInPlace, toExample } from '../src/train/examples.js';
import { labelFirstTokens, type RunOptions, type RunResult, runTraining } from '../src/train/run.js';
import { describeMachine } from './machine.js';
import { meanStd } from './methods.js';


interface Split { train: Example[]; heldOut: Example[] }

function smsSplit(root: string, tok: Tokenizer): Split {
  const file = join(root, 'datasets', 'sms_spam', 'SMSSpamCollection');
  const { records } = readRecords(file, { format: 'tsv', quote: false, textColumn: 'SMS', labelColumn: 'Label' });
  const all = shuffleInPlace(records.slice(), 0);
  const make = (rs: DataRecord[]) => fitExamples(rs.map((r) => toExample(r, tok, { labelCue: '\nSpam or ham?' })), 64, true, file).examples;
  return { train: make(all.slice(1000)), heldOut: make(all.slice(0, 1000)) };
}

function gsm8kSplit(root: string, tok: Tokenizer): Split {
  const q = (f: string) => readRecords(join(root, 'datasets', 'gsm8k', f), { format: 'jsonl' }).records
    .flatMap((r) => (r.kind === 'completion' ? [r.prompt.trimEnd()] : []));
  const make = (qs: string[]) => fitExamples(qs.map((text) => toExample({ kind: 'text', text }, tok)), 96, true).examples;
  return { train: make(shuffleInPlace(q('train.jsonl'), 0)), heldOut: make(q('test.jsonl').slice(0, 300)) };
}

export interface LtSftBenchOptions {
  densities?: number[];
  seeds?: number;
  smsSteps?: number;
  gsm8kSteps?: number;
  lr?: number;
  dataDir?: string;
  write?: (line: string) => void;
  log?: (line: string) => void;
}

export async function runLtSftBench(o: LtSftBenchOptions = {}): Promise<{ markdown: string }> {
  const write = o.write ?? ((l: string) => process.stdout.write(`${l}\n`));
  const log = o.log ?? ((l: string) => process.stderr.write(`${l}\n`));
  const densities = o.densities ?? [0.001, 0.01, 0.1];
  const seeds = o.seeds ?? 3;
  const smsSteps = o.smsSteps ?? 150;
  const gsmSteps = o.gsm8kSteps ?? 80;
  const lr = o.lr ?? 2e-3;
  const root = dataDir(o.dataDir);
  const modelDir = await demoModelDir(root);
  const bin = join(modelDir, 'stories260K.bin');
  const fresh = () => loadModel(bin).model;
  const tok = loadTokenizer(bin, join(modelDir, 'tok512.bin'), fresh().config.vocabSize);
  const padId = tok.eosId ?? 0;
  const sms = smsSplit(root, tok);
  const gsm = gsm8kSplit(root, tok);
  const firstTokens = labelFirstTokens(sms.train, ['ham', 'spam']);
  const machine = describeMachine();
  const work = mkdtempSync(join(tmpdir(), 'adaptkit-bench-lt-sft-'));

  /** SMS accuracy and GSM8K NLL of the base with these differences added (none: the base). */
  const score = (dirs: string[]) => {
    const am = new AdapterModel(fresh());
    dirs.forEach((d, i) => am.load(d, `a${i}`));
    am.setActive(dirs.map((_, i) => `a${i}`));
    // a difference is a change of the weights: score the merged model, which runs at the base's speed
    const m = dirs.length ? am.merge() : am;
    return { sms_accuracy: labelAccuracy(m, sms.heldOut, firstTokens, padId).accuracy, gsm8k_nll: evaluateLoss(m, gsm.heldOut, padId).loss };
  };
  const compose = (a: string, b: string, out: string) => composeSparse([a, b], { out, overwrite: true }).dir;

  const base = score([]);
  write(JSON.stringify({ bench: 'lt-sft', kind: 'base', ...base, machine }));
  type Row = { density: number | 'dense'; seed: number; K: number | null; t: ReturnType<typeof score>; d: ReturnType<typeof score>; td: ReturnType<typeof score> };
  const rows: Row[] = [];
  try {
    for (let seed = 0; seed < seeds; seed++) {
      const runOpts = (task: 'sms' | 'gsm8k'): RunOptions => ({
        model: fresh(), tokenizer: tok, method: 'lt-sft', methodOptions: {},
        train: task === 'sms' ? sms.train : gsm.train, validation: [], outDir: join(work, `seed${seed}`, task), overwrite: true,
        config: { steps: task === 'sms' ? smsSteps : gsmSteps, batchSize: 16, lr, schedule: 'cosine', warmupSteps: Math.floor((task === 'sms' ? smsSteps : gsmSteps) / 10), seed, evalEvery: 0, maxLen: task === 'sms' ? 64 : 96 },
        identity: { bench: 'lt-sft', task, seed },
      });
      // the full phase does not depend on K: run it once per task and seed, reuse it for every K
      const fullRuns = new Map<string, RunResult>();
      const cached = (task: string) => (opts: RunOptions): RunResult => {
        const phase = (opts.adapterConfig as { phase?: string } | undefined)?.phase;
        if (phase === 'full' && fullRuns.has(task)) return fullRuns.get(task)!;
        const t0 = Date.now();
        const r = runTraining({ ...opts, model: fresh() });
        log(`seed ${seed} ${task} ${phase}${phase === 'sparse' ? ` K ${(opts.adapterConfig as { num_params?: number }).num_params ?? ''}` : ''}: loss ${Number(r.report.final_train_loss).toFixed(4)} (${((Date.now() - t0) / 1000).toFixed(1)} s)`);
        if (phase === 'full') fullRuns.set(task, r);
        return r;
      };
      const entries = (() => {
        const am = new AdapterModel(fresh());
        am.add('n', { peft_type: 'LT_SFT', phase: 'full' });
        return am.numTrainable('n');
      })();
      const evalRow = (density: number | 'dense', K: number | null, t: string, d: string) => {
        const td = compose(t, d, join(work, `seed${seed}`, `composed-${density}`));
        const row: Row = { density, seed, K, t: score([t]), d: score([d]), td: score([td]) };
        rows.push(row);
        write(JSON.stringify({
          bench: 'lt-sft', kind: 'run', seed, density, K, entries, lr, sms_steps: smsSteps, gsm8k_steps: gsmSteps,
          task_only: row.t, domain_only: row.d, composed: row.td,
          sms_interference: row.t.sms_accuracy - row.td.sms_accuracy, gsm8k_interference: row.td.gsm8k_nll - row.d.gsm8k_nll,
          machine,
        }));
        log(`seed ${seed} ${density}: sms ${row.t.sms_accuracy.toFixed(3)} -> ${row.td.sms_accuracy.toFixed(3)}, gsm8k ${row.d.gsm8k_nll.toFixed(3)} -> ${row.td.gsm8k_nll.toFixed(3)}`);
      };
      for (const density of densities) {
        const K = Math.max(1, Math.round(density * entries));
        const lt = (task: 'sms' | 'gsm8k') => trainLtSft({ ...runOpts(task), ltSft: { numParams: K } }, cached(task));
        const t = lt('sms');
        const d = lt('gsm8k');
        evalRow(density, K, t.adapterDir, d.adapterDir);
      }
      evalRow('dense', entries, fullRuns.get('sms')!.adapterDir, fullRuns.get('gsm8k')!.adapterDir);
    }
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
  const lines = [
    '| density (K) | SMS acc, φ_T | SMS acc, φ_T+φ_D | Δ SMS acc | GSM8K NLL, φ_D | GSM8K NLL, φ_T+φ_D | Δ GSM8K NLL | GSM8K NLL, φ_T alone | seeds |',
    '|---|---|---|---|---|---|---|---|---:|',
  ];
  const f = (xs: number[]) => { const { mean, std } = meanStd(xs); return std === null ? mean.toFixed(3) : `${mean.toFixed(3)} ± ${std.toFixed(3)}`; };
  for (const density of [...densities, 'dense' as const]) {
    const rs = rows.filter((r) => r.density === density);
    if (!rs.length) continue;
    const summary = {
      bench: 'lt-sft', kind: 'summary', density, K: rs[0]!.K, n: rs.length,
      sms_task_only: meanStd(rs.map((r) => r.t.sms_accuracy)), sms_composed: meanStd(rs.map((r) => r.td.sms_accuracy)),
      sms_interference: meanStd(rs.map((r) => r.t.sms_accuracy - r.td.sms_accuracy)),
      gsm8k_domain_only: meanStd(rs.map((r) => r.d.gsm8k_nll)), gsm8k_composed: meanStd(rs.map((r) => r.td.gsm8k_nll)),
      gsm8k_interference: meanStd(rs.map((r) => r.td.gsm8k_nll - r.d.gsm8k_nll)), gsm8k_task_only: meanStd(rs.map((r) => r.t.gsm8k_nll)),
      machine,
    };
    write(JSON.stringify(summary));
    const label = density === 'dense' ? `dense (full phase, ${rs[0]!.K!.toLocaleString('en-US')})` : `${density * 100}% (${rs[0]!.K!.toLocaleString('en-US')})`;
    lines.push(`| ${label} | ${f(rs.map((r) => r.t.sms_accuracy))} | ${f(rs.map((r) => r.td.sms_accuracy))} | ${f(rs.map((r) => r.td.sms_accuracy - r.t.sms_accuracy))} | ${f(rs.map((r) => r.d.gsm8k_nll))} | ${f(rs.map((r) => r.td.gsm8k_nll))} | ${f(rs.map((r) => r.td.gsm8k_nll - r.d.gsm8k_nll))} | ${f(rs.map((r) => r.t.gsm8k_nll))} | ${rs.length} |`);
  }
  lines.push('', `Base model: SMS accuracy ${base.sms_accuracy.toFixed(3)}, GSM8K NLL ${base.gsm8k_nll.toFixed(3)}. φ_T: ${smsSteps} steps on SMS; φ_D: ${gsmSteps} steps on GSM8K question text; batch 16, lr ${lr}, cosine, AdamW (weight decay 0), both phases.`);
  lines.push(`Machine: ${machine.cpu} (${machine.arch}), ${machine.cores} cores, ${machine.backend} backend${machine.simd ? ` (${machine.simd})` : ''} at ${machine.threads} threads, node ${machine.node}.`);
  return { markdown: `${lines.join('\n')}\n` };
}

/** `adaptkit bench lt-sft` with its option values as the command line gave them. */
export async function runLtSftCli(o: Record<string, string | boolean | undefined>): Promise<void> {
  const str = (k: string) => (typeof o[k] === 'string' ? (o[k] as string) : undefined);
  const pos = (flag: string, k: string, int: boolean) => {
    const v = str(k);
    if (v === undefined) return undefined;
    const n = Number(v);
    if (!(n > 0) || (int && !Number.isInteger(n))) throw new AdaptkitError(`${flag} must be a positive ${int ? 'integer' : 'number'}, got "${v}"`);
    return n;
  };
  const densities = str('densities')?.split(',').map((x) => {
    const n = Number(x);
    if (!(n > 0 && n <= 1)) throw new AdaptkitError(`--densities: "${x}" is not a fraction in (0, 1]`);
    return n;
  });
  const r = await runLtSftBench({
    densities, seeds: pos('--seeds', 'seeds', true), smsSteps: pos('--sms-steps', 'smsSteps', true), gsm8kSteps: pos('--gsm8k-steps', 'gsm8kSteps', true),
    lr: pos('--lr', 'lr', false), dataDir: str('dataDir'),
  });
  const md = str('markdown');
  if (md) writeFileSync(md, r.markdown);
  if (o.json !== true) process.stdout.write(`\n${r.markdown}`);
}

if (process.argv[1] && import.meta.url.endsWith(process.argv[1].split('/').pop()!) && process.argv[2] !== '--methods-run') {
  const args = process.argv.slice(2);
  const o: Record<string, string | boolean> = {};
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!;
    if (!a.startsWith('--')) continue;
    const key = a.slice(2).replace(/-([a-z0-9])/g, (_, c: string) => c.toUpperCase());
    if (a === '--json') o.json = true;
    else o[key] = args[++i] ?? '';
  }
  runLtSftCli(o).catch((e: Error) => {
    process.stderr.write(`${e?.message ?? e}\n`);
    process.exitCode = 1;
  });
}
