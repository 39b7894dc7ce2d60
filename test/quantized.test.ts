/**
 * Quantized bases: QuantLinear against a float Linear holding the dequantized weight (forward and
 * input gradient, finite differences, the LLM.int8() product by plain loops), quantizeModel,
 * adapters trained on a quantized base (the contract's checks, merges bounded by the format's
 * step), bitsandbytes checkpoints against scripts/gen_bnb_checkpoint_fixture.py (packed bytes,
 * dequantized weights, torch logits), and --quantize on the command line.
 */
import { describe, it, after } from 'node:test';
import assert from 'node:assert/strict';
import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as ak from '../src/index.js';
import { AdapterModel, getMethod, isMergeable, registeredMethods } from '../src/adapters/index.js';
import { Linear, type Module, QuantLinear, describeModel } from '../src/nn/index.js';
import { NF4_CODE, QUANT_FORMAT_NAMES, type Bnb4bitTensor, type Int8RowwiseTensor } from '../src/backend/quant/index.js';
import { loadModel, loadTokenizer } from '../src/models/load.js';
import { quantizeModel } from '../src/models/quantize.js';
import { saveModelFolder } from '../src/models/save.js';
import { generate } from '../src/models/generate.js';
import { SafetensorsFile, serializeSafetensors, type RawTensor, type SafetensorsDType } from '../src/io/safetensors.js';
import { AdamW } from '../src/train/optim.js';
import { startServer } from '../src/serve/http.js';
import { dataDir } from '../src/io/data.js';
import { assertClose, backends, randomArray } from './helpers.js';
import { runCli } from './cli-run.js';

const FIX = fileURLToPath(new URL('./fixtures/models/', import.meta.url));
const STORIES = join(dataDir(), 'models', 'stories260K');
const MODEL = ['--model', join(STORIES, 'stories260K.bin'), '--tokenizer', join(STORIES, 'tok512.bin')];
const tmp = mkdtempSync(join(tmpdir(), 'adaptkit-quantized-'));
after(() => rmSync(tmp, { recursive: true, force: true }));

function f32(t: ak.Tensor): Float32Array {
  return t.toArray() as Float32Array;
}

function logitsOf(m: { forward(ids: ak.Tensor): ak.Tensor }, ids: ak.Tensor): Float32Array {
  return ak.tidy(() => ak.noGrad(() => f32(m.forward(ids))));
}

function quantLayers(model: Module): [string, QuantLinear][] {
  return model.namedModules().filter((e): e is [string, QuantLinear] => e[1] instanceof QuantLinear);
}

const IDS = ak.tensor([5, 17, 3, 44, 9, 1, 60, 2], [2, 4], { dtype: 'i32' }).keep();

// ---------------------------------------------------------------- QuantLinear

const N = 6;
const K = 256; // a multiple of every block size (q4_K and q6_K need 256)

/** y = x·Wᵀ the LLM.int8() way, by plain loops in f64: outlier columns in float, the rest in int8 codes. */
function int8Reference(x: Float32Array, m: number, w: Int8RowwiseTensor, threshold: number): Float64Array {
  const [n, k] = w.shape as [number, number];
  const outlier = new Set<number>();
  for (let i = 0; i < m * k; i++) if (threshold > 0 && Math.abs(x[i]!) >= threshold) outlier.add(i % k);
  const y = new Float64Array(m * n);
  for (let i = 0; i < m; i++) {
    let am = 0;
    for (let c = 0; c < k; c++) if (!(threshold > 0 && Math.abs(x[i * k + c]!) >= threshold)) am = Math.max(am, Math.abs(x[i * k + c]!));
    const codes = Array.from({ length: k }, (_, c) => (outlier.has(c) || am === 0 ? 0 : Math.round((x[i * k + c]! * 127) / am)));
    for (let r = 0; r < n; r++) {
      let int = 0;
      let fp = 0;
      for (let c = 0; c < k; c++) {
        int += codes[c]! * w.weight[r * k + c]!;
        if (outlier.has(c)) fp += x[i * k + c]! * ((w.weight[r * k + c]! * w.scb[r]!) / 127);
      }
      y[i * n + r] = (int * am * w.scb[r]!) / (127 * 127) + fp;
    }
  }
  return y;
}

for (const backend of backends()) {
  describe(`QuantLinear on ${backend}`, () => {
    for (const format of QUANT_FORMAT_NAMES) {
      it(`${format}: forward and input gradient equal a Linear holding the dequantized weight, and finite differences`, () => {
        ak.setBackend(backend);
        const w = ak.fromBuffer(randomArray(N * K, 1, 0.3), [N, K]);
        const bias = ak.parameter(ak.fromBuffer(randomArray(N, 2), [N]));
        const q = QuantLinear.quantize(w, bias, format);
        // int8: a threshold below every |x| makes each column an outlier column, so the product is float throughout
        if (format === 'int8') q.threshold = 1e-30;
        const lin = new Linear(q.dequantizedWeight(), bias);
        const x = ak.parameter(ak.fromBuffer(randomArray(2 * 3 * K, 3), [2, 3, K]));
        const R = ak.fromBuffer(randomArray(2 * 3 * N, 4), [2, 3, N]);
        const grads = (layer: { forward(x: ak.Tensor): ak.Tensor }) => {
          x.grad = null;
          bias.grad = null;
          const y = layer.forward(x);
          ak.tidy(() => ak.sum(ak.mul(y, R)).backward());
          return { y: f32(y), dx: f32(x.grad!), db: f32(bias.grad!) };
        };
        const got = grads(q);
        const want = grads(lin);
        assertClose(got.y, want.y, `${format} forward`, 1e-6, 1e-5);
        assertClose(got.dx, want.dx, `${format} dx`, 1e-6, 1e-5);
        assertClose(got.db, want.db, `${format} dbias`, 0, 0);
        const objective = () => ak.tidy(() => ak.noGrad(() => ak.sum(ak.mul(q.forward(x), R)).item()));
        const d = x.storage.data as Float32Array;
        const h = 1e-2;
        for (const j of [0, 300, 2 * 3 * K - 1]) {
          const orig = d[j]!;
          d[j] = orig + h;
          const up = objective();
          d[j] = orig - h;
          const down = objective();
          d[j] = orig;
          const fd = (up - down) / (2 * h);
          assert.ok(Math.abs(fd - got.dx[j]!) <= 1e-3 + 1e-3 * Math.abs(fd), `${format} dx[${j}]: ${got.dx[j]} vs finite differences ${fd}`);
        }
      });
    }

    it('int8: the LLM.int8() product with outlier columns (threshold 6), every column in int8 at threshold 0, and the gradient through the dequantized CB', () => {
      ak.setBackend(backend);
      const q = QuantLinear.quantize(ak.fromBuffer(randomArray(N * K, 5, 0.3), [N, K]), null, 'int8');
      const m = 4;
      const xv = randomArray(m * K, 6, 1.5);
      xv[1 * K + 3] = 7.5;
      xv[2 * K + 17] = -9;
      xv[0 * K + 25] = 6;
      const x = ak.parameter(ak.fromBuffer(xv, [m, K]));
      for (const threshold of [6, 0]) {
        q.threshold = threshold;
        const y = ak.tidy(() => ak.noGrad(() => f32(q.forward(x))));
        assertClose(y, int8Reference(xv, m, q.weight as Int8RowwiseTensor, threshold), `int8 threshold ${threshold}`, 1e-5, 1e-5);
      }
      q.threshold = 6;
      const g = ak.fromBuffer(randomArray(m * N, 7), [m, N]);
      ak.tidy(() => ak.sum(ak.mul(q.forward(x), g)).backward());
      const lin = new Linear(q.dequantizedWeight());
      const dx = f32(x.grad!);
      x.grad = null;
      ak.tidy(() => ak.sum(ak.mul(lin.forward(x), g)).backward());
      assertClose(dx, f32(x.grad!), 'int8 dx = dy · dequant(CB)', 1e-6, 1e-5);
    });

    it('row norms of W + s·B·A (DoRA) from the packed rows equal plain loops over the dequantized weight', () => {
      ak.setBackend(backend);
      for (const format of ['nf4', 'int8', 'q4_K']) {
        const q = QuantLinear.quantize(ak.fromBuffer(randomArray(N * K, 12, 0.3), [N, K]), null, format);
        const r = 3;
        const a = randomArray(r * K, 13, 0.1);
        const b = randomArray(N * r, 14, 0.5);
        const w = f32(q.dequantizedWeight());
        const want = Array.from({ length: N }, (_, o) => {
          let s = 0;
          for (let c = 0; c < K; c++) {
            let ba = 0;
            for (let j = 0; j < r; j++) ba += b[o * r + j]! * a[j * K + c]!;
            s += (w[o * K + c]! + 0.7 * ba) ** 2;
          }
          return Math.sqrt(s);
        });
        assertClose(q.lowRankRowNorms(b, a, r, 0.7), want, `${format} row norms`, 1e-5, 1e-5);
      }
    });

    it('the packed weight is no parameter: frozen means no gradient, and the memory is the packed bytes', () => {
      ak.setBackend(backend);
      const w = ak.fromBuffer(randomArray(N * K, 8), [N, K]);
      const bias = ak.fromBuffer(randomArray(N, 9), [N]);
      const q = QuantLinear.quantize(w, bias, 'nf4', { doubleQuant: true });
      assert.deepEqual(q.parameters(), [bias]);
      const x = ak.parameter(ak.fromBuffer(randomArray(3 * K, 10), [3, K]));
      ak.tidy(() => ak.sum(q.forward(x)).backward());
      assert.ok(x.grad);
      assert.equal(bias.grad, null);
      const blocks = (N * K) / 64;
      // codes (two per byte), 8-bit absmax codes, the 16 levels, the nested absmax (one per 256 blocks) and the 256-entry map
      assert.equal(q.bytes(), (N * K) / 2 + blocks + 16 * 4 + Math.ceil(blocks / 256) * 4 + 256 * 4 + N * 4);
      assert.equal(QuantLinear.quantize(w, null, 'int8').bytes(), N * K + N * 4);
      assert.equal(QuantLinear.quantize(w, null, 'bf16').bytes(), N * K * 2);
    });

    it('bad input is refused, naming the tensor and the field', () => {
      ak.setBackend(backend);
      const q = QuantLinear.quantize(ak.fromBuffer(randomArray(N * K, 11), [N, K]), null, 'nf4', { name: 'layer.weight' });
      assert.throws(() => q.forward(ak.zeros([2, K + 1])), (e: unknown) => e instanceof ak.AdaptkitError && /quantLinear: x \[\.\.\., in\] and W \[out, in\] disagree/.test(e.message));
      assert.throws(() => QuantLinear.quantize(ak.zeros([2, 64]), null, 'nf5'), /unknown quantized format "nf5"/);
      const packed = q.weight as Bnb4bitTensor;
      assert.throws(() => new QuantLinear({ ...packed, absmax: packed.absmax.subarray(1) }), /layer\.weight: absmax: has \d+ entries/);
      assert.throws(() => new QuantLinear(packed, ak.zeros([N + 1])), /layer\.weight: bias \[7\] does not match 6 outputs/);
      assert.throws(() => QuantLinear.quantize(ak.zeros([2, 48]), null, 'q4_0', { name: 'w' }), /w: shape: last dimension 48 is not a multiple of the q4_0 block size 32/);
    });
  });
}

// ---------------------------------------------------------------- quantizeModel

/** The float model with each quantized layer's weight replaced by its dequantized values (in the float layout). */
function dequantizedTwin(dir: string, quantized: Module): Module {
  const twin = loadModel(dir).model;
  for (const [path, q] of quantLayers(quantized)) {
    const old = twin.get(path) as Linear;
    const w = q.dequantizedWeight();
    twin.replace(path, new Linear(old.fanInFanOut ? ak.contiguous(ak.transpose(w)).keep() : w.keep(), old.bias, old.fanInFanOut));
  }
  return twin;
}

describe('quantizeModel', () => {
  it('replaces every linear layer of the blocks (not the head) and computes what a float model of the dequantized weights computes', () => {
    for (const [fixture, format] of [['llama-gqa', 'nf4'], ['gpt2', 'bf16'], ['llama-gqa', 'int8']] as const) {
      const dir = join(FIX, fixture);
      const { model } = loadModel(dir);
      const floatBytes = model.parameters().reduce((n, p) => n + p.size * 4, 0);
      const r = quantizeModel(model, format, format === 'int8' ? { threshold: 1e-30 } : {});
      const heads = describeModel(model).heads;
      assert.ok(r.layers.length > 0 && r.layers.every((p) => model.get(p) instanceof QuantLinear));
      assert.ok(r.kept.every((p) => heads.includes(p) && model.get(p) instanceof Linear), `${fixture}: the heads stay float (${r.kept.join(', ')})`);
      assert.equal(model.namedModules().filter(([p, m]) => m instanceof Linear && !heads.includes(p)).length, 0);
      assert.ok(r.layerBytesAfter < r.layerBytesBefore && r.modelBytes < floatBytes);
      assertClose(logitsOf(model as never, IDS), logitsOf(dequantizedTwin(dir, model) as never, IDS), `${fixture} ${format}`, 1e-4, 1e-4);
    }
  });

  it('a model with bf16/f16 layers saves them as BF16/F16 tensors (in the Conv1D layout for GPT-2) that load back to the same weights; GGUF block formats are refused', () => {
    for (const [fixture, format] of [['gpt2', 'bf16'], ['llama-gqa', 'f16']] as const) {
      const { model, config } = loadModel(join(FIX, fixture));
      quantizeModel(model, format);
      const out = join(tmp, `${fixture}-${format}-saved`);
      saveModelFolder(model, config, out);
      const f = new SafetensorsFile(join(out, 'model.safetensors'));
      const dtypes = new Set(quantLayers(model).map(([p]) => f.info(`${p}.weight`).dtype));
      f.close();
      assert.deepEqual([...dtypes], [format === 'bf16' ? 'BF16' : 'F16']);
      const back = loadModel(out).model;
      for (const [p, q] of quantLayers(model)) {
        const l = back.get(p) as Linear;
        const w = l.fanInFanOut ? ak.contiguous(ak.transpose(l.weight)) : l.weight;
        assert.deepEqual(f32(w), f32(q.dequantizedWeight()), p);
      }
      assertClose(logitsOf(back as never, IDS), logitsOf(model as never, IDS), `${fixture} ${format} reloaded`, 1e-5, 1e-5);
    }
    const { model, config } = loadModel(join(FIX, 'llama-gqa'));
    quantizeModel(model, 'q8_0', { skip: ['down_proj'] });
    assert.throws(() => saveModelFolder(model, config, join(tmp, 'q8')), /model\.layers\.0\.self_attn\.q_proj is quantized to q8_0, which has no safetensors layout/);
  });

  it('refuses a format a layer cannot take (naming the tensor) and leaves the model unchanged; an unknown format lists the known ones', () => {
    const { model } = loadModel(join(FIX, 'llama-gqa'));
    assert.throws(() => quantizeModel(model, 'q4_0'), /model\.layers\.0\.mlp\.down_proj\.weight: shape: last dimension 48 is not a multiple of the q4_0 block size 32/);
    assert.equal(quantLayers(model).length, 0);
    assert.throws(() => quantizeModel(model, 'int4'), /--quantize must be one of int8, nf4, fp4, .*bf16, f16, got "int4"/);
    quantizeModel(model, 'fp4');
    assert.throws(() => quantizeModel(model, 'nf4'), /already quantized \(fp4\)/);
  });
});

// ---------------------------------------------------------------- adapters on a quantized base

const SMALL = { r: 4, alpha: 8, 'virtual-tokens': 3, 'reduction-factor': 4 };
const QLORA_PRESETS = ['lora', 'dora', 'ia3', 'bottleneck', 'prefix', 'prompt'];

function presetConfig(name: string, model: Module): Record<string, unknown> {
  const p = registeredMethods().flatMap((m) => m.presets ?? []).find((x) => x.name === name);
  assert.ok(p, `preset ${name} is registered`);
  return p.config(SMALL, describeModel(model));
}

function quantizedLlama(format = 'nf4', opts: Parameters<typeof quantizeModel>[2] = {}): Module {
  const { model } = loadModel(join(FIX, 'llama-gqa'));
  quantizeModel(model, format, opts);
  return model;
}

function perturb(am: AdapterModel, seed: number): void {
  const rng = new ak.Rng(seed);
  for (const p of am.trainableParameters()) {
    const d = p.storage.data as Float32Array;
    for (let i = 0; i < p.size; i++) d[p.offset + i] = d[p.offset + i]! + 0.1 * rng.normal();
  }
}

/** The layers adapters wrap, with their quantized base layer and their deltas. */
function wrapped(model: Module): [string, { base_layer: QuantLinear; deltas: { mergeWeight?(w: ak.Tensor): ak.Tensor }[] }][] {
  return model.namedModules().flatMap(([p, m]) => {
    const w = m as unknown as { base_layer?: unknown; deltas?: { mergeWeight?(w: ak.Tensor): ak.Tensor }[] };
    return w.base_layer instanceof QuantLinear && w.deltas ? [[p, w as { base_layer: QuantLinear; deltas: { mergeWeight?(w: ak.Tensor): ak.Tensor }[] }]] : [];
  });
}

/** The most requantizing can move a value: half the widest gap between levels, times the scale of its block or row. */
function requantBound(q: QuantLinear, merged: Float32Array): Float64Array {
  const [n, k] = q.weight.shape as [number, number];
  const out = new Float64Array(n * k);
  if (q.format === 'int8') {
    for (let r = 0; r < n; r++) {
      let am = 0;
      for (let c = 0; c < k; c++) am = Math.max(am, Math.abs(merged[r * k + c]!));
      for (let c = 0; c < k; c++) out[r * k + c] = am / 127 / 2;
    }
    return out;
  }
  let gap = 0;
  for (let i = 1; i < NF4_CODE.length; i++) gap = Math.max(gap, NF4_CODE[i]! - NF4_CODE[i - 1]!);
  for (let b = 0; b < n * k; b += 64) {
    let am = 0;
    for (let i = b; i < Math.min(n * k, b + 64); i++) am = Math.max(am, Math.abs(merged[i]!));
    for (let i = b; i < Math.min(n * k, b + 64); i++) out[i] = (am * gap) / 2;
  }
  return out;
}

describe('adapters on a quantized base (QLoRA)', () => {
  for (const preset of QLORA_PRESETS) {
    it(`${preset} on NF4 llama-gqa: starts as the base, gradients match finite differences, nothing of the base trains, save/load is exact`, () => {
      ak.setBackend('js');
      const model = quantizedLlama();
      const am = new AdapterModel(model);
      const before = logitsOf(am, IDS);
      const config = presetConfig(preset, model);
      const inst = am.add('a', config, { seed: 1 });
      if (getMethod(config.peft_type).startsAsIdentity !== false) assertClose(logitsOf(am, IDS), before, `${preset} zero-init`, 1e-5, 1e-4);
      perturb(am, 2);
      const adapted = logitsOf(am, IDS);
      assert.ok(adapted.some((v, i) => Math.abs(v - before[i]!) > 1e-3));
      // gradients: finite differences of a random projection of the last four positions' logits
      const params = am.trainableParameters();
      const R = ak.randn([2, 4, 64], { rng: new ak.Rng(5) }).keep();
      const out = () => {
        const l = am.forward(IDS);
        return ak.narrow(l, 1, l.shape[1]! - 4, 4);
      };
      ak.tidy(() => ak.sum(ak.mul(out(), R)).backward());
      const base = model.parameters().filter((p) => !params.includes(p));
      assert.ok(base.every((p) => p.grad === null && !p.requiresGrad), 'no base parameter has or needs a gradient');
      const checked = config.use_dora ? params.filter((p) => p.name!.endsWith('lora_magnitude_vector')) : params;
      for (const p of checked.slice(0, 4)) {
        const d = p.storage.data as Float32Array;
        const g = f32(p.grad!);
        for (const j of [0, Math.floor(p.size / 2), p.size - 1]) {
          const orig = d[p.offset + j]!;
          const at = (v: number) => {
            d[p.offset + j] = v;
            return ak.tidy(() => ak.noGrad(() => ak.sum(ak.mul(out(), R)).item()));
          };
          const fd = (at(orig + 1e-2) - at(orig - 1e-2)) / 2e-2;
          d[p.offset + j] = orig;
          assert.ok(Math.abs(fd - g[j]!) <= 2e-2 + 2e-2 * Math.abs(g[j]!), `${preset} ${p.name}[${j}]: autodiff ${g[j]} vs finite differences ${fd}`);
        }
      }
      // one optimizer step: state for the adapter's parameters only; the packed weights do not move
      const packed = quantLayers(model).map(([, q]) => Uint8Array.from((q.weight as Bnb4bitTensor).weight));
      const opt = new AdamW(params, { lr: 1e-2 });
      assert.deepEqual([...opt.params], params);
      opt.step();
      quantLayers(model).forEach(([, q], i) => assert.deepEqual((q.weight as Bnb4bitTensor).weight, packed[i]));
      assert.ok(base.every((p) => p.grad === null));
      const stepped = logitsOf(am, IDS);
      // save, then load into a fresh quantized model: the same logits exactly
      const dir = join(tmp, `qlora-${preset}`);
      am.save(dir, 'a');
      const fresh = new AdapterModel(quantizedLlama());
      fresh.load(dir, 'b');
      assertClose(logitsOf(fresh, IDS), stepped, `${preset} loaded`, 0, 0);
      // a merge requantizes: each weight moves by at most the format's step
      if (isMergeable(inst)) {
        const merged = new Map(wrapped(model).map(([path, w]) => [path, ak.noGrad(() => f32(w.deltas.reduce((acc, d) => d.mergeWeight!(acc), w.base_layer.dequantizedWeight())))] as const));
        const reports = new Map<string, number>();
        am.merge({ onRequantize: (path, change) => reports.set(path, change) });
        assert.deepEqual([...reports.keys()].sort(), [...merged.keys()].sort());
        for (const [path, want] of merged) {
          const layer = am.model.get(path);
          assert.ok(layer instanceof QuantLinear && layer.format === 'nf4', `${path} stays NF4`);
          const got = f32(layer.dequantizedWeight());
          const bound = requantBound(layer, want);
          let worst = 0;
          for (let i = 0; i < got.length; i++) {
            const e = Math.abs(got[i]! - want[i]!);
            worst = Math.max(worst, e);
            // the absmax is itself 8-bit quantized (double quantization): a few percent of slack
            assert.ok(e <= bound[i]! * 1.05 + 1e-6, `${path}[${i}]: moved ${e}, more than ${bound[i]}`);
          }
          assert.equal(reports.get(path), worst);
          assert.ok(worst > 0);
        }
        am.unmerge();
        assertClose(logitsOf(am, IDS), stepped, `${preset} unmerged`, 0, 0);
      }
    });
  }

  it('LoRA on an LLM.int8() base merges within half an int8 step per row; a mixed batch on an NF4 base equals each row alone', () => {
    ak.setBackend('js');
    const am8 = new AdapterModel(quantizedLlama('int8'));
    am8.add('a', presetConfig('lora', am8.model), { seed: 1 });
    perturb(am8, 3);
    const want = new Map(wrapped(am8.model).map(([p, w]) => [p, ak.noGrad(() => f32(w.deltas[0]!.mergeWeight!(w.base_layer.dequantizedWeight())))] as const));
    let reported = 0;
    am8.merge({ onRequantize: () => reported++ });
    assert.equal(reported, want.size);
    for (const [p, w] of want) {
      const q = am8.model.get(p) as QuantLinear;
      const got = f32(q.dequantizedWeight());
      const bound = requantBound(q, w);
      for (let i = 0; i < got.length; i++) assert.ok(Math.abs(got[i]! - w[i]!) <= bound[i]! + 1e-6, `${p}[${i}]`);
    }
    const am = new AdapterModel(quantizedLlama());
    am.add('a', presetConfig('dora', am.model), { seed: 1 });
    am.add('l', presetConfig('lora', am.model), { seed: 2 });
    for (const n of ['a', 'l']) {
      am.setActive([n]);
      perturb(am, n.charCodeAt(0));
    }
    const rows = [[5, 17, 3, 44], [9, 1, 60, 2], [7, 7, 8, 9], [3, 3, 2, 1]];
    const who = ['a', null, 'l', 'a'];
    const mixed = ak.tidy(() => ak.noGrad(() => f32(am.forwardMixed(ak.tensor(rows.flat(), [4, 4], { dtype: 'i32' }), who))));
    const per = mixed.length / 4;
    rows.forEach((r, i) => {
      am.setActive(who[i] ? [who[i]!] : []);
      assertClose(mixed.subarray(i * per, (i + 1) * per), logitsOf(am, ak.tensor(r, [1, 4], { dtype: 'i32' })), `row ${i}`, 1e-4, 1e-4);
    });
  });

  it('every registered preset trains on an NF4 base (finite gradients for every adapter parameter) or refuses, naming the layer', () => {
    ak.setBackend('js');
    const trained: string[] = [];
    const refused: string[] = [];
    for (const m of registeredMethods()) {
      for (const p of m.presets ?? []) {
        const am = new AdapterModel(quantizedLlama());
        let inst: ak.AdapterInstance;
        try {
          inst = am.add('a', p.config(SMALL, describeModel(am.model)), { seed: 1 });
        } catch (e) {
          // methods that change or fold into the base weights themselves cannot leave them packed
          assert.match((e as Error).message, /"model\.layers\.\d\.[\w.]+" (is a QuantLinear|is not a linear layer|is quantized)/, `${p.name}: ${(e as Error).message}`);
          refused.push(p.name);
          continue;
        }
        inst.condition?.(am, ak.tensor([3, 9, 27, 4], [1, 4], { dtype: 'i32' }));
        ak.tidy(() => ak.sum(am.forward(IDS)).backward());
        for (const t of am.trainableParameters()) assert.ok(t.grad && f32(t.grad).every(Number.isFinite), `${p.name}: ${t.name} has a finite gradient`);
        trained.push(p.name);
      }
    }
    for (const name of QLORA_PRESETS) assert.ok(trained.includes(name), `${name} trains on a quantized base`);
    assert.ok(refused.includes('pissa'));
  });
});

// ---------------------------------------------------------------- bitsandbytes checkpoints

function readRaw(file: string): Map<string, RawTensor & { bytes: Uint8Array }> {
  const f = new SafetensorsFile(file);
  try {
    return new Map(f.keys().map((k) => {
      const info = f.info(k);
      const bytes = Uint8Array.from(f.readBytes(k));
      return [k, { dtype: info.dtype, shape: info.shape, data: bytes, bytes }];
    }));
  } finally {
    f.close();
  }
}

function writeRaw(file: string, tensors: Map<string, RawTensor>): void {
  writeFileSync(file, Buffer.concat(serializeSafetensors({}, { raw: Object.fromEntries(tensors) })));
}

/** A copy of a fixture folder whose checkpoint and config were changed by `edit`. */
function editedCopy(name: string, edit: (t: Map<string, RawTensor>, config: Record<string, unknown>) => void): string {
  const dir = join(tmp, `${name}-${Math.random().toString(36).slice(2)}`);
  cpSync(join(FIX, name), dir, { recursive: true });
  const t = readRaw(join(dir, 'model.safetensors')) as Map<string, RawTensor>;
  const config = JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8')) as Record<string, unknown>;
  edit(t, config);
  writeRaw(join(dir, 'model.safetensors'), t);
  writeFileSync(join(dir, 'config.json'), JSON.stringify(config));
  return dir;
}

describe('bitsandbytes checkpoints', () => {
  for (const backend of backends()) {
    for (const [name, bits, format] of [['llama-gqa-bnb4', 4, 'nf4'], ['llama-gqa-bnb8', 8, 'int8']] as const) {
      it(`${name} loads packed on ${backend}: the generator's dequantized weights bit for bit, its torch logits, and saves back byte for byte`, () => {
        ak.setBackend(backend);
        const dir = join(FIX, name);
        const expected = JSON.parse(readFileSync(join(dir, 'expected.json'), 'utf8')) as { ids: number[][]; attention_mask: number[][]; logits: number[]; quantized: string[] };
        const r = loadModel(dir);
        assert.deepEqual(r.bnb, { layers: expected.quantized.length, bits });
        assert.deepEqual(r.unused, []);
        const want = new SafetensorsFile(join(dir, 'expected.safetensors'));
        for (const m of expected.quantized) {
          const layer = r.model.get(m);
          assert.ok(layer instanceof QuantLinear && layer.format === format, `${m} is a ${format} QuantLinear`);
          assert.deepEqual(f32(layer.dequantizedWeight()), f32(want.read(`${m}.weight`)), `${m} dequantized`);
        }
        want.close();
        assert.ok(r.model.get('lm_head') instanceof Linear);
        const ids = ak.tensor(expected.ids.flat(), [2, 9], { dtype: 'i32' });
        const mask = ak.tensor(expected.attention_mask.flat(), [2, 9]);
        const logits = ak.noGrad(() => f32(r.model.forward(ids, { attentionMask: mask })));
        assertClose(logits, expected.logits, `${name} logits`, 1e-4, 1e-4);
        if (bits === 8) {
          // with every column an outlier column the int8 layers multiply in float: the dequantized model's logits
          for (const [, l] of quantLayers(r.model)) l.threshold = 1e-30;
          const fp = ak.noGrad(() => f32(r.model.forward(ids, { attentionMask: mask })));
          assertClose(fp, (expected as unknown as { logits_dequantized: number[] }).logits_dequantized, `${name} dequantized logits`, 1e-4, 1e-4);
          for (const [, l] of quantLayers(r.model)) l.threshold = 3;
        }
        const out = join(tmp, `${name}-saved-${backend}`);
        saveModelFolder(r.model, r.config, out);
        const a = readRaw(join(dir, 'model.safetensors'));
        const b = readRaw(join(out, 'model.safetensors'));
        assert.deepEqual([...b.keys()].sort(), [...a.keys()].sort());
        for (const [k, t] of a) {
          // the float tensors of the fixture are f32 already; every packed one comes back as it was
          assert.deepEqual([b.get(k)!.dtype, b.get(k)!.shape], [t.dtype, t.shape], k);
          assert.deepEqual(b.get(k)!.bytes, t.bytes, k);
        }
        const cfg = JSON.parse(readFileSync(join(out, 'config.json'), 'utf8')) as { quantization_config: Record<string, unknown> };
        assert.equal(cfg.quantization_config[bits === 4 ? 'load_in_4bit' : 'load_in_8bit'], true);
        assertClose(ak.noGrad(() => f32(loadModel(out).model.forward(ids, { attentionMask: mask }))), logits, `${name} reloaded`, 0, 0);
      });
    }
  }

  it('a missing quant-state tensor or field, another quant_method, and --quantize on a quantized checkpoint are refused by name', () => {
    const q = 'model.layers.1.mlp.up_proj.weight';
    const noAbsmax = editedCopy('llama-gqa-bnb4', (t) => t.delete(`${q}.absmax`));
    assert.throws(() => loadModel(noAbsmax), new RegExp(`${noAbsmax}: ${q.replace(/\./g, '\\.')}\\.absmax: tensor: missing from the state dict`));
    const noState = editedCopy('llama-gqa-bnb4', (t) => t.delete(`${q}.quant_state.bitsandbytes__nf4`));
    assert.throws(() => loadModel(noState), /model\.layers\.1\.mlp\.up_proj\.weight: quant_state: expected exactly one of/);
    const noField = editedCopy('llama-gqa-bnb4', (t) => {
      const key = `${q}.quant_state.bitsandbytes__nf4`;
      const state = JSON.parse(new TextDecoder().decode(t.get(key)!.data as Uint8Array)) as Record<string, unknown>;
      delete state.blocksize;
      const bytes = new TextEncoder().encode(JSON.stringify(state));
      t.set(key, { dtype: 'U8' as SafetensorsDType, shape: [bytes.length], data: bytes });
    });
    assert.throws(() => loadModel(noField), /up_proj\.weight\.quant_state\.bitsandbytes__nf4: blocksize: missing quant_state key/);
    const noScb = editedCopy('llama-gqa-bnb8', (t) => t.delete('model.layers.0.self_attn.k_proj.SCB'));
    assert.throws(() => loadModel(noScb), /model\.layers\.0\.self_attn\.k_proj\.SCB: tensor: missing from the state dict/);
    const gptq = editedCopy('llama-gqa-bnb4', (_t, c) => Object.assign(c.quantization_config as object, { quant_method: 'gptq' }));
    assert.throws(() => loadModel(gptq), /quantization_config\.quant_method "gptq" is not supported/);
    assert.throws(() => loadModel(join(FIX, 'llama-gqa-bnb8'), { quantize: 'nf4' }), /already quantized by bitsandbytes \(8-bit\); load it without --quantize/);
  });
});

// ---------------------------------------------------------------- the command line

function smsData(n: number): string {
  const lines = readFileSync(join(dataDir(), 'datasets', 'sms_spam', 'SMSSpamCollection'), 'utf8').split('\n').slice(1, n + 1);
  const file = join(tmp, `sms-${n}.jsonl`);
  writeFileSync(file, lines.map((l) => {
    const [label, ...text] = l.split('\t');
    return JSON.stringify({ text: text.join('\t'), label });
  }).join('\n'));
  return file;
}

describe('--quantize on the command line', () => {
  it('generate with an NF4 and an LLM.int8() stories260K says what it quantized; bad values are refused', async () => {
    for (const format of ['nf4', 'int8']) {
      const r = await runCli('generate', ...MODEL, '--max-tokens', '12', '--quantize', format);
      assert.equal(r.code, 0, r.err);
      assert.match(r.err, new RegExp(`quantized 35 linear layers to ${format}: 0\\.864 MiB -> 0\\.\\d+ MiB`));
      assert.match(r.out, /^Once upon a time/);
    }
    const bad = await runCli('generate', ...MODEL, '--quantize', 'int4');
    assert.equal(bad.code, 1);
    assert.match(bad.err, /--quantize must be one of int8, nf4, fp4/);
    const blocks = await runCli('score', ...MODEL, '--text', 'Once', '--quantize', 'q4_0');
    assert.equal(blocks.code, 1);
    assert.match(blocks.err, /model\.layers\.0\.mlp\.down_proj\.weight: shape: last dimension 172 is not a multiple of the q4_0 block size 32/);
  });

  it('train --quantize nf4 trains LoRA on the quantized base (with gradient checkpointing), eval and merge read it, a full fine-tune is refused', async () => {
    const data = smsData(120);
    const out = join(tmp, 'qlora-run');
    const r = await runCli('train', ...MODEL, '--data', data, '--quantize', 'nf4', '--method', 'lora', '--steps', '3', '--batch-size', '4', '--seq-len', '48',
      '--val-split', '0', '--gradient-checkpointing', '--out', out);
    assert.equal(r.code, 0, r.err);
    assert.match(r.err, /quantized 35 linear layers to nf4/);
    assert.equal(JSON.parse(readFileSync(join(out, 'run_config.json'), 'utf8')).quantize, 'nf4');
    const adapter = join(out, 'adapter');
    const e = await runCli('eval', ...MODEL, '--data', data, '--adapter', adapter, '--quantize', 'nf4', '--limit', '8', '--json');
    assert.equal(e.code, 0, e.err);
    assert.ok(Number.isFinite(JSON.parse(e.out).loss));
    // merge into the quantized base: the error it makes is reported, the folder loads packed and computes the merged model
    const merged = join(tmp, 'qlora-merged');
    const m = await runCli('merge', ...MODEL.slice(0, 2), '--adapter', adapter, '--quantize', 'nf4', '--out', merged);
    assert.equal(m.code, 0, m.err);
    assert.match(m.err, /merged into 35 quantized layers and requantized them: largest weight change against the exact merge \d\.\d+(e-\d+)? \(model\.layers\.\d\.[\w.]+\); largest logit difference against the unmerged adapter on a probe batch \d/);
    const back = loadModel(merged);
    assert.deepEqual(back.bnb, { layers: 35, bits: 4 });
    const am = new AdapterModel(loadModel(join(STORIES, 'stories260K.bin'), { quantize: 'nf4' }).model);
    am.load(adapter);
    am.merge();
    assertClose(logitsOf(back.model, IDS), logitsOf(am, IDS), 'merged folder', 0, 0);
    const full = await runCli('train', ...MODEL, '--data', data, '--quantize', 'nf4', '--method', 'full', '--steps', '1', '--out', join(tmp, 'full'));
    assert.equal(full.code, 1);
    assert.match(full.err, /--quantize nf4 keeps the linear weights packed and frozen, and --method full trains every weight/);
    const combine = await runCli('merge', ...MODEL.slice(0, 2), '--adapters', `${adapter}:1`, '--quantize', 'nf4', '--out', join(tmp, 'combined'));
    assert.equal(combine.code, 1);
    assert.match(combine.err, /--quantize goes with merging an adapter into the base/);
  });

  it('serve --quantize: the engine serves base and adapter requests over an NF4 base as generate computes them', async () => {
    ak.getBackend();
    const dir = join(tmp, 'served');
    const am = new AdapterModel(loadModel(join(STORIES, 'stories260K.bin'), { quantize: 'nf4' }).model);
    am.add('ad', { peft_type: 'LORA', r: 4, lora_alpha: 8, target_modules: 'all-linear' }, { seed: 3 });
    perturb(am, 4);
    perturb(am, 5);
    am.save(join(dir, 'ad'), 'ad');
    const tok = loadTokenizer(STORIES, join(STORIES, 'tok512.bin'), 512);
    const prompt = 'Once upon a time';
    const expect = (names: string[]) => am.withActive(names, () => generate(am, tok, tok.encode(prompt, { bos: true }), { maxTokens: 10 }).text);
    const server = await startServer({
      model: join(STORIES, 'stories260K.bin'), tokenizer: join(STORIES, 'tok512.bin'), servedModelName: 'base', quantize: 'nf4',
      maxTokensLimit: 32, maxPromptTokens: 64,
      engine: { maxBatch: 8, kvCacheMb: 4, blockSize: 8, maxLoadedAdapters: 4, maxRank: 8, maxQueue: 16, contextLength: 128, adapterDir: dir },
    }, { port: 0, host: '127.0.0.1' });
    try {
      const ask = async (model: string) => {
        const res = await fetch(`${server.url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model, prompt, max_tokens: 10, temperature: 0 }) });
        assert.equal(res.status, 200);
        return ((await res.json()) as { choices: { text: string }[] }).choices[0]!.text;
      };
      const [base, adapted] = await Promise.all([ask('base'), ask('ad')]);
      assert.equal(base, expect([]));
      assert.equal(adapted, expect(['ad']));
      assert.notEqual(base, adapted);
    } finally {
      await server.close();
    }
  });
});
