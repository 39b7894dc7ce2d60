/**
 * Sparse fine-tuning: the sparse-difference artefact, S²FT and LT-SFT, composition of
 * differences, and the errors of a difference that does not fit its base.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as ak from '../src/index.js';
import { AdapterModel, defaultTargetsFor, findTargets } from '../src/adapters/index.js';
import { type S2ftConfig, S2Delta, kvHeadOf, s2ftSelection } from '../src/adapters/methods/s2ft.js';
import { trainLtSft } from '../src/adapters/methods/lt-sft.js';
import { SparseDiffDelta, composeSparse, readSparseDiff } from '../src/adapters/methods/sparse-diff.js';
import { readTensorMap } from '../src/adapters/files.js';
import { serializeSafetensors } from '../src/io/safetensors.js';
import { Linear, describeModel } from '../src/nn/index.js';
import { loadModel } from '../src/models/load.js';
import { FIX, contractSuite, logits, registryCases } from './contract.js';
import { assertClose } from './helpers.js';

const D = join(ak.dataDir(), 'models', 'stories260K');
const BIN = join(D, 'stories260K.bin');
const TOK = join(D, 'tok512.bin');
const tmp = mkdtempSync(join(tmpdir(), 'adaptkit-sparse-ft-'));

contractSuite([
  ...registryCases().filter((c) => ['S2FT', 'LT_SFT'].includes(String(c.config.peft_type))),
  { name: 's2ft-ffn-heads-llama-gqa', model: 'llama-gqa', config: { peft_type: 'S2FT', ffn_modules: ['up', 'gate', 'down'], ffn_channels: 3, attn_heads: 1, seed: 4 } },
  { name: 's2ft-ffn-heads-gpt2', model: 'gpt2', config: { peft_type: 'S2FT', ffn_modules: ['up', 'down'], ffn_channels: 2, attn_heads: 1, seed: 4 } },
]);

const weightOf = (am: AdapterModel, path: string) => Float32Array.from((am.model.get(path) as Linear).weight.toArray());

/** Merged weights minus base weights, by path, from a fresh model with the folder loaded. */
function mergedDiff(dirs: string[], bin = BIN): { base: Map<string, Float32Array>; merged: Map<string, Float32Array>; am: AdapterModel } {
  const am = new AdapterModel(ak.loadModel(bin).model);
  const names = dirs.map((d, i) => am.load(d, `d${i}`).name);
  const paths = [...new Set(names.flatMap((n) => [...am.adapters.get(n)!.deltas.keys()]))].sort();
  am.setActive([]);
  const base = new Map(paths.map((p) => [p, weightOf(am, p)]));
  am.setActive(names);
  am.merge();
  const merged = new Map(paths.map((p) => [p, weightOf(am, p)]));
  return { base, merged, am };
}

function trainingData(tok: ak.Tokenizer, topic: string): ak.Example[] {
  return Array.from({ length: 16 }, (_, i) => ak.toExample({ kind: 'completion', prompt: `Tom has ${i} ${topic}.`, completion: ` He is ${i % 2 ? 'happy' : 'sad'}.` }, tok));
}

describe('S²FT', () => {
  it('GQA head selection: o_proj columns are the selected query heads, v_proj rows the kv head each reads', () => {
    for (const [model, qHeads, kvHeads] of [['llama-gqa', 4, 2], ['stories', 8, 4]] as const) {
      const m = model === 'stories' ? ak.loadModel(BIN).model : loadModel(join(FIX, model)).model;
      const d = describeModel(m);
      assert.equal(d.attention!.kvHeads, kvHeads);
      const hd = d.attention!.headDim;
      for (let heads = 1; heads <= qHeads; heads++) {
        for (const seed of [0, 1, 2]) {
          const am = new AdapterModel(m);
          const cfg = { peft_type: 'S2FT', ffn_ratio: 0, attn_heads: heads, seed };
          const inst = am.add('s', cfg, { seed: 0 });
          const targets = findTargets(am.model, inst.config, defaultTargetsFor(inst.method, am.model, inst.config));
          const sel = s2ftSelection(inst.config as S2ftConfig, targets, d);
          const layers = new Set(targets.map((t) => t.layerIndex));
          for (const l of layers) {
            const o = [...sel].find(([p]) => p.endsWith(`${l}.self_attn.o_proj`))![1];
            const v = [...sel].find(([p]) => p.endsWith(`${l}.self_attn.v_proj`))![1];
            assert.equal(o.heads!.length, heads);
            assert.equal(o.axis, 'col');
            assert.equal(v.axis, 'row');
            const kv = [...new Set(Array.from(o.heads!, (q) => kvHeadOf(q, qHeads, kvHeads)))].sort((a, b) => a - b);
            assert.deepEqual(Array.from(v.heads!), kv, 'the v rows are exactly the kv heads of the selected query heads');
            assert.deepEqual(Array.from(o.index), Array.from(o.heads!).flatMap((q) => Array.from({ length: hd }, (_, i) => q * hd + i)));
            assert.deepEqual(Array.from(v.index), kv.flatMap((g) => Array.from({ length: hd }, (_, i) => g * hd + i)));
            assert.ok(v.index.every((r) => r < kvHeads * hd), 'v rows stay inside the kv-shaped projection');
          }
          am.delete('s');
          am.setActive([]);
        }
      }
    }
  });

  it('the parameter count equals the formula', () => {
    const m = ak.loadModel(BIN).model;
    const am = new AdapterModel(m);
    const d = describeModel(m);
    const L = 5;
    const dim = 64;
    const dff = 172;
    const k = 5;
    am.add('f', { peft_type: 'S2FT', ffn_modules: ['up', 'gate', 'down'], ffn_channels: k }, { seed: 0 });
    assert.equal(am.numTrainable('f'), L * (dim * k + 2 * k * dim));
    am.add('r', { peft_type: 'S2FT', ffn_ratio: 0.03 }, { seed: 0 });
    assert.equal(am.numTrainable('r'), L * dim * Math.round(0.03 * dff));
    const h = 3;
    const inst = am.add('h', { peft_type: 'S2FT', ffn_channels: k, attn_heads: h, seed: 7 }, { seed: 0 });
    const sel = s2ftSelection(inst.config as S2ftConfig, findTargets(m, inst.config, defaultTargetsFor(inst.method, m, inst.config)), d);
    const kvBlocks = [...sel].filter(([p]) => p.endsWith('v_proj')).reduce((n, [, s]) => n + s.heads!.length, 0);
    const hd = d.attention!.headDim;
    assert.equal(am.numTrainable('h'), L * dim * k + L * dim * h * hd + kvBlocks * hd * dim);
  });

  it('after training, untouched rows and columns are bit-identical; the saved difference reloads exactly', () => {
    const tok = ak.loadTokenizer(BIN, TOK, 512);
    const adapterConfig = { peft_type: 'S2FT', ffn_modules: ['up', 'gate', 'down'], ffn_channels: 4, attn_heads: 2, seed: 3 };
    const out = join(tmp, 's2ft-run');
    const model = ak.loadModel(BIN).model;
    const r = ak.runTraining({
      model, tokenizer: tok, method: 's2ft', methodOptions: {}, adapterConfig, train: trainingData(tok, 'cats'), validation: [], outDir: out,
      config: { steps: 4, batchSize: 4, lr: 1e-2, weightDecay: 0.1 },
    });
    const cfg = JSON.parse(readFileSync(join(r.adapterDir, 'adapter_config.json'), 'utf8'));
    assert.equal(cfg.peft_type, 'SPARSE_DIFF');
    assert.equal(cfg.source_method, 'S2FT');
    // the selection, recomputed from the config
    const probe = new AdapterModel(ak.loadModel(BIN).model);
    const inst = probe.add('p', adapterConfig, { seed: 0 });
    const sel = new Map([...inst.deltas].map(([p, dl]) => [p, (dl as S2Delta).selection]));
    const { base, merged } = mergedDiff([r.adapterDir]);
    assert.deepEqual([...base.keys()], [...sel.keys()].sort());
    let changed = 0;
    for (const [path, s] of sel) {
      const w0 = base.get(path)!;
      const w1 = merged.get(path)!;
      const inF = (inst.deltas.get(path) as S2Delta).base.inFeatures;
      const chosen = new Set(s.index);
      for (let i = 0; i < w0.length; i++) {
        const row = Math.floor(i / inF);
        const col = i % inF;
        const inside = s.axis === 'row' ? chosen.has(row) : chosen.has(col);
        if (!inside) assert.equal(w1[i], w0[i], `${path}[${row}, ${col}] is outside the selection and must not change`);
        else if (w1[i] !== w0[i]) changed++;
      }
    }
    assert.ok(changed > 0, 'training moved the selected rows/columns');
    // the saved difference reproduces the trained adapter's outputs
    const trained = new AdapterModel(ak.loadModel(BIN).model);
    const t = trained.add('t', adapterConfig, { seed: 0 });
    const file = join(r.adapterDir, 'adapter_model.safetensors');
    t.loadStateDict(readTensorMap(file), file);
    const loaded = new AdapterModel(ak.loadModel(BIN).model);
    loaded.load(r.adapterDir, 'l');
    assertClose(logits(loaded), logits(trained), 'sparse difference vs S²FT blocks', 1e-5, 1e-5);
  });
});

describe('LT-SFT and composition', () => {
  const tok = ak.loadTokenizer(BIN, TOK, 512);
  const K = 300;
  let a = '';
  let b = '';

  it('trains both phases; the difference has exactly K entries and only those differ from θ0', () => {
    const model = ak.loadModel(BIN).model;
    const r = trainLtSft({
      model, tokenizer: tok, method: 'lt-sft', methodOptions: {}, train: trainingData(tok, 'cats'), validation: [], outDir: join(tmp, 'lt-a'),
      config: { steps: 3, batchSize: 4, lr: 1e-2, weightDecay: 0 }, ltSft: { numParams: K, l1Reg: 0.1 },
    }, ak.runTraining);
    a = r.adapterDir;
    const full = readSparseDiff(r.full.adapterDir);
    assert.equal(full.config.source_method, 'LT_SFT');
    const f = readSparseDiff(a);
    const nnz = [...f.tensors.values()].reduce((n, t) => n + t.indices.length, 0);
    assert.equal(nnz, K);
    assert.equal(Object.values(f.config.sparse_tensors).reduce((n, t) => n + t.nnz, 0), K);
    // the mask is the top-K of the phase-1 difference
    const mags = [...full.tensors.values()].flatMap((t) => Array.from(t.values, Math.abs)).sort((x, y) => y - x);
    for (const [key, t] of f.tensors) {
      const ph1 = full.tensors.get(key)!;
      for (const j of t.indices) assert.ok(Math.abs(ph1.values[ph1.indices.indexOf(j)]!) >= mags[K - 1]!, `${key}[${j}] is among the top K`);
    }
    const { base, merged } = mergedDiff([a]);
    let differ = 0;
    for (const [p, w0] of base) {
      const w1 = merged.get(p)!;
      const held = new Set(f.tensors.get(`${p}.weight`)!.indices);
      for (let i = 0; i < w0.length; i++) {
        if (w1[i] !== w0[i]) {
          assert.ok(held.has(i), `${p}[${i}] changed outside the mask`);
          differ++;
        }
      }
    }
    assert.ok(differ > 0 && differ <= K, `${differ} entries differ from θ0`);
  });

  it('composing differences adds them (checked densely); subtracting one restores the other exactly', () => {
    const model = ak.loadModel(BIN).model;
    const r = ak.runTraining({
      model, tokenizer: tok, method: 's2ft', methodOptions: {}, adapterConfig: { peft_type: 'S2FT', ffn_modules: ['down', 'up'], ffn_channels: 6, seed: 1 },
      train: trainingData(tok, 'dogs'), validation: [], outDir: join(tmp, 's2ft-b'), config: { steps: 3, batchSize: 4, lr: 1e-2 },
    });
    b = r.adapterDir;
    const ab = join(tmp, 'ab');
    const c = composeSparse([a, b], { out: ab });
    assert.ok(c.nnz > K);
    // independent check: dense sum of the two differences, in float32
    const dense = (dir: string) => {
      const am = new AdapterModel(ak.loadModel(BIN).model);
      const inst = am.load(dir, 'x');
      return new Map([...inst.deltas].map(([p, d]) => [p, Float32Array.from((d as SparseDiffDelta).deltaWeight().toArray())]));
    };
    const da = dense(a);
    const db = dense(b);
    const dab = dense(ab);
    assert.deepEqual([...dab.keys()].sort(), [...new Set([...da.keys(), ...db.keys()])].sort());
    for (const [p, d] of dab) {
      const x = da.get(p);
      const y = db.get(p);
      const want = Float32Array.from(d, (_, i) => (x?.[i] ?? 0) + (y?.[i] ?? 0));
      assert.deepEqual(d, want, `${p}: composed = a + b`);
    }
    // and as a model: the composed difference equals both loaded together
    const both = new AdapterModel(ak.loadModel(BIN).model);
    both.load(a, 'a');
    both.load(b, 'b');
    both.setActive(['a', 'b']);
    const one = new AdapterModel(ak.loadModel(BIN).model);
    one.load(ab, 'ab');
    assertClose(logits(one), logits(both), 'composed vs both active', 1e-5, 1e-5);
    // a + b − b in one call is a, bit for bit
    const back = join(tmp, 'a-again');
    composeSparse([a, b], { subtract: [b], out: back });
    const fa = readSparseDiff(a);
    const fb = readSparseDiff(back);
    assert.deepEqual([...fb.tensors.keys()], [...fa.tensors.keys()]);
    for (const [k, t] of fa.tensors) {
      assert.deepEqual(fb.tensors.get(k)!.indices, t.indices);
      assert.deepEqual(fb.tensors.get(k)!.values, t.values);
    }
    // reverting b from the stored composition: a's support, its values up to float32 rounding of the sum
    const reverted = join(tmp, 'ab-minus-b');
    composeSparse([ab], { subtract: [b], out: reverted });
    const fr = readSparseDiff(reverted);
    for (const [k, t] of fa.tensors) {
      const got = fr.tensors.get(k)!;
      assert.deepEqual(got.indices, t.indices, `${k}: the support of a`);
      assertClose(got.values, t.values, `${k}: values of a`, 1e-7, 1e-5);
    }
    assert.deepEqual([...fr.tensors.keys()], [...fa.tensors.keys()]);
  });

  it('a difference for another base, out-of-range indices and mismatched sizes are errors naming the file and the field', () => {
    const cfgPath = join(a, 'adapter_config.json');
    const wfile = join(a, 'adapter_model.safetensors');
    const f = readSparseDiff(a);
    const key = [...f.tensors.keys()][0]!;
    const mod = key.slice(0, -'.weight'.length);
    // another base: one entry of a touched weight differs
    const other = ak.loadModel(BIN).model;
    const w = (other.get(mod) as Linear).weight;
    (w.storage.data as Float32Array)[w.offset] += 0.5;
    assert.throws(() => new AdapterModel(other).load(a, 'x'), (e: Error) => e.message.includes(cfgPath) && e.message.includes(`sparse_tensors["${key}"].base_sha256`) && /another base model/.test(e.message));
    // another architecture: the weight is missing or has another shape
    assert.throws(() => new AdapterModel(loadModel(join(FIX, 'llama-gqa')).model).load(a, 'x'), (e: Error) => e.message.includes(cfgPath) && /sparse_tensors/.test(e.message));
    const tensors = readTensorMap(wfile);
    const variant = (name: string, edit: (t: Map<string, ak.Tensor>, cfg: Record<string, any>) => void) => {
      const dir = join(tmp, name);
      cpSync(a, dir, { recursive: true });
      const t = new Map(tensors);
      const cfg = JSON.parse(readFileSync(cfgPath, 'utf8'));
      edit(t, cfg);
      writeFileSync(join(dir, 'adapter_model.safetensors'), Buffer.concat(serializeSafetensors(Object.fromEntries(t))));
      writeFileSync(join(dir, 'adapter_config.json'), JSON.stringify(cfg));
      return dir;
    };
    const ik = `base_model.model.${key}.sft_indices`;
    const vk = `base_model.model.${key}.sft_values`;
    const numel = f.config.sparse_tensors[key]!.shape.reduce((x, y) => x * y, 1);
    const range = variant('bad-range', (t) => {
      const idx = Int32Array.from(t.get(ik)!.toArray());
      idx[idx.length - 1] = numel;
      t.set(ik, ak.fromBuffer(idx, [idx.length]));
    });
    assert.throws(() => new AdapterModel(ak.loadModel(BIN).model).load(range, 'x'), (e: Error) => e.message.includes(join(range, 'adapter_model.safetensors')) && e.message.includes(ik) && /out of range/.test(e.message));
    const sizes = variant('bad-sizes', (t) => {
      const v = Float32Array.from(t.get(vk)!.toArray());
      t.set(vk, ak.fromBuffer(v.subarray(0, v.length - 1).slice(), [v.length - 1]));
    });
    assert.throws(() => new AdapterModel(ak.loadModel(BIN).model).load(sizes, 'x'), (e: Error) => e.message.includes(join(sizes, 'adapter_model.safetensors')) && e.message.includes(vk) && /values/.test(e.message));
    const shape = variant('bad-shape', (_t, cfg) => {
      cfg.sparse_tensors[key].shape = [3, 5];
    });
    assert.throws(() => new AdapterModel(ak.loadModel(BIN).model).load(shape, 'x'), (e: Error) => e.message.includes(join(shape, 'adapter_config.json')) && e.message.includes(`sparse_tensors["${key}"]`));
    const nnz = variant('bad-nnz', (_t, cfg) => {
      cfg.sparse_tensors[key].nnz += 1;
    });
    assert.throws(() => new AdapterModel(ak.loadModel(BIN).model).load(nnz, 'x'), (e: Error) => e.message.includes(ik) && /config's nnz/.test(e.message));
    // composing differences taken against different bases
    const foreign = variant('foreign', (_t, cfg) => {
      cfg.sparse_tensors[key].base_sha256 = 'f'.repeat(64);
    });
    assert.throws(() => composeSparse([a, foreign], { out: join(tmp, 'never') }), (e: Error) => e.message.includes('base_sha256') && e.message.includes(join(foreign, 'adapter_config.json')));
  });

  it('cleans up', () => rmSync(tmp, { recursive: true, force: true }));
});

describe('adaptkit merge --sparse', () => {
  it('composes sparse differences by addition and reverts one with --subtract', async () => {
    const { main } = await import('../src/cli/main.js');
    const dirs: string[] = [];
    for (const seed of [1, 2]) {
      const am = new AdapterModel(loadModel(BIN).model);
      am.add('s', { peft_type: 'S2FT', ffn_channels: 4, seed }, { seed });
      ak.noGrad(() => {
        const rng = new ak.Rng(seed);
        for (const p of am.trainableParameters()) {
          const d = p.storage.data as Float32Array;
          for (let i = 0; i < p.size; i++) d[p.offset + i] = 0.05 * rng.normal();
        }
      });
      const dir = join(tmp, `cli-sparse-${seed}`);
      am.save(dir, 's');
      dirs.push(dir);
    }
    const quiet = async (...args: string[]) => {
      const ol = console.log;
      console.log = () => {};
      try {
        return await main(['node', 'adaptkit', ...args]);
      } finally {
        console.log = ol;
      }
    };
    const sum = join(tmp, 'cli-sum');
    assert.equal(await quiet('merge', '--model', BIN, '--sparse', dirs.join(','), '--out', sum), 0);
    const ids = ak.tensor([1, 403, 407, 261, 378], [1, 5], { dtype: 'i32' });
    const both = new AdapterModel(loadModel(BIN).model);
    both.load(dirs[0]!, 'a');
    both.load(dirs[1]!, 'b');
    both.setActive(['a', 'b']);
    const composed = new AdapterModel(loadModel(BIN).model);
    composed.load(sum, 'sum');
    assertClose(logits(composed, ids), logits(both, ids), 'the sum equals both differences applied together', 1e-5, 1e-5);
    const back = join(tmp, 'cli-back');
    assert.equal(await quiet('merge', '--model', BIN, '--sparse', sum, '--subtract', dirs[1]!, '--out', back), 0);
    const one = new AdapterModel(loadModel(BIN).model);
    one.load(dirs[0]!, 'a');
    const reverted = new AdapterModel(loadModel(BIN).model);
    reverted.load(back, 'r');
    assertClose(logits(reverted, ids), logits(one, ids), 'subtracting one difference restores the other', 1e-5, 1e-5);
  });
});

describe('adaptkit train --method lt-sft', () => {
  it('runs both phases and saves a sparse difference with exactly K entries', async () => {
    const { main } = await import('../src/cli/main.js');
    const data = join(tmp, 'ltsft-cli.jsonl');
    writeFileSync(data, Array.from({ length: 24 }, (_, i) => JSON.stringify({ text: `Once upon a time a ${['cat', 'dog'][i % 2]} ran.` })).join('\n') + '\n');
    const out = join(tmp, 'ltsft-cli');
    const ow = process.stderr.write.bind(process.stderr);
    process.stderr.write = (() => true) as typeof process.stderr.write;
    let code: number;
    try {
      code = await main(['node', 'adaptkit', 'train', '--model', BIN, '--tokenizer', TOK, '--data', data, '--method', 'lt-sft', '--sparse-params', '40',
        '--steps', '3', '--batch-size', '8', '--val-split', '0', '--out', out, '--json']);
    } finally {
      process.stderr.write = ow;
    }
    assert.equal(code, 0);
    const cfg = JSON.parse(readFileSync(join(out, 'sparse', 'adapter', 'adapter_config.json'), 'utf8'));
    assert.equal(cfg.peft_type, 'SPARSE_DIFF');
    const nnz = Object.values(cfg.sparse_tensors as Record<string, { nnz: number }>).reduce((n, t) => n + t.nnz, 0);
    assert.ok(nnz <= 40 && nnz > 0, `${nnz} entries`);
  });
});
