/** `adaptkit train`, `eval` and `demo` on a user's first day: retries, resumes, option ranges, paths. */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { dataDir } from '../src/io/data.js';
import { runCli as cli } from './cli-run.js';

const tmp = mkdtempSync(join(tmpdir(), 'adaptkit-train-cli-'));
const D = join(dataDir(), 'models', 'stories260K');
const MODEL = ['--model', join(D, 'stories260K.bin'), '--tokenizer', join(D, 'tok512.bin')];
const data = join(tmp, 'stories.jsonl');
const names = ['Lily', 'Tom', 'the cat', 'a dog'];
writeFileSync(data, Array.from({ length: 24 }, (_, i) => JSON.stringify({ prompt: `${names[i % 4]} saw ${names[(i * 3) % 4]}.`, completion: ` They were ${i % 2 ? 'happy' : 'sad'}.` })).join('\n'));
const TRAIN = ['train', ...MODEL, '--data', data, '--method', 'lora', '--r', '4', '--steps', '2', '--batch-size', '4', '--seq-len', '32', '--checkpoint-every', '1', '--json'];


const esc = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

describe('adaptkit train: retries and resumes', () => {
  it('a run that fails a check leaves nothing that blocks the retry, and --overwrite keeps the old run until the new one starts', async () => {
    const out = join(tmp, 'retry');
    const bad = await cli(...TRAIN, '--targets', 'nope', '--out', out);
    assert.equal(bad.code, 1);
    assert.match(bad.err, /matched no module/);
    assert.ok(!existsSync(join(out, 'run_config.json')), 'no run_config.json is left behind');
    const cfg = join(tmp, 'r0.json');
    writeFileSync(cfg, JSON.stringify({ peft_type: 'LORA', r: 0 }));
    const badConfig = await cli(...TRAIN.filter((a, i) => a !== '--r' && TRAIN[i - 1] !== '--r'), '--adapter-config', cfg, '--out', out);
    assert.equal(badConfig.code, 1);
    assert.match(badConfig.err, /"r" must be a number >= 1/);
    const good = await cli(...TRAIN, '--out', out);
    assert.equal(good.code, 0, good.err);
    const adapter = readFileSync(join(out, 'adapter', 'adapter_model.safetensors'));
    const failedOverwrite = await cli(...TRAIN, '--targets', 'nope', '--overwrite', '--out', out);
    assert.equal(failedOverwrite.code, 1);
    assert.deepEqual(readFileSync(join(out, 'adapter', 'adapter_model.safetensors')), adapter, 'a refused --overwrite removed nothing');
  });

  it('a folder holding only the run_config.json of a run that never started counts as empty', async () => {
    const out = join(tmp, 'config-only');
    mkdirSync(out);
    writeFileSync(join(out, 'run_config.json'), JSON.stringify({ model: 'another', config: { steps: 7 } }));
    const r = await cli(...TRAIN, '--out', out);
    assert.equal(r.code, 0, r.err);
    assert.ok(existsSync(join(out, 'adapter', 'adapter_model.safetensors')));
  });

  it('a folder of files adaptkit did not write is not called a run; --overwrite writes next to them and keeps them', async () => {
    const out = join(tmp, 'notes');
    mkdirSync(out);
    for (const f of ['notes.txt', 'plan.md']) writeFileSync(join(out, f), 'mine');
    const r = await cli(...TRAIN, '--out', out);
    assert.equal(r.code, 1);
    assert.match(r.err, new RegExp(`${esc(out)} is not empty and is not an adaptkit run \\(it holds notes\\.txt, plan\\.md\\); use an empty or new folder, or --overwrite to write the run next to these files`));
    assert.doesNotMatch(r.err, /already holds a run/);
    assert.deepEqual(readdirSync(out).sort(), ['notes.txt', 'plan.md']);
    for (let i = 0; i < 3; i++) writeFileSync(join(out, `more-${i}.txt`), 'mine');
    assert.match((await cli(...TRAIN, '--resume', '--out', out)).err, /\(it holds more-0\.txt, more-1\.txt, more-2\.txt and 2 more\)/);
    const o = await cli(...TRAIN, '--overwrite', '--out', out);
    assert.equal(o.code, 0, o.err);
    const again = await cli(...TRAIN, '--overwrite', '--out', out);
    assert.equal(again.code, 0, again.err);
    assert.equal(readFileSync(join(out, 'notes.txt'), 'utf8'), 'mine');
    assert.ok(existsSync(join(out, 'adapter', 'adapter_model.safetensors')));
  });

  it('--resume with nothing to resume says so on stderr and starts a new run', async () => {
    const missing = join(tmp, 'resume-missing');
    const r = await cli(...TRAIN, '--resume', '--out', missing);
    assert.equal(r.code, 0, r.err);
    assert.match(r.err, new RegExp(`adaptkit: nothing to resume in ${esc(missing)}: starting a new run\\n`));
    const empty = join(tmp, 'resume-empty');
    mkdirSync(empty);
    assert.match((await cli(...TRAIN, '--resume', '--out', empty)).err, new RegExp(`nothing to resume in ${esc(empty)}: starting a new run`));
    // a run without checkpoints starts over, and says so
    const noCk = join(tmp, 'resume-no-checkpoint');
    const args = [...TRAIN.filter((a, i) => a !== '--checkpoint-every' && TRAIN[i - 1] !== '--checkpoint-every'), '--checkpoint-every', '0', '--out', noCk];
    assert.equal((await cli(...args)).code, 0);
    const again = await cli(...args, '--resume');
    assert.equal(again.code, 0, again.err);
    assert.match(again.err, new RegExp(`no checkpoint to resume in ${esc(noCk)}: starting the run over`));
    // a real resume says nothing of the kind
    const resumed = await cli(...TRAIN, '--resume', '--out', missing);
    assert.equal(resumed.code, 0, resumed.err);
    assert.doesNotMatch(resumed.err, /to resume in/);
  });

  it('a resume with changed settings names each one with its old and new value', async () => {
    const out = join(tmp, 'changed');
    assert.equal((await cli(...TRAIN, '--lr', '3e-3', '--out', out)).code, 0);
    const r = await cli(...TRAIN, '--lr', '1e-3', '--batch-size', '8', '--r', '8', '--resume', '--out', out);
    assert.equal(r.code, 1);
    assert.match(r.err, new RegExp(`${esc(out)} holds a run with different settings \\(`));
    for (const s of ['--r was 4, now 8', '--batch-size was 4, now 8', '--lr was 0.003, now 0.001']) assert.ok(r.err.includes(s), `${s} in ${r.err}`);
    assert.doesNotMatch(r.err, /--steps|--seq-len|--model/, 'settings that did not change are not listed');
    assert.match(r.err, /refusing to resume it/);
    assert.equal((await cli(...TRAIN, '--lr', '3e-3', '--resume', '--out', out)).code, 0, 'the same settings resume');
  });
});

describe('numeric options name themselves and their range', () => {
  const evalArgs = ['eval', ...MODEL, '--data', data];
  const cases: [string[], string][] = [
    [['--lr', '-1'], '--lr must be a number in (0, 10], got "-1"'],
    [['--lr', '0'], '--lr must be a number in (0, 10], got "0"'],
    [['--lr', 'fast'], '--lr must be a number in (0, 10], got "fast"'],
    [['--steps', '-3'], '--steps must be an integer >= 1, got "-3"'],
    [['--steps', '1.5'], '--steps must be an integer >= 1, got "1.5"'],
    [['--warmup', '-1'], '--warmup must be an integer in [0, 2], got "-1"'],
    [['--warmup', '5'], '--warmup must be an integer in [0, 2], got "5"'],
    [['--batch-size', '0'], '--batch-size must be an integer >= 1, got "0"'],
    [['--grad-accum', '0'], '--grad-accum must be an integer >= 1, got "0"'],
    [['--val-split', '2.5'], '--val-split must be a fraction in [0, 1) or a count of examples (an integer >= 1), got "2.5"'],
    [['--val-split', '-0.1'], '--val-split must be a fraction in [0, 1) or a count of examples (an integer >= 1), got "-0.1"'],
    [['--weight-decay', '-1'], '--weight-decay must be a number >= 0, got "-1"'],
    [['--max-grad-norm', '-1'], '--max-grad-norm must be a number >= 0, got "-1"'],
    [['--momentum', '2'], '--momentum must be a number in [0, 1), got "2"'],
    [['--momentum', '1'], '--momentum must be a number in [0, 1), got "1"'],
    [['--dropout', '1.5'], '--dropout must be a number in [0, 0.99], got "1.5"'],
    [['--r', '0'], '--r must be an integer >= 1, got "0"'],
    [['--seq-len', '1'], '--seq-len must be an integer >= 2, got "1"'],
    [['--seq-len', '100000'], '--seq-len must be an integer in [2, 512] (the model\'s context), got "100000"'],
    [['--eval-every', '-1'], '--eval-every must be an integer >= 0, got "-1"'],
    [['--early-stopping', '-1'], '--early-stopping must be an integer >= 0, got "-1"'],
    [['--checkpoint-every', '-2'], '--checkpoint-every must be an integer >= 0, got "-2"'],
    [['--keep-checkpoints', '0'], '--keep-checkpoints must be an integer >= 1, got "0"'],
    [['--seed', '-1'], '--seed must be an integer in [0, 2147483647], got "-1"'],
  ];
  it('train: each bad value exits 1 with the option and its range, and writes nothing', async () => {
    for (const [args, message] of cases) {
      const out = join(tmp, `bad-${args.join('')}`);
      const r = await cli(...TRAIN, ...args, '--out', out);
      assert.equal(r.code, 1, `${args.join(' ')}: ${r.err}`);
      assert.ok(r.err.includes(`adaptkit: ${message}\n`), `${args.join(' ')}: expected ${message}, got ${r.err}`);
      assert.ok(!existsSync(out), `${args.join(' ')} left ${out}`);
    }
  });

  it('eval and demo: each bad value exits 1 with the option and its range', async () => {
    for (const [args, message] of [
      [[...evalArgs, '--batch-size', '0'], '--batch-size must be an integer >= 1, got "0"'],
      [[...evalArgs, '--limit', '0'], '--limit must be an integer >= 1, got "0"'],
      [[...evalArgs, '--max-new-tokens', '-5'], '--max-new-tokens must be an integer >= 1, got "-5"'],
      [[...evalArgs, '--seq-len', '1'], '--seq-len must be an integer >= 2, got "1"'],
      [[...evalArgs, '--seq-len', '513'], '--seq-len must be an integer in [2, 512] (the model\'s context), got "513"'],
      [['demo', '--steps', '0', '--out', join(tmp, 'demo-bad')], '--steps must be an integer >= 1, got "0"'],
      [['demo', '--seed', 'x', '--out', join(tmp, 'demo-bad')], '--seed must be an integer in [0, 2147483647], got "x"'],
    ] as [string[], string][]) {
      const r = await cli(...args);
      assert.equal(r.code, 1, `${args.join(' ')}: ${r.err}`);
      assert.ok(r.err.includes(`adaptkit: ${message}\n`), `${args.join(' ')}: expected ${message}, got ${r.err}`);
    }
  });

  it('--help states the ranges', async () => {
    const r = await cli('train', '--help');
    for (const s of ['peak learning rate: a number in (0, 10]', 'SGD momentum: a number in [0, 1)', 'linear warmup steps: an integer in [0, --steps]', 'a fraction in [0, 1) or a count of examples']) {
      assert.ok(r.out.replace(/\s+/g, ' ').includes(s), s);
    }
  });
});

describe('a file where a folder is expected', () => {
  const file = join(tmp, 'a-file');
  writeFileSync(file, 'not a folder');
  for (const [what, args, message] of [
    ['train --out FILE', [...TRAIN, '--out', file], `--out ${file} is a file, not a folder; a run is a folder for its checkpoints, metrics and adapter`],
    ['train --out FILE/sub', [...TRAIN, '--out', join(file, 'sub')], `--out ${join(file, 'sub')}: ${file} is a file, not a folder; a run is a folder for its checkpoints, metrics and adapter`],
    ['eval --adapter FILE', ['eval', ...MODEL, '--data', data, '--adapter', file], `--adapter ${file} is a file, not a folder; an adapter is a folder with adapter_config.json and adapter_model.safetensors`],
    ['eval --adapter FILE/sub', ['eval', ...MODEL, '--data', data, '--adapter', join(file, 'sub')], `--adapter ${join(file, 'sub')}: ${file} is a file, not a folder; an adapter is a folder`],
    ['demo --out FILE/sub', ['demo', '--steps', '1', '--out', join(file, 'sub')], `--out ${join(file, 'sub')}: ${file} is a file, not a folder; the demo writes its run`],
  ] as [string, string[], string][]) {
    it(`${what} names the path and says a folder is expected`, async () => {
      const r = await cli(...args);
      assert.equal(r.code, 1, r.err);
      assert.ok(r.err.includes(`adaptkit: ${message}`), `expected ${message}, got ${r.err}`);
      assert.doesNotMatch(r.err, /ENOTDIR/);
    });
  }
});

describe('a folder where a file is expected', () => {
  it('--data and --label-words name the folder instead of a raw EISDIR', async () => {
    const { readRecords, readLabelWords } = await import('../src/index.js');
    const dir = mkdtempSync(join(tmpdir(), 'adaptkit-dirs-'));
    try {
      assert.throws(() => readRecords(dir), new RegExp(`${dir.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')} is a folder; --data names a data file`));
      assert.throws(() => readLabelWords(dir), /is a folder; --label-words names a JSON or TSV file/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
