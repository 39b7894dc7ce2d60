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
}

const CASES: MethodCase[] = [
  { name: 'lora', model: 'llama-gqa', config: { peft_type: 'LORA', r: 4, lora_alpha: 8, target_modules: ['q_proj', 'v_proj', 'down_proj'] }, mergeable: true },
  { name: 'rslora+patterns', model: 'llama-gqa', config: { peft_type: 'LORA', r: 4, lora_alpha: 8, use_rslora: true, target_modules: 'all-linear', rank_pattern: { down_proj: 2 }, alpha_pattern: { 'layers.1.self_attn.q_proj': 3 } }, mergeable: true },
  { name: 'dora', model: 'llama-gqa', config: { peft_type: 'LORA', r: 4, lora_alpha: 4, use_dora: true, target_modules: ['q_proj', 'k_proj', 'up_proj'] }, mergeable: true },
  { name: 'lora-gpt2-conv1d', model: 'gpt2', config: { peft_type: 'LORA', r: 4, lora_alpha: 8, fan_in_fan_out: true, target_modules: ['c_attn', 'c_fc'], bias: 'all' }, mergeable: true },
  { name: 'dora-gpt2', model: 'gpt2', config: { peft_type: 'LORA', r: 2, lora_alpha: 4, fan_in_fan_out: true, use_dora: true, target_modules: ['c_attn'] }, mergeable: true },
  { name: 'ia3', model: 'llama-gqa', config: { peft_type: 'IA3' }, mergeable: true },
  { name: 'ia3-gpt2', model: 'gpt2', config: { peft_type: 'IA3', fan_in_fan_out: true }, mergeable: true },
];

const IDS = ak.tensor([5, 17, 3, 44, 9, 1, 60, 2], [2, 4], { dtype: 'i32' }).keep();

function logits(am: AdapterModel): Float32Array {
  return ak.tidy(() => ak.noGrad(() => (am.model as any).forward(IDS).toArray() as Float32Array));
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
        assertClose(logits(am), before, `${c.name} zero-init`, 1e-6, 1e-6);
        perturb(am, 2);
        const adapted = logits(am);
        assert.ok(adapted.some((v, i) => Math.abs(v - before[i]!) > 1e-3), 'a perturbed adapter changes the output');
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
        const objective = () => ak.tidy(() => ak.sum(ak.mul((am.model as any).forward(IDS), R)).item());
        ak.tidy(() => ak.sum(ak.mul((am.model as any).forward(IDS), R)).backward());
        for (const p of params) assert.ok(p.grad, `${p.name} has a gradient`);
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
