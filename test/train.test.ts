/** Training: optimizers against PyTorch, schedules, data errors, determinism, checkpoints and resume. */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as ak from '../src/index.js';
import { assertClose } from './helpers.js';

const FIX = fileURLToPath(new URL('./fixtures/', import.meta.url));
const ROOT = fileURLToPath(new URL('..', import.meta.url));
const tmp = mkdtempSync(join(tmpdir(), 'adaptkit-train-'));
ak.getBackend();

describe('optimizers and schedules', () => {
  const fx = JSON.parse(readFileSync(join(FIX, 'optim.json'), 'utf8'));
  const make: Record<string, (p: ak.Tensor) => ak.Optimizer> = {
    adamw: (p) => new ak.AdamW([p], { lr: 0.01, betas: [0.9, 0.99], eps: 1e-8, weightDecay: 0.1 }),
    sgd: (p) => new ak.SGD([p], { lr: 0.1 }),
    sgd_momentum_wd: (p) => new ak.SGD([p], { lr: 0.1, momentum: 0.9, weightDecay: 0.01 }),
    sgd_nesterov: (p) => new ak.SGD([p], { lr: 0.05, momentum: 0.8, nesterov: true }),
  };
  for (const c of fx.cases) {
    it(`${c.name} follows PyTorch's trajectory`, () => {
      const p = ak.parameter(ak.tensor(fx.p0));
      const opt = make[c.name]!(p);
      fx.grads.forEach((g: number[], i: number) => {
        p.grad = ak.tensor(g).keep();
        opt.step();
        assertClose(p.toArray(), c.trajectory[i], `${c.name} step ${i + 1}`, 1e-6, 1e-5);
      });
    });
  }

  it('clipGradNorm matches torch.nn.utils.clip_grad_norm_', () => {
    const a = ak.parameter(ak.zeros([3, 4]));
    const b = ak.parameter(ak.zeros([5]));
    a.grad = ak.tensor(fx.clip.a_before, [3, 4]).keep();
    b.grad = ak.tensor(fx.clip.b_before).keep();
    const n = ak.clipGradNorm([a, b], fx.clip.max_norm);
    assert.ok(Math.abs(n - fx.clip.norm) < 1e-4);
    assertClose(a.grad.toArray(), fx.clip.a, 'a', 1e-6, 1e-5);
    assertClose(b.grad.toArray(), fx.clip.b, 'b', 1e-6, 1e-5);
  });

  it('schedules warm up linearly and decay to zero', () => {
    assert.equal(ak.lrFactor('constant', 50, 100), 1);
    assert.equal(ak.lrFactor('linear', 0, 100, 10), 0.1);
    assert.equal(ak.lrFactor('linear', 9, 100, 10), 1);
    assert.equal(ak.lrFactor('linear', 55, 100, 10), 0.5);
    assert.ok(Math.abs(ak.lrFactor('cosine', 55, 100, 10) - 0.5) < 1e-12);
    assert.ok(ak.lrFactor('cosine', 100, 100, 10) < 1e-12);
  });
});

describe('training data', () => {
  const file = (name: string, text: string) => {
    const p = join(tmp, name);
    writeFileSync(p, text);
    return p;
  };

  it('reads each JSONL kind and CSV/TSV with column options', () => {
    const j = file('a.jsonl', [
      '{"prompt": "Q: 1+1?", "completion": " 2"}', '{"text": "once upon a time"}', '{"text": "great film", "label": "pos"}',
      '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}', '{"question": "How many?", "answer": "#### 3"}', '',
    ].join('\n'));
    assert.deepEqual(ak.readRecords(j).records.map((r) => r.kind), ['completion', 'text', 'label', 'chat', 'completion']);
    const c = file('b.csv', 'id,review,sentiment\n1,"good, really ""good""",pos\n2,bad,neg\n');
    const r = ak.readRecords(c, { textColumn: 'review', labelColumn: 'sentiment' }).records;
    assert.deepEqual(r, [{ kind: 'label', text: 'good, really "good"', label: 'pos' }, { kind: 'label', text: 'bad', label: 'neg' }]);
    const t = file('c.tsv', 'x\ty\nhello\tthere\n');
    assert.deepEqual(ak.readRecords(t, { textColumn: 'x', completionColumn: 'y' }).records, [{ kind: 'completion', prompt: 'hello', completion: 'there' }]);
  });

  it('names file:line and the reason for a bad line, or skips and counts with skipBadLines', () => {
    const p = file('bad.jsonl', '{"text": "ok"}\n{"text": \n{"prompt": "a"}\n{"text": "fine"}\n');
    assert.throws(() => ak.readRecords(p), new RegExp(`${p.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}:2: not valid JSON`));
    const r = ak.readRecords(p, { skipBadLines: true });
    assert.equal(r.records.length, 2);
    assert.equal(r.skipped, 2);
    assert.match(r.skippedReasons[1]!, /:3: "prompt" and "completion" must both be strings/);
    assert.throws(() => ak.readRecords(file('empty.jsonl', '')), /the data file is empty/);
    assert.throws(() => ak.readRecords(join(tmp, 'missing.jsonl')), /no such data file/);
    assert.throws(() => ak.readRecords(file('cols.csv', 'a,b\n1,2\n'), { textColumn: 'text' }), /no text column "text" \(columns: a, b\)/);
  });

  it('puts loss only on completions and truncates bodies (or refuses to)', () => {
    const tok = ak.loadTokenizer('', join(ak.dataDir(), 'models', 'stories260K', 'tok512.bin'), 512);
    const e = ak.toExample({ kind: 'label', text: 'the cat sat on the mat', label: 'yes' }, tok, { labelCue: '\nAnswer:' });
    const b = ak.collate([e], 0);
    const ids = Array.from(b.ids.toArray());
    const tg = Array.from(b.targets.toArray());
    const n = e.completion.length;
    // the targets are exactly the completion tokens, at the positions that predict them
    assert.deepEqual(tg.filter((t) => t !== ak.IGNORE), e.completion);
    assert.deepEqual(tg.slice(ids.length - n - 1, ids.length - 1), e.completion);
    const fit = ak.fitExamples([e], 12, true);
    assert.equal(fit.truncated, 1);
    assert.equal(ak.exampleLength(fit.examples[0]!), 12);
    assert.deepEqual(fit.examples[0]!.completion, e.completion);
    assert.throws(() => ak.fitExamples([e], 12, false, 'x.jsonl'), /x.jsonl: example 1 has \d+ tokens, more than the context of 12/);
  });
});

function trainCli(args: string[]): Promise<{ code: number | null; out: string; err: string; kill: () => void }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, ['--import', 'tsx', join(ROOT, 'src/cli/bin.ts'), ...args], { cwd: ROOT, env: { ...process.env, ADAPTKIT_BACKEND: 'native' } });
    let out = '';
    let err = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (err += d));
    child.on('exit', (code) => resolve({ code, out, err, kill: () => child.kill('SIGKILL') }));
  });
}

describe('training runs', () => {
  const data = join(tmp, 'stories.jsonl');
  const lines: string[] = [];
  const rng = new ak.Rng(3);
  const words = ['Lily', 'Tom', 'the cat', 'a dog', 'the ball', 'her mom'];
  for (let i = 0; i < 120; i++) lines.push(JSON.stringify({ prompt: `${words[rng.int(6)]} saw ${words[rng.int(6)]}.`, completion: ` They were ${i % 2 ? 'happy' : 'sad'}.` }));
  writeFileSync(data, lines.join('\n'));
  const bin = join(ak.dataDir(), 'models', 'stories260K', 'stories260K.bin');
  const tokf = join(ak.dataDir(), 'models', 'stories260K', 'tok512.bin');
  const base = ['train', '--model', bin, '--tokenizer', tokf, '--data', data, '--method', 'lora', '--r', '4', '--steps', '12', '--batch-size', '8', '--lr', '3e-3', '--seq-len', '48', '--checkpoint-every', '3', '--eval-every', '6', '--json'];

  it('lowers the loss, writes the adapter, report, curves and metrics, and refuses to clobber the run', async () => {
    const out = join(tmp, 'run1');
    const r = await trainCli([...base, '--out', out]);
    assert.equal(r.code, 0, r.err);
    for (const f of ['adapter/adapter_config.json', 'adapter/adapter_model.safetensors', 'training_report.json', 'curves.svg', 'metrics.jsonl']) assert.ok(existsSync(join(out, f)), f);
    const metrics = readFileSync(join(out, 'metrics.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l));
    const train = metrics.filter((m) => m.kind === 'train');
    assert.equal(train.length, 12);
    assert.ok(train[11].loss < train[0].loss * 0.7, `loss ${train[0].loss} -> ${train[11].loss}`);
    assert.ok(metrics.some((m) => m.kind === 'eval' && m.loss > 0));
    assert.equal(readdirSync(join(out, 'checkpoints')).length, 2, 'keeps the last 2 checkpoints');
    assert.match(readFileSync(join(out, 'curves.svg'), 'utf8'), /^<svg/);
    const again = await trainCli([...base, '--out', out]);
    assert.equal(again.code, 1);
    assert.match(again.err, /already holds a run \(pass --resume to continue it or --overwrite to start over\)/);
  });

  it('is deterministic under a seed, and a run killed with SIGKILL resumes to the same adapter', async () => {
    const ref = join(tmp, 'ref');
    assert.equal((await trainCli([...base, '--out', ref])).code, 0);
    const ref2 = join(tmp, 'ref2');
    assert.equal((await trainCli([...base, '--out', ref2])).code, 0);
    const bytes = (d: string) => readFileSync(join(d, 'adapter', 'adapter_model.safetensors'));
    assert.deepEqual(bytes(ref2), bytes(ref), 'two runs with one seed give the same adapter');
    // kill at a random moment after the first checkpoint, then resume
    const run = join(tmp, 'killed');
    const child = spawn(process.execPath, ['--import', 'tsx', join(ROOT, 'src/cli/bin.ts'), ...base, '--out', run], { cwd: ROOT });
    const waitFor = Date.now() + 60_000;
    const wantSteps = 1 + Math.floor(Math.random() * 3);
    await new Promise<void>((resolve) => {
      const iv = setInterval(() => {
        const ck = join(run, 'checkpoints');
        const n = existsSync(ck) ? readdirSync(ck).filter((d) => d.startsWith('step-')).length : 0;
        const m = existsSync(join(run, 'metrics.jsonl')) ? readFileSync(join(run, 'metrics.jsonl'), 'utf8').split('\n').length : 0;
        if ((n >= 1 && m > 3 + wantSteps) || Date.now() > waitFor) {
          clearInterval(iv);
          child.kill('SIGKILL');
          resolve();
        }
      }, 5);
    });
    await new Promise((r) => child.on('exit', r));
    assert.ok(!existsSync(join(run, 'adapter', 'adapter_model.safetensors')), 'the run was killed before it finished');
    const resumed = await trainCli([...base, '--out', run, '--resume']);
    assert.equal(resumed.code, 0, resumed.err);
    assert.deepEqual(bytes(run), bytes(ref), 'the resumed run ends with the uninterrupted run\'s adapter');
  });

  it('a failed checkpoint write leaves the previous checkpoint intact', () => {
    const dir = join(tmp, 'ckpt');
    const state = { step: 1, buffers: { m: [new Float32Array([1, 2])] } };
    ak.saveCheckpoint(dir, 1, (d) => writeFileSync(join(d, 'w.bin'), 'one'), state, {}, 2);
    assert.throws(() => ak.saveCheckpoint(dir, 2, () => { throw new Error('ENOSPC: no space left on device'); }, state, {}, 2), /ENOSPC/);
    assert.deepEqual(ak.listCheckpoints(dir), [1]);
    assert.deepEqual(readdirSync(join(dir, 'checkpoints')), ['step-00000001']);
    assert.equal(readFileSync(join(dir, 'checkpoints', 'step-00000001', 'w.bin'), 'utf8'), 'one');
  });

  it('the SMS demo lifts held-out accuracy well above the base model (short run)', () => {
    const r = ak.runDemo({ task: 'sms', outDir: join(tmp, 'demo'), steps: 60 });
    assert.ok(r.before < 0.3, `base accuracy ${r.before}`);
    assert.ok(r.after > 0.9, `adapted accuracy ${r.after}`);
    assert.equal(r.eval_examples, 1000);
  });

  it('cleans up', () => rmSync(tmp, { recursive: true, force: true }));
});

describe('gradient checkpointing', () => {
  for (const name of ['llama-gqa', 'gpt2']) {
    it(`${name}: recomputing blocks in backward gives the same gradients (dropout replayed)`, () => {
      const grads = (ckpt: boolean) => {
        const am = new ak.AdapterModel(ak.loadModel(join(FIX, 'models', name)).model);
        am.add('a', { peft_type: 'LORA', r: 4, lora_alpha: 8, lora_dropout: 0.2, fan_in_fan_out: name === 'gpt2', target_modules: 'all-linear' }, { seed: 1 });
        for (const p of am.trainableParameters()) {
          const d = p.storage.data as Float32Array;
          for (let i = 0; i < p.size; i++) d[p.offset + i] = Math.sin(i + p.size);
        }
        (am.model as any).gradientCheckpointing = ckpt;
        ak.defaultRng.seed(42);
        ak.training(() => ak.tidy(() => {
          const ids = ak.tensor([5, 17, 3, 44, 9, 1, 60, 2], [2, 4], { dtype: 'i32' });
          ak.crossEntropy(am.forward(ids), ak.tensor([1, 2, 3, 4, 5, 6, 7, 8], [2, 4], { dtype: 'i32' })).backward();
        }));
        return am.trainableParameters().map((p) => Array.from(p.grad!.toArray()));
      };
      const plain = grads(false);
      const ck = grads(true);
      plain.forEach((g, i) => assertClose(ck[i]!, g, `parameter ${i}`, 1e-6, 1e-5));
    });
  }
});

describe('classification head', () => {
  it('trains a BERT classifier (LoRA + the head as modules_to_save) to separate sentiments', () => {
    const dir = join(FIX, 'models', 'bert');
    const { model } = ak.loadAnyModel(dir);
    const tok = ak.loadTokenizer(dir, undefined, 64);
    const rng = new ak.Rng(5);
    const pos = ['good', 'great', 'fun', 'loved'];
    const neg = ['bad', 'awful', 'boring', 'hated'];
    const records = Array.from({ length: 160 }, (_, i) => {
      const p = i % 2 === 0;
      const w = (p ? pos : neg)[rng.int(4)]!;
      return { kind: 'label' as const, text: `the movie was ${w} and the plot ${rng.int(2) ? 'was' : 'is'} ${(p ? pos : neg)[rng.int(4)]}`, label: p ? 'pos' : 'neg' };
    });
    const labels = ['neg', 'pos'];
    const ex = ak.classificationExamples(records, tok, labels, 32);
    assert.deepEqual(ex[0]!.body.slice(0, 1), [2], 'starts with [CLS]');
    const { train, validation } = ak.splitExamples(ex, 40, 0);
    const out = join(tmp, 'cls');
    const r = ak.runTraining({
      model, tokenizer: tok, method: 'lora', methodOptions: { r: 4, targets: ['query', 'value'] }, train, validation, outDir: out, labels,
      config: { steps: 40, batchSize: 16, lr: 1e-2, evalEvery: 40, schedule: 'constant' },
    });
    const fin = r.report.final_eval as { accuracy: number };
    assert.ok(fin.accuracy >= 0.9, `accuracy ${fin.accuracy}`);
    const cfg = JSON.parse(readFileSync(join(r.adapterDir, 'adapter_config.json'), 'utf8'));
    assert.deepEqual(cfg.modules_to_save, ['classifier']);
    // the saved adapter (with its head) reproduces the accuracy on a fresh model
    const am = new ak.AdapterModel(ak.loadAnyModel(dir).model);
    (am.model as any).classifier = new ak.Linear(ak.zeros([2, 32]), ak.zeros([2]));
    am.load(r.adapterDir);
    assert.equal(ak.classificationAccuracy(am as any, validation, 0).accuracy, fin.accuracy);
  });
});

describe('streaming data', () => {
  it('streams a JSONL file in shuffled chunks across epochs, and resumes from a checkpoint exactly', () => {
    const bin = join(ak.dataDir(), 'models', 'stories260K', 'stories260K.bin');
    const tok = ak.loadTokenizer(bin, join(ak.dataDir(), 'models', 'stories260K', 'tok512.bin'), 512);
    const file = join(tmp, 'big.jsonl');
    writeFileSync(file, Array.from({ length: 30 }, (_, i) => JSON.stringify({ prompt: `Tom has ${i} apples.`, completion: ` He is ${i % 3 ? 'happy' : 'sad'}.` })).join('\n') + '\n{bad line\n');
    const make = () => new ak.StreamingExamples(file, (r) => ak.toExample(r, tok), { chunkLines: 7, seed: 1, skipBadLines: true });
    // every example of an epoch is seen once, in a shuffled order
    const s = make();
    const seen = s.next(30).map((e) => tok.decode([...e.body]));
    assert.equal(new Set(seen).size, 30);
    assert.notDeepEqual(seen, [...seen].sort());
    assert.equal(s.skipped, 1);
    const run = (out: string, stopAfter?: number, resume = false) => ak.runTraining({
      model: ak.loadModel(bin).model, tokenizer: tok, method: 'lora', methodOptions: { r: 2 }, train: make(), validation: [], outDir: out,
      config: { steps: 12, batchSize: 4, lr: 3e-3, checkpointEvery: 3 }, stopAfter, resume, overwrite: !resume,
    });
    run(join(tmp, 'stream-a'));
    run(join(tmp, 'stream-b'), 5);
    run(join(tmp, 'stream-b'), undefined, true);
    const bytes = (d: string) => readFileSync(join(d, 'adapter', 'adapter_model.safetensors'));
    assert.deepEqual(bytes(join(tmp, 'stream-b')), bytes(join(tmp, 'stream-a')));
  });
});

describe('math answers', () => {
  it('finds the final number the way GSM8K marks it, or the last number in the text', () => {
    assert.equal(ak.finalNumber('so 3+4=7\n#### 1,234'), '1234');
    assert.equal(ak.finalNumber('She has 5 apples and eats 2, so 3 are left.'), '3');
    assert.equal(ak.finalNumber('#### -2.50'), '-2.5');
    assert.equal(ak.finalNumber('no digits here'), null);
  });
});

describe('trainer options', () => {
  const bin = join(ak.dataDir(), 'models', 'stories260K', 'stories260K.bin');
  const tokf = join(ak.dataDir(), 'models', 'stories260K', 'tok512.bin');
  const tok = ak.loadTokenizer(bin, tokf, 512);
  const data = Array.from({ length: 40 }, (_, i) => ak.toExample({ kind: 'completion', prompt: `Tom has ${i} toys.`, completion: ' He is happy.' }, tok));

  it('full fine-tuning trains every weight and saves a model folder', () => {
    const model = ak.loadModel(bin).model as ak.LlamaForCausalLM;
    const before = Array.from(model.model.norm.weight.toArray());
    const r = ak.runTraining({ model, tokenizer: tok, method: 'full', methodOptions: {}, train: data, validation: [], outDir: join(tmp, 'full'), config: { steps: 3, batchSize: 8, lr: 1e-3 } });
    assert.ok(existsSync(join(r.adapterDir, 'model.safetensors')));
    assert.notDeepEqual(Array.from(model.model.norm.weight.toArray()), before);
    assert.equal(r.report.trainable_parameters, model.numParameters());
  });

  it('gradient accumulation of 2 x 4 examples equals one batch of 8 when every example has equal length', () => {
    const run = (batchSize: number, gradAccum: number, out: string) => {
      const r = ak.runTraining({ model: ak.loadModel(bin).model, tokenizer: tok, method: 'lora', methodOptions: { r: 2 }, train: data.slice(0, 8), validation: [], outDir: join(tmp, out), config: { steps: 1, batchSize, gradAccum, lr: 1e-2, maxGradNorm: 0 } });
      const t = ak.readSafetensors(join(r.adapterDir, 'adapter_model.safetensors')).tensors;
      return Object.keys(t).sort().flatMap((k) => Array.from(t[k]!.toArray()));
    };
    assertClose(run(4, 2, 'acc-b'), run(8, 1, 'acc-a'), 'accumulated update', 1e-6, 1e-4);
  });

  it('early stopping ends the run when the evaluation stops improving', () => {
    const r = ak.runTraining({
      model: ak.loadModel(bin).model, tokenizer: tok, method: 'lora', methodOptions: { r: 2 }, train: data, validation: data.slice(0, 4),
      outDir: join(tmp, 'early'), config: { steps: 200, batchSize: 8, lr: 0.5, schedule: 'constant', evalEvery: 2, earlyStoppingPatience: 2 },
    });
    assert.ok(r.result.stoppedEarly);
    assert.ok(r.result.steps < 200);
  });

  it('packs several examples into a row and renders chat records with a template', () => {
    const b = ak.collate(data.slice(0, 6), 0, { pack: true, maxLen: 64 });
    assert.ok(b.ids.shape[0]! < 6, 'fewer rows than examples');
    assert.equal(b.lossTokens, data.slice(0, 6).reduce((n, e) => n + e.completion.length, 0));
    const chatml = "{% for m in messages %}{{'<|' + m['role'] + '|>' + m['content'] + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}";
    const e = ak.toExample({ kind: 'chat', messages: [{ role: 'user', content: 'Hi' }, { role: 'assistant', content: 'Hello there' }] }, tok, { chatTemplate: chatml });
    assert.equal(tok.decode([...e.tail]).trimStart(), '<|user|>Hi\n<|assistant|>');
    assert.equal(tok.decode([...e.tail, ...e.completion]).endsWith('Hello there\n'), true);
  });
});
