/**
 * AdapterFusion: the adapter contract; AdapterHub fusion folders made by the PyTorch generator
 * (scripts/gen_fusion_fixtures.py) loaded over their source adapters and compared with its
 * outputs; export to AdapterHub's layout and back, exact; a saved adapter that carries its
 * sources and loads from a copied folder; the ‖I − V‖ regularization and the temperature
 * against hand computations; frozen sources; parameter counts; config errors; and CLI training of
 * two source adapters, then AdapterFusion and ScaLearn over them, on stories260K.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { cpSync, mkdirSync, mkdtempSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as ak from '../src/index.js';
import { AdapterModel } from '../src/adapters/index.js';
import { readTensorMap } from '../src/adapters/files.js';
import { loadModel } from '../src/models/load.js';
import {
  ADAPTERHUB_FUSION_CONFIG, ADAPTERHUB_FUSION_WEIGHTS, type FusionDelta, TEMPERATURE_KEY, exportAdapterHubFusion, loadAdapterHubFusion,
} from '../src/adapters/methods/fusion.js';
import '../src/adapters/methods/scalearn.js';
import { upOutput } from '../src/adapters/methods/source-adapters.js';
import { FIX, contractSuite, perturb, registryCases } from './contract.js';
import { assertClose } from './helpers.js';
import { runCli as cli } from './cli-run.js';

contractSuite(registryCases().filter((c) => c.config.peft_type === 'FUSION'));

const FUS = fileURLToPath(new URL('./fixtures/fusion/', import.meta.url));
const SOURCES = ['a', 'b', 'c'].map((n) => join(FUS, 'sources', n));
const EXPECTED = readTensorMap(join(FUS, 'expected.safetensors'));
const tmp = mkdtempSync(join(tmpdir(), 'adaptkit-fusion-'));
const IDS = ak.tensor([5, 17, 3, 44, 9, 1, 60, 2], [2, 4], { dtype: 'i32' }).keep();
const PATH = (l: number) => `model.layers.${l}.mlp.down_proj`;

const llama = () => new AdapterModel(loadModel(join(FIX, 'llama-gqa')).model);
const values = (t: ak.Tensor) => t.toArray() as Float32Array;
const expected = (k: string) => values(EXPECTED.get(k)!);
const evalLogits = (am: AdapterModel) => ak.tidy(() => ak.noGrad(() => values(am.forward(IDS))));
const deltaAt = (am: AdapterModel, name: string, l: number) => am.adapters.get(name)!.deltas.get(PATH(l)) as unknown as FusionDelta;
const layerOut = (d: FusionDelta, l: number) => ak.tidy(() => ak.noGrad(() => values(d.apply(EXPECTED.get(`x.${l}`)!, EXPECTED.get(`y.${l}`)!))));

describe('AdapterFusion against the PyTorch fixture', () => {
  for (const variant of ['dynamic', 'static', 'variant']) {
    it(`an AdapterHub "${variant}" fusion folder over its three sources gives the fixture's outputs at every layer`, () => {
      const am = llama();
      loadAdapterHubFusion(am, join(FUS, variant), SOURCES, 'f');
      for (const l of [0, 1]) {
        const d = deltaAt(am, 'f', l);
        // the sources' own outputs first, so a mismatch says which half is wrong
        d.sources.forEach((s, i) => {
          const u = ak.tidy(() => ak.noGrad(() => values(upOutput(s, EXPECTED.get(`x.${l}`)!, EXPECTED.get(`y.${l}`)!))));
          assertClose(u, expected(`u.${'abc'[i]}.${l}`), `source ${i} layer ${l}`, 1e-5, 1e-5);
        });
        const out = layerOut(d, l);
        assertClose(out, expected(`fusion.${variant}.${l}`), `${variant} layer ${l}`, 1e-5, 1e-5);
        // the fusion is not the plain residual or one source alone
        assert.ok(out.some((v, j) => Math.abs(v - expected(`y.${l}`)[j]!) > 1e-2));
      }
    });
  }

  it('export to AdapterHub\'s layout writes the same config fields and bit-identical weights; export, load, export is exact', () => {
    const am = llama();
    loadAdapterHubFusion(am, join(FUS, 'dynamic'), SOURCES, 'f');
    const out = join(tmp, 'hub-export');
    mkdirSync(out);
    exportAdapterHubFusion(am, 'f', out);
    const theirs = JSON.parse(readFileSync(join(FUS, 'dynamic', ADAPTERHUB_FUSION_CONFIG), 'utf8'));
    const ours = JSON.parse(readFileSync(join(out, ADAPTERHUB_FUSION_CONFIG), 'utf8'));
    assert.deepEqual(ours.config, theirs.config);
    assert.equal(ours.name, 'a,b,c');
    assert.equal(ours.hidden_size, 32);
    assert.equal(ours.model_type, 'llama');
    const a = readTensorMap(join(FUS, 'dynamic', ADAPTERHUB_FUSION_WEIGHTS));
    const b = readTensorMap(join(out, ADAPTERHUB_FUSION_WEIGHTS));
    assert.deepEqual([...b.keys()].sort(), [...a.keys()].sort());
    assert.ok([...a.keys()].every((k) => k.startsWith('model.layers.') && k.includes('.output_adapters.adapter_fusion_layer.a,b,c.')));
    for (const [k, t] of a) assert.deepEqual(Buffer.from(values(b.get(k)!).buffer), Buffer.from(values(t).buffer), k);
    const again = llama();
    loadAdapterHubFusion(again, out, SOURCES, 'g');
    assert.deepEqual(evalLogits(again), evalLogits(am));
    const out2 = join(tmp, 'hub-export-2');
    mkdirSync(out2);
    exportAdapterHubFusion(again, 'g', out2);
    for (const f of [ADAPTERHUB_FUSION_CONFIG, ADAPTERHUB_FUSION_WEIGHTS]) assert.deepEqual(readFileSync(join(out2, f)), readFileSync(join(out, f)), f);
    // AdapterHub's BERT-family layout puts the fusion on the adapted layer's parent module
    const mod = join(tmp, 'hub-module');
    mkdirSync(mod);
    exportAdapterHubFusion(am, 'f', mod, { location: 'module' });
    assert.ok([...readTensorMap(join(mod, ADAPTERHUB_FUSION_WEIGHTS)).keys()].every((k) => /^model\.layers\.\d\.mlp\.adapter_fusion_layer\.a,b,c\./.test(k)));
    const fromModule = llama();
    loadAdapterHubFusion(fromModule, mod, SOURCES, 'h');
    assert.deepEqual(evalLogits(fromModule), evalLogits(am));
  });

  it('AdapterHub folders that do not fit are refused by name', () => {
    const am = llama();
    assert.throws(() => loadAdapterHubFusion(am, join(FUS, 'dynamic'), SOURCES.slice(0, 2), 'f'), /combines 3 adapters, but 2 source folders are given/);
    const bad = join(tmp, 'hub-bad');
    cpSync(join(FUS, 'dynamic'), bad, { recursive: true });
    const cfg = JSON.parse(readFileSync(join(bad, ADAPTERHUB_FUSION_CONFIG), 'utf8'));
    writeFileSync(join(bad, ADAPTERHUB_FUSION_CONFIG), JSON.stringify({ ...cfg, config: { ...cfg.config, value: false } }));
    // a fusion without V finds V weights it has no use for
    assert.throws(() => loadAdapterHubFusion(am, bad, SOURCES, 'f'), /unexpected: .*value\.weight/);
    assert.ok(!am.adapters.has('f'), 'a failed load leaves no adapter behind');
    writeFileSync(join(bad, ADAPTERHUB_FUSION_CONFIG), JSON.stringify({ ...cfg, config: { ...cfg.config, query_before_ln: true } }));
    assert.throws(() => loadAdapterHubFusion(am, bad, SOURCES, 'f'), /"query_before_ln" must be false/);
    writeFileSync(join(bad, ADAPTERHUB_FUSION_CONFIG), JSON.stringify({ ...cfg, config: { ...cfg.config, reduction: 2 } }));
    assert.throws(() => loadAdapterHubFusion(am, bad, SOURCES, 'f'), /fields AdapterFusion does not define: reduction/);
    rmSync(join(bad, ADAPTERHUB_FUSION_WEIGHTS));
    writeFileSync(join(bad, ADAPTERHUB_FUSION_CONFIG), JSON.stringify(cfg));
    assert.throws(() => loadAdapterHubFusion(am, bad, SOURCES, 'f'), /model_adapter_fusion\.safetensors/);
  });
});

describe('AdapterFusion adapters', () => {
  it('starts with V at the identity (1e-6 off the diagonal), Q and K small with zero bias', () => {
    const am = llama();
    const inst = am.add('f', { peft_type: 'FUSION', source_adapters: SOURCES }, { seed: 4 });
    const f = (inst.deltas.get(PATH(0)) as unknown as FusionDelta).adapter_fusion;
    const v = values(f.value!.weight);
    for (let i = 0; i < 32; i++) for (let j = 0; j < 32; j++) assert.equal(v[i * 32 + j], i === j ? 1 : Math.fround(1e-6));
    for (const lin of [f.query!, f.key!]) {
      const w = values(lin.weight);
      const std = Math.sqrt(w.reduce((s, x) => s + x * x, 0) / w.length);
      assert.ok(std > 0.015 && std < 0.025, `std ${std}`);
      assert.ok(values(lin.bias!).every((x) => x === 0));
    }
  });

  it('saves its sources inside its own files and loads from a copied folder without them', () => {
    const src = join(tmp, 'own-sources');
    cpSync(join(FUS, 'sources'), src, { recursive: true });
    const dirs = ['a', 'b', 'c'].map((n) => join(src, n));
    const am = llama();
    am.add('f', { peft_type: 'FUSION', source_adapters: dirs }, { seed: 1 });
    perturb(am, 3);
    const before = evalLogits(am);
    const dir = join(tmp, 'saved');
    am.save(dir, 'f');
    const cfg = JSON.parse(readFileSync(join(dir, 'adapter_config.json'), 'utf8'));
    assert.equal(cfg.source_adapters, undefined, 'no folder paths are saved');
    assert.deepEqual(cfg.source_names, ['a', 'b', 'c']);
    assert.equal(cfg.source_configs.length, 3);
    const saved = readTensorMap(join(dir, 'adapter_model.safetensors'));
    dirs.forEach((d, i) => {
      for (const [k, t] of readTensorMap(join(d, 'adapter_model.safetensors'))) {
        const path = k.replace(/^base_model\.model\./, '').replace(/\.(adapter_\w+\.\w+)$/, '');
        const param = k.slice(k.lastIndexOf('.adapter_') + 1);
        const mine = saved.get(`base_model.model.${path}.sources.${i}.${param}`);
        assert.ok(mine, `${k} of source ${i} is saved`);
        assert.deepEqual(Buffer.from(values(mine).buffer), Buffer.from(values(t).buffer));
      }
    });
    const copy = join(tmp, 'copied');
    cpSync(dir, copy, { recursive: true });
    rmSync(src, { recursive: true });
    rmSync(dir, { recursive: true });
    const fresh = llama();
    fresh.load(copy, 'g');
    assert.deepEqual(evalLogits(fresh), before);
  });

  it('a source trained with its own head (modules_to_save) contributes its adapter, not its head', () => {
    const dir = join(tmp, 'with-head');
    const s = llama();
    s.add('h', { peft_type: 'BOTTLENECK', adapter_type: 'pfeiffer', modules_to_save: ['lm_head'] }, { seed: 3 });
    perturb(s, 8);
    s.save(dir, 'h');
    assert.ok([...readTensorMap(join(dir, 'adapter_model.safetensors')).keys()].some((k) => k.includes('lm_head')));
    const am = llama();
    const inst = am.add('f', { peft_type: 'SCALEARN', source_adapters: [dir] });
    assert.equal(inst.config.modules_to_save, null);
    for (const p of inst.parameters()) ak.noGrad(() => (p.storage.data as Float32Array).fill(1, p.offset, p.offset + p.size));
    // its adapter alone, on the original head
    const alone = llama();
    const b = alone.add('b', { peft_type: 'BOTTLENECK', adapter_type: 'pfeiffer' });
    b.loadStateDict(new Map([...readTensorMap(join(dir, 'adapter_model.safetensors'))].filter(([k]) => !k.includes('lm_head'))), dir);
    assert.deepEqual(evalLogits(am), evalLogits(alone));
  });

  it('its sources are frozen: not trainable, no gradient, unchanged by training; Q, K, V are what trains', () => {
    const am = llama();
    const inst = am.add('f', { peft_type: 'FUSION', source_adapters: SOURCES }, { seed: 1 });
    const params = am.trainableParameters();
    // 2 layers of Q, K (with bias) and V at width 32
    assert.equal(params.reduce((n, p) => n + p.size, 0), 2 * (3 * 32 * 32 + 2 * 32));
    const d = inst.deltas.get(PATH(0)) as unknown as FusionDelta;
    const frozen = d.sources.flatMap((s) => s.parameters());
    assert.ok(frozen.length > 0 && frozen.every((p) => !p.requiresGrad && !params.includes(p)));
    const snapshot = frozen.map((p) => values(p).slice());
    const opt = new ak.AdamW(params, { lr: 1e-2 });
    for (let s = 0; s < 2; s++) {
      ak.training(() => ak.tidy(() => inst.objective!({ logits: () => am.forward(IDS), loss: (l) => ak.mean(ak.square(l)) }).backward()));
      assert.ok(frozen.every((p) => p.grad === null), 'no gradient reaches a source weight');
      assert.ok(params.every((p) => p.grad !== null));
      opt.step();
      opt.zeroGrad();
    }
    frozen.forEach((p, i) => assert.deepEqual(values(p), snapshot[i]));
  });

  it('the objective is the loss plus 0.01·Σ‖I − V‖²_F over layers, and its gradient on V is -0.02(I − V)', () => {
    const am = llama();
    const inst = am.add('f', { peft_type: 'FUSION', source_adapters: SOURCES }, { seed: 2 });
    perturb(am, 5);
    const vs = [0, 1].map((l) => (inst.deltas.get(PATH(l)) as unknown as FusionDelta).adapter_fusion.value!.weight);
    let reg = 0;
    for (const v of vs) {
      const a = values(v);
      for (let i = 0; i < 32; i++) for (let j = 0; j < 32; j++) reg += ((i === j ? 1 : 0) - a[i * 32 + j]!) ** 2;
    }
    reg *= 0.01;
    const zero = () => ak.mul(ak.sum(am.forward(IDS)), 0);
    const total = ak.training(() => ak.tidy(() => {
      const t = inst.objective!({ logits: () => am.forward(IDS), loss: () => zero() });
      t.backward();
      return t.item();
    }));
    assert.ok(Math.abs(total - reg) <= 1e-5 * reg, `objective ${total} vs ${reg}`);
    for (const v of vs) {
      const a = values(v);
      const g = values(v.grad!);
      for (let k = 0; k < a.length; k++) {
        const want = -0.02 * ((k % 33 === 0 ? 1 : 0) - a[k]!);
        assert.ok(Math.abs(g[k]! - want) < 1e-6, `grad[${k}] ${g[k]} vs ${want}`);
      }
    }
    // the data loss enters unchanged
    const data = ak.training(() => ak.tidy(() => inst.objective!({ logits: () => am.forward(IDS), loss: (l) => ak.add(ak.mul(ak.sum(l), 0), 3) }).item()));
    assert.ok(Math.abs(data - (3 + reg)) < 1e-5);
    // static fusion has no term and no objective of its own
    assert.equal(am.add('s', { peft_type: 'FUSION', source_adapters: SOURCES, value: false, regularization: false }).objective, undefined);
  });

  it('with temperature the softmax runs at T = 50, falling by 0.05 per training step, kept by save and load; evaluation does not anneal', () => {
    const am = llama();
    const inst = am.add('f', { peft_type: 'FUSION', source_adapters: SOURCES, temperature: true }, { seed: 2 });
    perturb(am, 6);
    const atT = (t: number) => {
      // the same fusion with T given: its scores divided by t
      const d = inst.deltas.get(PATH(0)) as unknown as FusionDelta;
      const x = EXPECTED.get('x.0')!;
      const y = EXPECTED.get('y.0')!;
      return ak.tidy(() => ak.noGrad(() => {
        const us = d.sources.map((s) => upOutput(s, x, y));
        const f = d.adapter_fusion;
        const q = f.query!.forward(y);
        const out = new Float32Array(y.size);
        const qa = values(q);
        const ks = us.map((u) => values(f.key!.forward(u)));
        const vv = us.map((u) => values(f.value!.forward(u)));
        const ya = values(y);
        for (let r = 0; r < y.size / 32; r++) {
          const s = ks.map((k) => { let z = 0; for (let j = 0; j < 32; j++) z += qa[r * 32 + j]! * k[r * 32 + j]!; return z / t; });
          const m = Math.max(...s);
          const e = s.map((z) => Math.exp(z - m));
          const tot = e.reduce((p, z) => p + z, 0);
          for (let j = 0; j < 32; j++) out[r * 32 + j] = ya[r * 32 + j]! + e.reduce((p, z, i) => p + (z / tot) * vv[i]![r * 32 + j]!, 0);
        }
        return out;
      }));
    };
    assertClose(layerOut(inst.deltas.get(PATH(0)) as unknown as FusionDelta, 0), atT(50), 'T = 50', 1e-5, 1e-5);
    evalLogits(am);
    const step = () => ak.training(() => ak.tidy(() => inst.objective!({ logits: () => am.forward(IDS), loss: (l) => ak.mean(l) }).item()));
    for (let i = 0; i < 3; i++) step();
    assertClose(layerOut(inst.deltas.get(PATH(0)) as unknown as FusionDelta, 0), atT(50 - 3 * 0.05), 'T after 3 steps', 1e-5, 1e-5);
    const dir = join(tmp, 'temperature');
    am.save(dir, 'f');
    assert.ok(Math.abs(values(readTensorMap(join(dir, 'adapter_model.safetensors')).get(TEMPERATURE_KEY)!)[0]! - 49.85) < 1e-4);
    const fresh = llama();
    fresh.load(dir, 'g');
    assert.deepEqual(evalLogits(fresh), evalLogits(am));
  });

  it('bad sources and settings are errors that name the source, field or tensor', () => {
    const am = llama();
    const add = (cfg: Record<string, unknown>) => am.add('f', { peft_type: 'FUSION', ...cfg });
    assert.throws(() => add({ source_adapters: [SOURCES[0], join(tmp, 'nowhere')] }), /"source_adapters"\[1\]: .*nowhere: no such adapter folder/);
    const lora = join(tmp, 'lora-source');
    const l = llama();
    l.add('l', { peft_type: 'LORA', r: 2, target_modules: ['q_proj'] });
    l.save(lora, 'l');
    assert.throws(() => add({ source_adapters: [SOURCES[0], lora] }), /lora-source.*peft_type "LORA"; a source adapter must be a BOTTLENECK adapter/);
    const houlsby = join(tmp, 'houlsby-source');
    const h = llama();
    h.add('h', { peft_type: 'BOTTLENECK', adapter_type: 'houlsby' });
    h.save(houlsby, 'h');
    assert.throws(() => add({ source_adapters: [SOURCES[0], houlsby] }), /must share one placement, but "a" is pfeiffer and "houlsby-source" is houlsby/);
    const oneLayer = join(tmp, 'one-layer');
    const o = llama();
    o.add('o', { peft_type: 'BOTTLENECK', adapter_type: 'pfeiffer', layers_to_transform: [0] });
    o.save(oneLayer, 'o');
    assert.throws(() => add({ source_adapters: [SOURCES[0], oneLayer] }), /source adapter "one-layer" \(.*one-layer\) adapts model\.layers\.0\.mlp\.down_proj, but the combination adapts model\.layers\.0\.mlp\.down_proj, model\.layers\.1\.mlp\.down_proj/);
    // a source trained on a wider model: its weights do not fit this one
    const wide = join(tmp, 'wide-source');
    cpSync(SOURCES[0]!, wide, { recursive: true });
    const t = readTensorMap(join(wide, 'adapter_model.safetensors'));
    const key = `base_model.model.${PATH(0)}.adapter_down.weight`;
    t.set(key, ak.zeros([8, 64]));
    ak.writeSafetensors(join(wide, 'adapter_model.safetensors'), Object.fromEntries(t));
    assert.throws(() => add({ source_adapters: [wide] }), new RegExp(`wide-source.*"${key.replace(/\./g, '\\.')}" has shape \\[8, 64\\], the model needs \\[8, 32\\]`));
    const after = join(tmp, 'ln-after');
    const la = llama();
    la.add('x', { peft_type: 'BOTTLENECK', adapter_type: 'pfeiffer', layer_norm: 'after' });
    la.save(after, 'x');
    assert.throws(() => add({ source_adapters: [after] }), /"layer_norm" is "after"/);
    assert.throws(() => add({ source_adapters: SOURCES, source_configs: [{}] }), /both given/);
    assert.throws(() => add({ source_adapters: [] }), /"source_adapters" must be a non-empty list/);
    assert.throws(() => add({ source_adapters: SOURCES, source_names: ['a', 'b'] }), /"source_names" must list 3 names/);
    assert.throws(() => add({ source_adapters: SOURCES, num_sources: 2 }), /"num_sources" is 2, but 3 sources are given/);
    assert.throws(() => add({ query: false, key: false, value: false }), /all false/);
    assert.throws(() => add({ dropout_prob: 1 }), /"dropout_prob" must be below 1/);
    assert.throws(() => add({ temprature: true }), /does not read "temprature"/);
    assert.equal(am.adapters.size, 0);
  });
});

describe('CLI: source adapters, then AdapterFusion and ScaLearn over them, on stories260K', () => {
  const D = join(ak.dataDir(), 'models', 'stories260K');
  const MODEL = ['--model', join(D, 'stories260K.bin'), '--tokenizer', join(D, 'tok512.bin')];
  const jsonl = (file: string, rows: { text: string; label: string }[]) => {
    writeFileSync(file, rows.map((r) => JSON.stringify(r)).join('\n'));
    return file;
  };
  const sms = readFileSync(join(ak.dataDir(), 'datasets', 'sms_spam', 'SMSSpamCollection'), 'utf8').split('\n').slice(1)
    .map((l) => l.split('\t')).filter((p) => p.length === 2).map(([label, text]) => ({ text: text!, label: label! }));
  const smsRows = [...sms.filter((r) => r.label === 'spam').slice(0, 24), ...sms.filter((r) => r.label === 'ham').slice(0, 24)];
  const topics = ['World', 'Sports', 'Business', 'Tech'];
  // rows without quoted fields, so a plain split reads them
  const news = readFileSync(join(ak.dataDir(), 'datasets', 'ag_news_test', 'test.csv'), 'utf8').split('\n').slice(1)
    .filter((l) => !l.includes('"') && l.split(',').length === 3).slice(0, 48)
    .map((l) => { const [c, title, desc] = l.split(','); return { text: `${title}. ${desc}`, label: topics[Number(c) - 1]! }; });
  const common = ['--seq-len', '48', '--batch-size', '4', '--val-split', '0', '--checkpoint-every', '0', '--json', '--label-cue', '\nLabel:'];

  it('trains two sources, fuses and scales them; the sources stay byte-identical, and the result loads and evaluates on its own', async () => {
    const smsData = jsonl(join(tmp, 'sms.jsonl'), smsRows);
    const newsData = jsonl(join(tmp, 'news.jsonl'), news);
    const pfeiffer = join(tmp, 'pfeiffer.json');
    writeFileSync(pfeiffer, JSON.stringify({ peft_type: 'BOTTLENECK', adapter_type: 'pfeiffer', reduction_factor: 4 }));
    const src = async (name: string, data: string) => {
      const out = join(tmp, name);
      const r = await cli('train', ...MODEL, '--data', data, '--adapter-config', pfeiffer, '--steps', '4', '--lr', '3e-3', ...common, '--out', out);
      assert.equal(r.code, 0, r.err);
      return join(out, 'adapter');
    };
    const s1 = await src('sms', smsData);
    const s2 = await src('agnews', newsData);
    const bytes = () => [s1, s2].flatMap((d) => ['adapter_config.json', 'adapter_model.safetensors'].map((f) => readFileSync(join(d, f))));
    const before = bytes();
    for (const [method, trainable] of [['fusion', 5 * (3 * 64 * 64 + 2 * 64)], ['scalearn', 5 * 2 * 64], ['scalearn-uniform-plus', 2]] as const) {
      const out = join(tmp, `${method}-run`);
      const r = await cli('train', ...MODEL, '--data', smsData, '--method', method, '--source-adapters', `${s1},${s2}`, '--steps', '3', '--lr', '5e-3', ...common, '--out', out);
      assert.equal(r.code, 0, r.err);
      const report = JSON.parse(readFileSync(join(out, 'training_report.json'), 'utf8'));
      assert.equal(report.trainable_parameters, trainable, method);
      assert.equal(report.steps, 3);
      const adapter = join(out, 'adapter');
      const cfg = JSON.parse(readFileSync(join(adapter, 'adapter_config.json'), 'utf8'));
      assert.deepEqual(cfg.source_names, ['sms', 'agnews']);
      assert.equal(cfg.source_adapters, undefined);
      const saved = readTensorMap(join(adapter, 'adapter_model.safetensors'));
      [s1, s2].forEach((d, i) => {
        for (const [k, t] of readTensorMap(join(d, 'adapter_model.safetensors'))) {
          const at = k.lastIndexOf('.adapter_');
          const mine = saved.get(`${k.slice(0, at)}.sources.${i}.${k.slice(at + 1)}`);
          assert.ok(mine, `${method}: ${k} of source ${i} saved`);
          assert.deepEqual(Buffer.from(values(mine).buffer), Buffer.from(values(t).buffer), `${method}: ${k}`);
        }
      });
      // evaluation from a copy of the adapter folder, the source runs moved away
      const copy = join(tmp, `${method}-copy`);
      cpSync(adapter, copy, { recursive: true });
      for (const s of ['sms', 'agnews']) renameSync(join(tmp, s), join(tmp, `${s}-away`));
      try {
        const ev = await cli('eval', ...MODEL, '--adapter', copy, '--data', smsData, '--label-cue', '\nLabel:', '--seq-len', '48', '--json');
        assert.equal(ev.code, 0, ev.err);
        const acc = JSON.parse(ev.out).accuracy;
        assert.ok(acc >= 0 && acc <= 1, `accuracy ${acc}`);
      } finally {
        for (const s of ['sms', 'agnews']) renameSync(join(tmp, `${s}-away`), join(tmp, s));
      }
    }
    assert.deepEqual(bytes(), before, 'the source folders are untouched');
  });

  it('cleans up', () => rmSync(tmp, { recursive: true, force: true }));
});
