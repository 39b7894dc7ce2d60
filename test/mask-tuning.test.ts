/**
 * Regularized mask tuning (MASK_TUNING): the contract suite; the defining properties (binary
 * masks, frozen weights untouched by training, merged = W ⊙ M, the straight-through gradient, the
 * gradient-dropout rule and the objective built on it); the packed 1-bit file (layout, size,
 * exact round trip, damaged files); and a CLI training run as a plugin.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as ak from '../src/index.js';
import { AdapterModel, readTensorMap } from '../src/adapters/index.js';
import { loadModel } from '../src/models/load.js';
import '../src/adapters/methods/mask-tuning.js';
import {
  MASK_FILE, MaskDelta, type MaskTuningAdapter, distillationLoss, gradientDropout, packMasks, readMaskFile, unpackMasks,
} from '../src/adapters/methods/mask-tuning.js';
import { FIX, contractSuite, logits, perturb, registryCases } from './contract.js';
import { assertClose, randomArray } from './helpers.js';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const tmp = mkdtempSync(join(tmpdir(), 'adaptkit-mask-'));
const IDS = ak.tensor([5, 17, 3, 44, 9, 1, 60, 2], [2, 4], { dtype: 'i32' }).keep();
const TARGETS = ak.tensor([17, 3, 44, 9, 1, 60, 2, 7], [2, 4], { dtype: 'i32' }).keep();

contractSuite(registryCases().filter((c) => c.config.peft_type === 'MASK_TUNING'));

function fixture(name: 'llama-gqa' | 'gpt2' = 'llama-gqa'): AdapterModel {
  return new AdapterModel(loadModel(join(FIX, name)).model);
}

function snapshot(ts: readonly ak.Tensor[]): Buffer[] {
  return ts.map((t) => {
    const a = t.toArray() as Float32Array;
    return Buffer.from(a.buffer, a.byteOffset, a.byteLength);
  });
}

function masksOf(inst: MaskTuningAdapter): Map<string, Float32Array> {
  return new Map([...inst.stateDict()].map(([k, t]) => [k, t.toArray() as Float32Array]));
}

/** The packed size by the layout's formula. */
function expectedSize(masks: { name: string; shape: readonly number[] }[]): number {
  return 16 + masks.reduce((n, m) => n + 8 + Buffer.byteLength(m.name) + 4 * m.shape.length + Math.ceil(m.shape.reduce((p, d) => p * d, 1) / 8), 0);
}

/** numpy.packbits (bitorder "big") over a 0/1 list, written out independently of the method file. */
function packbitsBig(bits: ArrayLike<number>): number[] {
  const out: number[] = [];
  for (let i = 0; i < bits.length; i += 8) {
    let byte = 0;
    for (let j = 0; j < 8; j++) byte = byte * 2 + (i + j < bits.length ? bits[i + j]! : 0);
    out.push(byte);
  }
  return out;
}

/** The objective's step on a fixed batch, as the trainer builds it. */
function stepOf(am: AdapterModel) {
  return {
    logits: () => am.forward(IDS),
    loss: (l: ak.Tensor) => ak.crossEntropy(l, TARGETS),
    weights: ak.ones([2, 4]),
  };
}

describe('mask tuning: the mask and its gradient', () => {
  it('defaults: the attention projections q, k, v, o; scores at 1e-2, every mask entry 1; config as saved', () => {
    const am = fixture();
    const inst = am.add('m', { peft_type: 'MASK_TUNING' }) as MaskTuningAdapter;
    const paths = [...inst.deltas.keys()];
    assert.deepEqual(paths, [0, 1].flatMap((l) => ['q_proj', 'k_proj', 'v_proj', 'o_proj'].map((p) => `model.layers.${l}.self_attn.${p}`)));
    for (const [path, d] of inst.deltas) {
      assert.deepEqual(d.mask_scores.shape, (am.model.get(path) as unknown as { base_layer: ak.Linear }).base_layer.weight.shape);
      assert.ok([...d.mask_scores.toArray()].every((v) => v === Math.fround(1e-2)));
    }
    for (const m of masksOf(inst).values()) assert.ok(m.every((v) => v === 1));
    assert.equal(inst.density(), 1);
    const cfg = inst.configJson();
    assert.deepEqual(
      [cfg.peft_type, cfg.mask_scale, cfg.mask_threshold, cfg.mask_loss_weight, cfg.gdr, cfg.gdr_lambda, cfg.gdr_temperature, cfg.gdr_alpha],
      ['MASK_TUNING', 1e-2, 5e-3, 1e-4, true, 1, 1, 1],
    );
    assert.ok(Array.isArray(cfg.target_modules) && (cfg.target_modules as string[]).includes('o_proj'));
    const gpt2 = fixture('gpt2').add('m', { peft_type: 'MASK_TUNING' });
    assert.ok([...gpt2.deltas.keys()].some((p) => p.endsWith('attn.c_attn')), 'the fused qkv layer of GPT-2');
  });

  it('masks are binary: 1 strictly above the threshold, 0 at or below it', () => {
    const am = fixture();
    const inst = am.add('m', { peft_type: 'MASK_TUNING' }) as MaskTuningAdapter;
    perturb(am, 7);
    const d = [...inst.deltas.values()][0]!;
    const s = d.mask_scores.storage.data as Float32Array;
    s[d.mask_scores.offset] = Math.fround(5e-3);
    s[d.mask_scores.offset + 1] = 0.0050001;
    const m = d.mask().toArray();
    assert.equal(m[0], 0, 'a score exactly at the threshold removes');
    assert.equal(m[1], 1);
    const scores = d.mask_scores.toArray();
    m.forEach((v, i) => assert.equal(v, scores[i]! > Math.fround(5e-3) ? 1 : 0));
    for (const mask of masksOf(inst).values()) assert.ok(mask.every((v) => v === 0 || v === 1));
    const density = inst.density();
    assert.ok(density > 0.2 && density < 0.8, `perturbed scores mask part of the weights (density ${density})`);
  });

  for (const fanInFanOut of [false, true]) {
    it(`straight-through${fanInFanOut ? ' (Conv1D layout)' : ''}: ∂L/∂S equals ∂L/∂M, (∂L/∂W_eff) ⊙ W, computed independently`, () => {
      const [out, inF, B] = [3, 4, 2];
      const shape = fanInFanOut ? [inF, out] : [out, inF];
      const W = randomArray(12, 11);
      const X = randomArray(B * inF, 12);
      const R = randomArray(B * out, 13);
      const scores = ak.parameter(ak.tensor([0.01, -0.2, 0.3, 0.004, 0.02, 0.005, 0.006, -1, 0.5, 0.01, 0.0, 0.2], shape));
      const w = ak.tensor(W, shape);
      const delta = new MaskDelta('m', scores, w, fanInFanOut, 5e-3, { original: false });
      const x = ak.tensor(X, [B, inF]);
      const y = ak.linear(x, fanInFanOut ? ak.transpose(w) : w);
      ak.sum(ak.mul(delta.apply(x, y), ak.tensor(R, [B, out]))).backward();
      const M = scores.toArray().map((v) => (v > Math.fround(5e-3) ? 1 : 0));
      // W_eff[o][i] = W[o][i]·M[o][i] as [out, in]; L = Σ_b,o R[b][o] Σ_i x[b][i] W_eff[o][i]
      const at = (o: number, i: number) => (fanInFanOut ? i * out + o : o * inF + i);
      const expected = new Float64Array(12);
      for (let o = 0; o < out; o++) {
        for (let i = 0; i < inF; i++) {
          let gW = 0;
          for (let b = 0; b < B; b++) gW += R[b * out + o]! * X[b * inF + i]!;
          expected[at(o, i)] = gW * W[at(o, i)]!;
        }
      }
      assertClose(scores.grad!.toArray(), expected, 'score gradient', 1e-6, 1e-5);
      assert.ok(M.some((v) => v === 0) && M.some((v) => v === 1), 'the case has kept and removed entries');
      // the forward value is x (W ⊙ M)ᵀ, the gradient the derivative of that in M (linear, so exact by differences)
      const f = (m: ArrayLike<number>) => {
        let s = 0;
        for (let b = 0; b < B; b++) {
          for (let o = 0; o < out; o++) {
            let v = 0;
            for (let i = 0; i < inF; i++) v += X[b * inF + i]! * W[at(o, i)]! * m[at(o, i)]!;
            s += R[b * out + o]! * v;
          }
        }
        return s;
      };
      const value = ak.noGrad(() => ak.sum(ak.mul(delta.apply(x, y), ak.tensor(R, [B, out]))).item());
      assert.ok(Math.abs(value - f(M)) < 1e-5);
      for (let j = 0; j < 12; j++) {
        const up = M.slice();
        up[j] = M[j]! + 1;
        assert.ok(Math.abs(f(up) - f(M) - expected[j]!) < 1e-9);
      }
    });
  }

  it('merged weights are exactly W ⊙ M; unmerged outputs agree; the base weights are left alone', () => {
    for (const model of ['llama-gqa', 'gpt2'] as const) {
      const am = fixture(model);
      const inst = am.add('m', { peft_type: 'MASK_TUNING' }) as MaskTuningAdapter;
      perturb(am, 3);
      const adapted = logits(am);
      const base = [...inst.deltas.values()].map((d) => d.weight);
      const before = snapshot(base);
      const masks = masksOf(inst);
      const merged = am.merge();
      for (const [path, d] of inst.deltas) {
        const w = (merged.get(path) as ak.Linear).weight.toArray();
        const W = d.weight.toArray();
        const M = masks.get(`base_model.model.${path}.weight_mask`)!;
        for (let i = 0; i < w.length; i++) assert.ok(w[i] === W[i]! * M[i]!, `${path}[${i}]: ${w[i]} vs ${W[i]}·${M[i]}`);
      }
      assertClose(logits(am), adapted, `${model} merged`, 1e-5, 1e-5);
      am.unmerge();
      assert.deepEqual(logits(am), adapted);
      assert.deepEqual(snapshot(base), before);
    }
  });
});

describe('mask tuning: gradient dropout', () => {
  it('agreeing gradients (and no KL gradient) keep every task gradient', () => {
    const n = 20000;
    const a = Float32Array.from(randomArray(n, 1), (v) => v + Math.sign(v) * 0.1);
    const b = Float32Array.from(a, (v, i) => v * (0.1 + (i % 7)));
    assert.deepEqual(gradientDropout(a, b, 1, new ak.Rng(1)), a);
    assert.deepEqual(gradientDropout(a, null, 1, new ak.Rng(2)), a);
    assert.deepEqual(gradientDropout(a, new Float32Array(n), 0.3, new ak.Rng(3)), a);
  });

  for (const [ratio, lambda] of [[0.5, 1], [1, 1], [3, 0.3]] as const) {
    it(`disagreeing gradients (|g_b| = ${ratio}·|g_a|, λ = ${lambda}): the drops are 1[P ≤ U] of the formula, at rate 1 − P`, () => {
      const n = 20000;
      const a = Float32Array.from({ length: n }, (_, i) => (i % 2 ? 1 : -1) * (0.5 + (i % 5) * 0.25));
      const b = Float32Array.from(a, (v) => -ratio * v);
      const seed = 42;
      const got = gradientDropout(a, b, lambda, new ak.Rng(seed));
      // P = (sign(a)(a + b)/(|a| + |b| + ε) + 1)/2 = (1 − ratio)/(1 + ratio)/2 + 1/2 up to ε
      const rng = new ak.Rng(seed);
      let dropped = 0;
      let pSum = 0;
      for (let i = 0; i < n; i++) {
        const p = (Math.sign(a[i]!) * (a[i]! + b[i]!) / (Math.abs(a[i]!) + Math.abs(b[i]!) + 1e-8) + 1) / 2;
        pSum += p;
        const keep = p > rng.uniform();
        assert.equal(got[i], keep ? a[i] : Math.fround((1 - lambda) * a[i]!), `element ${i}`);
        if (!keep) dropped++;
      }
      const expectedRate = 1 - ((1 - ratio) / (1 + ratio) + 1) / 2;
      assert.ok(Math.abs(pSum / n - (1 - expectedRate)) < 1e-6);
      const sd = Math.sqrt((expectedRate * (1 - expectedRate)) / n);
      assert.ok(Math.abs(dropped / n - expectedRate) < 5 * sd + 1e-9, `drop rate ${dropped / n} vs ${expectedRate}`);
    });
  }

  it('the distillation term is the authors\' KLLoss: −Σ softmax(t/T)·log softmax(s/T)·T², averaged over the weighted positions', () => {
    const s = ak.tensor(randomArray(2 * 3 * 5, 5), [2, 3, 5]);
    const t = ak.tensor(randomArray(2 * 3 * 5, 6), [2, 3, 5]);
    const w = ak.tensor([1, 1, 0, 0, 1, 1], [2, 3]);
    const T = 2;
    const alpha = 0.75;
    const S = s.toArray();
    const Tt = t.toArray();
    let total = 0;
    for (let r = 0; r < 6; r++) {
      if (!w.toArray()[r]) continue;
      const mix = Array.from({ length: 5 }, (_, v) => (alpha * Tt[r * 5 + v]! + (1 - alpha) * S[r * 5 + v]!) / T);
      const st = Array.from({ length: 5 }, (_, v) => S[r * 5 + v]! / T);
      const lse = (xs: number[]) => Math.log(xs.reduce((a, x) => a + Math.exp(x), 0));
      const lm = lse(mix);
      const ls = lse(st);
      total += -mix.reduce((a, x, v) => a + Math.exp(x - lm) * (st[v]! - ls), 0) * T * T;
    }
    assert.ok(Math.abs(distillationLoss(s, t, T, alpha, w).item() - total / 4) < 1e-5);
  });

  it('the objective: value CE + λ_mask·Σ‖S‖₂; gradient = gdr(g_a, g_b) against the base model, on top of earlier gradients', () => {
    const cfg = { peft_type: 'MASK_TUNING', gdr_lambda: 0.6, mask_loss_weight: 0.01, target_modules: ['q_proj', 'v_proj'] };
    const am = fixture();
    const inst = am.add('m', cfg, { seed: 1 }) as MaskTuningAdapter;
    perturb(am, 5);
    const scores = inst.parameters();
    const norm = () => scores.reduce((n, p) => n + Math.sqrt((p.toArray() as Float32Array).reduce((a, v) => a + v * v, 0)), 0);
    // independent gradients: each from its own forward
    const gradOf = (f: () => ak.Tensor) => {
      ak.tidy(() => f().backward());
      const g = scores.map((p) => Float32Array.from(p.grad!.toArray()));
      for (const p of scores) {
        p.grad!.dispose();
        p.grad = null;
      }
      return g;
    };
    const teacher = am.withoutAdapters(() => ak.noGrad(() => am.forward(IDS)).keep());
    const ce = ak.tidy(() => ak.noGrad(() => ak.crossEntropy(am.forward(IDS), TARGETS).item()));
    const ga = gradOf(() => {
      let reg: ak.Tensor = ak.scalar(0);
      for (const p of scores) reg = ak.add(reg, ak.sqrt(ak.sum(ak.mul(p, p))));
      return ak.add(ak.crossEntropy(am.forward(IDS), TARGETS), ak.mul(reg, 0.01));
    });
    const gb = gradOf(() => distillationLoss(am.forward(IDS), teacher, 1, 1, ak.ones([2, 4])));
    assert.ok(gb.some((g) => g.some((v) => v !== 0)), 'the perturbed masks move the model away from the base');
    // an earlier micro-batch's gradient stays and the step's adds to it
    const earlier = scores.map((p, i) => Float32Array.from({ length: p.size }, (_, j) => (i + 1) * 0.001 * ((j % 3) - 1)));
    scores.forEach((p, i) => (p.grad = ak.tensor(earlier[i]!, p.shape).keep()));
    ak.defaultRng.seed(77);
    const value = ak.training(() => ak.tidy(() => {
      const loss = inst.objective!(stepOf(am));
      loss.backward();
      return loss.item();
    }));
    assert.ok(Math.abs(value - (ce + 0.01 * norm())) < 1e-5, `objective value ${value} vs ${ce + 0.01 * norm()}`);
    const rng = new ak.Rng(77);
    let dropped = 0;
    scores.forEach((p, i) => {
      const expected = gradientDropout(ga[i]!, gb[i]!, 0.6, rng);
      dropped += expected.filter((v, j) => v !== ga[i]![j]).length;
      assertClose(p.grad!.toArray(), expected.map((v, j) => v + earlier[i]![j]!), `${p.name} gated gradient`, 1e-6, 1e-4);
    });
    assert.ok(dropped > 0, 'some gradients were dropped');
    assert.deepEqual(ak.defaultRng.getState(), rng.getState(), 'one uniform draw per score');
    teacher.dispose();
  });

  it('other trainable parameters (a modules_to_save head) get the task gradient alone, none of the KL\'s', () => {
    const cfg = { peft_type: 'MASK_TUNING', mask_loss_weight: 0, target_modules: ['q_proj'], modules_to_save: ['lm_head'] };
    const am = fixture();
    const inst = am.add('m', cfg, { seed: 1 }) as MaskTuningAdapter;
    perturb(am, 12);
    const head = am.trainableParameters().filter((p) => !inst.parameters().includes(p));
    assert.equal(head.length, 1);
    ak.tidy(() => ak.crossEntropy(am.forward(IDS), TARGETS).backward());
    const expected = Float32Array.from(head[0]!.grad!.toArray());
    for (const p of am.trainableParameters()) p.grad = null;
    ak.training(() => ak.tidy(() => inst.objective!(stepOf(am)).backward()));
    assertClose(head[0]!.grad!.toArray(), expected, 'head gradient', 1e-7, 1e-5);
    assert.ok(inst.parameters().every((p) => p.grad !== null));
  });

  it('outside the training scope the objective is the plain task loss: no drops, no random draws', () => {
    const am = fixture();
    const inst = am.add('m', { peft_type: 'MASK_TUNING', mask_loss_weight: 0 }) as MaskTuningAdapter;
    perturb(am, 6);
    ak.tidy(() => ak.crossEntropy(am.forward(IDS), TARGETS).backward());
    const plain = inst.parameters().map((p) => Float32Array.from(p.grad!.toArray()));
    for (const p of inst.parameters()) p.grad = null;
    const state = ak.defaultRng.getState();
    ak.tidy(() => inst.objective!(stepOf(am)).backward());
    inst.parameters().forEach((p, i) => assert.deepEqual(p.grad!.toArray(), plain[i]));
    assert.deepEqual(ak.defaultRng.getState(), state);
  });

  it('without GDR and the norm term there is no objective (the plain single pass)', () => {
    const inst = fixture().add('m', { peft_type: 'MASK_TUNING', gdr: false, mask_loss_weight: 0 });
    assert.equal(inst.objective, undefined);
  });

  it('training steps change the masks and never the frozen weights', () => {
    const am = fixture();
    const inst = am.add('m', { peft_type: 'MASK_TUNING', target_modules: 'all-linear' }, { seed: 1 }) as MaskTuningAdapter;
    const frozen = am.model.parameters().filter((p) => !inst.parameters().includes(p));
    assert.ok(frozen.length > 10 && frozen.every((p) => !p.requiresGrad));
    const before = snapshot(frozen);
    const start = logits(am);
    const opt = new ak.AdamW(am.trainableParameters(), { lr: 0.01, weightDecay: 0 });
    for (let s = 0; s < 3; s++) {
      ak.training(() => ak.tidy(() => inst.objective!(stepOf(am)).backward()));
      assert.ok(frozen.every((p) => p.grad === null), 'no gradient reaches a frozen weight');
      opt.step();
      opt.zeroGrad();
    }
    assert.deepEqual(snapshot(frozen), before, 'frozen weights bit-identical');
    const density = inst.density();
    assert.ok(density < 1 && density > 0.2, `training removed some weights (density ${density})`);
    assert.ok(logits(am).some((v, i) => Math.abs(v - start[i]!) > 1e-4));
    am.setActive([]);
    assert.deepEqual(logits(am), am.withoutAdapters(() => logits(am)));
  });
});

describe('mask tuning: saved forms', () => {
  it('packs element i at bit 7 − (i mod 8) of byte floor(i/8) (numpy.packbits order), the last byte zero-padded', () => {
    const bits = Uint8Array.from([1, 0, 1, 1, 0, 0, 0, 1, 1, 1]);
    const bytes = packMasks([{ name: 't', shape: [2, 5], bits }]);
    assert.deepEqual([...bytes.subarray(bytes.length - 2)], [0b10110001, 0b11000000]);
    assert.equal(bytes.length, expectedSize([{ name: 't', shape: [2, 5] }]));
    for (const n of [1, 7, 8, 9, 63, 64, 65]) {
      const b = Uint8Array.from({ length: n }, (_, i) => ((i * 7 + 3) % 5 < 2 ? 1 : 0));
      const packed = packMasks([{ name: `w${n}`, shape: [n], bits: b }]);
      assert.deepEqual([...packed.subarray(packed.length - Math.ceil(n / 8))], packbitsBig(b));
      assert.deepEqual([...unpackMasks(packed, 'mem').get(`w${n}`)!.bits], [...b]);
    }
  });

  for (const model of ['llama-gqa', 'gpt2'] as const) {
    it(`${model}: the packed file holds the saved masks exactly, at ceil(n/8) bytes per tensor plus headers, and loads into an adapter`, () => {
      const am = fixture(model);
      const inst = am.add('m', { peft_type: 'MASK_TUNING' }, { seed: 2 }) as MaskTuningAdapter;
      perturb(am, 8);
      const adapted = logits(am);
      const dir = join(tmp, `pack-${model}`);
      am.save(dir, 'm');
      const saved = readTensorMap(join(dir, 'adapter_model.safetensors'));
      const file = join(dir, MASK_FILE);
      const packed = readMaskFile(file);
      assert.deepEqual([...packed.keys()].sort(), [...saved.keys()].sort());
      for (const [k, m] of packed) {
        assert.ok(k.endsWith('.weight_mask'));
        assert.deepEqual(m.shape, saved.get(k)!.shape);
        assert.deepEqual([...m.bits], [...saved.get(k)!.toArray()]);
      }
      assert.equal(statSync(file).size, expectedSize([...packed.values()]));
      const n = [...packed.values()].reduce((s, m) => s + m.bits.length, 0);
      console.log(JSON.stringify({ model, weights: n, safetensors_bytes: statSync(join(dir, 'adapter_model.safetensors')).size, mask_bytes: statSync(file).size, density: inst.density() }));
      // the packed file alone restores the adapter
      const other = fixture(model);
      const fresh = other.add('m', { peft_type: 'MASK_TUNING' }, { seed: 9 }) as MaskTuningAdapter;
      fresh.loadMaskFile(file);
      assert.deepEqual(logits(other), adapted);
      // and the safetensors form through AdapterModel.load
      const loaded = fixture(model);
      loaded.load(dir, 'x');
      assert.deepEqual(logits(loaded), adapted);
    });
  }

  it('loading a saved mask sets scores equidistant from the threshold; checkpoints keep the exact scores', () => {
    const am = fixture();
    const inst = am.add('m', { peft_type: 'MASK_TUNING', target_modules: ['q_proj'] }, { seed: 2 }) as MaskTuningAdapter;
    perturb(am, 9);
    const trained = logits(am);
    const other = fixture();
    const fromSaved = other.add('m', { peft_type: 'MASK_TUNING', target_modules: ['q_proj'] }) as MaskTuningAdapter;
    fromSaved.loadStateDict(inst.stateDict(), 'saved');
    assert.deepEqual(logits(other), trained);
    for (const p of fromSaved.parameters()) assert.ok([...p.toArray()].every((v) => v === Math.fround(1e-2) || v === 0));
    const resumed = other.add('r', { peft_type: 'MASK_TUNING', target_modules: ['q_proj'] }) as MaskTuningAdapter;
    resumed.loadCheckpointState!(inst.checkpointState!(), 'state');
    assert.deepEqual(resumed.parameters().map((p) => [...p.toArray()]), inst.parameters().map((p) => [...p.toArray()]));
  });

  describe('bad input', () => {
    const am = fixture();
    const inst = am.add('m', { peft_type: 'MASK_TUNING', target_modules: ['q_proj'] }, { seed: 3 }) as MaskTuningAdapter;
    perturb(am, 4);
    const good = inst.extraFiles().get(MASK_FILE)!;
    const firstName = [...inst.stateDict().keys()][0]!;
    const write = (name: string, bytes: Uint8Array) => {
      const p = join(tmp, name);
      writeFileSync(p, bytes);
      return p;
    };
    const masks = () => [...unpackMasks(good, 'good').values()];

    it('a good file reads back and loads', () => {
      const p = write('good.masks', good);
      inst.loadMaskFile(p);
      assert.equal(good.length, expectedSize(masks()));
    });

    it('bad magic, unknown version', () => {
      const b = Uint8Array.from(good);
      b[0] = 0x50;
      const p = write('magic.masks', b);
      assert.throws(() => inst.loadMaskFile(p), (e: Error) => e.message.includes(p) && /bad magic "PKBITMSK"/.test(e.message));
      const v = Uint8Array.from(good);
      new DataView(v.buffer).setUint32(8, 2, true);
      const pv = write('version.masks', v);
      assert.throws(() => readMaskFile(pv), (e: Error) => e.message.includes(pv) && e.message.includes('"version" is 2'));
    });

    it('truncated in the header, a name, a shape and the bits', () => {
      const nameAt = 16 + 4;
      const shapeAt = nameAt + Buffer.byteLength(firstName) + 4;
      for (const [cut, what] of [[10, /the header/], [nameAt + 3, /\(name\)/], [shapeAt + 2, /\(shape\)/], [good.length - 1, /"shape" \[\d+, \d+\] holds \d+ mask bits/]] as const) {
        const p = write(`cut${cut}.masks`, good.subarray(0, cut));
        assert.throws(() => readMaskFile(p), (e: Error) => e.message.includes(p) && /truncated/.test(e.message) && what.test(e.message), `cut at ${cut}: ${what}`);
      }
    });

    it('a shape that does not match the model names the tensor and the field', () => {
      const wrong = masks().map((m, i) => (i === 0 ? { ...m, shape: [m.shape[1]!, m.shape[0]! / 2], bits: m.bits.subarray(0, m.bits.length / 2) } : m));
      const p = write('shape.masks', packMasks(wrong));
      const [o, i] = masks()[0]!.shape;
      assert.throws(() => inst.loadMaskFile(p), (e: Error) => e.message.includes(p) && e.message.includes(`tensor "${firstName}": "shape" is [${i}, ${o! / 2}], the model's weight there is [${o}, ${i}]`));
    });

    it('masks for other modules, or missing ones', () => {
      const p = write('names.masks', packMasks([{ ...masks()[0]!, name: 'base_model.model.model.layers.0.mlp.up_proj.weight_mask' }, ...masks().slice(1)]));
      assert.throws(() => inst.loadMaskFile(p), (e: Error) => e.message.includes(p) && /do not match the adapter's targets; missing: .*q_proj.weight_mask; unexpected: .*up_proj.weight_mask/.test(e.message));
    });

    it('sizes that disagree with the data', () => {
      const b = packMasks(masks().slice(0, 1));
      const shapeAt = 16 + 4 + Buffer.byteLength(firstName) + 4;
      const [o, i] = masks()[0]!.shape;
      new DataView(b.buffer).setUint32(shapeAt, o! + 1, true);
      const p = write('bigger.masks', b);
      assert.throws(() => readMaskFile(p), (e: Error) => e.message.includes(p) && new RegExp(`"shape" \\[${o! + 1}, ${i}\\] holds`).test(e.message));
      const longer = write('longer.masks', Uint8Array.from([...good, 0]));
      assert.throws(() => readMaskFile(longer), /1 bytes after the last of \d+ tensors/);
      const odd = packMasks([{ name: 'w', shape: [5], bits: Uint8Array.from([1, 0, 1, 1, 0]) }]);
      odd[odd.length - 1] |= 1;
      assert.throws(() => unpackMasks(odd, 'odd.masks'), /odd\.masks: tensor "w": the unused bits of the last mask byte are not zero/);
      const count = Uint8Array.from(good);
      new DataView(count.buffer).setUint32(12, 1e6, true);
      assert.throws(() => unpackMasks(count, 'count.masks'), /count\.masks: truncated: tensor \d+ of 1000000 \(name length\) needs bytes/);
    });

    it('a missing file', () => {
      const p = join(tmp, 'none.masks');
      assert.throws(() => readMaskFile(p), (e: Error) => e.message.includes(p) && /cannot read the packed mask file/.test(e.message));
    });

    it('a safetensors mask that is not 0/1 or has the wrong shape', () => {
      const sd = inst.stateDict();
      const half = new Map(sd);
      const t = ak.tensor(Float32Array.from(sd.get(firstName)!.toArray(), (v, j) => (j === 5 ? 0.5 : v)), sd.get(firstName)!.shape);
      half.set(firstName, t);
      assert.throws(() => inst.loadStateDict(half, 'file.safetensors'), (e: Error) => e.message.includes(`file.safetensors: "${firstName}" holds 0.5 at index 5`));
      const flat = new Map(sd);
      flat.set(firstName, ak.reshape(sd.get(firstName)!, [-1]));
      assert.throws(() => inst.loadStateDict(flat, 'file.safetensors'), /file\.safetensors: ".*q_proj\.weight_mask" has shape \[\d+\], the model needs \[\d+, \d+\]/);
    });

    it('config values', () => {
      const m = fixture();
      assert.throws(() => m.add('a', { peft_type: 'MASK_TUNING', mask_scale: 1e-3 }), /"mask_scale" must be above "mask_threshold" \(0.005\) so that every weight starts kept, got 0.001/);
      assert.throws(() => m.add('a', { peft_type: 'MASK_TUNING', gdr_lambda: 1.5 }), /"gdr_lambda" must be at most 1, got 1.5/);
      assert.throws(() => m.add('a', { peft_type: 'MASK_TUNING', gdr_temperature: 0 }), /"gdr_temperature" must be above 0/);
      assert.throws(() => m.add('a', { peft_type: 'MASK_TUNING', gdr: 'yes' }), /"gdr" must be true or false/);
      assert.throws(() => m.add('a', { peft_type: 'MASK_TUNING', target_modules: ['embed_tokens'] }), /MASK_TUNING masks the weights of linear layers/);
    });
  });
});

describe('mask tuning: training through the CLI as a plugin', () => {
  const D = join(ak.dataDir(), 'models', 'stories260K');

  it('trains; the saved adapter loads and gives the trained model\'s logits; the packed file holds its masks', () => {
    const lines = Array.from({ length: 24 }, (_, i) => JSON.stringify({ text: `Once upon a time there was a ${['cat', 'dog', 'bird'][i % 3]} who liked to ${['run', 'play', 'sing'][i % 3]}.` }));
    writeFileSync(join(tmp, 'stories.jsonl'), `${lines.join('\n')}\n`);
    const out = join(tmp, 'run');
    const r = spawnSync(process.execPath, [
      '--import', 'tsx', join(ROOT, 'src/cli/bin.ts'), '--plugin', join(ROOT, 'src/adapters/methods/mask-tuning.ts'), 'train',
      '--model', join(D, 'stories260K.bin'), '--tokenizer', join(D, 'tok512.bin'), '--data', join(tmp, 'stories.jsonl'),
      '--method', 'mask', '--gdr-lambda', '0.5', '--steps', '4', '--batch-size', '8', '--lr', '0.01', '--val-split', '0', '--checkpoint-every', '4',
      '--out', out, '--json',
    ], { cwd: ROOT, encoding: 'utf8' });
    assert.equal(r.status, 0, r.stderr);
    const adapter = join(out, 'adapter');
    const cfg = JSON.parse(readFileSync(join(adapter, 'adapter_config.json'), 'utf8'));
    assert.equal(cfg.peft_type, 'MASK_TUNING');
    assert.equal(cfg.gdr_lambda, 0.5);
    const report = JSON.parse(readFileSync(join(out, 'training_report.json'), 'utf8'));

    const ids = ak.tensor([1, 403, 407, 261, 378], [1, 5], { dtype: 'i32' });
    const loaded = new AdapterModel(ak.loadModel(join(D, 'stories260K.bin')).model);
    const inst = loaded.load(adapter, 'mask') as MaskTuningAdapter;
    const got = logits(loaded, ids);
    const base = loaded.withoutAdapters(() => logits(loaded, ids));
    assert.ok(got.some((v, i) => Math.abs(v - base[i]!) > 1e-4), 'the masks change the model');
    const density = inst.density();
    assert.ok(density < 1 && density > 0.3, `density ${density}`);

    // the trained model: the real-valued scores of the last checkpoint (step 4)
    const steps = readdirSync(join(out, 'checkpoints')).sort();
    const last = join(out, 'checkpoints', steps[steps.length - 1]!);
    const trained = new AdapterModel(ak.loadModel(join(D, 'stories260K.bin')).model);
    trained.add('mask', report.adapter_config).loadCheckpointState!(readTensorMap(join(last, 'adapter_training_state.safetensors')), last);
    assert.deepEqual(got, logits(trained, ids));

    const saved = readTensorMap(join(adapter, 'adapter_model.safetensors'));
    const packed = readMaskFile(join(adapter, MASK_FILE));
    for (const [k, m] of packed) assert.deepEqual([...m.bits], [...saved.get(k)!.toArray()], k);
    const n = [...packed.values()].reduce((s, m) => s + m.bits.length, 0);
    assert.equal(n, 5 * (64 * 64 * 2 + 64 * 32 * 2));
    assert.equal(statSync(join(adapter, MASK_FILE)).size, expectedSize([...packed.values()]));
    console.log(JSON.stringify({ run: 'stories260K mask, 4 steps', weights: n, density, safetensors_bytes: statSync(join(adapter, 'adapter_model.safetensors')).size, mask_bytes: statSync(join(adapter, MASK_FILE)).size }));
  });

  it('cleans up', () => rmSync(tmp, { recursive: true, force: true }));
});
