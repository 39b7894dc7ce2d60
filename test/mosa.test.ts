/**
 * MoSA: the adapter contract; the merged adapter against the mean of its experts computed as
 * plain bottleneck adapters; disjoint masks that bound what training changes, with untouched
 * experts left without optimizer state; the two-pass consistency objective against a hand
 * computation; CLI training as a plugin, the saved bottleneck reproducing the trained experts'
 * eval logits; exact resume from a checkpoint; deterministic inference; config errors.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as ak from '../src/index.js';
import { AdapterModel, BottleneckDelta, type BottleneckConfig } from '../src/adapters/index.js';
import { readTensorMap } from '../src/adapters/files.js';
import { Linear, describeModel } from '../src/nn/index.js';
import { loadModel } from '../src/models/load.js';
import { type ExpertLinear, MOSA, type MosaDelta } from '../src/adapters/methods/mosa.js';
import { FIX, contractSuite, perturb, registryCases } from './contract.js';
import { assertClose } from './helpers.js';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const PLUGIN = join(ROOT, 'src/adapters/methods/mosa.ts');
const D = join(ak.dataDir(), 'models', 'stories260K');
const BIN = join(D, 'stories260K.bin');
const TOK = join(D, 'tok512.bin');
const tmp = mkdtempSync(join(tmpdir(), 'adaptkit-mosa-'));

contractSuite(registryCases().filter((c) => c.config.peft_type === 'MOSA'));

const IDS = ak.tensor([5, 17, 3, 44, 9, 1, 60, 2], [2, 4], { dtype: 'i32' }).keep();

function fixture(config: Record<string, unknown>, seed = 1): { am: AdapterModel; inst: ak.AdapterInstance; deltas: MosaDelta[] } {
  const am = new AdapterModel(loadModel(join(FIX, 'llama-gqa')).model);
  const inst = am.add('m', { peft_type: 'MOSA', adapter_type: 'parallel', reduction_factor: 4, ...config }, { seed });
  return { am, inst, deltas: [...inst.deltas.values()] as MosaDelta[] };
}

const evalLogits = (am: AdapterModel, ids = IDS) => ak.tidy(() => ak.noGrad(() => am.forward(ids).toArray() as Float32Array));
const trainLogits = (am: AdapterModel, ids = IDS) => ak.training(() => evalLogits(am, ids));

/** A plain bottleneck adapter from given down and up layers (the independent reference). */
function plain(d: MosaDelta, down: Linear, up: Linear): BottleneckDelta {
  return new BottleneckDelta('ref', down, up, d.config as BottleneckConfig, d.adapter_ln);
}
const layer = (e: ExpertLinear, i: number) => new Linear(e.weight[e.split ? i : 0]!, e.bias[e.split ? i : 0]!);

describe('MoSA: split and merge', () => {
  for (const variant of [{}, { adapter_type: 'houlsby', non_linearity: 'gelu', scaling: 0.5, layer_norm: 'before' }]) {
    it(`the merged adapter's output is the mean of the experts' outputs ${JSON.stringify(variant)}`, () => {
      const { am, deltas } = fixture({ num_experts: 4, ...variant });
      perturb(am, 7);
      const n = 4;
      for (const d of deltas) {
        assert.ok(!d.adapter_down.split && d.adapter_up.split, 'share "down" splits only the up-projection');
        const width = d.adapter_up.weight[0]!.shape[0]!;
        const x = ak.randn([2, 3, width], { rng: new ak.Rng(3) });
        const y = ak.randn([2, 3, width], { rng: new ak.Rng(4) });
        const merged = ak.noGrad(() => d.apply(x, y).toArray());
        const mean = new Float32Array(merged.length);
        for (let i = 0; i < n; i++) {
          const out = ak.noGrad(() => plain(d, layer(d.adapter_down, i), layer(d.adapter_up, i)).apply(x, y).toArray());
          out.forEach((v, j) => (mean[j]! += v / n));
        }
        assertClose(merged, mean, 'merged vs mean of experts', 1e-5, 1e-5);
        // and the experts really differ, so the check is not trivial
        const e0 = ak.noGrad(() => plain(d, layer(d.adapter_down, 0), layer(d.adapter_up, 0)).apply(x, y).toArray());
        assert.ok(e0.some((v, j) => Math.abs(v - merged[j]!) > 1e-3));
      }
    });
  }

  it('a training forward runs exactly one expert per layer, drawn from the seeded global generator', () => {
    const { am, deltas } = fixture({ num_experts: 4 });
    perturb(am, 8);
    const d = deltas[0]!;
    const width = d.adapter_up.weight[0]!.shape[0]!;
    const x = ak.randn([1, 2, width], { rng: new ak.Rng(5) });
    const y = ak.zeros([1, 2, width]);
    for (const seed of [1, 2, 3, 4, 5]) {
      const k = new ak.Rng(seed).int(4);
      ak.manualSeed(seed);
      const got = ak.training(() => ak.noGrad(() => d.apply(x, y).toArray()));
      const want = ak.noGrad(() => plain(d, layer(d.adapter_down, k), layer(d.adapter_up, k)).apply(x, y).toArray());
      assertClose(got, want, `seed ${seed}: expert ${k}`, 0, 0);
    }
  });

  it('inference is deterministic; training forwards with different draws differ and replay under the same seed', () => {
    const { am } = fixture({ num_experts: 4 });
    perturb(am, 9);
    assert.deepEqual(evalLogits(am), evalLogits(am));
    ak.manualSeed(11);
    const a = trainLogits(am);
    const b = trainLogits(am);
    assert.ok(a.some((v, i) => Math.abs(v - b[i]!) > 1e-4), 'two draws give different outputs');
    assert.ok(a.some((v, i) => Math.abs(v - evalLogits(am)[i]!) > 1e-4), 'a training forward is not the merged adapter');
    ak.manualSeed(11);
    assert.deepEqual(trainLogits(am), a);
  });

  it('gradient checkpointing recomputes each block with the expert its forward drew', () => {
    const grads = (checkpointing: boolean) => {
      const { am } = fixture({ num_experts: 4, share: 'none' });
      perturb(am, 13);
      (am.model as unknown as { gradientCheckpointing: boolean }).gradientCheckpointing = checkpointing;
      const targets = ak.tensor([3, 4, 5, 6, 6, 7, 1, 8], [2, 4], { dtype: 'i32' });
      ak.manualSeed(21);
      ak.training(() => ak.tidy(() => ak.crossEntropy(am.forward(IDS), targets).backward()));
      return am.trainableParameters().map((p) => (p.grad ? Array.from(p.grad.toArray()) : null));
    };
    const plainRun = grads(false);
    const recomputed = grads(true);
    assert.deepEqual(plainRun.map((g) => g !== null), recomputed.map((g) => g !== null));
    plainRun.forEach((g, i) => g && assertClose(recomputed[i]!, g, `gradient ${i}`, 1e-6, 1e-5));
  });

  it('counts what training trains for every share mode, and saves the merged adapter as a bottleneck', () => {
    for (const share of ['down', 'up', 'none']) {
      const { am, inst, deltas } = fixture({ num_experts: 3, share, layer_norm: 'before' });
      const targets = ak.findTargets(am.model, inst.config, ak.defaultTargetsFor(MOSA, am.model, inst.config));
      assert.equal(MOSA.countParameters!(inst.config, targets, describeModel(am.model)), am.numTrainable('m'));
      assert.equal(deltas[0]!.adapter_down.split, share !== 'down');
      assert.equal(deltas[0]!.adapter_up.split, share !== 'up');
      const cfg = inst.configJson();
      assert.equal(cfg.peft_type, 'BOTTLENECK');
      assert.equal(cfg.adapter_type, 'parallel');
      assert.ok([...inst.stateDict().keys()].every((k) => /\.adapter_(down|up|ln)\.(weight|bias)$/.test(k)));
    }
  });

  it('loading bottleneck weights into MoSA makes every expert a copy of them', () => {
    const a = fixture({ num_experts: 3, share: 'none' });
    perturb(a.am, 10);
    const want = evalLogits(a.am);
    const b = fixture({ num_experts: 3, share: 'none' }, 2);
    b.inst.loadStateDict(a.inst.stateDict(), 'saved');
    // the mean of three equal copies is the value up to rounding
    assertClose(evalLogits(b.am), want, 'loaded', 1e-5, 1e-5);
    for (const d of b.deltas) for (const e of [d.adapter_down, d.adapter_up]) assert.deepEqual(e.weight[2]!.toArray(), e.weight[0]!.toArray());
    // every expert's draw now gives the merged output
    assertClose(trainLogits(b.am), want, 'any expert', 1e-5, 1e-5);
  });
});

describe('MoSA: masks and sparse training', () => {
  it('masks are disjoint, cover every entry, have equal counts and come from the seed', () => {
    const masks = (seed: number) => fixture({ num_experts: 3, share: 'none' }, seed).deltas.flatMap((d) => [d.adapter_down, d.adapter_up]);
    const a = masks(1);
    for (const e of a) {
      assert.equal(e.weight.length, 3);
      const size = e.weight[0]!.size;
      const cover = new Float32Array(size);
      for (const w of e.weight) {
        const m = w.gradMask!;
        const count = m.reduce((s, v) => s + v, 0);
        assert.ok(count === Math.floor(size / 3) || count === Math.ceil(size / 3), `equal counts (${count} of ${size})`);
        m.forEach((v, i) => (cover[i]! += v));
      }
      assert.ok(cover.every((v) => v === 1), 'each entry belongs to exactly one expert');
      for (const b of e.bias) assert.equal(b.gradMask, null, 'biases are not masked');
    }
    assert.deepEqual(masks(1).map((e) => Array.from(e.expertOf!)), a.map((e) => Array.from(e.expertOf!)));
    assert.notDeepEqual(masks(2).map((e) => Array.from(e.expertOf!)), a.map((e) => Array.from(e.expertOf!)));
  });

  it('training changes each expert only inside its mask, and an expert never drawn has no gradient and no optimizer state', () => {
    // share "none": the split down-projection starts dense, so weight decay would show outside the masks
    const { am, deltas } = fixture({ num_experts: 8, share: 'none' });
    const params = am.trainableParameters();
    const before = params.map((p) => Float32Array.from(p.toArray()));
    const opt = new ak.AdamW(params, { lr: 0.05, weightDecay: 0.1 });
    const drawn = new Set<ak.Tensor>();
    const rng = new ak.Rng(3);
    ak.manualSeed(4);
    for (let step = 0; step < 3; step++) {
      const ids = ak.tensor(Array.from({ length: 16 }, () => rng.int(64)), [2, 8], { dtype: 'i32' });
      const targets = ak.tensor(Array.from({ length: 16 }, () => rng.int(64)), [2, 8], { dtype: 'i32' });
      ak.training(() => ak.tidy(() => ak.crossEntropy(am.forward(ids), targets).backward()));
      for (const d of deltas) {
        for (const e of [d.adapter_down, d.adapter_up]) {
          const got = e.weight.filter((w) => w.grad !== null);
          assert.equal(got.length, 1, 'one expert per layer per forward');
          got.forEach((w) => drawn.add(w));
          e.bias.forEach((b, i) => assert.equal(b.grad !== null, e.weight[i]!.grad !== null));
        }
      }
      ak.maskGrads(params);
      opt.step();
      opt.zeroGrad();
    }
    const st = opt.state();
    let untouched = 0;
    for (const d of deltas) {
      for (const e of [d.adapter_down, d.adapter_up]) {
        e.weight.forEach((w, i) => {
          const pi = params.indexOf(w);
          const now = w.toArray();
          const mask = w.gradMask!;
          const changed = now.map((v, j) => (v !== before[pi]![j] ? 1 : 0));
          assert.ok(changed.every((c, j) => c === 0 || mask[j] === 1), `${w.name} changed outside its mask`);
          const bi = params.indexOf(e.bias[i]!);
          if (drawn.has(w)) {
            assert.ok(changed.some((c) => c === 1), `${w.name} was drawn and moved`);
          } else {
            untouched++;
            assert.deepEqual(now, before[pi], `${w.name} was never drawn and kept its value`);
            for (const idx of [pi, bi]) {
              assert.equal(st.buffers.steps![0]![idx], 0, `${params[idx]!.name} took no optimizer step`);
              assert.ok(st.buffers.m![idx]!.every((v) => v === 0) && st.buffers.v![idx]!.every((v) => v === 0), `${params[idx]!.name} has no moments`);
            }
          }
        });
      }
    }
    assert.ok(untouched > 0, 'some expert was never drawn');
  });
});

describe('MoSA: the consistency objective', () => {
  it('has no objective at weight 0, and at weight w it is CE(o1) + w/2 (KL(p2||p1) + KL(p1||p2)) over two drawn passes', () => {
    assert.equal(fixture({}).inst.objective, undefined);
    const w = 0.7;
    const { am, inst } = fixture({ num_experts: 4, consistency_weight: w });
    perturb(am, 12);
    const targets = ak.tensor([3, 4, 5, -100, 6, 7, -100, 8], [2, 4], { dtype: 'i32' });
    const seen: Float32Array[] = [];
    ak.manualSeed(5);
    const value = ak.training(() => ak.tidy(() => {
      const loss = inst.objective!({
        logits: () => {
          const l = am.forward(IDS);
          seen.push(Float32Array.from(l.toArray()));
          return l;
        },
        loss: (l) => ak.crossEntropy(l, targets, { ignoreIndex: -100 }),
      });
      loss.backward();
      return loss.item();
    }));
    assert.equal(seen.length, 2, 'two passes');
    assert.ok(seen[0]!.some((v, i) => Math.abs(v - seen[1]![i]!) > 1e-4), 'the passes drew different experts');
    assert.ok(am.trainableParameters().some((p) => p.grad !== null));
    const V = 64;
    const rows = seen[0]!.length / V;
    const logp = (l: Float32Array, r: number) => {
      const row = Array.from(l.subarray(r * V, (r + 1) * V));
      const mx = Math.max(...row);
      const lse = mx + Math.log(row.reduce((s, v) => s + Math.exp(v - mx), 0));
      return row.map((v) => v - lse);
    };
    const t = targets.toArray();
    let ce = 0;
    let counted = 0;
    let kl = 0;
    for (let r = 0; r < rows; r++) {
      const a = logp(seen[0]!, r);
      const b = logp(seen[1]!, r);
      if (t[r] !== -100) {
        ce -= a[t[r]!]!;
        counted++;
      }
      for (let v = 0; v < V; v++) kl += Math.exp(b[v]!) * (b[v]! - a[v]!) + Math.exp(a[v]!) * (a[v]! - b[v]!);
    }
    const want = ce / counted + (w * 0.5 * kl) / rows;
    assert.ok(Math.abs(value - want) <= 1e-5 * Math.max(1, Math.abs(want)), `objective ${value} vs ${want}`);
  });
});

describe('MoSA: training runs', () => {
  const tok = ak.loadTokenizer(BIN, TOK, 512);

  it('trains through the CLI as a plugin; the saved bottleneck gives the trained experts\' eval logits', () => {
    const data = join(tmp, 'stories.jsonl');
    const lines = Array.from({ length: 16 }, (_, i) => JSON.stringify({ text: `Once upon a time there was a ${['cat', 'dog', 'bird', 'fish'][i % 4]} who liked to ${['run', 'play', 'sing'][i % 3]}.` }));
    writeFileSync(data, `${lines.join('\n')}\n`);
    const out = join(tmp, 'cli');
    const r = spawnSync(process.execPath, [
      '--import', 'tsx', join(ROOT, 'src/cli/bin.ts'), '--plugin', PLUGIN, 'train', '--model', BIN, '--tokenizer', TOK, '--data', data,
      '--method', 'mosa', '--experts', '3', '--reduction-factor', '4', '--steps', '4', '--batch-size', '4', '--lr', '0.02',
      '--val-split', '0', '--checkpoint-every', '4', '--out', out, '--json',
    ], { cwd: ROOT, encoding: 'utf8' });
    assert.equal(r.status, 0, r.stderr);
    const cfg = JSON.parse(readFileSync(join(out, 'adapter', 'adapter_config.json'), 'utf8'));
    assert.equal(cfg.peft_type, 'BOTTLENECK');
    assert.equal(cfg.adapter_type, 'parallel');
    const saved = new AdapterModel(ak.loadModel(BIN).model);
    const bn = saved.load(join(out, 'adapter'), 'bn');
    assert.equal(bn.method.peftType, 'BOTTLENECK');
    // the trained experts, from the last checkpoint, in a MoSA adapter of the run's config
    const report = JSON.parse(readFileSync(join(out, 'training_report.json'), 'utf8'));
    assert.equal(report.adapter_config.num_experts, 3);
    const mosa = new AdapterModel(ak.loadModel(BIN).model);
    const inst = mosa.add('m', report.adapter_config, { seed: 0 });
    const file = join(out, 'checkpoints', 'step-00000004', 'adapter_training_state.safetensors');
    inst.loadCheckpointState!(readTensorMap(file), file);
    const ups = [...inst.deltas.values()].map((d) => (d as MosaDelta).adapter_up);
    assert.ok(ups.every((e) => e.weight.some((w) => w.toArray().some((v) => v !== 0))), 'training moved the up-projection experts');
    const prompt = tok.encode('Once upon a time there was a cat', { bos: true });
    const ids = ak.tensor(prompt, [1, prompt.length], { dtype: 'i32' });
    const trained = evalLogits(mosa, ids);
    assertClose(evalLogits(saved, ids), trained, 'saved bottleneck vs trained MoSA', 1e-6, 1e-6);
    mosa.setActive([]);
    const base = evalLogits(mosa, ids);
    assert.ok(trained.some((v, i) => Math.abs(v - base[i]!) > 1e-4), 'the adapter changes the logits');
  });

  it('resumes from a checkpoint exactly (experts, masks, optimizer state and draws), with the consistency term on', () => {
    const data = Array.from({ length: 24 }, (_, i) => ak.toExample({ kind: 'completion', prompt: `Tom has ${i} toys.`, completion: ` He is ${i % 2 ? 'happy' : 'sad'}.` }, tok));
    const adapterConfig = { peft_type: 'MOSA', adapter_type: 'parallel', reduction_factor: 4, num_experts: 3, share: 'none', consistency_weight: 0.5 };
    const run = (out: string, stopAfter?: number, resume = false) => ak.runTraining({
      model: ak.loadModel(BIN).model, tokenizer: tok, method: 'mosa', methodOptions: {}, adapterConfig, train: data, validation: [], outDir: out,
      config: { steps: 4, batchSize: 4, lr: 1e-2, weightDecay: 0.01, checkpointEvery: 2 }, stopAfter, resume, overwrite: !resume,
    });
    const whole = join(tmp, 'whole');
    const parts = join(tmp, 'parts');
    run(whole);
    const r = run(parts, 2);
    assert.equal(r.result.steps, 2);
    run(parts, undefined, true);
    const bytes = (dir: string, file: string) => readFileSync(join(dir, file));
    assert.deepEqual(bytes(parts, 'adapter/adapter_model.safetensors'), bytes(whole, 'adapter/adapter_model.safetensors'));
    const state = 'checkpoints/step-00000004/adapter_training_state.safetensors';
    assert.deepEqual(bytes(parts, state), bytes(whole, state));
    const losses = (dir: string) => readFileSync(join(dir, 'metrics.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l).loss);
    assert.deepEqual(losses(parts), losses(whole));
  });
});

describe('MoSA: config errors name the field', () => {
  const bad: [Record<string, unknown>, RegExp][] = [
    [{ num_experts: 33, bottleneck_size: 1 }, /"num_experts" is 33, but model\.layers\.0\.mlp\.adapter_up\.weight has only 32 entries/],
    [{ num_experts: '4' }, /"num_experts" must be a number >= 2, got "4"/],
    [{ num_experts: 1 }, /"num_experts" must be a number >= 2, got 1/],
    [{ num_experts: 2.5 }, /"num_experts" must be an integer/],
    [{ share: 'left' }, /"share" must be one of "down", "up", "none", got "left"/],
    [{ share: 0 }, /"share" must be one of/],
    [{ consistency_weight: -1 }, /"consistency_weight" must be a number >= 0/],
    [{ consistency_weight: true }, /"consistency_weight" must be a number/],
    [{ reduction_factor: 'big' }, /"reduction_factor" must be a number/],
  ];
  for (const [fields, re] of bad) {
    it(JSON.stringify(fields), () => {
      const am = new AdapterModel(loadModel(join(FIX, 'llama-gqa')).model);
      assert.throws(() => am.add('m', { peft_type: 'MOSA', adapter_type: 'parallel', ...fields }), (e: Error) => e instanceof ak.AdaptkitError && re.test(e.message));
    });
  }

  it('a damaged checkpoint assignment is refused', () => {
    const { inst } = fixture({ num_experts: 3 });
    const st = inst.checkpointState!();
    const key = [...st.keys()].find((k) => k.endsWith('.expert_of'))!;
    const owner = Int32Array.from(st.get(key)!.toArray()).fill(0);
    st.set(key, ak.fromBuffer(owner, st.get(key)!.shape));
    assert.throws(() => inst.loadCheckpointState!(st, 'ck'), /ck: ".*expert_of" is not an assignment of 256 entries to 3 experts/);
  });

  it('cleans up', () => rmSync(tmp, { recursive: true, force: true }));
});
