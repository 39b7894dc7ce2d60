/** Training runs that are killed, interrupted or run out of disk: what they leave behind and how they resume. */
import { after, before, describe, it, mock } from 'node:test';
import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import fs, { cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { syncBuiltinESMExports } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as ak from '../src/index.js';
import { DEFAULT_TRAIN, type TrainConfig, Trainer } from '../src/train/trainer.js';
import { readMetrics } from '../src/train/plot.js';
import { WriteError, writeFileAtomic } from '../src/io/atomic.js';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const tmp = mkdtempSync(join(tmpdir(), 'adaptkit-recovery-'));
ak.getBackend();

interface Exit {
  code: number | null;
  signal: NodeJS.Signals | null;
  out: string;
  err: string;
}

function start(args: string[], env: Record<string, string> = {}): { child: ChildProcess; done: Promise<Exit>; out: () => string } {
  const child = spawn(process.execPath, ['--import', 'tsx', ...args], { cwd: ROOT, env: { ...process.env, ADAPTKIT_BACKEND: 'native', ...env } });
  let out = '';
  let err = '';
  child.stdout!.on('data', (d) => (out += d));
  child.stderr!.on('data', (d) => (err += d));
  const done = new Promise<Exit>((resolve) => child.on('exit', (code, signal) => resolve({ code, signal, out, err })));
  return { child, done, out: () => out };
}

function until(cond: () => boolean, what: string, ms = 60_000): Promise<void> {
  const end = Date.now() + ms;
  return new Promise((resolve, reject) => {
    const iv = setInterval(() => {
      if (cond()) {
        clearInterval(iv);
        resolve();
      } else if (Date.now() > end) {
        clearInterval(iv);
        reject(new Error(`timed out waiting for ${what}`));
      }
    }, 5);
  });
}

const metricSteps = (dir: string, kind: string) => readMetrics(join(dir, 'metrics.jsonl')).records.filter((r) => r.kind === kind).map((r) => r.step as number);
const adapterBytes = (dir: string) => readFileSync(join(dir, 'adapter', 'adapter_model.safetensors'));
const checkpointEntries = (dir: string) => readdirSync(join(dir, 'checkpoints')).sort();

describe('a CLI run that was killed or interrupted', () => {
  const data = join(tmp, 'stories.jsonl');
  const rng = new ak.Rng(3);
  const words = ['Lily', 'Tom', 'the cat', 'a dog', 'the ball', 'her mom'];
  writeFileSync(data, Array.from({ length: 120 }, (_, i) => JSON.stringify({ prompt: `${words[rng.int(6)]} saw ${words[rng.int(6)]}.`, completion: ` They were ${i % 2 ? 'happy' : 'sad'}.` })).join('\n'));
  const models = join(ak.dataDir(), 'models', 'stories260K');
  const args = [
    join(ROOT, 'src/cli/bin.ts'), 'train', '--model', join(models, 'stories260K.bin'), '--tokenizer', join(models, 'tok512.bin'), '--data', data,
    '--method', 'lora', '--r', '4', '--steps', '30', '--batch-size', '8', '--lr', '3e-3', '--seq-len', '48',
    '--checkpoint-every', '3', '--keep-checkpoints', '20', '--eval-every', '6', '--json',
  ];
  const ref = join(tmp, 'ref');

  before(async () => {
    const r = await start([...args, '--out', ref]).done;
    assert.equal(r.code, 0, r.err);
  });

  it('resumes past what kills leave on disk: stale temporary folders, a partial checkpoint, a torn metrics line, steps logged after the checkpoint', async () => {
    const run = join(tmp, 'killed');
    cpSync(ref, run, { recursive: true });
    for (const f of ['adapter', 'training_report.json', 'curves.svg']) rmSync(join(run, f), { recursive: true });
    const ck = join(run, 'checkpoints');
    for (const d of checkpointEntries(run)) if (Number(d.slice(5)) > 9) rmSync(join(ck, d), { recursive: true });
    // killed in the middle of writing checkpoint 12 ...
    mkdirSync(join(ck, '.tmp-step-00000012-0a1b2c3d'));
    writeFileSync(join(ck, '.tmp-step-00000012-0a1b2c3d', 'adapter_model.safetensors'), 'partial');
    // ... and earlier in the middle of deleting checkpoint 3 ...
    cpSync(join(ck, 'step-00000003'), join(ck, '.tmp-old-step-00000003-deadbeef'), { recursive: true });
    // ... and a checkpoint 12 that lost its optimizer state (a delete cut short, a damaged disk)
    cpSync(join(ref, 'checkpoints', 'step-00000012'), join(ck, 'step-00000012'), { recursive: true });
    rmSync(join(ck, 'step-00000012', 'optimizer.safetensors'));
    // the log ran on past checkpoint 9, and the kill tore its last line
    const lines = readFileSync(join(ref, 'metrics.jsonl'), 'utf8').split('\n').filter(Boolean);
    const upTo = (n: number) => lines.filter((l) => JSON.parse(l).step <= n);
    const torn = lines.find((l) => JSON.parse(l).step === 12)!;
    writeFileSync(join(run, 'metrics.jsonl'), `${upTo(11).join('\n')}\n${torn.slice(0, 30)}`);
    // things that are not adaptkit's temporary folders stay
    writeFileSync(join(ck, 'notes.txt'), 'mine');
    mkdirSync(join(ck, '.tmp-mine'));
    mkdirSync(join(run, '.tmp-step-00000001-aaaaaaaa'));

    const r = await start([...args, '--out', run, '--resume']).done;
    assert.equal(r.code, 0, r.err);
    assert.match(r.err, /skipping a damaged checkpoint: .*step-00000012.*optimizer\.safetensors is missing/);
    assert.deepEqual(checkpointEntries(run).filter((d) => /^\.tmp-(old-)?step-/.test(d)), [], 'no temporary checkpoint folder is left');
    for (const keep of ['checkpoints/notes.txt', 'checkpoints/.tmp-mine', '.tmp-step-00000001-aaaaaaaa']) assert.ok(existsSync(join(run, keep)), keep);
    assert.deepEqual(readMetrics(join(run, 'metrics.jsonl')).malformed, []);
    assert.deepEqual(metricSteps(run, 'train'), metricSteps(ref, 'train'));
    assert.deepEqual(metricSteps(run, 'eval'), metricSteps(ref, 'eval'));
    const resumed = readFileSync(join(run, 'metrics.jsonl'), 'utf8').split('\n');
    assert.deepEqual(resumed.slice(0, upTo(9).length), upTo(9), 'the lines up to the checkpoint are kept as they were');
    for (const f of ['training_report.json', 'curves.svg']) assert.ok(existsSync(join(run, f)), f);
    assert.deepEqual(adapterBytes(run), adapterBytes(ref));
  });

  it('Ctrl-C checkpoints the step reached and says how to resume; --resume ends with the uninterrupted adapter', async () => {
    const run = join(tmp, 'interrupted');
    const p = start([...args, '--out', run]);
    await until(() => existsSync(join(run, 'checkpoints', 'step-00000003')) && metricSteps(run, 'train').length >= 4, 'the first checkpoint');
    p.child.kill('SIGINT');
    const r = await p.done;
    assert.equal(r.signal, null, 'the process ended on its own, not by the signal');
    assert.ok(r.code !== 0 && r.code !== null, `exit code ${r.code}`);
    const m = /interrupted at step (\d+) of 30; checkpoint saved in (\S+); to continue, run the same command again with --resume/.exec(r.err);
    assert.ok(m, r.err);
    const step = Number(m[1]);
    assert.ok(step >= 4 && step < 30, `step ${step}`);
    assert.equal(m[2], join(run, 'checkpoints', `step-${String(step).padStart(8, '0')}`));
    assert.equal(ak.listCheckpoints(run).at(-1), step);
    assert.equal(metricSteps(run, 'train').at(-1), step, 'the checkpoint is of the last step logged');
    assert.ok(!existsSync(join(run, 'adapter')));
    const resumed = await start([...args, '--out', run, '--resume']).done;
    assert.equal(resumed.code, 0, resumed.err);
    assert.deepEqual(metricSteps(run, 'train'), metricSteps(ref, 'train'));
    assert.deepEqual(adapterBytes(run), adapterBytes(ref));
  });
});

/** A trainer of four numbers towards a target, with weights in one file: fast, and needs no model. */
function toyTrainer(runDir: string, cfg: Partial<TrainConfig> = {}): Trainer {
  const w = ak.parameter(ak.tensor([0, 0, 0, 0]));
  const data = Array.from({ length: 8 }, (_, i) => ({ head: [], body: [i], tail: [], completion: [i] }));
  return new Trainer({} as never, [w], data, 0, { ...DEFAULT_TRAIN, steps: 6, batchSize: 2, lr: 0.1, checkpointEvery: 1, ...cfg }, runDir, {
    loss: (ex) => ({ loss: w.sub(ak.tensor([1, 2, 3, ex[0]!.body[0]!])).square().mean(), tokens: ex.length }),
    saveWeights: (dir) => writeFileAtomic(join(dir, 'w.bin'), Buffer.from(w.toArray().buffer)),
    loadWeights: (dir) => (w.storage.data as Float32Array).set(new Float32Array(new Uint8Array(readFileSync(join(dir, 'w.bin'))).buffer)),
  });
}

describe('Ctrl-C in a program that uses Trainer', () => {
  // step 3 is slow, so that signals arrive while it is in progress
  const script = join(tmp, 'interrupt.mts');
  writeFileSync(script, `
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
const src = (p: string) => import(pathToFileURL(join(${JSON.stringify(ROOT)}, 'src', p)).href);
const ak = await src('index.ts');
const { DEFAULT_TRAIN, Trainer, TrainingInterrupted } = await src('train/trainer.ts');
const { writeFileAtomic } = await src('io/atomic.ts');
const { readFileSync } = await import('node:fs');
ak.getBackend();
const w = ak.parameter(ak.tensor([0, 0, 0, 0]));
const data = Array.from({ length: 8 }, (_, i) => ({ head: [], body: [i], tail: [], completion: [i] }));
const spin = (ms: number) => { const end = Date.now() + ms; while (Date.now() < end); };
const t = new Trainer({}, [w], data, 0, { ...DEFAULT_TRAIN, steps: 6, batchSize: 2, lr: 0.1, checkpointEvery: 1 }, process.argv[2], {
  loss: (ex: { body: number[] }[]) => ({ loss: w.sub(ak.tensor([1, 2, 3, ex[0].body[0]])).square().mean(), tokens: ex.length }),
  saveWeights: (dir: string) => writeFileAtomic(join(dir, 'w.bin'), Buffer.from(w.toArray().buffer)),
  loadWeights: () => {},
  onStep: (m: { step: number }) => { if (m.step === 3) { console.log('slow step'); spin(1500); } },
});
try {
  t.run();
} catch (e) {
  if (!(e instanceof TrainingInterrupted)) throw e;
  console.log(e.message);
  console.log('after run');
  spin(10000);
}
`);

  it('finishes the step in progress, checkpoints it, throws TrainingInterrupted, and Ctrl-C kills as usual once run() is over', async () => {
    const run = join(tmp, 'lib-once');
    const p = start([script, run], { ADAPTKIT_BACKEND: 'js' });
    await until(() => p.out().includes('slow step'), 'step 3');
    p.child.kill('SIGINT');
    await until(() => p.out().includes('after run'), 'the end of run()');
    assert.match(p.out(), /interrupted at step 3 of 6; checkpoint saved in \S+step-00000003/);
    assert.deepEqual(ak.listCheckpoints(run), [2, 3]);
    const t0 = Date.now();
    p.child.kill('SIGINT');
    const r = await p.done;
    assert.equal(r.signal, 'SIGINT', 'no handler is left after run()');
    assert.ok(Date.now() - t0 < 5000);
  });

  it('a second Ctrl-C ends the process at once, leaving the earlier checkpoints', async () => {
    const run = join(tmp, 'lib-twice');
    const p = start([script, run], { ADAPTKIT_BACKEND: 'js' });
    await until(() => p.out().includes('slow step'), 'step 3');
    p.child.kill('SIGINT');
    await new Promise((r) => setTimeout(r, 100));
    assert.equal(p.child.exitCode ?? p.child.signalCode, null, 'the first Ctrl-C lets the step finish');
    p.child.kill('SIGINT');
    const r = await p.done;
    assert.equal(r.signal, 'SIGINT');
    assert.ok(!r.out.includes('interrupted'), r.out);
    assert.deepEqual(ak.listCheckpoints(run), [1, 2]);
  });
});

describe('malformed metrics lines', () => {
  it('are skipped and named by file:line, so the curves are still drawn', () => {
    const f = join(tmp, 'torn.jsonl');
    writeFileSync(f, '{"kind":"train","step":1,"loss":2}\n\n[1]\n{"kind":"train","step":2,"loss":1}\n{"kind":"train","st');
    const m = readMetrics(f);
    assert.deepEqual(m.records.map((r) => r.step), [1, 2]);
    assert.equal(m.malformed.length, 2);
    assert.match(m.malformed[0]!, new RegExp(`^${f.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}:3: not a JSON object$`));
    assert.match(m.malformed[1]!, /torn\.jsonl:5: /);
    assert.match(ak.plotMetrics(f), /^<svg/);
  });
});

describe('write errors', () => {
  // the kernel's own ENOSPC: files whose name matches are opened on /dev/full instead
  const realOpen = fs.openSync;
  let victim: RegExp | null = null;
  before(() => {
    mock.method(fs, 'openSync', (p: fs.PathLike, ...rest: unknown[]) =>
      victim?.test(String(p)) ? realOpen('/dev/full', 'w') : (realOpen as (...a: unknown[]) => number)(p, ...rest));
    syncBuiltinESMExports();
  });
  after(() => {
    mock.restoreAll();
    syncBuiltinESMExports();
  });

  it('writeFileAtomic names the file and the reason, and keeps the old contents', () => {
    const dir = join(tmp, 'atomic');
    const f = join(dir, 'report.json');
    writeFileAtomic(f, Buffer.from('old'));
    victim = /report\.json/;
    try {
      assert.throws(() => writeFileAtomic(f, Buffer.from('new')), (e: unknown) => {
        assert.ok(e instanceof WriteError && e instanceof ak.AdaptkitError);
        assert.equal(e.message, `cannot write ${f}: no space left on device (ENOSPC)`);
        assert.equal(e.code, 'ENOSPC');
        return true;
      });
    } finally {
      victim = null;
    }
    assert.equal(readFileSync(f, 'utf8'), 'old');
    assert.deepEqual(readdirSync(dir), ['report.json']);
  });

  it('a checkpoint that cannot be written names its file and leaves the previous checkpoint whole, with no temporary folder', () => {
    const run = join(tmp, 'enospc-ckpt');
    const t = toyTrainer(run, { keepCheckpoints: 2 });
    t.run({ stopAfter: 2 });
    const before = readdirSync(join(run, 'checkpoints', 'step-00000002')).map((f) => [f, readFileSync(join(run, 'checkpoints', 'step-00000002', f))]);
    victim = /\.tmp-step-00000003-[0-9a-f]+\/\.optimizer\.safetensors/;
    try {
      assert.throws(() => toyTrainer(run, { keepCheckpoints: 2 }).run({ resume: true }), (e: unknown) => {
        assert.ok(e instanceof ak.AdaptkitError);
        assert.equal(e.message, `cannot write ${join(run, 'checkpoints', 'step-00000003', 'optimizer.safetensors')}: no space left on device (ENOSPC)`);
        return true;
      });
    } finally {
      victim = null;
    }
    assert.deepEqual(checkpointEntries(run), ['step-00000001', 'step-00000002']);
    for (const [f, bytes] of before) assert.deepEqual(readFileSync(join(run, 'checkpoints', 'step-00000002', f as string)), bytes, String(f));
    // and the run resumes from it
    const r = toyTrainer(run, { keepCheckpoints: 2 }).run({ resume: true });
    assert.equal(r.steps, 6);
    assert.deepEqual(metricSteps(run, 'train'), [1, 2, 3, 4, 5, 6]);
  });

  it('a metrics line that cannot be appended names metrics.jsonl and leaves no torn line', () => {
    const run = join(tmp, 'enospc-metrics');
    toyTrainer(run).run({ stopAfter: 2 });
    victim = /metrics\.jsonl$/;
    try {
      assert.throws(() => toyTrainer(run).run({ resume: true }), new RegExp(`^AdaptkitError: cannot write ${join(run, 'metrics.jsonl')}: no space left on device \\(ENOSPC\\)$`));
    } finally {
      victim = null;
    }
    assert.equal(readFileSync(join(run, 'metrics.jsonl'), 'utf8').split('\n').filter(Boolean).length, 2);
  });

  it('cleans up', () => rmSync(tmp, { recursive: true, force: true }));
});
