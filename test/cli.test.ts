/** The command line, run in-process with its output captured. */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { dataDir } from '../src/io/data.js';
import { runCli as run } from './cli-run.js';

const FIX = fileURLToPath(new URL('./fixtures/', import.meta.url));
const tmp = mkdtempSync(join(tmpdir(), 'adaptkit-cli-'));


describe('adaptkit CLI', () => {
  const llama = join(FIX, 'models', 'llama-gqa');
  const lora = join(FIX, 'adapters', 'lora-llama');

  it('info --json names the backend', async () => {
    const r = await run('info', '--json');
    assert.equal(r.code, 0);
    assert.match(JSON.parse(r.out).backend, /^(js|native)$/);
  });

  it('generate streams stories260K greedily', async () => {
    const d = join(dataDir(), 'models', 'stories260K');
    const r = await run('generate', '--model', join(d, 'stories260K.bin'), '--tokenizer', join(d, 'tok512.bin'), '--max-tokens', '30');
    assert.equal(r.code, 0);
    assert.match(r.out, /^Once upon a time, there was a little girl named Lily/);
  });

  it('score prints token ids, argmax, last logits and NLL; with an adapter the logits change', async () => {
    const base = JSON.parse((await run('score', '--model', llama, '--token-ids', '1,2,3', '--json')).out);
    assert.deepEqual(base.token_ids, [1, 2, 3]);
    assert.equal(base.argmax.length, 3);
    assert.equal(base.last_logits.length, 64);
    assert.ok(base.nll > 0);
    const adapted = JSON.parse((await run('score', '--model', llama, '--adapter', lora, '--token-ids', '1,2,3')).out);
    assert.notDeepEqual(adapted.last_logits, base.last_logits);
  });

  it('merge folds an adapter into a model folder that scores like the adapter', async () => {
    const out = join(tmp, 'merged');
    assert.equal((await run('merge', '--model', llama, '--adapter', lora, '--out', out)).code, 0);
    const a = JSON.parse((await run('score', '--model', llama, '--adapter', lora, '--token-ids', '4,5,6,7')).out);
    const m = JSON.parse((await run('score', '--model', out, '--token-ids', '4,5,6,7')).out);
    assert.deepEqual(m.argmax, a.argmax);
    m.last_logits.forEach((v: number, i: number) => assert.ok(Math.abs(v - a.last_logits[i]) < 1e-4));
  });

  it('merge --adapters combines, and inspect checks the count against the formula', async () => {
    const out = join(tmp, 'combined');
    const r = await run('merge', '--model', llama, '--adapters', `${lora}:0.5,${join(FIX, 'adapters', 'rslora-llama')}:0.5`, '--method', 'cat', '--out', out);
    assert.equal(r.code, 0, r.err);
    const info = JSON.parse((await run('inspect', '--adapter', out, '--model', llama, '--json')).out);
    assert.equal(info.peft_type, 'LORA');
    assert.equal(info.formula_matches, true);
    const dora = JSON.parse((await run('inspect', '--adapter', join(FIX, 'adapters', 'dora-llama'), '--model', llama, '--json')).out);
    assert.equal(dora.trainable_parameters, dora.formula_parameters);
  });

  it('bad input gives a clear message and exit code 1', async () => {
    const r1 = await run('score', '--model', llama);
    assert.equal(r1.code, 1);
    assert.match(r1.err, /score needs --text or --token-ids/);
    const r2 = await run('score', '--model', llama, '--token-ids', '1,x');
    assert.match(r2.err, /--token-ids must be integers in \[0, 64\)/);
    const r3 = await run('merge', '--model', llama, '--adapters', `${lora}:1`, '--method', 'magic', '--out', join(tmp, 'x'));
    assert.match(r3.err, /--method must be one of linear, cat, svd, ties, dare_linear, dare_ties, magnitude_prune/);
    const r4 = await run('--backend', 'gpu', 'info');
    assert.match(r4.err, /--backend must be js or native/);
  });

  it('cleans up', () => rmSync(tmp, { recursive: true, force: true }));
});
