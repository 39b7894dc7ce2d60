/**
 * Adapter methods: the contract suite over every registered method's presets plus variants
 * (contract.ts), target matching, errors, SVD initializations and the prompt-learning definitions.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as ak from '../src/index.js';
import { AdapterModel, registeredMethods } from '../src/adapters/index.js';
import { loadModel } from '../src/models/load.js';
import { assertClose, backends } from './helpers.js';
import { FIX, type MethodCase, contractSuite, logits, perturb, registryCases } from './contract.js';

const tmp = mkdtempSync(join(tmpdir(), 'adaptkit-adapters-'));

/** Variants beyond the presets: patterns, Conv1D layouts, bias modes, placements, projections. */
const VARIANTS: MethodCase[] = [
  { name: 'lora', model: 'llama-gqa', config: { peft_type: 'LORA', r: 4, lora_alpha: 8, target_modules: ['q_proj', 'v_proj', 'down_proj'] } },
  { name: 'rslora+patterns', model: 'llama-gqa', config: { peft_type: 'LORA', r: 4, lora_alpha: 8, use_rslora: true, target_modules: 'all-linear', rank_pattern: { down_proj: 2 }, alpha_pattern: { 'layers.1.self_attn.q_proj': 3 } } },
  { name: 'dora', model: 'llama-gqa', config: { peft_type: 'LORA', r: 4, lora_alpha: 4, use_dora: true, target_modules: ['q_proj', 'k_proj', 'up_proj'] } },
  { name: 'lora-gpt2-conv1d', model: 'gpt2', config: { peft_type: 'LORA', r: 4, lora_alpha: 8, fan_in_fan_out: true, target_modules: ['c_attn', 'c_fc'], bias: 'all' } },
  { name: 'dora-gpt2', model: 'gpt2', config: { peft_type: 'LORA', r: 2, lora_alpha: 4, fan_in_fan_out: true, use_dora: true, target_modules: ['c_attn'] } },
  { name: 'ia3', model: 'llama-gqa', config: { peft_type: 'IA3' } },
  { name: 'ia3-gpt2', model: 'gpt2', config: { peft_type: 'IA3', fan_in_fan_out: true } },
  { name: 'hydra', model: 'llama-gqa', config: { peft_type: 'HYDRA', r: 4, lora_alpha: 8, seq_r: 2, target_modules: ['v_proj', 'down_proj'] } },
  { name: 'hydra-gpt2', model: 'gpt2', config: { peft_type: 'HYDRA', r: 2, target_modules: ['c_fc'] } },
  { name: 'bottleneck-houlsby', model: 'llama-gqa', config: { peft_type: 'BOTTLENECK', adapter_type: 'houlsby', reduction_factor: 8, non_linearity: 'silu', layer_norm: 'before' } },
  { name: 'bottleneck-pfeiffer-gpt2', model: 'gpt2', config: { peft_type: 'BOTTLENECK', adapter_type: 'pfeiffer', bottleneck_size: 5, non_linearity: 'gelu' } },
  { name: 'bottleneck-parallel', model: 'llama-gqa', config: { peft_type: 'BOTTLENECK', adapter_type: 'parallel', reduction_factor: 4, scaling: 2, non_linearity: 'tanh' } },
  { name: 'compacter', model: 'llama-gqa', config: { peft_type: 'COMPACTER', adapter_type: 'houlsby', reduction_factor: 4, phm_dim: 4, phm_rank: 1, non_linearity: 'gelu' } },
  { name: 'compacter-gpt2', model: 'gpt2', config: { peft_type: 'COMPACTER', adapter_type: 'pfeiffer', reduction_factor: 2, phm_dim: 2, phm_rank: 2, non_linearity: 'silu' } },
  { name: 'prompt-tuning', model: 'llama-gqa', config: { peft_type: 'PROMPT_TUNING', num_virtual_tokens: 3 } },
  { name: 'prompt-tuning-gpt2', model: 'gpt2', config: { peft_type: 'PROMPT_TUNING', num_virtual_tokens: 2, prompt_tuning_init: 'SAMPLE_VOCAB' } },
  { name: 'prefix-tuning', model: 'llama-gqa', config: { peft_type: 'PREFIX_TUNING', num_virtual_tokens: 3 } },
  { name: 'prefix-projection-gpt2', model: 'gpt2', config: { peft_type: 'PREFIX_TUNING', num_virtual_tokens: 2, prefix_projection: true, encoder_hidden_size: 8 } },
];

describe('the registry covers every method', () => {
  it('each registered method has a preset, so the contract suite runs on it', () => {
    for (const m of registeredMethods()) assert.ok((m.presets ?? []).length > 0 || m.savedFormOnly, `${m.peftType} has no preset`);
  });
});

contractSuite([...registryCases(), ...VARIANTS]);

describe('adapter errors', () => {
  it('lists the available modules when target_modules matches nothing', () => {
    const am = new AdapterModel(loadModel(join(FIX, 'llama-gqa')).model);
    assert.throws(() => am.add('a', { peft_type: 'LORA', target_modules: ['query'] }), /matched no module of the model. Linear modules are named: down_proj, gate_proj, k_proj, lm_head, o_proj, q_proj, up_proj, v_proj/);
    assert.throws(() => am.add('a', { peft_type: 'LOHA' }), /peft_type "LOHA": unknown \(known: .*LORA.*\)/);
    assert.throws(() => am.add('a', { peft_type: 'LORA', r: 0 }), /"r" must be a number >= 1/);
    assert.throws(() => am.add('a', { peft_type: 'LORA', target_modules: ['c_attn'] }), /matched no module/);
  });

  it('refuses config keys the method does not read, unless they ask for nothing', () => {
    const am = new AdapterModel(loadModel(join(FIX, 'llama-gqa')).model);
    assert.throws(() => am.add('a', { peft_type: 'LORA', rr: 8, target_modules: ['q_proj'] }), /adapter "a" config: LORA does not read "rr" \(a misspelt key/);
    assert.throws(() => am.add('b', { peft_type: 'LORA', lora_bias: true, target_modules: ['q_proj'] }), /LORA does not read "lora_bias"/);
    assert.throws(() => am.add('c', { peft_type: 'IA3', feedforward_module: ['down_proj'] }), /IA3 does not read "feedforward_module"/);
    assert.deepEqual([...am.adapters.keys()], [], 'a refused config leaves nothing behind');
    // PEFT writes defaults for settings adaptkit has no use for: they ask for nothing
    am.add('d', { peft_type: 'LORA', target_modules: ['q_proj'], use_qalora: false, eva_config: null, trainable_token_indices: null, layer_replication: null, loftq_config: {} });
    assert.deepEqual([...am.adapters.keys()], ['d']);
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

describe('prompt-learning definitions', () => {
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

    it(`${model}: prefix tuning with the keys/values of tokens X equals the base model attending to X's cache`, () => {
      const am = new AdapterModel(loadModel(join(FIX, model)).model);
      const m = am.model as any;
      const X = [11, 42, 7];
      const ids = [5, 17, 3, 44];
      // the base model's cache after reading X, laid out as a prefix table [P, L·2·H·D]
      const cache = m.newCache();
      ak.noGrad(() => m.forward(ak.tensor(X, [1, 3], { dtype: 'i32' }), { cache }));
      // the virtual positions carry no position: the real tokens keep positions 0..3
      const positions = ak.tensor([0, 1, 2, 3], [1, 4], { dtype: 'i32' });
      const expected = ak.tidy(() => ak.noGrad(() => m.forward(ak.tensor(ids, [1, 4], { dtype: 'i32' }), { cache, positions }).toArray()));
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
