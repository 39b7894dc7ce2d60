/**
 * ScaLearn: the adapter contract for its four presets; the combination Σ ω_i ⊙ u_i + y against
 * the PyTorch fixture (scripts/gen_fusion_fixtures.py) for vector and scalar ω; one source at
 * ω = 1 equal to that bottleneck adapter alone; dropout on ω itself in training only; the
 * initialization; parameter counts of every variant; a shared ω's gradient as the sum of the
 * per-layer ones; the fold into one BOTTLENECK adapter; config errors. CLI training with real
 * sources is in fusion.test.ts, beside AdapterFusion's.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as ak from '../src/index.js';
import { AdapterModel, defaultTargetsFor, exportAdapter, findTargets } from '../src/adapters/index.js';
import { readTensorMap } from '../src/adapters/files.js';
import { describeModel } from '../src/nn/index.js';
import { loadModel } from '../src/models/load.js';
import { SCALEARN, SHARED_OMEGA_KEY, type ScaLearnDelta } from '../src/adapters/methods/scalearn.js';
import { upOutput } from '../src/adapters/methods/source-adapters.js';
import { FIX, contractSuite, perturb, registryCases } from './contract.js';
import { assertClose } from './helpers.js';

contractSuite(registryCases().filter((c) => c.config.peft_type === 'SCALEARN'));

const FUS = fileURLToPath(new URL('./fixtures/fusion/', import.meta.url));
const SOURCES = ['a', 'b', 'c'].map((n) => join(FUS, 'sources', n));
const EXPECTED = readTensorMap(join(FUS, 'expected.safetensors'));
const tmp = mkdtempSync(join(tmpdir(), 'adaptkit-scalearn-'));
const IDS = ak.tensor([5, 17, 3, 44, 9, 1, 60, 2], [2, 4], { dtype: 'i32' }).keep();
const PATH = (l: number) => `model.layers.${l}.mlp.down_proj`;

const llama = () => new AdapterModel(loadModel(join(FIX, 'llama-gqa')).model);
const values = (t: ak.Tensor) => t.toArray() as Float32Array;
const evalLogits = (am: AdapterModel) => ak.tidy(() => ak.noGrad(() => values(am.forward(IDS))));
const deltaAt = (inst: ak.AdapterInstance, l: number) => inst.deltas.get(PATH(l)) as unknown as ScaLearnDelta;
const setValues = (t: ak.Tensor, v: ArrayLike<number>) => ak.noGrad(() => (t.storage.data as Float32Array).set(Float32Array.from(v), t.offset));

describe('ScaLearn against the PyTorch fixture', () => {
  for (const shape of ['vector', 'scalar'] as const) {
    it(`Σ ω_i ⊙ u_i + y over three sources, ω ${shape}, at every layer`, () => {
      const am = llama();
      const inst = am.add('s', { peft_type: 'SCALEARN', source_adapters: SOURCES, omega_shape: shape });
      for (const l of [0, 1]) {
        const d = deltaAt(inst, l);
        setValues(d.omega, values(EXPECTED.get(`omega.${shape}.${l}`)!));
        const out = ak.tidy(() => ak.noGrad(() => values(d.apply(EXPECTED.get(`x.${l}`)!, EXPECTED.get(`y.${l}`)!))));
        assertClose(out, values(EXPECTED.get(`scalearn.${shape}.${l}`)!), `${shape} layer ${l}`, 1e-5, 1e-5);
      }
    });
  }
});

describe('ScaLearn adapters', () => {
  for (const variant of [{ omega_shape: 'vector' }, { omega_shape: 'scalar' }, { omega_shape: 'vector', shared_omega: true }]) {
    it(`one source at ω = 1 is exactly that bottleneck adapter alone ${JSON.stringify(variant)}`, () => {
      const alone = llama();
      alone.load(SOURCES[2]!, 'c');
      const want = evalLogits(alone);
      const am = llama();
      const inst = am.add('s', { peft_type: 'SCALEARN', source_adapters: [SOURCES[2]], ...variant });
      for (const p of inst.parameters()) setValues(p, new Float32Array(p.size).fill(1));
      assert.deepEqual(evalLogits(am), want);
      // and ω matters: at 0.5 the source's contribution is halved
      for (const p of inst.parameters()) setValues(p, new Float32Array(p.size).fill(0.5));
      assert.ok(evalLogits(am).some((v, i) => Math.abs(v - want[i]!) > 1e-3));
    });
  }

  it('dropout 0.3 on ω itself in training, from the seeded generator: a fresh mask per layer, scaled by 1/0.7; none in evaluation', () => {
    const am = llama();
    const inst = am.add('s', { peft_type: 'SCALEARN', source_adapters: SOURCES, shared_omega: true }, { seed: 3 });
    const x = EXPECTED.get('x.0')!;
    const y = EXPECTED.get('y.0')!;
    const omega = values(deltaAt(inst, 0).omega);
    const reference = (l: number, mask: (k: number) => number) => {
      const us = ak.tidy(() => ak.noGrad(() => deltaAt(inst, l).sources.map((s) => values(upOutput(s, x, y)))));
      const out = new Float32Array(y.size);
      const ya = values(y);
      for (let r = 0; r < y.size / 32; r++) {
        for (let j = 0; j < 32; j++) {
          let s = ya[r * 32 + j]!;
          for (let i = 0; i < 3; i++) s += omega[i * 32 + j]! * mask(i * 32 + j) * us[i]![r * 32 + j]!;
          out[r * 32 + j] = s;
        }
      }
      return out;
    };
    const run = () => ak.tidy(() => ak.noGrad(() => [0, 1].map((l) => values(deltaAt(inst, l).apply(x, y)))));
    ak.manualSeed(11);
    const [t0, t1] = ak.training(run);
    const rng = new ak.Rng(11);
    const masks = [0, 1].map(() => Array.from({ length: 96 }, () => (rng.uniform() >= 0.3 ? 1 / (1 - 0.3) : 0)));
    assert.ok(masks[0]!.some((m) => m === 0) && masks[0]!.some((m, k) => m !== masks[1]![k]), 'some scales drop, differently per layer');
    assertClose(t0!, reference(0, (k) => Math.fround(masks[0]![k]!)), 'layer 0 in training', 1e-5, 1e-5);
    assertClose(t1!, reference(1, (k) => Math.fround(masks[1]![k]!)), 'layer 1 in training (the same shared ω)', 1e-5, 1e-5);
    const [e0] = run();
    assertClose(e0!, reference(0, () => 1), 'evaluation', 1e-5, 1e-5);
    assert.deepEqual(run(), run());
  });

  it('ω starts at N(scale/N, 0.001²) with scale 2', () => {
    const am = llama();
    const inst = am.add('s', { peft_type: 'SCALEARN', source_adapters: SOURCES }, { seed: 5 });
    const all = inst.parameters().flatMap((p) => [...values(p)]);
    const mean = all.reduce((s, v) => s + v, 0) / all.length;
    const std = Math.sqrt(all.reduce((s, v) => s + (v - mean) ** 2, 0) / all.length);
    assert.ok(Math.abs(mean - 2 / 3) < 3e-4, `mean ${mean}`);
    assert.ok(std > 7e-4 && std < 1.3e-3, `std ${std}`);
  });

  it('parameter counts: L·N·d, L·N, N·d and N, the formula and the trainable parameters alike; sources are not trainable', () => {
    const L = 2;
    const N = 3;
    const d = 32;
    const cases: [Record<string, unknown>, number][] = [
      [{ omega_shape: 'vector' }, L * N * d], [{ omega_shape: 'scalar' }, L * N],
      [{ omega_shape: 'vector', shared_omega: true }, N * d], [{ omega_shape: 'scalar', shared_omega: true }, N],
    ];
    for (const [variant, n] of cases) {
      const am = llama();
      const inst = am.add('s', { peft_type: 'SCALEARN', source_adapters: SOURCES, ...variant });
      const targets = findTargets(am.model, inst.config, defaultTargetsFor(SCALEARN, am.model, inst.config));
      assert.equal(SCALEARN.countParameters!(inst.config, targets, describeModel(am.model)), n, JSON.stringify(variant));
      assert.equal(am.trainableParameters().reduce((s, p) => s + p.size, 0), n, JSON.stringify(variant));
      assert.ok(deltaAt(inst, 0).sources.every((s) => s.parameters().every((p) => !p.requiresGrad)));
    }
  });

  it('a shared ω is one tensor saved once, whose gradient is the sum of what per-layer copies of it get', () => {
    const shared = llama();
    const s = shared.add('s', { peft_type: 'SCALEARN', source_adapters: SOURCES, shared_omega: true }, { seed: 2 });
    perturb(shared, 4);
    const w = values(s.parameters()[0]!);
    const per = llama();
    const p = per.add('p', { peft_type: 'SCALEARN', source_adapters: SOURCES }, { seed: 2 });
    for (const t of p.parameters()) setValues(t, w);
    assert.deepEqual(evalLogits(per), evalLogits(shared));
    const R = ak.randn([2, 4, 64], { rng: new ak.Rng(9) }).keep();
    for (const am of [shared, per]) ak.tidy(() => ak.sum(ak.mul(am.forward(IDS), R)).backward());
    const sum = new Float32Array(w.length);
    for (const t of p.parameters()) values(t.grad!).forEach((g, k) => (sum[k]! += g));
    assertClose(values(s.parameters()[0]!.grad!), sum, 'shared gradient', 1e-5, 1e-5);
    const dir = join(tmp, 'shared');
    shared.save(dir, 's');
    const keys = [...readTensorMap(join(dir, 'adapter_model.safetensors')).keys()];
    assert.deepEqual(keys.filter((k) => k.includes('scalearn_omega')), [SHARED_OMEGA_KEY]);
    assert.equal(JSON.parse(readFileSync(join(dir, 'adapter_config.json'), 'utf8')).shared_omega, true);
  });

  it('folds into one BOTTLENECK adapter whose bottleneck stacks the sources, the same outputs; refused where it cannot', () => {
    const am = llama();
    am.add('s', { peft_type: 'SCALEARN', num_sources: 3 }, { seed: 6 });
    perturb(am, 7);
    const want = evalLogits(am);
    const dir = join(tmp, 'folded');
    exportAdapter(am, 's', 'BOTTLENECK', dir);
    const cfg = JSON.parse(readFileSync(join(dir, 'adapter_config.json'), 'utf8'));
    assert.equal(cfg.peft_type, 'BOTTLENECK');
    // three fresh sources of width 32 / 16 = 2 each
    assert.equal(cfg.bottleneck_size, 6);
    const plain = llama();
    plain.load(dir, 'b');
    assertClose(evalLogits(plain), want, 'folded bottleneck', 1e-5, 1e-5);
    const mixed = llama();
    mixed.add('m', { peft_type: 'SCALEARN', source_adapters: SOURCES });
    assert.throws(() => exportAdapter(mixed, 'm', 'BOTTLENECK', join(tmp, 'no')), /cannot be written as one BOTTLENECK adapter: its sources use different non-linearities/);
  });

  it('bad settings are errors naming the field', () => {
    const am = llama();
    assert.throws(() => am.add('s', { peft_type: 'SCALEARN', omega_shape: 'matrix' }), /"omega_shape" must be one of "vector", "scalar"/);
    assert.throws(() => am.add('s', { peft_type: 'SCALEARN', dropout_ratio: 1 }), /"dropout_ratio" must be below 1/);
    assert.throws(() => am.add('s', { peft_type: 'SCALEARN', shared_omega: 'yes' }), /"shared_omega" must be true or false/);
    assert.throws(() => am.add('s', { peft_type: 'SCALEARN', num_sources: 0 }), /"num_sources" must be a number >= 1/);
    assert.equal(am.adapters.size, 0);
  });

  it('cleans up', () => rmSync(tmp, { recursive: true, force: true }));
});
