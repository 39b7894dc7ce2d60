/**
 * MixDA: the adapter contract (stage 1, stage 2 alone and stage 2 over frozen domain adapters);
 * the layer's mixture against the formula computed with plain loops on a padded batch (the gate
 * reads each row's last real token); the stage-1 objective against 0.5 · CE + MSE computed by
 * hand, and its gradients against finite differences; stage 2 leaving the frozen domain adapters
 * untouched and without optimizer state, and reloading exactly from its own file; the identity
 * at creation of the residual form; dropout only in training; causality of the per-token gate;
 * the default layers; and the errors for bad configs and domain folders.
 */
import { after, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as ak from '../src/index.js';
import { AdapterModel } from '../src/adapters/index.js';
import { PEFT_MODEL_PREFIX, readTensorMap } from '../src/adapters/files.js';
import { type LayerDelta } from '../src/adapters/types.js';
import { Module, describeModel } from '../src/nn/index.js';
import { loadModel } from '../src/models/load.js';
import { serializeSafetensors } from '../src/io/safetensors.js';
import { MIXDA, type MixdaDelta } from '../src/adapters/methods/mixda.js';
import { FIX, type MethodCase, contractSuite, perturb, registryCases } from './contract.js';
import { assertClose } from './helpers.js';

const tmp = mkdtempSync(join(tmpdir(), 'adaptkit-mixda-'));
after(() => rmSync(tmp, { recursive: true, force: true }));

type Fixture = 'llama-gqa' | 'gpt2';
const base = (model: Fixture = 'llama-gqa') => new AdapterModel(loadModel(join(FIX, model)).model);
const STAGE1 = { peft_type: 'MIXDA', reduction_factor: 4, trainable_domains: 1, preserve_task: 1 };

/** A trained-looking stage-1 adapter saved to a folder. */
function domainFolder(model: Fixture, seed: number, extra: Record<string, unknown> = {}): string {
  const am = base(model);
  am.add('d', { ...STAGE1, ...extra }, { seed });
  perturb(am, seed + 100);
  const dir = join(tmp, `domain-${model}-${seed}-${Object.keys(extra).join('-')}`);
  am.save(dir, 'd');
  return dir;
}

const stage2Preset = MIXDA.presets!.find((p) => p.name === 'mixda-task')!;
const withDomains: MethodCase[] = (['llama-gqa', 'gpt2'] as const).map((model) => ({
  name: `mixda-task-over-two-domains-${model}`,
  model,
  config: stage2Preset.config({ 'reduction-factor': 4, 'domain-adapters': [domainFolder(model, 1), domainFolder(model, 2)] }, describeModel(base(model).model)),
}));
contractSuite([...registryCases().filter((c) => c.config.peft_type === 'MIXDA'), ...withDomains]);

// ---- an independent computation of the formula, with plain loops ----

/** erf by Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7). */
function erf(x: number): number {
  const s = Math.sign(x);
  const z = Math.abs(x);
  const t = 1 / (1 + 0.3275911 * z);
  const p = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))));
  return s * (1 - p * Math.exp(-z * z));
}
const geluOf = (v: number) => 0.5 * v * (1 + erf(v / Math.SQRT2));

/** W [out, in] · v + b. */
function affine(w: Float32Array, b: Float32Array, v: ArrayLike<number>, out: number, inF: number): Float64Array {
  const r = new Float64Array(out);
  for (let o = 0; o < out; o++) {
    let s = b[o]!;
    for (let i = 0; i < inF; i++) s += w[o * inF + i]! * v[i]!;
    r[o] = s;
  }
  return r;
}

interface Weights { w: Float32Array; b: Float32Array; out: number; inF: number }
const weightsOf = (l: { weight: ak.Tensor; bias: ak.Tensor | null }): Weights => ({
  w: l.weight.toArray() as Float32Array, b: l.bias!.toArray() as Float32Array, out: l.weight.shape[0]!, inF: l.weight.shape[1]!,
});

/**
 * The mixture of one layer by hand: the gate MLP on the row's last real position (or each
 * position), softmax, the knowledge adapters, and the convex or residual sum. Records y and o.
 */
class HandMixda extends Module implements LayerDelta {
  readonly adapterName = 'hand';
  readonly calls: { y: Float32Array; o: Float32Array; shape: number[] }[] = [];
  private readonly gate: Weights[];
  private readonly kas: { down: Weights; up: Weights }[];

  constructor(d: MixdaDelta, private readonly mask: Float32Array | null, private readonly position: 'last' | 'token', private readonly residual: boolean) {
    super();
    this.gate = d.mixda_gate.map(weightsOf);
    this.kas = d.mixda_domain.map((k) => ({ down: weightsOf(k.down), up: weightsOf(k.up) }));
  }

  private gateOf(a: ArrayLike<number>): Float64Array {
    let h = affine(this.gate[0]!.w, this.gate[0]!.b, a, this.gate[0]!.out, this.gate[0]!.inF);
    for (const g of this.gate.slice(1)) h = affine(g.w, g.b, h.map((v) => Math.max(0, v)), g.out, g.inF);
    const m = Math.max(...h);
    const e = h.map((v) => Math.exp(v - m));
    const s = e.reduce((p, q) => p + q, 0);
    return e.map((v) => v / s);
  }

  apply(x: ak.Tensor, y: ak.Tensor): ak.Tensor {
    const [B, T, F] = x.shape as [number, number, number];
    const D = y.shape[2]!;
    const xs = x.toArray() as Float32Array;
    const ys = y.toArray() as Float32Array;
    const o = new Float32Array(B * T * D);
    const k = this.kas.length;
    for (let b = 0; b < B; b++) {
      let last = T - 1;
      if (this.mask) while (last > 0 && this.mask[b * T + last] === 0) last--;
      const rowGate = this.gateOf(xs.subarray((b * T + last) * F, (b * T + last + 1) * F));
      for (let t = 0; t < T; t++) {
        const a = xs.subarray((b * T + t) * F, (b * T + t + 1) * F);
        const g = this.position === 'last' ? rowGate : this.gateOf(a);
        for (let j = 0; j < D; j++) o[(b * T + t) * D + j] = (this.residual ? 1 : g[k]!) * ys[(b * T + t) * D + j]!;
        this.kas.forEach((ka, i) => {
          const hidden = affine(ka.down.w, ka.down.b, a, ka.down.out, ka.down.inF).map(geluOf);
          const out = affine(ka.up.w, ka.up.b, hidden, ka.up.out, ka.up.inF);
          for (let j = 0; j < D; j++) o[(b * T + t) * D + j] += g[i]! * out[j]!;
        });
      }
    }
    this.calls.push({ y: ys, o, shape: [B, T, D] });
    return ak.tensor(o, y.shape);
  }
}

/** Three right-padded rows of lengths 5, 2 and 4 (pad id 0). */
const LENGTHS = [5, 2, 4];
const T = 5;
const MASK = Float32Array.from({ length: 3 * T }, (_, i) => (i % T < LENGTHS[Math.floor(i / T)]! ? 1 : 0));
function paddedIds(padValue = 0, seed = 3): ak.Tensor {
  const rng = new ak.Rng(seed);
  return ak.tensor(Array.from(MASK, (m) => (m ? 1 + rng.int(60) : padValue)), [3, T], { dtype: 'i32' });
}
const maskTensor = () => ak.tensor(MASK, [3, T]);

function mixdaModel(extra: Record<string, unknown>, model: Fixture = 'llama-gqa', seed = 1) {
  const am = base(model);
  const inst = am.add('m', { ...STAGE1, ...extra }, { seed });
  perturb(am, seed + 10);
  return { am, inst, deltas: [...inst.deltas] as [string, MixdaDelta][] };
}

/** The base model's own forward (under whatever deltas withDeltas installed). */
const forwardOf = (am: AdapterModel) => (ids: ak.Tensor, o: { attentionMask: ak.Tensor | null }) => (am.model as unknown as { forward(i: ak.Tensor, o: object): ak.Tensor }).forward(ids, o);

/** Logits with hand-computed mixtures in place of the adapter's layers (its task adapter, if any, left out). */
function handLogits(am: AdapterModel, deltas: [string, MixdaDelta][], ids: ak.Tensor, mask: Float32Array | null, position: 'last' | 'token', residual: boolean) {
  const hands = deltas.map(([p, d]) => [p, new HandMixda(d, mask, position, residual)] as const);
  const logits = am.withDeltas(new Map(hands.map(([p, h]) => [p, [h]])), () => ak.tidy(() => ak.noGrad(() => forwardOf(am)(ids, { attentionMask: mask ? ak.tensor(mask, [3, T]) : null }).toArray() as Float32Array)));
  return { logits, hands: hands.map(([, h]) => h) };
}

const modelLogits = (am: AdapterModel, ids: ak.Tensor, mask: ak.Tensor | null) => ak.tidy(() => ak.noGrad(() => am.forward(ids, { attentionMask: mask }).toArray() as Float32Array));

describe('MixDA: the mixture', () => {
  for (const model of ['llama-gqa', 'gpt2'] as const) {
    for (const v of [{ residual: false, gate_position: 'last' }, { residual: true, gate_position: 'token' }] as const) {
      it(`${model} ${JSON.stringify(v)}: logits of a padded batch equal the formula computed by hand`, () => {
        const { am, deltas } = mixdaModel({ trainable_domains: 2, gate_depth: 1, ...v }, model);
        assert.equal(deltas.length, 2);
        assert.equal(deltas[0]![1].mixda_gate.at(-1)!.weight.shape[0], 3, 'two knowledge adapters and the original');
        const ids = paddedIds();
        const want = handLogits(am, deltas, ids, MASK, v.gate_position, v.residual).logits;
        assertClose(modelLogits(am, ids, maskTensor()), want, 'mixture', 2e-5, 1e-4);
      });
    }
  }

  it('the gate reads the last real token: padding does not change real positions, unless no mask says where it is', () => {
    const { am } = mixdaModel({ trainable_domains: 1 });
    const V = 64;
    const real = (l: Float32Array) => Array.from(l).filter((_, i) => MASK[Math.floor(i / V)] === 1);
    const a = modelLogits(am, paddedIds(0), maskTensor());
    const b = modelLogits(am, paddedIds(37), maskTensor());
    assert.deepEqual(real(b), real(a));
    // without the mask the gate of the padded rows reads a pad token
    const c = modelLogits(am, paddedIds(0), null);
    const d = modelLogits(am, paddedIds(37), null);
    assert.ok(real(c).some((x, i) => Math.abs(x - real(d)[i]!) > 1e-4));
    // and the full row is unaffected by the mask
    assertClose(c.subarray(0, T * V), a.subarray(0, T * V), 'full row', 0, 0);
  });

  it('gate_position "token" is causal: decoding with a KV cache equals the full forward; "last" is not', () => {
    for (const position of ['token', 'last'] as const) {
      const { am } = mixdaModel({ gate_position: position });
      const ids = [5, 17, 3, 44, 9];
      const full = modelLogits(am, ak.tensor(ids, [1, 5], { dtype: 'i32' }), null);
      const cache = am.newCache();
      const steps = ak.tidy(() => ak.noGrad(() => {
        const out: number[] = Array.from(am.forward(ak.tensor(ids.slice(0, 2), [1, 2], { dtype: 'i32' }), { cache }).toArray());
        for (const id of ids.slice(2)) out.push(...am.forward(ak.tensor([id], [1, 1], { dtype: 'i32' }), { cache }).toArray());
        return Float32Array.from(out);
      }));
      cache.dispose();
      if (position === 'token') assertClose(steps, full, 'cached decoding', 1e-5, 1e-4);
      else assert.ok(steps.some((x, i) => Math.abs(x - full[i]!) > 1e-4), 'the last-token gate depends on the whole sequence');
    }
  });

  it('the residual form starts as the identity, the reference form does not', () => {
    const ids = paddedIds();
    const plain = modelLogits(base(), ids, maskTensor());
    for (const [cfg, identity] of [[{ residual: true }, true], [{ residual: false }, false], [{ trainable_domains: 0, task_adapter: true }, true]] as const) {
      const am = base();
      am.add('m', { ...STAGE1, ...cfg }, { seed: 1 });
      const got = modelLogits(am, ids, maskTensor());
      if (identity) assertClose(got, plain, JSON.stringify(cfg), 1e-6, 1e-5);
      else assert.ok(got.some((x, i) => Math.abs(x - plain[i]!) > 1e-3), `${JSON.stringify(cfg)} changes the model at creation`);
    }
  });

  it('gate dropout runs only in training; inference is deterministic', () => {
    const { am } = mixdaModel({ gate_dropout: 0.5 });
    const ids = paddedIds();
    const a = modelLogits(am, ids, maskTensor());
    assert.deepEqual(modelLogits(am, ids, maskTensor()), a);
    ak.manualSeed(5);
    const t1 = ak.training(() => modelLogits(am, ids, maskTensor()));
    assert.ok(t1.some((x, i) => Math.abs(x - a[i]!) > 1e-4), 'a training forward drops gate inputs');
    ak.manualSeed(5);
    assert.deepEqual(ak.training(() => modelLogits(am, ids, maskTensor())), t1);
  });

  it('knowledge adapters go on the last two layers by default (stories260K: 5 layers), and the task adapter on every layer', () => {
    const model = loadModel(join(ak.dataDir(), 'models', 'stories260K', 'stories260K.bin')).model;
    const am = new AdapterModel(model);
    const inst = am.add('m', { ...STAGE1, reduction_factor: 16, task_adapter: true });
    assert.deepEqual(inst.configJson().adapter_layers, [3, 4]);
    const kas = [...inst.deltas].filter(([, d]) => (d as MixdaDelta).mixda_domain.length > 0).map(([p]) => p);
    assert.deepEqual(kas, ['model.layers.3.mlp.down_proj', 'model.layers.4.mlp.down_proj']);
    assert.equal(inst.deltas.size, 5);
    const d = inst.deltas.get('model.layers.4.mlp.down_proj') as MixdaDelta;
    // d_ff 172 / 16 → 10 wide; the gate is min(768, 64) wide
    assert.deepEqual(d.mixda_domain[0]!.down.weight.shape, [10, 172]);
    assert.deepEqual(d.mixda_gate.map((l) => l.weight.shape), [[64, 172], [64, 64], [64, 64], [2, 64]]);
    assert.deepEqual(d.mixda_task!.adapter_down.weight.shape, [4, 64]);
  });
});

// ---- the stage-1 objective ----

/** A batch of four rows of tasks 0 (domain) and 1 (general), right-padded. */
const LENS4 = [6, 3, 5, 4];
const T4 = 6;
const MASK4 = Float32Array.from({ length: 4 * T4 }, (_, i) => (i % T4 < LENS4[Math.floor(i / T4)]! ? 1 : 0));
function batch4() {
  const rng = new ak.Rng(9);
  const ids = Array.from(MASK4, (m) => (m ? 1 + rng.int(60) : 0));
  // next-token targets inside each row, -100 at the last real position and on padding
  const targets = ids.map((_, i) => (MASK4[i] && i % T4 < LENS4[Math.floor(i / T4)]! - 1 ? ids[i + 1]! : -100));
  return {
    ids: ak.tensor(ids, [4, T4], { dtype: 'i32' }), mask: ak.tensor(MASK4, [4, T4]), targets, targetT: ak.tensor(targets, [4, T4], { dtype: 'i32' }),
    weights: ak.tensor(targets.map((t) => (t === -100 ? 0 : 1)), [4, T4]), taskIds: Int32Array.from([0, 1, 0, 1]),
  };
}

/** The step the trainer gives an objective; `taskIds` null: a step without task ids. */
function step(am: AdapterModel, b: ReturnType<typeof batch4>, ids: Int32Array | null = b.taskIds) {
  const taskIds = ids ?? undefined;
  return {
    logits: () => am.forward(b.ids, { attentionMask: b.mask, taskIds }),
    loss: (l: ak.Tensor) => ak.crossEntropy(l, b.targetT, { ignoreIndex: -100 }),
    weights: b.weights,
    taskIds,
  };
}

/** 0.5 · CE over the domain rows + the layers' mean MSE over the real positions of the general rows, by hand. */
function handObjective(am: AdapterModel, deltas: [string, MixdaDelta][], b: ReturnType<typeof batch4>, domainRow: (r: number) => boolean, generalRow: (r: number) => boolean): number {
  const hands = deltas.map(([p, d]) => [p, new HandMixda(d, MASK4, 'last', false)] as const);
  const logits = am.withDeltas(new Map(hands.map(([p, h]) => [p, [h]])), () => ak.tidy(() => ak.noGrad(() => forwardOf(am)(b.ids, { attentionMask: b.mask }).toArray() as Float32Array)));
  const V = logits.length / (4 * T4);
  let ce = 0;
  let n = 0;
  b.targets.forEach((tg, i) => {
    if (tg === -100 || !domainRow(Math.floor(i / T4))) return;
    const row = logits.subarray(i * V, (i + 1) * V);
    const m = Math.max(...row);
    ce += m + Math.log(row.reduce((s, v) => s + Math.exp(v - m), 0)) - row[tg]!;
    n++;
  });
  let mse = 0;
  for (const [, h] of hands) {
    const { y, o, shape } = h.calls[0]!;
    const D = shape[2]!;
    let s = 0;
    let count = 0;
    for (let i = 0; i < 4 * T4; i++) {
      if (!generalRow(Math.floor(i / T4)) || !MASK4[i]) continue;
      for (let j = 0; j < D; j++) s += (o[i * D + j]! - y[i * D + j]!) ** 2;
      count += D;
    }
    if (count) mse += s / count / hands.length;
  }
  return 0.5 * (ce / n) + mse;
}

describe('MixDA: the stage-1 objective', () => {
  it('equals 0.5 · CE on the domain rows + MSE to the original layer outputs on the general rows', () => {
    const { am, inst, deltas } = mixdaModel({});
    const b = batch4();
    const want = handObjective(am, deltas, b, (r) => r % 2 === 0, (r) => r % 2 === 1);
    const got = ak.tidy(() => inst.objective!(step(am, b)).item());
    assertClose([got], [want], 'objective', 1e-6, 1e-5);
    // both terms matter: the MSE alone and the CE alone differ from the sum
    const ceOnly = handObjective(am, deltas, b, (r) => r % 2 === 0, () => false);
    assert.ok(Math.abs(want - ceOnly) > 1e-3, 'the MSE term is not negligible');
  });

  it('with preserve_task null every row carries both terms', () => {
    const { am, inst, deltas } = mixdaModel({ preserve_task: null });
    const b = batch4();
    const want = handObjective(am, deltas, b, () => true, () => true);
    assertClose([ak.tidy(() => inst.objective!(step(am, b, null)).item())], [want], 'objective', 1e-6, 1e-5);
  });

  it('a plain configuration has no objective of its own', () => {
    const am = base();
    const inst = am.add('m', { ...STAGE1, knowledge_weight: 1, preserve_weight: 0, preserve_task: null });
    assert.equal(inst.objective, undefined);
  });

  for (const [what, taskIds] of [['domain and general rows', [0, 1, 0, 1]], ['general rows only (the MSE alone)', [1, 1, 1, 1]]] as const) {
    it(`gradients of the gate and the knowledge adapter match finite differences: ${what}`, () => {
      const { am, inst } = mixdaModel({ gate_depth: 1 });
      const b = { ...batch4(), taskIds: Int32Array.from(taskIds) };
      const params = inst.parameters();
      ak.tidy(() => inst.objective!(step(am, b)).backward());
      const value = () => ak.tidy(() => ak.noGrad(() => inst.objective!(step(am, b)).item()));
      const h = 1e-3;
      let sizable = 0;
      for (const p of params.filter((q) => /mixda_(domain\.0\.(down|up)\.weight|gate\.[02]\.(weight|bias))$/.test(q.name!))) {
        const d = p.storage.data as Float32Array;
        const g = p.grad!.toArray();
        for (const j of [0, Math.floor(p.size / 3), p.size - 1]) {
          const orig = d[p.offset + j]!;
          d[p.offset + j] = orig + h;
          const up = value();
          d[p.offset + j] = orig - h;
          const down = value();
          d[p.offset + j] = orig;
          const fd = (up - down) / (2 * h);
          if (Math.abs(g[j]!) > 1e-3) sizable++;
          assert.ok(Math.abs(fd - g[j]!) <= 2e-3 + 2e-2 * Math.abs(g[j]!), `${p.name}[${j}]: autodiff ${g[j]} vs finite differences ${fd}`);
        }
      }
      assert.ok(sizable >= 6, `most checked gradients are not near zero (${sizable})`);
    });
  }

  it('refuses a step without task ids when preserve_task picks rows by task', () => {
    const { am, inst } = mixdaModel({});
    assert.throws(() => ak.tidy(() => inst.objective!(step(am, batch4(), null))), /preserve_task 1 .* no task ids/);
  });

  it('refuses gradient checkpointing where its recomputation would differ; a per-token gate without the objective trains with it exactly', () => {
    const checkpointed = (am: AdapterModel) => (am.model as unknown as { gradientCheckpointing: boolean }).gradientCheckpointing = true;
    const b = batch4();
    const last = mixdaModel({});
    checkpointed(last.am);
    assert.throws(() => ak.training(() => ak.tidy(() => last.inst.objective!(step(last.am, b)))), /block recomputed by gradient checkpointing .* gate_position "token"/);
    const token = mixdaModel({ gate_position: 'token' });
    checkpointed(token.am);
    assert.throws(() => ak.training(() => ak.tidy(() => token.inst.objective!(step(token.am, b)))), /preservation term .* without --gradient-checkpointing/);
    const grads = (cp: boolean) => {
      const { am } = mixdaModel({ gate_position: 'token', knowledge_weight: 1, preserve_weight: 0, preserve_task: null });
      if (cp) checkpointed(am);
      ak.manualSeed(6);
      ak.training(() => ak.tidy(() => ak.crossEntropy(am.forward(b.ids, { attentionMask: b.mask }), b.targetT, { ignoreIndex: -100 }).backward()));
      return am.trainableParameters().map((p) => Float32Array.from(p.grad!.toArray()));
    };
    const plain = grads(false);
    grads(true).forEach((g, i) => assertClose(g, plain[i]!, `gradient ${i}`, 1e-6, 1e-5));
  });
});

// ---- stage 2 ----

describe('MixDA: stage 2 over frozen domain adapters', () => {
  it('loads the domain adapters frozen: unchanged by training, no gradient, no optimizer state; the gate and task adapter train', () => {
    const d1 = domainFolder('llama-gqa', 3);
    const d2 = domainFolder('llama-gqa', 4);
    const am = base();
    const inst = am.add('t', stage2Preset.config({ 'reduction-factor': 4, 'domain-adapters': [d1, d2] }, describeModel(am.model)), { seed: 5 });
    const cfg = inst.configJson();
    assert.equal(cfg.frozen_domains, 2);
    assert.deepEqual(cfg.domain_adapters, []);
    assert.deepEqual(cfg.adapter_layers, [0, 1]);
    const frozen = [...inst.deltas.values()].flatMap((d) => (d as MixdaDelta).mixda_domain.flatMap((k) => [k.down.weight, k.down.bias!, k.up.weight, k.up.bias!]));
    assert.equal(frozen.length, 2 * 2 * 4);
    // the frozen tensors are the domain folders' tensors, in order
    const files = [readTensorMap(join(d1, 'adapter_model.safetensors')), readTensorMap(join(d2, 'adapter_model.safetensors'))];
    for (const [path, d] of inst.deltas) {
      (d as MixdaDelta).mixda_domain.forEach((k, i) => {
        assert.deepEqual(k.up.weight.toArray(), files[i]!.get(`${PEFT_MODEL_PREFIX}${path}.mixda_domain.0.up.weight`)!.toArray());
      });
    }
    const params = am.trainableParameters();
    assert.ok(frozen.every((t) => !t.requiresGrad && !params.includes(t)));
    const before = frozen.map((t) => Buffer.from((t.toArray() as Float32Array).slice().buffer));
    const trainedBefore = params.map((p) => Float32Array.from(p.toArray()));
    const opt = new ak.AdamW(params, { lr: 0.05, weightDecay: 0.1 });
    const b = batch4();
    for (let s = 0; s < 3; s++) {
      ak.training(() => ak.tidy(() => ak.crossEntropy(am.forward(b.ids, { attentionMask: b.mask }), b.targetT, { ignoreIndex: -100 }).backward()));
      assert.ok(frozen.every((t) => t.grad === null), 'no gradient for a frozen knowledge adapter');
      opt.step();
      opt.zeroGrad();
    }
    frozen.forEach((t, i) => assert.deepEqual(Buffer.from((t.toArray() as Float32Array).slice().buffer), before[i], 'byte-identical'));
    assert.ok(opt.params.every((p) => !frozen.includes(p)));
    const st = opt.state().buffers;
    for (const k of ['m', 'v']) assert.equal(st[k]!.length, params.length, 'optimizer state for the trained tensors only');
    assert.ok(params.every((p, i) => p.toArray().some((v, j) => v !== trainedBefore[i]![j])), 'every gate and task-adapter tensor trained');
    assert.equal(am.numTrainable('t'), MIXDA.countParameters!(inst.config, ak.findTargets(am.model, inst.config, ak.defaultTargetsFor(MIXDA, am.model, inst.config)), describeModel(am.model)));
  });

  it('a saved stage-2 adapter holds its domain adapters and reloads exactly without the domain folders', () => {
    const d1 = join(tmp, 'moved-1');
    const d2 = join(tmp, 'moved-2');
    cpSync(domainFolder('gpt2', 6), d1, { recursive: true });
    cpSync(domainFolder('gpt2', 7), d2, { recursive: true });
    const am = base('gpt2');
    am.add('t', stage2Preset.config({ 'reduction-factor': 4, 'domain-adapters': [d1, d2] }, describeModel(am.model)), { seed: 8 });
    perturb(am, 9);
    const ids = paddedIds();
    const want = modelLogits(am, ids, maskTensor());
    const dir = join(tmp, 'stage2');
    am.save(dir, 't');
    rmSync(d1, { recursive: true });
    rmSync(d2, { recursive: true });
    const saved = readTensorMap(join(dir, 'adapter_model.safetensors'));
    assert.ok([...saved.keys()].some((k) => k.endsWith('.mixda_domain.1.up.weight')));
    assert.ok([...saved.keys()].every((k) => /\.(mixda_domain\.\d+\.(down|up)|mixda_gate\.\d+|mixda_task\.adapter_(down|up))\.(weight|bias)$/.test(k)));
    const fresh = base('gpt2');
    const inst = fresh.load(dir, 'r');
    assert.deepEqual(modelLogits(fresh, ids, maskTensor()), want);
    assert.equal(fresh.numTrainable('r'), am.numTrainable('t'));
    assert.equal(JSON.parse(readFileSync(join(dir, 'adapter_config.json'), 'utf8')).frozen_domains, 2);
    assert.ok([...inst.deltas.values()].every((d) => (d as MixdaDelta).mixda_domain.every((k) => !k.up.weight.requiresGrad)));
  });
});

// ---- errors ----

describe('MixDA: errors', () => {
  it('names the field of a bad config value', () => {
    const bad: [Record<string, unknown>, RegExp][] = [
      [{ gate_position: 'first' }, /"gate_position" must be one of "last", "token"/],
      [{ reduction_factor: 0 }, /"reduction_factor" must be a number >= 1/],
      [{ trainable_domains: 0 }, /"trainable_domains" is 0 .* nothing to train/],
      [{ adapter_layers: [7] }, /"adapter_layers" \[7\]: no target in that layer \(target layers: 0, 1\)/],
      [{ adapter_layers: 'last' }, /"adapter_layers" must be a layer index/],
      [{ gate_dropout: 1 }, /"gate_dropout" must be below 1/],
      [{ preserve_task: -1 }, /"preserve_task" must be a number >= 0/],
      [{ domain_adapters: 'x' }, /"domain_adapters" must be a list of adapter folders/],
      [{ gate_widht: 8 }, /does not read "gate_widht"/],
    ];
    for (const [cfg, re] of bad) assert.throws(() => base().add('m', { ...STAGE1, ...cfg }), re, JSON.stringify(cfg));
  });

  it('names a missing domain folder, a folder of another method, and a conflicting size', () => {
    const am = base();
    assert.throws(() => am.add('m', { ...STAGE1, trainable_domains: 0, domain_adapters: [join(tmp, 'nowhere')] }), /"domain_adapters": .*nowhere: no such adapter folder/);
    const lora = join(tmp, 'lora');
    const l = base();
    l.add('l', { peft_type: 'LORA', r: 2, target_modules: ['q_proj'] });
    l.save(lora, 'l');
    assert.throws(() => am.add('m', { ...STAGE1, domain_adapters: [lora] }), /peft_type is "LORA"; a domain adapter is a saved MIXDA adapter/);
    const d = domainFolder('llama-gqa', 11);
    assert.throws(() => am.add('m', { ...STAGE1, domain_adapters: [d], reduction_factor: 8 }), /"reduction_factor" is 8, but the domain adapter .* has 4/);
    assert.throws(() => am.add('m', { ...STAGE1, domain_adapters: [d], frozen_domains: 1 }), /"frozen_domains" counts/);
    assert.throws(() => am.add('m', { ...STAGE1, domain_adapters: [d], residual: true }), /"residual" is true, but the domain adapter .* has false/);
    // a config that promises more knowledge adapters than its file holds
    const short = join(tmp, 'short');
    cpSync(d, short, { recursive: true });
    const cfg = JSON.parse(readFileSync(join(short, 'adapter_config.json'), 'utf8'));
    writeFileSync(join(short, 'adapter_config.json'), JSON.stringify({ ...cfg, trainable_domains: 2 }));
    assert.throws(() => am.add('m', { ...STAGE1, trainable_domains: 0, domain_adapters: [short] }), /1 knowledge adapters at model\.layers\.0\.mlp\.down_proj, but its config .* says 2/);
  });

  it('a domain adapter of another model: d_ff mismatch, other layers', () => {
    const d = domainFolder('llama-gqa', 12);
    const odd = join(tmp, 'other-dff');
    cpSync(d, odd, { recursive: true });
    const tensors = readTensorMap(join(d, 'adapter_model.safetensors'));
    const key = `${PEFT_MODEL_PREFIX}model.layers.1.mlp.down_proj.mixda_domain.0.down.weight`;
    // the knowledge adapter of a model whose feed-forward is 40 wide
    tensors.set(key, ak.zeros([12, 40]));
    writeFileSync(join(odd, 'adapter_model.safetensors'), Buffer.concat(serializeSafetensors(Object.fromEntries(tensors))));
    const am = base();
    assert.throws(() => am.add('m', { ...STAGE1, trainable_domains: 0, task_adapter: true, domain_adapters: [odd] }), new RegExp(`"${key.replace(/\./g, '\\.')}" is \\[12, 40\\], expected \\[12, 48\\]: .* takes 48 inputs \\(d_ff\\)`));
    const oneLayer = domainFolder('llama-gqa', 13, { adapter_layers: [1] });
    const both = join(tmp, 'one-layer-as-two');
    cpSync(oneLayer, both, { recursive: true });
    const cfg = JSON.parse(readFileSync(join(both, 'adapter_config.json'), 'utf8'));
    writeFileSync(join(both, 'adapter_config.json'), JSON.stringify({ ...cfg, adapter_layers: [0, 1] }));
    assert.throws(() => am.add('m', { ...STAGE1, trainable_domains: 0, domain_adapters: [both] }), /its knowledge adapters sit at model\.layers\.1\.mlp\.down_proj, this adapter's at model\.layers\.0\.mlp\.down_proj, model\.layers\.1\.mlp\.down_proj/);
  });
});
