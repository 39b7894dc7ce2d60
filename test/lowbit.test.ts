/**
 * Binary / low-bit adapters (LOWBIT): the contract suite, the codebook against independently
 * computed normal quantiles, the straight-through gradient, the packed file (exact round trip,
 * size formula, errors on damaged files), checkpoint state, and a CLI training run as a plugin.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { cpSync, existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as ak from '../src/index.js';
import { AdapterModel, readTensorMap } from '../src/adapters/index.js';
import { loadModel } from '../src/models/load.js';
import '../src/adapters/methods/lowbit.js';
import {
  LOWBIT_FILE, codeIndices, lowbitCodebook, packLowbit, quantizeWeight, readLowbitFile, straightThrough, unpackLowbit,
} from '../src/adapters/methods/lowbit.js';
import { FIX, contractSuite, logits, perturb, registryCases } from './contract.js';
import { assertClose, randomArray } from './helpers.js';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const tmp = mkdtempSync(join(tmpdir(), 'adaptkit-lowbit-'));

contractSuite(registryCases().filter((c) => c.config.peft_type === 'LOWBIT'));

/**
 * The positive codes (the rest mirror them), from the plain fixed-point iteration with Python's
 * statistics.NormalDist (a different Φ and Φ⁻¹, and iteration instead of Newton):
 * python3 -c "
 * from statistics import NormalDist as D
 * n=D()
 * for b in (1,2,4):
 *   K=2**b; c=[n.inv_cdf((k+.5)/K) for k in range(K)]
 *   for _ in range(5000):
 *     t=[(x+y)/2 for x,y in zip(c,c[1:])]; p=[0.0]+[n.cdf(x) for x in t]+[1.0]
 *     c=[n.inv_cdf((a+z)/2) for a,z in zip(p,p[1:])]
 *   print(b, ', '.join('%.12f'%x for x in c[K//2:]))
 * "
 */
const PYTHON_CODES: Record<number, number[]> = {
  1: [0.674489750196],
  2: [0.377754161149, 1.265720325022],
  4: [0.105550285437, 0.319036008360, 0.540072076948, 0.775192071506, 1.034006304700, 1.333106707622, 1.707737593210, 2.265490638117],
};

/** Φ by Simpson's rule on the density from 0 (independent of the method file's series). */
function cdfBySimpson(x: number): number {
  const n = 4000;
  const h = x / n;
  const f = (t: number) => Math.exp(-0.5 * t * t) / Math.sqrt(2 * Math.PI);
  let s = f(0) + f(x);
  for (let i = 1; i < n; i++) s += (i % 2 ? 4 : 2) * f(i * h);
  return 0.5 + (s * h) / 3;
}

function standardize(w: Float64Array): { z: Float64Array; m: number; s: number } {
  const n = w.length;
  const m = w.reduce((a, b) => a + b, 0) / n;
  const s = Math.sqrt(w.reduce((a, b) => a + (b - m) ** 2, 0) / (n - 1));
  return { z: w.map((v) => (v - m) / (s + 1e-5)), m, s };
}

/**
 * The straight-through forward in float64 as a smooth function of w near w0:
 * (q + z(w) - z(w0))·std(w) + mean(w), with the codes q and z(w0) held fixed.
 */
function surrogate(w: Float64Array, q: Float64Array, z0: Float64Array): Float64Array {
  const { z, m, s } = standardize(w);
  return w.map((_, i) => (q[i]! + z[i]! - z0[i]!) * s + m);
}

/** d<surrogate(w), g>/dw at w by central differences. */
function surrogateVjp(w: Float64Array, q: Float64Array, g: ArrayLike<number>): Float64Array {
  const z0 = standardize(w).z;
  const dot = (x: Float64Array) => surrogate(x, q, z0).reduce((a, v, i) => a + v * g[i]!, 0);
  const out = new Float64Array(w.length);
  for (let i = 0; i < w.length; i++) {
    const h = 1e-4 * Math.max(1e-3, Math.abs(w[i]!));
    const up = w.slice();
    up[i]! += h;
    const down = w.slice();
    down[i]! -= h;
    out[i] = (dot(up) - dot(down)) / (2 * h);
  }
  return out;
}

function codesOf(w: ak.Tensor, bits: number): Float64Array {
  const book = lowbitCodebook(bits);
  return Float64Array.from(quantizeWeight(w, bits).indices, (k) => Math.fround(book[k]!));
}

function bitsEqual(a: ak.Tensor, b: ak.Tensor): boolean {
  const x = a.toArray() as Float32Array;
  const y = b.toArray() as Float32Array;
  return a.shape.join() === b.shape.join() && Buffer.from(x.buffer, x.byteOffset, x.byteLength).equals(Buffer.from(y.buffer, y.byteOffset, y.byteLength));
}

/** The packed file size by the layout's formula. */
function expectedSize(bits: number, tensors: { name: string; shape: readonly number[] }[]): number {
  return 20 + 4 * 2 ** bits + tensors.reduce((n, t) => n + 16 + Buffer.byteLength(t.name) + 4 * t.shape.length + Math.ceil((t.shape.reduce((p, d) => p * d, 1) * bits) / 8), 0);
}

describe('low-bit codebook', () => {
  for (const b of [1, 2, 4] as const) {
    it(`${b} bits: the bin medians equal Python's fixed-point iteration`, () => {
      const c = lowbitCodebook(b);
      assert.equal(c.length, 2 ** b);
      const expected = PYTHON_CODES[b]!;
      expected.forEach((v, i) => {
        assert.ok(Math.abs(c[c.length / 2 + i]! - v) < 1e-9, `code ${c.length / 2 + i}: ${c[c.length / 2 + i]} vs ${v}`);
        assert.ok(Math.abs(c[c.length / 2 - 1 - i]! + v) < 1e-9, `code ${c.length / 2 - 1 - i}: ${c[c.length / 2 - 1 - i]} vs ${-v}`);
      });
    });
  }

  it('8 bits: ascending, symmetric, and every code is the median of its bin (Φ by Simpson integration)', () => {
    const c = lowbitCodebook(8);
    assert.equal(c.length, 256);
    for (let k = 0; k < 256; k++) {
      if (k > 0) assert.ok(c[k]! > c[k - 1]!);
      assert.ok(Math.abs(c[k]! + c[255 - k]!) < 1e-12);
      const lo = k > 0 ? cdfBySimpson((c[k - 1]! + c[k]!) / 2) : 0;
      const hi = k < 255 ? cdfBySimpson((c[k]! + c[k + 1]!) / 2) : 1;
      assert.ok(Math.abs(cdfBySimpson(c[k]!) - (lo + hi) / 2) < 1e-10, `code ${k} is not its bin's median`);
    }
    assert.ok(Math.abs(c[255]! - 3.7854) < 1e-3, `outer code ${c[255]}`);
  });

  it('a value on a threshold takes the upper code, so every value is a code', () => {
    assert.deepEqual([...codeIndices([-1, 0, 1], 1)], [0, 1, 1]);
    const q = quantizeWeight(ak.tensor([-1, 0, 1], [3]), 1);
    assert.deepEqual([...q.indices], [0, 1, 1]);
    assert.equal(new Set(q.weight.toArray()).size, 2);
  });
});

describe('low-bit quantization', () => {
  for (const b of [1, 2, 4, 8] as const) {
    it(`${b} bits: every dequantized weight is one of the 2^${b} values code·std + mean (float32)`, () => {
      const w = ak.add(ak.mul(ak.tensor(randomArray(16 * 40, b), [16, 40]), 0.03), 0.01);
      const q = quantizeWeight(w, b);
      const vals = q.weight.toArray() as Float32Array;
      const book = lowbitCodebook(b);
      const levels = new Set(Array.from(book, (c) => Math.fround(Math.fround(Math.fround(c) * q.std) + q.mean)));
      assert.equal(levels.size, 2 ** b);
      const seen = new Set(vals);
      assert.ok(seen.size <= 2 ** b && (b > 4 || seen.size === 2 ** b), `${seen.size} distinct values`);
      for (let i = 0; i < vals.length; i++) assert.equal(vals[i], Math.fround(Math.fround(Math.fround(book[q.indices[i]!]!) * q.std) + q.mean));
      for (const v of seen) assert.ok(levels.has(v));
      const x = w.toArray() as Float32Array;
      const m = x.reduce((a, v) => a + v, 0) / x.length;
      const s = Math.sqrt(x.reduce((a, v) => a + (v - m) ** 2, 0) / (x.length - 1));
      assert.ok(Math.abs(q.mean - m) < 1e-6 && Math.abs(q.std - s) < 1e-6, 'whole-tensor mean and unbiased std');
    });
  }

  it('straight-through: the gradient w.r.t. the latent equals the gradient w.r.t. the quantized value', () => {
    const R = ak.tensor([0.3, -1.2, 0.7, 2.0, -0.4, 1.1], [2, 3]);
    const x = ak.parameter(ak.tensor([0.1, -0.5, 0.9, -1.3, 0.2, 0.4], [2, 3]));
    const qv = [0.5, -0.5, 1.5, -1.5, 0.5, 0.5];
    const f = (t: ak.Tensor) => ak.sum(ak.mul(ak.mul(t, t), R));
    f(straightThrough(x, ak.tensor(qv, [2, 3]))).backward();
    const q = ak.parameter(ak.tensor(qv, [2, 3]));
    f(q).backward();
    assert.deepEqual([...x.grad!.toArray()], [...q.grad!.toArray()]);
  });

  for (const b of [1, 2] as const) {
    it(`${b} bits: the gradient through standardization matches finite differences of the surrogate`, () => {
      const w = ak.parameter(ak.tensor(randomArray(12, 40 + b, 0.2), [3, 4]));
      const G = randomArray(12, 50 + b);
      ak.sum(ak.mul(quantizeWeight(w, b).weight, ak.tensor(G, [3, 4]))).backward();
      const expected = surrogateVjp(Float64Array.from(w.toArray()), codesOf(w, b), G);
      assertClose(w.grad!.toArray(), expected, 'latent gradient', 1e-4, 1e-3);
    });
  }

  for (const form of ['lora', 'bottleneck'] as const) {
    it(`${form} form in a model: latent gradients = surrogate Jacobianᵀ × the loaded float adapter's gradients`, () => {
      const am = new AdapterModel(loadModel(join(FIX, 'llama-gqa')).model);
      const cfg = form === 'lora' ? { peft_type: 'LOWBIT', form, bits: 2, r: 3 } : { peft_type: 'LOWBIT', form, bits: 1, bottleneck_size: 3, dropout: 0 };
      am.add('a', cfg, { seed: 1 });
      perturb(am, 2);
      const ids = ak.tensor([5, 17, 3, 44, 9, 1, 60, 2], [2, 4], { dtype: 'i32' });
      const R = ak.randn([2, 4, 64], { rng: new ak.Rng(5) }).keep();
      ak.tidy(() => ak.sum(ak.mul(am.forward(ids), R)).backward());
      const dir = join(tmp, `grad-${form}`);
      am.save(dir, 'a');
      const fresh = new AdapterModel(loadModel(join(FIX, 'llama-gqa')).model);
      fresh.load(dir, 'b');
      ak.tidy(() => ak.sum(ak.mul(fresh.forward(ids), R)).backward());
      const floatGrads = new Map(fresh.trainableParameters().map((p) => [p.name!.replace(/^.*?\.model\./, 'model.').replace(/\.weight$/, ''), p.grad]));
      const latents = am.trainableParameters();
      assert.ok(latents.length >= 4);
      for (const p of latents.slice(0, 4)) {
        const key = p.name!.replace(/\.weight$/, '');
        const g = [...floatGrads.entries()].find(([k]) => k.endsWith(key) || key.endsWith(k))?.[1];
        assert.ok(g, `a float gradient for ${p.name}`);
        const expected = surrogateVjp(Float64Array.from(p.toArray()), codesOf(p, cfg.bits), g!.toArray());
        assertClose(p.grad!.toArray(), expected, `${p.name}`, 1e-4, 1e-3);
      }
    });
  }
});

describe('low-bit packed file', () => {
  for (const form of ['bottleneck', 'lora'] as const) {
    for (const b of [1, 2, 4, 8] as const) {
      it(`${form}, ${b} bits: unpacks to the saved float weights bit for bit; size = 20 + 4·2^b + Σ(16 + name + 4·ndim + ceil(n·b/8))`, () => {
        const am = new AdapterModel(loadModel(join(FIX, 'gpt2')).model);
        const width = { [form === 'lora' ? 'r' : 'bottleneck_size']: 5 };
        am.add('a', { peft_type: 'LOWBIT', form, bits: b, ...width }, { seed: 3 });
        perturb(am, 4);
        const dir = join(tmp, `pack-${form}-${b}`);
        am.save(dir, 'a');
        const saved = readTensorMap(join(dir, 'adapter_model.safetensors'));
        const file = join(dir, LOWBIT_FILE);
        const un = readLowbitFile(file);
        assert.equal(un.bits, b);
        const weights = [...saved.keys()].filter((k) => !k.endsWith('.bias'));
        assert.deepEqual([...un.tensors.keys()].sort(), weights.sort());
        for (const k of weights) {
          assert.ok(bitsEqual(un.tensors.get(k)!, saved.get(k)!), `${k} unpacks to the saved floats`);
          assert.ok(new Set(saved.get(k)!.toArray()).size <= 2 ** b, `${k} takes at most 2^${b} values`);
        }
        for (const k of [...saved.keys()].filter((x) => x.endsWith('.bias'))) assert.ok(saved.get(k)!.toArray().every((v) => v === 0));
        const size = statSync(file).size;
        assert.equal(size, expectedSize(b, [...un.packed.values()]));
        const n = [...un.packed.values()].reduce((s, t) => s + t.indices.length, 0);
        console.log(JSON.stringify({ form, bits: b, weights: n, safetensors_bytes: statSync(join(dir, 'adapter_model.safetensors')).size, lowbit_bytes: size, code_bytes: [...un.packed.values()].reduce((s, t) => s + Math.ceil((t.indices.length * b) / 8), 0) }));
      });
    }
  }

  it('packs element i at bit offset (i mod 8/b)·b of byte floor(i/(8/b)), the last byte zero-padded', () => {
    const bytes = packLowbit(2, [{ name: 't', shape: [5], mean: 0, std: 1, indices: Uint8Array.from([1, 2, 3, 0, 3]) }]);
    const data = bytes.subarray(bytes.length - 2);
    assert.deepEqual([...data], [1 | (2 << 2) | (3 << 4) | (0 << 6), 3]);
    for (const b of [1, 2, 4, 8] as const) {
      for (const n of [1, 7, 9, 31]) {
        const idx = Uint8Array.from({ length: n }, (_, i) => (i * 7 + 3) % 2 ** b);
        const un = unpackLowbit(packLowbit(b, [{ name: `w${n}`, shape: [n], mean: 0.25, std: 0.5, indices: idx }]), 'mem');
        assert.deepEqual([...un.packed.get(`w${n}`)!.indices], [...idx]);
      }
    }
  });

  describe('damaged files', () => {
    const idx = Uint8Array.from([1, 2, 3, 1, 2, 3]);
    const good = packLowbit(2, [{ name: 'base_model.model.w', shape: [2, 3], mean: 0.5, std: 2, indices: idx }]);
    const write = (name: string, bytes: Uint8Array) => {
      const p = join(tmp, name);
      writeFileSync(p, bytes);
      return p;
    };
    const shapeAt = 20 + 16 + 4 + 'base_model.model.w'.length + 4;
    const withShape = (dims: number[]) => {
      const b = Uint8Array.from(good);
      const dv = new DataView(b.buffer);
      dv.setUint32(shapeAt, dims[0]!, true);
      dv.setUint32(shapeAt + 4, dims[1]!, true);
      return b;
    };

    it('a good file reads back', () => {
      const un = readLowbitFile(write('good.lowbit', good));
      assert.deepEqual([...un.tensors.get('base_model.model.w')!.toArray()], [...idx].map((k) => Math.fround(Math.fround(un.codes[k]! * 2) + 0.5)));
      assert.equal(good.length, expectedSize(2, [{ name: 'base_model.model.w', shape: [2, 3] }]));
    });

    it('bad magic', () => {
      const b = Uint8Array.from(good);
      b[0] = 0x50;
      const p = write('magic.lowbit', b);
      assert.throws(() => readLowbitFile(p), (e: Error) => e.message.includes(p) && /bad magic "PKLOWBIT"/.test(e.message));
    });

    it('truncated in the header, the name and the codes', () => {
      for (const cut of [7, 30, 40, good.length - 1]) {
        const p = write(`cut${cut}.lowbit`, good.subarray(0, cut));
        assert.throws(() => readLowbitFile(p), (e: Error) => e.message.includes(p) && /truncated/.test(e.message), `cut at ${cut}`);
      }
    });

    it('bits other than 1, 2, 4, 8', () => {
      for (const bits of [0, 3, 16]) {
        const b = Uint8Array.from(good);
        new DataView(b.buffer).setUint32(12, bits, true);
        const p = write(`bits${bits}.lowbit`, b);
        assert.throws(() => readLowbitFile(p), (e: Error) => e.message.includes(p) && e.message.includes(`"bits" is ${bits}; must be 1, 2, 4 or 8`));
      }
    });

    it('sizes that disagree with the shape', () => {
      const cases: [string, Uint8Array, RegExp][] = [
        ['bigger', withShape([3, 3]), /tensor "base_model.model.w": shape \[3, 3\] holds 9 values, 3 packed bytes at 2 bits, but only 2 bytes remain/],
        ['smaller', withShape([1, 5]), /tensor "base_model.model.w": the unused bits of the last code byte are not zero: the data holds more than the 5 values of shape \[1, 5\]/],
        ['longer', Uint8Array.from([...good, 0]), /1 bytes after the last of 1 tensors: the sizes disagree with the shapes/],
      ];
      for (const [what, bytes, re] of cases) {
        const p = write(`shape-${what}.lowbit`, bytes);
        assert.throws(() => readLowbitFile(p), (e: Error) => e.message.includes(p) && re.test(e.message), what);
      }
    });

    it('a missing file', () => {
      const p = join(tmp, 'none.lowbit');
      assert.throws(() => readLowbitFile(p), (e: Error) => e.message.includes(p) && /cannot read/.test(e.message));
    });
  });
});

describe('low-bit config and state', () => {
  it('bad config values name the field and the allowed values', () => {
    const am = new AdapterModel(loadModel(join(FIX, 'llama-gqa')).model);
    assert.throws(() => am.add('a', { peft_type: 'LOWBIT', bits: 3 }), /"bits" must be one of 1, 2, 4, 8, got 3/);
    assert.throws(() => am.add('a', { peft_type: 'LOWBIT', bits: '1' }), /"bits" must be one of 1, 2, 4, 8, got "1"/);
    assert.throws(() => am.add('a', { peft_type: 'LOWBIT', form: 'adapter' }), /"form" must be one of "bottleneck", "lora", got "adapter"/);
    assert.throws(() => am.add('a', { peft_type: 'LOWBIT', r: 4 }), /"r" does not apply to form "bottleneck"; its width is "bottleneck_size"/);
    assert.throws(() => am.add('a', { peft_type: 'LOWBIT', form: 'lora', r: 0 }), /"r" must be a number >= 1/);
  });

  it('defaults: 1-bit bottleneck of width 32 beside each MLP, scale 1; the lora form on q and v', () => {
    const am = new AdapterModel(loadModel(join(FIX, 'llama-gqa')).model);
    const inst = am.add('a', { peft_type: 'LOWBIT' });
    assert.deepEqual([...inst.deltas.keys()], ['model.layers.0.mlp', 'model.layers.1.mlp']);
    const cfg = inst.configJson();
    assert.equal(cfg.peft_type, 'BOTTLENECK');
    assert.equal(cfg.adapter_type, 'parallel');
    assert.equal(cfg.bottleneck_size, 32);
    assert.equal(cfg.scaling, 1);
    assert.equal(cfg.non_linearity, 'relu');
    const lora = am.add('l', { peft_type: 'LOWBIT', form: 'lora', scale: 0.5 });
    assert.deepEqual([...lora.deltas.keys()], ['model.layers.0.self_attn.q_proj', 'model.layers.0.self_attn.v_proj', 'model.layers.1.self_attn.q_proj', 'model.layers.1.self_attn.v_proj']);
    assert.equal(lora.configJson().peft_type, 'LORA');
    assert.equal(lora.configJson().lora_alpha, 16);
  });

  it('checkpoint state restores the latent weights exactly; the saved float form does not', () => {
    const make = () => new AdapterModel(loadModel(join(FIX, 'llama-gqa')).model);
    const cfg = { peft_type: 'LOWBIT', bits: 1, bottleneck_size: 4 };
    const am = make();
    const inst = am.add('a', cfg, { seed: 1 });
    perturb(am, 2);
    const trained = logits(am);
    const other = make();
    other.add('a', cfg, { seed: 9 }).loadCheckpointState!(inst.checkpointState!(), 'state');
    assert.deepEqual(logits(other), trained);
    const fromSaved = make();
    fromSaved.add('a', cfg, { seed: 9 }).loadStateDict(inst.stateDict(), 'saved');
    assert.ok(logits(fromSaved).some((v, i) => Math.abs(v - trained[i]!) > 1e-6), 're-quantizing dequantized weights changes them');
  });
});

describe('low-bit training through the CLI as a plugin', () => {
  const D = join(ak.dataDir(), 'models', 'stories260K');
  const train = (out: string, extra: string[] = []) => spawnSync(process.execPath, [
    '--import', 'tsx', join(ROOT, 'src/cli/bin.ts'), '--plugin', join(ROOT, 'src/adapters/methods/lowbit.ts'), 'train',
    '--model', join(D, 'stories260K.bin'), '--tokenizer', join(D, 'tok512.bin'), '--data', join(tmp, 'stories.jsonl'),
    '--method', 'lowbit', '--r', '8', '--steps', '6', '--batch-size', '8', '--lr', '0.01', '--val-split', '0', '--checkpoint-every', '3',
    '--out', out, '--json', ...extra,
  ], { cwd: ROOT, encoding: 'utf8' });

  it('trains; the saved float adapter gives the trained logits, the packed file its weights, and a resumed run ends the same', () => {
    const lines = Array.from({ length: 24 }, (_, i) => JSON.stringify({ text: `Once upon a time there was a ${['cat', 'dog', 'bird'][i % 3]} who liked to ${['run', 'play', 'sing'][i % 3]}.` }));
    writeFileSync(join(tmp, 'stories.jsonl'), `${lines.join('\n')}\n`);
    const out = join(tmp, 'run');
    const r = train(out);
    assert.equal(r.status, 0, r.stderr);
    const adapter = join(out, 'adapter');
    const cfg = JSON.parse(readFileSync(join(adapter, 'adapter_config.json'), 'utf8'));
    assert.equal(cfg.peft_type, 'BOTTLENECK');
    const report = JSON.parse(readFileSync(join(out, 'training_report.json'), 'utf8'));
    assert.equal(report.adapter_config.peft_type, 'LOWBIT');

    const ids = ak.tensor([1, 403, 407, 261, 378], [1, 5], { dtype: 'i32' });
    const loaded = new AdapterModel(ak.loadModel(join(D, 'stories260K.bin')).model);
    loaded.load(adapter, 'float');
    const floatLogits = logits(loaded, ids);
    const base = loaded.withoutAdapters(() => logits(loaded, ids));
    assert.ok(floatLogits.some((v, i) => Math.abs(v - base[i]!) > 1e-4), 'the adapter changes the model');

    // the trained model: the low-bit adapter with the latent weights of the last checkpoint (step 6)
    const steps = readdirSync(join(out, 'checkpoints')).sort();
    const last = join(out, 'checkpoints', steps[steps.length - 1]!);
    const trained = new AdapterModel(ak.loadModel(join(D, 'stories260K.bin')).model);
    const inst = trained.add('lowbit', report.adapter_config);
    inst.loadCheckpointState!(readTensorMap(join(last, 'adapter_training_state.safetensors')), last);
    assertClose(floatLogits, logits(trained, ids), 'float adapter vs trained low-bit adapter', 1e-4, 1e-4);

    const saved = readTensorMap(join(adapter, 'adapter_model.safetensors'));
    const un = readLowbitFile(join(adapter, LOWBIT_FILE));
    for (const [k, t] of un.tensors) assert.ok(bitsEqual(t, saved.get(k)!), `${k} unpacks to the saved floats`);
    const sizes = { safetensors_bytes: statSync(join(adapter, 'adapter_model.safetensors')).size, lowbit_bytes: statSync(join(adapter, LOWBIT_FILE)).size };
    assert.equal(sizes.lowbit_bytes, expectedSize(1, [...un.packed.values()]));
    console.log(JSON.stringify({ run: 'stories260K lowbit bits 1 width 8', weights: [...un.packed.values()].reduce((s, t) => s + t.indices.length, 0), ...sizes }));

    // resume from step 3: the latent weights come back from the checkpoint, so step 6 ends the same
    const again = join(tmp, 'run-again');
    cpSync(out, again, { recursive: true });
    rmSync(join(again, 'adapter'), { recursive: true });
    for (const s of steps.slice(1)) rmSync(join(again, 'checkpoints', s), { recursive: true });
    assert.ok(existsSync(join(again, 'checkpoints', steps[0]!)));
    const r2 = train(again, ['--resume']);
    assert.equal(r2.status, 0, r2.stderr);
    assert.deepEqual(readFileSync(join(again, 'adapter', 'adapter_model.safetensors')), readFileSync(join(adapter, 'adapter_model.safetensors')));
    assert.deepEqual(readFileSync(join(again, 'adapter', LOWBIT_FILE)), readFileSync(join(adapter, LOWBIT_FILE)));
  });

  it('cleans up', () => rmSync(tmp, { recursive: true, force: true }));
});
