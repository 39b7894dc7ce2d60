/**
 * Poly / MHR: the adapter contract; PEFT POLY folders written by PyTorch (scripts/
 * gen_poly_fixtures.py) load, give its logits for per-row task ids, merge with one task and save
 * back with PEFT's keys, shapes and config fields; a mixed-task batch equals each row alone; the
 * mixing, the training-time relaxed Bernoulli draws and their gradients against hand
 * computations; MHR-μ's LoRA against the average selector; MHR-z training only the new routing
 * row (no gradients or optimizer state elsewhere); the new-task flows through the CLI; errors.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { cpSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as ak from '../src/index.js';
import { AdapterModel, defaultTargetsFor, exportAdapter, findTargets, getMethod, readTensorMap } from '../src/adapters/index.js';
import { describeModel } from '../src/nn/index.js';
import { SafetensorsFile } from '../src/io/safetensors.js';
import { loadModel } from '../src/models/load.js';
import { type PolyAdapter, type PolyDelta, averagedLora, newTaskConfig, saveAveragedLora, taskLora } from '../src/adapters/methods/poly.js';
import { FIX, contractSuite, registryCases } from './contract.js';
import { assertClose } from './helpers.js';
import { runCli } from './cli-run.js';

const POLY_FIX = fileURLToPath(new URL('./fixtures/poly/', import.meta.url));
const LLAMA = join(FIX, 'llama-gqa');
const tmp = mkdtempSync(join(tmpdir(), 'adaptkit-poly-'));

contractSuite(registryCases().filter((c) => c.config.peft_type === 'POLY'));

interface Expected { model: string; ids: number[][]; task_ids: number[]; logits: number[]; average_logits: number[] }

const expected = (name: string): Expected => JSON.parse(readFileSync(join(POLY_FIX, name, 'expected.json'), 'utf8'));
const idsOf = (e: Expected) => ak.tensor(e.ids.flat(), [e.ids.length, e.ids[0]!.length], { dtype: 'i32' });
const run = (am: AdapterModel, ids: ak.Tensor, taskIds?: ArrayLike<number>) =>
  ak.tidy(() => ak.noGrad(() => am.forward(ids, taskIds === undefined ? {} : { taskIds }).toArray() as Float32Array));
const fresh = () => new AdapterModel(loadModel(LLAMA).model);
const keysAndShapes = (file: string) => {
  const f = new SafetensorsFile(file);
  try {
    return f.keys().sort().map((k) => [k, f.info(k).shape]);
  } finally {
    f.close();
  }
};
const values = (t: ak.Tensor) => Array.from(t.toArray() as Float32Array);
const sigm = (v: number) => 1 / (1 + Math.exp(-v));

/** The method's parameter formula for a config on the fixture model. */
function counted(am: AdapterModel, raw: Record<string, unknown>): number {
  const m = getMethod('POLY');
  const c = m.parseConfig(raw, 'test');
  return m.countParameters!(c, findTargets(am.model, c, defaultTargetsFor(m, am.model, c)), describeModel(am.model));
}

describe('POLY folders written by PyTorch', () => {
  for (const name of readdirSync(POLY_FIX).sort()) {
    it(`${name}: loads, gives the reference logits for its task ids, saves back as PEFT wrote it`, () => {
      const dir = join(POLY_FIX, name);
      const exp = expected(name);
      const am = fresh();
      const inst = am.load(dir, 'p');
      assert.equal(inst.method.peftType, 'POLY');
      const ids = idsOf(exp);
      const got = run(am, ids, exp.task_ids);
      assertClose(got, exp.logits, `${name} logits`, 1e-5, 1e-5);
      const base = am.withoutAdapters(() => run(am, ids));
      assert.ok(got.some((v, i) => Math.abs(v - base[i]!) > 1e-2), 'the adapter changes the logits');
      const out = join(tmp, `saved-${name}`);
      am.save(out, 'p');
      assert.deepEqual(keysAndShapes(join(out, 'adapter_model.safetensors')), keysAndShapes(join(dir, 'adapter_model.safetensors')));
      const theirs = JSON.parse(readFileSync(join(dir, 'adapter_config.json'), 'utf8'));
      const ours = JSON.parse(readFileSync(join(out, 'adapter_config.json'), 'utf8'));
      // every PolyConfig field as PEFT wrote it (auto_mapping is PEFT's own bookkeeping)
      const { auto_mapping: _m, ...fields } = theirs;
      assert.deepEqual(ours, fields);
      const again = fresh();
      again.load(out, 'q');
      assert.deepEqual(run(again, ids, exp.task_ids), got);
    });

    it(`${name}: MHR-μ's LoRA (every skill 1/K) gives the reference logits of the average selector`, () => {
      const dir = join(POLY_FIX, name);
      const exp = expected(name);
      const am = fresh();
      am.load(dir, 'p');
      const out = join(tmp, `mu-${name}`);
      saveAveragedLora(am, 'p', out);
      const lora = fresh();
      const inst = lora.load(out, 'mu');
      assert.equal(inst.method.peftType, 'LORA');
      const ids = idsOf(exp);
      // no task ids: the average selector routes nothing
      assertClose(run(lora, ids), exp.average_logits, `${name} averaged LoRA`, 1e-5, 1e-5);
      // the same LoRA as a new task's starting point (transfer "average")
      const mu = fresh();
      const started = mu.add('mu', newTaskConfig(dir, 'average'));
      assert.equal(started.method.peftType, 'LORA');
      assertClose(run(mu, ids), exp.average_logits, `${name} transfer "average"`, 1e-5, 1e-5);
      const again = join(tmp, `mu-again-${name}`);
      mu.save(again, 'mu');
      assert.deepEqual(readFileSync(join(again, 'adapter_model.safetensors')), readFileSync(join(out, 'adapter_model.safetensors')));
      // the same LoRA config, but for a run's adapter (not one saved for inference)
      const { inference_mode: _a, ...trained } = JSON.parse(readFileSync(join(again, 'adapter_config.json'), 'utf8'));
      const { inference_mode: _b, ...exported } = JSON.parse(readFileSync(join(out, 'adapter_config.json'), 'utf8'));
      assert.deepEqual(trained, exported);
    });
  }

  it('one task: merging folds the routed change into the weights, and the task is exactly a LoRA', () => {
    const name = 'mhr-one-task-llama';
    const exp = expected(name);
    const am = fresh();
    am.load(join(POLY_FIX, name), 'p');
    const ids = idsOf(exp);
    am.merge();
    assertClose(run(am, ids), exp.logits, 'merged', 1e-5, 1e-5);
    am.unmerge();
    const out = join(tmp, 'one-task-lora');
    exportAdapter(am, 'p', 'LORA', out);
    const lora = fresh();
    lora.load(out, 'l');
    assertClose(run(lora, ids), exp.logits, 'as LoRA', 1e-5, 1e-5);
  });

  it('several tasks: merging and a single LoRA are refused by name; one task of them is exactly a LoRA', () => {
    const name = 'mhr-llama';
    const exp = expected(name);
    const am = fresh();
    am.load(join(POLY_FIX, name), 'p');
    assert.throws(() => am.merge(), /adapter "p" \(POLY\) cannot be merged/);
    assert.throws(() => exportAdapter(am, 'p', 'LORA', join(tmp, 'never')), /adapter "p" routes 3 tasks; no one LoRA equals it/);
    const ids = idsOf(exp);
    const { config, tensors } = taskLora(am, 'p', 2);
    const lora = fresh();
    const inst = lora.add('t2', config);
    inst.loadStateDict(tensors, 'task 2');
    assertClose(run(lora, ids), run(am, ids, [2]), 'task 2 as a LoRA', 1e-5, 1e-5);
  });
});

describe('per-row task routing', () => {
  it('a batch whose rows have different tasks equals each row run alone with its task', () => {
    const name = 'mhr-llama';
    const exp = expected(name);
    const am = fresh();
    am.load(join(POLY_FIX, name), 'p');
    const ids = idsOf(exp);
    const T = exp.ids[0]!.length;
    const batch = run(am, ids, exp.task_ids);
    const per = batch.length / exp.ids.length;
    exp.ids.forEach((row, i) => {
      const alone = run(am, ak.tensor(row, [1, T], { dtype: 'i32' }), [exp.task_ids[i]!]);
      assertClose(batch.subarray(i * per, (i + 1) * per), alone, `row ${i} (task ${exp.task_ids[i]})`, 1e-5, 1e-5);
    });
    // changing one row's task changes that row only
    const other = run(am, ids, [0, ...exp.task_ids.slice(1)]);
    assert.ok(other.subarray(0, per).some((v, j) => Math.abs(v - batch[j]!) > 1e-3), 'row 0 follows its task');
    assert.deepEqual(other.subarray(per), batch.subarray(per));
    // one id routes every row
    assert.deepEqual(run(am, ids, [2]), run(am, ids, exp.task_ids.map(() => 2)));
  });
});

/** The delta of one layer by plain loops: routing weights w[q][k] from logits, then y + (x A_t B_t) / r. */
function handDelta(d: PolyDelta, x: ak.Tensor, y: ak.Tensor, rowWeights: (row: number) => number[][]): Float32Array {
  const [S, K, dIn, r] = d.poly_lora_A.shape as [number, number, number, number];
  const dOut = d.poly_lora_B.shape[3]!;
  const A = d.poly_lora_A.toArray() as Float32Array;
  const B = d.poly_lora_B.toArray() as Float32Array;
  const xs = x.toArray() as Float32Array;
  const out = Float32Array.from(y.toArray() as Float32Array);
  const [rows, T] = x.shape as [number, number];
  const inF = S * dIn;
  const outF = S * dOut;
  for (let b = 0; b < rows; b++) {
    const w = rowWeights(b);
    const At = new Float64Array(inF * r);
    const Bt = new Float64Array(r * outF);
    for (let q = 0; q < S; q++) {
      for (let k = 0; k < K; k++) {
        for (let i = 0; i < dIn; i++) for (let j = 0; j < r; j++) At[(q * dIn + i) * r + j] += w[q]![k]! * A[((q * K + k) * dIn + i) * r + j]!;
        for (let j = 0; j < r; j++) for (let o = 0; o < dOut; o++) Bt[j * outF + q * dOut + o] += w[q]![k]! * B[((q * K + k) * r + j) * dOut + o]!;
      }
    }
    for (let t = 0; t < T; t++) {
      const h = new Float64Array(r);
      for (let j = 0; j < r; j++) for (let i = 0; i < inF; i++) h[j] += xs[(b * T + t) * inF + i]! * At[i * r + j]!;
      for (let o = 0; o < outF; o++) {
        let s = 0;
        for (let j = 0; j < r; j++) s += h[j]! * Bt[j * outF + o]!;
        out[(b * T + t) * outF + o] += s / r;
      }
    }
  }
  return out;
}

/** w = z / (Σ_k z + 1e-12) per head for one task's logits, z = sigmoid(logit + noise). */
function routingWeights(logits: Float32Array, task: number, S: number, K: number, noise: () => number): number[][] {
  return Array.from({ length: S }, (_, q) => {
    const z = Array.from({ length: K }, (_, k) => sigm(logits[task * S * K + q * K + k]! + noise()));
    const s = z.reduce((a, v) => a + v, 0);
    return z.map((v) => v / (s + 1e-12));
  });
}

describe('the routed mixture against hand computations', () => {
  const setup = () => {
    const am = fresh();
    const inst = am.load(join(POLY_FIX, 'mhr-llama'), 'p') as PolyAdapter;
    const d = inst.deltas.get('model.layers.0.mlp.down_proj')!;
    const x = ak.randn([3, 2, d.inFeatures], { rng: new ak.Rng(11) }).keep();
    const y = ak.randn([3, 2, d.outFeatures], { rng: new ak.Rng(12) }).keep();
    am.tasks.ids = Int32Array.of(2, 0, 2);
    return { am, d, x, y, tasks: [2, 0, 2], logits: d.poly_router.module_logits.toArray() as Float32Array };
  };

  it('inference: sigmoid routing normalized over skills per head, A and B mixed separately, scale 1/r', () => {
    const { d, x, y, tasks, logits } = setup();
    const got = ak.noGrad(() => d.apply(x, y).toArray() as Float32Array);
    const hand = handDelta(d, x, y, (b) => routingWeights(logits, tasks[b]!, 4, 2, () => 0));
    assertClose(got, hand, 'eval delta', 1e-5, 1e-5);
    // ΔW = B_t A_t of the mixed factors differs from mixing the skills' own products
    const mixedProducts = handDelta(d, x, y, () => [[1, 0], [1, 0], [1, 0], [1, 0]]);
    assert.ok(got.some((v, i) => Math.abs(v - mixedProducts[i]!) > 1e-3));
  });

  it('training: each row draws its own relaxed Bernoulli sample from the global generator', () => {
    const { d, x, y, tasks, logits } = setup();
    const saved = ak.defaultRng.getState();
    const got = ak.training(() => ak.noGrad(() => d.apply(x, y).toArray() as Float32Array));
    const rng = new ak.Rng();
    rng.setState(saved);
    const eps = 2 ** -23;
    const noise = () => {
      const u = Math.min(Math.max(rng.uniform(), eps), 1 - eps);
      return Math.log(u) - Math.log1p(-u);
    };
    const w = tasks.map((t) => routingWeights(logits, t, 4, 2, noise));
    assertClose(got, handDelta(d, x, y, (b) => w[b]!), 'training delta', 1e-5, 1e-5);
    // rows 0 and 2 share a task but not their draws
    assert.notDeepEqual(w[0], w[2]);
    const evalOut = ak.noGrad(() => d.apply(x, y).toArray() as Float32Array);
    assert.ok(got.some((v, i) => Math.abs(v - evalOut[i]!) > 1e-4), 'training routing differs from the deterministic one');
  });

  it('training: gradients of the skills and the routing logits match finite differences under the same draws', () => {
    const { d, x, y } = setup();
    const R = ak.randn([3, 2, d.outFeatures], { rng: new ak.Rng(13) }).keep();
    const saved = ak.defaultRng.getState();
    const objective = () => {
      ak.defaultRng.setState(saved);
      return ak.training(() => ak.sum(ak.mul(d.apply(x, y), R)));
    };
    ak.tidy(() => objective().backward());
    const h = 1e-2;
    for (const p of [d.poly_router.module_logits, d.poly_lora_A, d.poly_lora_B]) {
      const g = p.grad!.toArray();
      const data = p.storage.data as Float32Array;
      for (const j of [0, Math.floor(p.size / 3), p.size - 1]) {
        const orig = data[p.offset + j]!;
        data[p.offset + j] = orig + h;
        const up = ak.tidy(() => ak.noGrad(() => objective().item()));
        data[p.offset + j] = orig - h;
        const down = ak.tidy(() => ak.noGrad(() => objective().item()));
        data[p.offset + j] = orig;
        const fd = (up - down) / (2 * h);
        assert.ok(Math.abs(fd - g[j]!) <= 1e-2 + 1e-2 * Math.abs(fd), `${p.name}[${j}]: autodiff ${g[j]} vs finite differences ${fd}`);
      }
    }
  });

  it("MHR-μ's LoRA is A = mean_k A, B = mean_k B per head, heads concatenated, scale 1/r", () => {
    const am = fresh();
    am.load(join(POLY_FIX, 'mhr-llama'), 'p');
    const { config, tensors } = averagedLora(am, 'p');
    assert.equal(config.peft_type, 'LORA');
    assert.equal(config.r, 2);
    assert.equal(config.lora_alpha, 1);
    assert.deepEqual(config.target_modules, ['down_proj', 'q_proj', 'v_proj']);
    const src = readTensorMap(join(POLY_FIX, 'mhr-llama', 'adapter_model.safetensors'));
    for (const key of [...src.keys()].filter((k) => k.endsWith('.poly_lora_A'))) {
      const path = key.slice(0, -'.poly_lora_A'.length);
      const A = src.get(key)!;
      const B = src.get(`${path}.poly_lora_B`)!;
      const [S, K, dIn, r] = A.shape as [number, number, number, number];
      const dOut = B.shape[3]!;
      const a = A.toArray() as Float32Array;
      const bv = B.toArray() as Float32Array;
      const la = new Float32Array(r * S * dIn);
      const lb = new Float32Array(S * dOut * r);
      for (let q = 0; q < S; q++) {
        for (let j = 0; j < r; j++) {
          for (let i = 0; i < dIn; i++) {
            let s = 0;
            for (let k = 0; k < K; k++) s += a[((q * K + k) * dIn + i) * r + j]!;
            la[j * S * dIn + q * dIn + i] = s / K;
          }
          for (let o = 0; o < dOut; o++) {
            let s = 0;
            for (let k = 0; k < K; k++) s += bv[((q * K + k) * r + j) * dOut + o]!;
            lb[(q * dOut + o) * r + j] = s / K;
          }
        }
      }
      assertClose(tensors.get(`${path}.lora_A.weight`)!.toArray(), la, `${path} lora_A`, 1e-6, 1e-6);
      assertClose(tensors.get(`${path}.lora_B.weight`)!.toArray(), lb, `${path} lora_B`, 1e-6, 1e-6);
    }
  });
});

describe('a new task from a trained adapter', () => {
  const SOURCE = join(POLY_FIX, 'mhr-llama');
  const ids = ak.tensor([5, 17, 3, 44, 9, 1, 60, 2], [2, 4], { dtype: 'i32' });

  for (const keepTasks of [false, true]) {
    it(`MHR-z${keepTasks ? ' keeping the source\'s tasks' : ''}: only the new routing row trains; every other tensor stays bit-identical and has no optimizer state`, () => {
      const am = fresh();
      const inst = am.add('z', newTaskConfig(SOURCE, 'router', { keepTasks }), { seed: 4 }) as PolyAdapter;
      const newTask = keepTasks ? 3 : 0;
      const params = am.trainableParameters();
      assert.equal(params.length, inst.deltas.size);
      assert.ok(params.every((p) => p.name!.endsWith('.poly_router.module_logits') && p.shape.join() === '1,8'), 'the parameters are the new rows');
      assert.equal(am.numTrainable('z'), inst.deltas.size * 8);
      assert.equal(counted(am, newTaskConfig(SOURCE, 'router', { keepTasks })), inst.deltas.size * 8);
      const first = new Map(params.map((p) => [p.name!, values(p)]));
      const optim = new ak.AdamW(params, { lr: 0.05, weightDecay: 0.1 });
      const R = ak.randn([2, 4, 64], { rng: new ak.Rng(9) }).keep();
      for (let step = 0; step < 3; step++) {
        ak.training(() => ak.tidy(() => ak.sum(ak.mul(am.forward(ids, { taskIds: [newTask] }), R)).backward()));
        for (const d of inst.deltas.values()) assert.ok(d.poly_lora_A.grad === null && d.poly_lora_B.grad === null, 'no gradient for the skills');
        optim.step();
        optim.zeroGrad();
      }
      const state = optim.state();
      for (const bufs of [state.buffers.m!, state.buffers.v!]) {
        assert.equal(bufs.length, params.length);
        assert.ok(bufs.every((b) => b.length === 8), 'optimizer state only for the new rows');
      }
      const src = readTensorMap(join(SOURCE, 'adapter_model.safetensors'));
      const saved = inst.stateDict();
      assert.deepEqual([...saved.keys()].sort(), [...src.keys()].sort());
      for (const [k, t] of saved) {
        const s = src.get(k)!;
        if (!k.endsWith('module_logits')) {
          assert.deepEqual(values(t), values(s), `${k} unchanged`);
          continue;
        }
        assert.deepEqual(t.shape, [keepTasks ? 4 : 1, 8]);
        const v = values(t);
        if (keepTasks) assert.deepEqual(v.slice(0, 24), values(s), `${k}: the source's task rows unchanged`);
        const row = v.slice(keepTasks ? 24 : 0);
        const before = first.get(k.replace('base_model.model.', ''))!;
        assert.ok(row.some((x, i) => Math.abs(x - before[i]!) > 1e-3), `${k}: the new row trained`);
      }
      if (keepTasks) {
        // the old tasks route as before
        const old = fresh();
        old.load(SOURCE, 'p');
        assertClose(run(am, ids, [1, 2]), run(old, ids, [1, 2]), 'old tasks', 1e-6, 1e-6);
        assert.throws(() => run(am, ids), /routes by task \(n_tasks 4\) but the forward was given no task ids/);
      } else {
        // the new task is the adapter's only one: no ids needed, and it merges
        assert.deepEqual(run(am, ids), run(am, ids, [0]));
        const unmerged = run(am, ids);
        am.merge();
        assertClose(run(am, ids), unmerged, 'merged', 1e-5, 1e-5);
        am.unmerge();
      }
      const out = join(tmp, `z-${keepTasks}`);
      am.save(out, 'z');
      const cfg = JSON.parse(readFileSync(join(out, 'adapter_config.json'), 'utf8'));
      assert.equal(cfg.n_tasks, keepTasks ? 4 : 1);
      for (const k of ['transfer_from', 'transfer', 'keep_tasks']) assert.ok(!(k in cfg), `no "${k}" in the saved config`);
    });
  }

  it('Poly/MHR fine-tuning: the skills start as the source\'s and train with a fresh routing row', () => {
    const am = fresh();
    const inst = am.add('n', newTaskConfig(SOURCE, 'all'), { seed: 2 }) as PolyAdapter;
    const src = readTensorMap(join(SOURCE, 'adapter_model.safetensors'));
    for (const [path, d] of inst.deltas) {
      assert.deepEqual(values(d.poly_lora_A), values(src.get(`base_model.model.${path}.poly_lora_A`)!));
      assert.deepEqual(values(d.poly_lora_B), values(src.get(`base_model.model.${path}.poly_lora_B`)!));
      assert.deepEqual(d.poly_router.module_logits.shape, [1, 8]);
      assert.ok(values(d.poly_router.module_logits).every((v) => Math.abs(v) <= 1e-3), 'the new row starts at U(±1e-3)');
      assert.ok(d.poly_lora_A.requiresGrad && d.poly_lora_B.requiresGrad && d.poly_router.module_logits.requiresGrad);
    }
    const perTarget = [...inst.deltas.values()].reduce((n, d) => n + d.poly_lora_A.size + d.poly_lora_B.size + 8, 0);
    assert.equal(am.numTrainable('n'), perTarget);
    assert.equal(counted(am, newTaskConfig(SOURCE, 'all')), perTarget);
    const mu = fresh();
    mu.add('mu', newTaskConfig(SOURCE, 'average'));
    assert.equal(counted(mu, newTaskConfig(SOURCE, 'average')), mu.numTrainable('mu'));
  });
});

describe('the new-task flows through the CLI (stories260K)', () => {
  const D = join(ak.dataDir(), 'models', 'stories260K');
  const BIN = join(D, 'stories260K.bin');
  const TOK = join(D, 'tok512.bin');
  const data = join(tmp, 'stories.jsonl');
  const common = ['--model', BIN, '--tokenizer', TOK, '--data', data, '--steps', '2', '--batch-size', '4', '--lr', '0.01', '--val-split', '0', '--checkpoint-every', '0'];

  it('mhr trains; --from with --transfer router and average start new tasks; bad combinations fail by name', async () => {
    writeFileSync(data, `${Array.from({ length: 8 }, (_, i) => JSON.stringify({ text: `Once upon a time a ${['cat', 'dog'][i % 2]} sang ${i} songs.` })).join('\n')}\n`);
    const mt = join(tmp, 'cli-mhr');
    let r = await runCli('train', ...common, '--method', 'mhr', '--r', '2', '--n-skills', '2', '--out', mt);
    assert.equal(r.code, 0, r.err);
    const src = join(mt, 'adapter');
    const cfg = JSON.parse(readFileSync(join(src, 'adapter_config.json'), 'utf8'));
    assert.deepEqual([cfg.peft_type, cfg.n_splits, cfg.n_skills, cfg.n_tasks, cfg.r], ['POLY', 4, 2, 1, 2]);
    assert.deepEqual(cfg.target_modules, ['q_proj', 'v_proj']);

    const z = join(tmp, 'cli-z');
    r = await runCli('train', ...common, '--method', 'mhr', '--from', src, '--transfer', 'router', '--out', z);
    assert.equal(r.code, 0, r.err);
    const report = JSON.parse(readFileSync(join(z, 'training_report.json'), 'utf8'));
    // stories260K: 5 layers × (q_proj, v_proj), each with a routing row of S·K = 8 logits
    assert.equal(report.trainable_parameters, 5 * 2 * 8);
    const zcfg = JSON.parse(readFileSync(join(z, 'adapter', 'adapter_config.json'), 'utf8'));
    assert.equal(zcfg.n_tasks, 1);
    assert.ok(!('transfer_from' in zcfg));
    const a = readTensorMap(join(src, 'adapter_model.safetensors'));
    const b = readTensorMap(join(z, 'adapter', 'adapter_model.safetensors'));
    for (const [k, t] of a) if (!k.endsWith('module_logits')) assert.deepEqual(values(b.get(k)!), values(t), `${k} frozen`);

    const mu = join(tmp, 'cli-mu');
    r = await runCli('train', ...common, '--method', 'mhr', '--from', src, '--transfer', 'average', '--out', mu);
    assert.equal(r.code, 0, r.err);
    const mcfg = JSON.parse(readFileSync(join(mu, 'adapter', 'adapter_config.json'), 'utf8'));
    assert.deepEqual([mcfg.peft_type, mcfg.r, mcfg.lora_alpha], ['LORA', 2, 1]);
    const lora = new AdapterModel(ak.loadModel(BIN).model);
    assert.equal(lora.load(join(mu, 'adapter'), 'mu').method.peftType, 'LORA');
    // a one-task adapter generates (KV cache, no task ids) like any other
    r = await runCli('generate', '--model', BIN, '--tokenizer', TOK, '--adapter', join(z, 'adapter'), '--prompt', 'Once upon a time', '--max-tokens', '4');
    assert.equal(r.code, 0, r.err);
    assert.ok(r.out.startsWith('Once upon a time'));

    r = await runCli('train', ...common, '--method', 'mhr', '--transfer', 'router', '--out', join(tmp, 'cli-bad1'));
    assert.notEqual(r.code, 0);
    assert.match(r.err, /--transfer needs --from/);
    r = await runCli('train', ...common, '--method', 'mhr', '--from', src, '--n-splits', '2', '--out', join(tmp, 'cli-bad2'));
    assert.notEqual(r.code, 0);
    assert.match(r.err, /"n_splits" is 2, but the new-task adapter from .* has 4; leave it out/);
    r = await runCli('train', ...common, '--method', 'mhr', '--from', src, '--transfer', 'zz', '--out', join(tmp, 'cli-bad3'));
    assert.notEqual(r.code, 0);
    assert.match(r.err, /"transfer" must be one of "all", "router", "average"/);
  });
});

describe('bad input', () => {
  const MHR = join(POLY_FIX, 'mhr-llama');
  const ids = ak.tensor([5, 17, 3, 44, 9, 1, 60, 2], [2, 4], { dtype: 'i32' });

  it('task ids: out of range, missing with n_tasks > 1, a count that fits no batch', () => {
    const am = fresh();
    am.load(MHR, 'p');
    assert.throws(() => run(am, ids, [3, 0]), /POLY adapter "p": task id 3 is outside 0\.\.2/);
    assert.throws(() => run(am, ids, [-1, 0]), /task id -1 is outside 0\.\.2/);
    assert.throws(() => run(am, ids), /POLY adapter "p" routes by task \(n_tasks 3\) but the forward was given no task ids/);
    assert.throws(() => run(am, ids, [0, 1, 2]), /POLY adapter "p": 3 task ids for a batch of 2 rows/);
  });

  it('configs: heads that do not divide a width, unknown values, transfer keys without a source, conflicting sizes', () => {
    const am = fresh();
    assert.throws(() => am.add('a', { peft_type: 'POLY', n_splits: 3, target_modules: ['q_proj'] }),
      /"n_splits" 3 does not divide the widths of "model\.layers\.0\.self_attn\.q_proj" \(in 32, out 32\)/);
    assert.throws(() => am.add('b', { peft_type: 'POLY', poly_type: 'mixture' }), /"poly_type" must be one of "poly", got "mixture"/);
    assert.throws(() => am.add('c', { peft_type: 'POLY', n_skills: 0 }), /"n_skills" must be a number >= 1, got 0/);
    assert.throws(() => am.add('d', { peft_type: 'POLY', transfer: 'router' }), /"transfer" needs "transfer_from"/);
    assert.throws(() => am.add('e', { ...newTaskConfig(MHR, 'router'), r: 5 }), /"r" is 5, but the new-task adapter from .* has 2; leave it out/);
    assert.throws(() => am.add('f', { ...newTaskConfig(MHR, 'average'), keep_tasks: true }), /"keep_tasks" does not apply to transfer "average"/);
    assert.throws(() => am.add('g', newTaskConfig(join(tmp, 'nowhere'))), /nowhere: no such adapter folder/);
    assert.throws(() => am.add('h', newTaskConfig(join(FIX, '..', 'adapters', 'lora-llama'))), /peft_type is "LORA"; "transfer_from" of .* must name a POLY adapter/);
    assert.throws(() => am.add('i', { ...newTaskConfig(MHR), target_modules: ['o_proj'] }), /"target_modules" is \["o_proj"\], but the source adapter .* targets/);
    assert.equal(am.adapters.size, 0);
  });

  it('files: a config whose sizes do not match the tensors, a source missing a tensor', () => {
    const dir = join(tmp, 'bad-skills');
    cpSync(MHR, dir, { recursive: true });
    const cfg = JSON.parse(readFileSync(join(dir, 'adapter_config.json'), 'utf8'));
    writeFileSync(join(dir, 'adapter_config.json'), JSON.stringify({ ...cfg, n_skills: 3 }));
    assert.throws(() => fresh().load(dir, 'p'), /poly_lora_A" has shape \[4, 2, 8, 2\], the model needs \[4, 3, 8, 2\]/);
    const partial = join(tmp, 'partial');
    cpSync(MHR, partial, { recursive: true });
    const t = readTensorMap(join(MHR, 'adapter_model.safetensors'));
    const gone = 'base_model.model.model.layers.1.self_attn.v_proj.poly_lora_B';
    t.delete(gone);
    writeFileSync(join(partial, 'adapter_model.safetensors'), Buffer.concat(ak.serializeSafetensors(Object.fromEntries(t))));
    assert.throws(() => fresh().add('z', newTaskConfig(partial, 'router')), new RegExp(`adapter_model\\.safetensors: adapter weights do not match the model; missing: ${gone.replace(/\./g, '\\.')}`));
  });

  it('cleans up', () => rmSync(tmp, { recursive: true, force: true }));
});
