/**
 * The contract every adapter method keeps, on tiny Llama and GPT-2 checkpoints:
 * zero-init equals the base; merged equals unmerged; PEFT save/load round-trips exactly;
 * gradients match finite differences.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as ak from '../src/index.js';
import { AdapterModel } from '../src/adapters/index.js';
import { loadModel } from '../src/models/load.js';
import { assertClose, backends } from './helpers.js';

const FIX = fileURLToPath(new URL('./fixtures/models/', import.meta.url));
const tmp = mkdtempSync(join(tmpdir(), 'adaptkit-adapters-'));

interface MethodCase {
  name: string;
  model: 'llama-gqa' | 'gpt2';
  config: Record<string, unknown>;
  mergeable: boolean;
  /** A new adapter leaves the model unchanged (false for prompt methods, which add positions). */
  identity?: boolean;
}

const CASES: MethodCase[] = [
  { name: 'lora', model: 'llama-gqa', config: { peft_type: 'LORA', r: 4, lora_alpha: 8, target_modules: ['q_proj', 'v_proj', 'down_proj'] }, mergeable: true },
  { name: 'rslora+patterns', model: 'llama-gqa', config: { peft_type: 'LORA', r: 4, lora_alpha: 8, use_rslora: true, target_modules: 'all-linear', rank_pattern: { down_proj: 2 }, alpha_pattern: { 'layers.1.self_attn.q_proj': 3 } }, mergeable: true },
  { name: 'dora', model: 'llama-gqa', config: { peft_type: 'LORA', r: 4, lora_alpha: 4, use_dora: true, target_modules: ['q_proj', 'k_proj', 'up_proj'] }, mergeable: true },
  { name: 'lora-gpt2-conv1d', model: 'gpt2', config: { peft_type: 'LORA', r: 4, lora_alpha: 8, fan_in_fan_out: true, target_modules: ['c_attn', 'c_fc'], bias: 'all' }, mergeable: true },
  { name: 'dora-gpt2', model: 'gpt2', config: { peft_type: 'LORA', r: 2, lora_alpha: 4, fan_in_fan_out: true, use_dora: true, target_modules: ['c_attn'] }, mergeable: true },
  { name: 'ia3', model: 'llama-gqa', config: { peft_type: 'IA3' }, mergeable: true },
  { name: 'ia3-gpt2', model: 'gpt2', config: { peft_type: 'IA3', fan_in_fan_out: true }, mergeable: true },
  { name: 'hydra', model: 'llama-gqa', config: { peft_type: 'HYDRA', r: 4, lora_alpha: 8, seq_r: 2, target_modules: ['v_proj', 'down_proj'] }, mergeable: true },
  { name: 'hydra-gpt2', model: 'gpt2', config: { peft_type: 'HYDRA', r: 2, target_modules: ['c_fc'] }, mergeable: true },
  { name: 'bottleneck-houlsby', model: 'llama-gqa', config: { peft_type: 'BOTTLENECK', adapter_type: 'houlsby', reduction_factor: 8, non_linearity: 'silu', layer_norm: 'before' }, mergeable: false },
  { name: 'bottleneck-pfeiffer-gpt2', model: 'gpt2', config: { peft_type: 'BOTTLENECK', adapter_type: 'pfeiffer', bottleneck_size: 5, non_linearity: 'gelu' }, mergeable: false },
  { name: 'bottleneck-parallel', model: 'llama-gqa', config: { peft_type: 'BOTTLENECK', adapter_type: 'parallel', reduction_factor: 4, scaling: 2, non_linearity: 'tanh' }, mergeable: false },
  { name: 'compacter', model: 'llama-gqa', config: { peft_type: 'COMPACTER', adapter_type: 'houlsby', reduction_factor: 4, phm_dim: 4, phm_rank: 1, non_linearity: 'gelu' }, mergeable: false },
  { name: 'compacter-gpt2', model: 'gpt2', config: { peft_type: 'COMPACTER', adapter_type: 'pfeiffer', reduction_factor: 2, phm_dim: 2, phm_rank: 2, non_linearity: 'silu' }, mergeable: false },
  { name: 'prompt-tuning', model: 'llama-gqa', config: { peft_type: 'PROMPT_TUNING', num_virtual_tokens: 3 }, mergeable: false, identity: false },
  { name: 'prompt-tuning-gpt2', model: 'gpt2', config: { peft_type: 'PROMPT_TUNING', num_virtual_tokens: 2, prompt_tuning_init: 'SAMPLE_VOCAB' }, mergeable: false, identity: false },
  { name: 'prefix-tuning', model: 'llama-gqa', config: { peft_type: 'PREFIX_TUNING', num_virtual_tokens: 3 }, mergeable: false, identity: false },
  { name: 'prefix-projection-gpt2', model: 'gpt2', config: { peft_type: 'PREFIX_TUNING', num_virtual_tokens: 2, prefix_projection: true, encoder_hidden_size: 8 }, mergeable: false, identity: false },
];

const IDS = ak.tensor([5, 17, 3, 44, 9, 1, 60, 2], [2, 4], { dtype: 'i32' }).keep();

function logits(am: AdapterModel): Float32Array {
  return ak.tidy(() => ak.noGrad(() => am.forward(IDS).toArray() as Float32Array));
}

/** Move every adapter parameter away from its init so the checks are not trivial. */
function perturb(am: AdapterModel, seed: number): void {
  const rng = new ak.Rng(seed);
  ak.noGrad(() => {
    for (const p of am.trainableParameters()) {
      const d = p.storage.data as Float32Array;
      for (let i = 0; i < p.size; i++) d[p.offset + i] = d[p.offset + i]! + 0.1 * rng.normal();
    }
  });
}

for (const backend of backends()) {
  describe(`adapter contract on ${backend}`, () => {
    for (const c of CASES) {
      it(`${c.name}: zero-init equals base, merged equals unmerged, save/load is exact`, () => {
        ak.setBackend(backend);
        const base = loadModel(join(FIX, c.model)).model;
        const am = new AdapterModel(base);
        const before = logits(am);
        const inst = am.add('a', c.config, { seed: 1 });
        assert.ok(inst.parameters().length > 0);
        if (c.identity !== false) assertClose(logits(am), before, `${c.name} zero-init`, 1e-6, 1e-6);
        perturb(am, 2);
        const adapted = logits(am);
        if (c.identity !== false) assert.ok(adapted.some((v, i) => Math.abs(v - before[i]!) > 1e-3), 'a perturbed adapter changes the output');
        am.setActive([]);
        assertClose(logits(am), before, `${c.name} deactivated`, 0, 0);
        am.setActive(['a']);
        if (c.mergeable) {
          am.merge();
          assertClose(logits(am), adapted, `${c.name} merged`, 1e-4, 1e-4);
          am.unmerge();
          assertClose(logits(am), adapted, `${c.name} unmerged`, 0, 0);
        }
        const dir = join(tmp, `${c.name}-${backend}`);
        am.save(dir, 'a');
        const cfg = JSON.parse(readFileSync(join(dir, 'adapter_config.json'), 'utf8'));
        assert.equal(cfg.peft_type, c.config.peft_type);
        const fresh = new AdapterModel(loadModel(join(FIX, c.model)).model);
        fresh.load(dir, 'b');
        assert.deepEqual(logits(fresh), adapted);
        // saving the loaded adapter again gives the same bytes
        fresh.save(join(dir, 'again'), 'b');
        assert.deepEqual(readFileSync(join(dir, 'again', 'adapter_model.safetensors')), readFileSync(join(dir, 'adapter_model.safetensors')));
        assert.deepEqual(readFileSync(join(dir, 'again', 'adapter_config.json'), 'utf8'), readFileSync(join(dir, 'adapter_config.json'), 'utf8'));
      });

      it(`${c.name}: gradients match finite differences`, () => {
        ak.setBackend(backend);
        const am = new AdapterModel(loadModel(join(FIX, c.model)).model);
        am.add('a', c.config, { seed: 3 });
        perturb(am, 4);
        const params = am.trainableParameters();
        const R = ak.randn([2, 4, 64], { rng: new ak.Rng(5) }).keep();
        const out = () => {
          const l = am.forward(IDS);
          return ak.narrow(l, 1, l.shape[1]! - 4, 4);
        };
        const objective = () => ak.tidy(() => ak.sum(ak.mul(out(), R)).item());
        ak.tidy(() => ak.sum(ak.mul(out(), R)).backward());
        for (const p of params) assert.ok(p.grad, `${p.name} has a gradient`);
        if (c.name === 'compacter') assert.ok(params.some((p) => p.name === 'compacter_phm_rule'), 'the shared PHM rule is trained');
        // frozen base weights never get gradients
        assert.ok(am.model.parameters().filter((p) => !params.includes(p)).every((p) => p.grad === null));
        const h = 1e-2;
        // DoRA treats the weight norm as a constant in backward (the paper's section 4.3, and PEFT),
        // so only its magnitude vector has the exact derivative
        const checked = c.config.use_dora ? params.filter((p) => p.name!.endsWith('lora_magnitude_vector')) : params;
        assert.ok(checked.length > 0);
        for (const p of checked.slice(0, 6)) {
          const d = p.storage.data as Float32Array;
          const g = p.grad!.toArray();
          for (const j of [0, Math.floor(p.size / 2), p.size - 1]) {
            const orig = d[p.offset + j]!;
            d[p.offset + j] = orig + h;
            const up = ak.noGrad(objective);
            d[p.offset + j] = orig - h;
            const down = ak.noGrad(objective);
            d[p.offset + j] = orig;
            const fd = (up - down) / (2 * h);
            assert.ok(Math.abs(fd - g[j]!) <= 2e-2 + 2e-2 * Math.abs(g[j]!), `${p.name}[${j}]: autodiff ${g[j]} vs finite differences ${fd}`);
          }
        }
      });
    }
  });
}

describe('adapter errors', () => {
  it('lists the available modules when target_modules matches nothing', () => {
    const am = new AdapterModel(loadModel(join(FIX, 'llama-gqa')).model);
    assert.throws(() => am.add('a', { peft_type: 'LORA', target_modules: ['query'] }), /matched no module of the model. Linear modules are named: down_proj, gate_proj, k_proj, lm_head, o_proj, q_proj, up_proj, v_proj/);
    assert.throws(() => am.add('a', { peft_type: 'LOHA' }), /unknown peft_type "LOHA" \(known: .*LORA.*\)/);
    assert.throws(() => am.add('a', { peft_type: 'LORA', r: 0 }), /"r" must be a number >= 1/);
    assert.throws(() => am.add('a', { peft_type: 'LORA', target_modules: ['c_attn'] }), /matched no module/);
  });

  it('names missing and unexpected keys and wrong shapes when loading', () => {
    const am = new AdapterModel(loadModel(join(FIX, 'llama-gqa')).model);
    am.add('a', { peft_type: 'LORA', r: 2, target_modules: ['q_proj'] });
    const dir = join(tmp, 'err');
    am.save(dir, 'a');
    const other = new AdapterModel(loadModel(join(FIX, 'gpt2')).model);
    assert.throws(() => other.load(dir), /matched no module/);
    const gqa = new AdapterModel(loadModel(join(FIX, 'llama-gqa')).model);
    const cfgPath = join(dir, 'adapter_config.json');
    const cfg = JSON.parse(readFileSync(cfgPath, 'utf8'));
    cfg.target_modules = ['q_proj', 'v_proj'];
    require('node:fs').writeFileSync(cfgPath, JSON.stringify(cfg));
    assert.throws(() => gqa.load(dir), /adapter weights do not match the model; missing: base_model\.model\.model\.layers\.0\.self_attn\.v_proj\.lora_A\.weight/);
    cfg.target_modules = ['q_proj'];
    cfg.r = 3;
    require('node:fs').writeFileSync(cfgPath, JSON.stringify(cfg));
    assert.throws(() => gqa.load(dir), /"base_model\.model\.model\.layers\.0\.self_attn\.q_proj\.lora_A\.weight" has shape \[2, 32\], the model needs \[3, 32\]/);
    assert.deepEqual([...gqa.adapters.keys()], [], 'a failed load leaves nothing behind');
  });

  it('cleans up', () => rmSync(tmp, { recursive: true, force: true }));
});

import { createRequire } from 'node:module';
const require = createRequire(import.meta.url);

for (const backend of backends()) {
  describe(`mixed-adapter batches on ${backend}`, () => {
    for (const model of ['llama-gqa', 'gpt2'] as const) {
      it(`${model}: each row with its own LoRA (different ranks and targets) equals that adapter alone`, () => {
        ak.setBackend(backend);
        const am = new AdapterModel(loadModel(join(FIX, model)).model);
        const conv = model === 'gpt2';
        am.add('a', { peft_type: 'LORA', r: 4, lora_alpha: 8, fan_in_fan_out: conv, target_modules: conv ? ['c_attn'] : ['q_proj', 'v_proj'] }, { seed: 1 });
        am.add('b', { peft_type: 'LORA', r: 2, lora_alpha: 2, fan_in_fan_out: conv, use_rslora: true, target_modules: conv ? ['c_attn', 'c_fc'] : ['q_proj', 'k_proj', 'o_proj'] }, { seed: 2 });
        am.add('c', { peft_type: 'LORA', r: 3, lora_alpha: 6, fan_in_fan_out: conv, target_modules: 'all-linear' }, { seed: 3 });
        for (const n of ['a', 'b', 'c']) {
          am.setActive([n]);
          perturb(am, n.charCodeAt(0));
        }
        const rows = [[5, 17, 3, 44], [9, 1, 60, 2], [7, 7, 8, 9], [11, 12, 13, 14], [1, 2, 3, 4]];
        const who = ['a', null, 'b', 'c', 'a'];
        const batch = ak.tensor(rows.flat(), [rows.length, 4], { dtype: 'i32' });
        const mixed = am.withRowAdapters(who, () => ak.tidy(() => ak.noGrad(() => (am.model as any).forward(batch).toArray())));
        const V = 64 * 4;
        rows.forEach((r, i) => {
          am.setActive(who[i] ? [who[i]!] : []);
          const alone = ak.tidy(() => ak.noGrad(() => (am.model as any).forward(ak.tensor(r, [1, 4], { dtype: 'i32' })).toArray()));
          assertClose(mixed.subarray(i * V, (i + 1) * V), alone, `row ${i} (${who[i]})`, 1e-4, 1e-4);
        });
      });
    }
  });
}

describe('every method: parameter counts, mixed batches, prompt-learning definitions', () => {
  for (const c of CASES) {
    it(`${c.name}: trainable parameters match the method's formula`, () => {
      const am = new AdapterModel(loadModel(join(FIX, c.model)).model);
      const inst = am.add('a', c.config, { seed: 1 });
      const { findTargets } = adapters;
      const method = inst.method;
      const targets = method.kind === 'tuner' ? findTargets(am.model, inst.config, method.defaultTargets ? method.defaultTargets(am.model, inst.config) : (am.model.constructor as any).defaultAdapterTargets) : [];
      assert.equal(method.countParameters!(inst.config, targets), am.numTrainable('a'));
    });

    it(`${c.name}: a mixed batch (this adapter, none, another) equals each row run alone`, () => {
      const am = new AdapterModel(loadModel(join(FIX, c.model)).model);
      am.add('a', c.config, { seed: 1 });
      am.add('l', { peft_type: 'LORA', r: 2, lora_alpha: 4, fan_in_fan_out: c.model === 'gpt2', target_modules: c.model === 'gpt2' ? ['c_attn'] : ['q_proj'] }, { seed: 2 });
      for (const n of ['a', 'l']) {
        am.setActive([n]);
        perturb(am, n.charCodeAt(0) + 7);
      }
      const rows = [[5, 17, 3, 44], [9, 1, 60, 2], [7, 7, 8, 9]];
      const who = c.identity === false ? ['a', 'a', 'a'] : ['a', null, 'l'];
      const mixed = ak.tidy(() => ak.noGrad(() => am.forwardMixed(ak.tensor(rows.flat(), [3, 4], { dtype: 'i32' }), who).toArray()));
      const per = mixed.length / 3;
      rows.forEach((r, i) => {
        am.setActive(who[i] ? [who[i]!] : []);
        const alone = ak.tidy(() => ak.noGrad(() => am.forward(ak.tensor(r, [1, 4], { dtype: 'i32' })).toArray()));
        assertClose(mixed.subarray(i * per, (i + 1) * per), alone, `${c.name} row ${i}`, 1e-4, 1e-4);
      });
    });
  }

  for (const model of ['llama-gqa', 'gpt2'] as const) {
    it(`${model}: prompt tuning with the embeddings of tokens X equals the base model on X followed by the input`, () => {
      const am = new AdapterModel(loadModel(join(FIX, model)).model);
      const X = [11, 42, 7];
      am.add('p', { peft_type: 'PROMPT_TUNING', num_virtual_tokens: 3, prompt_tuning_init: 'TEXT', init_token_ids: X });
      const ids = [5, 17, 3, 44];
      const withPrompt = ak.tidy(() => ak.noGrad(() => am.forward(ak.tensor(ids, [1, 4], { dtype: 'i32' })).toArray()));
      am.setActive([]);
      const base = ak.tidy(() => ak.noGrad(() => am.forward(ak.tensor([...X, ...ids], [1, 7], { dtype: 'i32' })).toArray()));
      assertClose(withPrompt, base, 'prompt tuning', 1e-5, 1e-5);
    });

    it(`${model}: prefix tuning with the keys/values of tokens X equals continuing the base model after X`, () => {
      const am = new AdapterModel(loadModel(join(FIX, model)).model);
      const m = am.model as any;
      const X = [11, 42, 7];
      const ids = [5, 17, 3, 44];
      // the base model's cache after reading X, laid out as a prefix table [P, L·2·H·D]
      const cache = m.newCache();
      ak.noGrad(() => m.forward(ak.tensor(X, [1, 3], { dtype: 'i32' }), { cache }));
      const expected = ak.tidy(() => ak.noGrad(() => m.forward(ak.tensor(ids, [1, 4], { dtype: 'i32' }), { cache }).toArray()));
      const inst = am.add('p', { peft_type: 'PREFIX_TUNING', num_virtual_tokens: 3 }) as any;
      const { layers, kvHeads, headDim } = inst.info;
      const table = new Float32Array(3 * layers * 2 * kvHeads * headDim);
      const fresh = m.newCache();
      am.setActive([]);
      ak.noGrad(() => m.forward(ak.tensor(X, [1, 3], { dtype: 'i32' }), { cache: fresh }));
      am.setActive(['p']);
      for (let l = 0; l < layers; l++) {
        for (const [kv, t] of [[0, (fresh as any).k[l]], [1, (fresh as any).v[l]]] as [number, ak.Tensor][]) {
          const a = t.toArray();
          for (let h = 0; h < kvHeads; h++) for (let p = 0; p < 3; p++) for (let d = 0; d < headDim; d++) {
            table[p * layers * 2 * kvHeads * headDim + ((l * 2 + kv) * kvHeads + h) * headDim + d] = a[(h * 3 + p) * headDim + d]!;
          }
        }
      }
      (inst.prompt.storage.data as Float32Array).set(table);
      const got = ak.tidy(() => ak.noGrad(() => am.forward(ak.tensor(ids, [1, 4], { dtype: 'i32' })).toArray()));
      assertClose(got, expected, 'prefix tuning', 1e-5, 1e-5);
    });
  }
});

import * as adapters from '../src/adapters/index.js';

describe('SVD-based LoRA initializations', () => {
  const Q = 'model.layers.0.self_attn.q_proj';
  const weightOf = (am: AdapterModel, path: string) => (am.model.get(path) as any).base_layer.weight as ak.Tensor;

  it('PiSSA: the adapter holds the top-r singular part of W and the residual the rest (output unchanged)', () => {
    const am = new AdapterModel(loadModel(join(FIX, 'llama-gqa')).model);
    const W = Float64Array.from((am.model.get(Q) as any).weight.toArray());
    const before = logits(am);
    am.add('p', { peft_type: 'LORA', r: 3, lora_alpha: 6, init_lora_weights: 'pissa', target_modules: ['q_proj'] });
    assertClose(logits(am), before, 'PiSSA keeps the model', 1e-5, 1e-4);
    const d = am.adapters.get('p')!.deltas.get(Q) as unknown as adapters.LoraDelta;
    const sBA = ak.noGrad(() => d.deltaWeight().toArray());
    const s = ak.svd(W, 32, 32);
    const top = new Float64Array(32 * 32);
    for (let k = 0; k < 3; k++) for (let i = 0; i < 32; i++) for (let j = 0; j < 32; j++) top[i * 32 + j]! += s.u[i * 32 + k]! * s.s[k]! * s.v[j * 32 + k]!;
    assertClose(sBA, top, 'sBA is the rank-3 SVD truncation of W', 1e-4, 1e-3);
    assertClose(weightOf(am, Q).toArray(), W.map((v, i) => v - top[i]!), 'residual', 1e-4, 1e-3);
  });

  it('CorDA: covariance from calibration batches; both modes keep the model at init', () => {
    for (const mode of ['ipm', 'kpm']) {
      const am = new AdapterModel(loadModel(join(FIX, 'llama-gqa')).model);
      const before = logits(am);
      const batches = [ak.tensor([3, 9, 27, 17, 5, 1, 2, 8], [2, 4], { dtype: 'i32' }).keep()];
      const cov = adapters.collectCovariance(am.model, { peft_type: 'LORA', target_modules: ['q_proj', 'v_proj'], exclude_modules: null, layers_to_transform: null, layers_pattern: null }, batches, (ids) => (am.model as any).forward(ids));
      assert.equal(cov.size, 4);
      am.add('c', { peft_type: 'LORA', r: 2, lora_alpha: 2, init_lora_weights: 'corda', corda_config: { corda_method: mode }, target_modules: ['q_proj', 'v_proj'] }, { covariance: cov });
      assertClose(logits(am), before, `CorDA ${mode} keeps the model`, 1e-4, 1e-3);
    }
  });
});

describe('target selection and adapter management', () => {
  it('honours layers_to_transform, exclude_modules and regex targets, and deletes adapters', () => {
    const am = new AdapterModel(loadModel(join(FIX, 'llama-gqa')).model);
    const a = am.add('a', { peft_type: 'LORA', r: 2, target_modules: ['q_proj', 'v_proj'], layers_to_transform: [1] });
    assert.deepEqual([...a.deltas.keys()], ['model.layers.1.self_attn.q_proj', 'model.layers.1.self_attn.v_proj']);
    const b = am.add('b', { peft_type: 'LORA', r: 2, target_modules: '.*\\.(k_proj|o_proj)', exclude_modules: ['layers.0.self_attn.o_proj'] });
    assert.deepEqual([...b.deltas.keys()].sort(), ['model.layers.0.self_attn.k_proj', 'model.layers.1.self_attn.k_proj', 'model.layers.1.self_attn.o_proj']);
    am.setActive(['a', 'b']);
    assert.equal(am.trainableParameters().length, 10);
    am.delete('a');
    assert.deepEqual([...am.adapters.keys()], ['b']);
    assert.deepEqual(am.active, ['b']);
    assert.throws(() => am.setActive(['a']), /no adapter named "a" \(have: b\)/);
  });
});
