/**
 * The contract every adapter method keeps, on tiny Llama and GPT-2 checkpoints: zero-init equals
 * the base; merged equals unmerged (or merging is refused by name); PEFT save/load round-trips
 * exactly; a mixed batch equals each row alone; gradients match finite differences; the
 * parameter count matches the method's formula. Cases come from the method registry, so
 * registering a method (with a preset) puts it under the contract.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as ak from '../src/index.js';
import { AdapterModel, defaultTargetsFor, findTargets, isMergeable, registeredMethods } from '../src/adapters/index.js';
import { describeModel } from '../src/nn/index.js';
import { loadModel } from '../src/models/load.js';
import { assertClose, backends } from './helpers.js';

export const FIX = fileURLToPath(new URL('./fixtures/models/', import.meta.url));

export interface MethodCase {
  name: string;
  model: 'llama-gqa' | 'gpt2';
  config: Record<string, unknown>;
}

/** Small option values for every preset of every registered method, on both fixture models. */
export const SMALL_OPTIONS = { r: 4, alpha: 8, 'virtual-tokens': 3, 'reduction-factor': 4 };

export function registryCases(): MethodCase[] {
  const out: MethodCase[] = [];
  for (const m of registeredMethods()) {
    for (const p of m.presets ?? []) {
      for (const model of ['llama-gqa', 'gpt2'] as const) {
        const d = describeModel(loadModel(join(FIX, model)).model);
        out.push({ name: `${p.name}-${model}`, model, config: p.config(SMALL_OPTIONS, d) });
      }
    }
  }
  return out;
}

const IDS = ak.tensor([5, 17, 3, 44, 9, 1, 60, 2], [2, 4], { dtype: 'i32' }).keep();
/** What adapters generated from a context (the `condition` capability) are given before each check. */
const CONTEXT = ak.tensor([3, 9, 27, 4, 11, 50, 8], [1, 7], { dtype: 'i32' }).keep();

/** Give an adapter that is generated from a context its context; others are left as they are. */
export function conditioned<T extends ak.AdapterInstance>(am: AdapterModel, inst: T): T {
  inst.condition?.(am, CONTEXT);
  return inst;
}

export function logits(am: AdapterModel, ids = IDS): Float32Array {
  return ak.tidy(() => ak.noGrad(() => am.forward(ids).toArray() as Float32Array));
}

/** Move every adapter parameter away from its init so the checks are not trivial. */
export function perturb(am: AdapterModel, seed: number): void {
  const rng = new ak.Rng(seed);
  ak.noGrad(() => {
    for (const p of am.trainableParameters()) {
      const d = p.storage.data as Float32Array;
      for (let i = 0; i < p.size; i++) d[p.offset + i] = d[p.offset + i]! + 0.1 * rng.normal();
    }
  });
}

/** Methods that say so (prompt methods add positions), and bottleneck variants without the identity at init. */
function changesAtInit(c: MethodCase): boolean {
  const m = ak.getMethod(c.config.peft_type);
  return m.startsAsIdentity === false || c.config.layer_norm === 'after' || c.config.residual === false;
}

export function contractSuite(cases: readonly MethodCase[]): void {
  const tmp = mkdtempSync(join(tmpdir(), 'adaptkit-contract-'));
  for (const backend of backends()) {
    describe(`adapter contract on ${backend}`, () => {
      for (const c of cases) {
        it(`${c.name}: zero-init equals base, merged equals unmerged, save/load is exact`, () => {
          ak.setBackend(backend);
          const am = new AdapterModel(loadModel(join(FIX, c.model)).model);
          const before = logits(am);
          const inst = conditioned(am, am.add('a', c.config, { seed: 1 }));
          assert.ok(inst.parameters().length > 0);
          const identity = !changesAtInit(c);
          if (identity) assertClose(logits(am), before, `${c.name} zero-init`, 1e-5, 1e-4);
          perturb(am, 2);
          const adapted = logits(am);
          assert.ok(adapted.some((v, i) => Math.abs(v - before[i]!) > 1e-3), 'a perturbed adapter changes the output');
          am.setActive([]);
          assertClose(logits(am), before, `${c.name} deactivated`, 0, 0);
          am.setActive(['a']);
          if (isMergeable(inst)) {
            am.merge();
            assertClose(logits(am), adapted, `${c.name} merged`, 1e-4, 1e-4);
            am.unmerge();
            assertClose(logits(am), adapted, `${c.name} unmerged`, 0, 0);
          } else {
            assert.throws(() => am.merge(), new RegExp(`adapter "a" \\(${inst.method.peftType}\\) cannot be merged`));
            assertClose(logits(am), adapted, `${c.name} after a refused merge`, 0, 0);
          }
          // inference is deterministic: the same logits twice
          assert.deepEqual(logits(am), adapted);
          const dir = join(tmp, `${c.name}-${backend}`);
          am.save(dir, 'a');
          const cfg = JSON.parse(readFileSync(join(dir, 'adapter_config.json'), 'utf8'));
          // a method may save its inference form as another method's adapter (MoSA as a bottleneck)
          assert.equal(cfg.peft_type, inst.configJson().peft_type);
          const fresh = new AdapterModel(loadModel(join(FIX, c.model)).model);
          conditioned(fresh, fresh.load(dir, 'b'));
          // exact, except for adapters saved converted: SVD-initialized ones (for the original
          // weights) and those saved as another method
          const converted = !!inst.residualBase?.size || cfg.peft_type !== c.config.peft_type;
          assertClose(logits(fresh), adapted, `${c.name} loaded`, converted ? 1e-4 : 0, converted ? 1e-4 : 0);
          // saving the loaded adapter again gives the same bytes
          fresh.save(join(dir, 'again'), 'b');
          assert.deepEqual(readFileSync(join(dir, 'again', 'adapter_model.safetensors')), readFileSync(join(dir, 'adapter_model.safetensors')));
          assert.deepEqual(readFileSync(join(dir, 'again', 'adapter_config.json'), 'utf8'), readFileSync(join(dir, 'adapter_config.json'), 'utf8'));
        });

        it(`${c.name}: gradients match finite differences`, () => {
          ak.setBackend(backend);
          const am = new AdapterModel(loadModel(join(FIX, c.model)).model);
          conditioned(am, am.add('a', c.config, { seed: 3 }));
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
          // frozen base weights never get gradients
          assert.ok(am.model.parameters().filter((p) => !params.includes(p)).every((p) => p.grad === null));
          if (ak.getMethod(c.config.peft_type).straightThrough) {
            for (const p of params) {
              const g = p.grad!.toArray();
              assert.ok(g.every(Number.isFinite) && g.some((v) => v !== 0), `${p.name}: a finite, non-zero straight-through gradient`);
            }
            return;
          }
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

  describe('every method: parameter counts and mixed batches', () => {
    for (const c of cases) {
      it(`${c.name}: trainable parameters match the method's formula`, () => {
        const am = new AdapterModel(loadModel(join(FIX, c.model)).model);
        const inst = am.add('a', c.config, { seed: 1 });
        const method = inst.method;
        const targets = method.kind === 'tuner' ? findTargets(am.model, inst.config, defaultTargetsFor(method, am.model, inst.config)) : [];
        assert.equal(method.countParameters!(inst.config, targets, describeModel(am.model)), am.numTrainable('a'));
      });

      it(`${c.name}: a mixed batch (this adapter, none, a LoRA, this adapter) equals each row run alone`, () => {
        const am = new AdapterModel(loadModel(join(FIX, c.model)).model);
        conditioned(am, am.add('a', c.config, { seed: 1 }));
        am.add('l', { peft_type: 'LORA', r: 2, lora_alpha: 4, fan_in_fan_out: c.model === 'gpt2', target_modules: c.model === 'gpt2' ? ['c_attn'] : ['q_proj'] }, { seed: 2 });
        for (const n of ['a', 'l']) {
          am.setActive([n]);
          perturb(am, n.charCodeAt(0) + 7);
        }
        const addsPositions = (am.adapters.get('a')!.addedPositions ?? 0) > 0;
        const rows = [[5, 17, 3, 44], [9, 1, 60, 2], [7, 7, 8, 9], [3, 3, 2, 1]];
        const who = addsPositions ? ['a', 'a', 'a', 'a'] : ['a', null, 'l', 'a'];
        const mixed = ak.tidy(() => ak.noGrad(() => am.forwardMixed(ak.tensor(rows.flat(), [4, 4], { dtype: 'i32' }), who).toArray()));
        const per = mixed.length / 4;
        rows.forEach((r, i) => {
          am.setActive(who[i] ? [who[i]!] : []);
          const alone = ak.tidy(() => ak.noGrad(() => am.forward(ak.tensor(r, [1, 4], { dtype: 'i32' })).toArray()));
          assertClose(mixed.subarray(i * per, (i + 1) * per), alone, `${c.name} row ${i}`, 1e-4, 1e-4);
        });
      });
    }
    it('cleans up', () => rmSync(tmp, { recursive: true, force: true }));
  });
}
