/** Weighted combinations of LoRA adapters, checked against their definitions. */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as ak from '../src/index.js';
import { AdapterModel, addWeightedAdapter, type LoraDelta } from '../src/adapters/index.js';
import { taskArithmetic } from '../src/adapters/methods/lora-combine.js';
import { loadModel } from '../src/models/load.js';
import { assertClose } from './helpers.js';

const FIX = fileURLToPath(new URL('./fixtures/models/', import.meta.url));
ak.getBackend();

function setup(): AdapterModel {
  const am = new AdapterModel(loadModel(join(FIX, 'llama-gqa')).model);
  am.add('a', { peft_type: 'LORA', r: 4, lora_alpha: 8, target_modules: ['q_proj', 'v_proj'] }, { seed: 1 });
  am.add('b', { peft_type: 'LORA', r: 4, lora_alpha: 4, target_modules: ['q_proj', 'o_proj'] }, { seed: 2 });
  am.add('c', { peft_type: 'LORA', r: 2, lora_alpha: 4, target_modules: ['q_proj'] }, { seed: 3 });
  const rng = new ak.Rng(9);
  for (const n of ['a', 'b', 'c']) {
    for (const p of am.adapters.get(n)!.parameters()) {
      const d = p.storage.data as Float32Array;
      for (let i = 0; i < p.size; i++) d[p.offset + i] = rng.normal() * 0.3;
    }
  }
  return am;
}

/** scale·B·A of one adapter at one path, as a flat [out*in] array (zeros when absent). */
function delta(am: AdapterModel, name: string, path: string, outF = 32, inF = 32): Float64Array {
  const d = am.adapters.get(name)!.deltas.get(path) as unknown as LoraDelta | undefined;
  if (!d) return new Float64Array(outF * inF);
  return Float64Array.from(ak.noGrad(() => d.deltaWeight().toArray()));
}

const Q = 'model.layers.0.self_attn.q_proj';

describe('weighted adapter combination', () => {
  it('cat is exactly the weighted sum of the deltas', () => {
    const am = setup();
    addWeightedAdapter(am, ['a', 'b', 'c'], [0.7, 0.3, -0.5], 'm', { combination: 'cat' });
    const want = delta(am, 'a', Q).map((v, i) => 0.7 * v + 0.3 * delta(am, 'b', Q)[i]! - 0.5 * delta(am, 'c', Q)[i]!);
    assertClose(delta(am, 'm', Q), want, 'cat delta', 1e-5, 1e-4);
    assert.equal((am.adapters.get('m')!.deltas.get(Q) as unknown as LoraDelta).lora_A.shape[0], 10);
    // o_proj only in b, v_proj only in a
    assertClose(delta(am, 'm', 'model.layers.1.self_attn.o_proj'), delta(am, 'b', 'model.layers.1.self_attn.o_proj').map((v) => 0.3 * v), 'o_proj', 1e-5, 1e-4);
  });

  it('svd keeps the best rank-k approximation (Eckart-Young residual)', () => {
    const am = setup();
    addWeightedAdapter(am, ['a', 'b'], [1, 1], 'full', { combination: 'svd', svdRank: 8 });
    addWeightedAdapter(am, ['a', 'b'], [1, 1], 'low', { combination: 'svd', svdRank: 3 });
    const sum = delta(am, 'a', Q).map((v, i) => v + delta(am, 'b', Q)[i]!);
    assertClose(delta(am, 'full', Q), sum, 'svd at full rank', 1e-4, 1e-3);
    const s = ak.svd(sum, 32, 32).s;
    const resid = Math.sqrt(Array.from(s).slice(3).reduce((t, v) => t + v * v, 0));
    const low = delta(am, 'low', Q);
    const err = Math.sqrt(sum.reduce((t, v, i) => t + (v - low[i]!) ** 2, 0));
    assert.ok(Math.abs(err - resid) < 1e-3 * Math.max(1, resid), `residual ${err} vs ${resid}`);
  });

  it('linear combines A and B with weights sqrt(w·scaling)', () => {
    const am = setup();
    addWeightedAdapter(am, ['a', 'b'], [0.6, 0.4], 'lin', { combination: 'linear' });
    const get = (n: string) => am.adapters.get(n)!.deltas.get(Q) as unknown as LoraDelta;
    const [a, b, m] = [get('a'), get('b'), get('lin')];
    const wa = Math.sqrt(0.6 * a.scale);
    const wb = Math.sqrt(0.4 * b.scale);
    assertClose(m.lora_A.toArray(), Array.from(a.lora_A.toArray()).map((v, i) => wa * v + wb * b.lora_A.toArray()[i]!), 'A', 1e-6, 1e-5);
    assertClose(m.lora_B.toArray(), Array.from(a.lora_B.toArray()).map((v, i) => wa * v + wb * b.lora_B.toArray()[i]!), 'B', 1e-6, 1e-5);
    assert.throws(() => addWeightedAdapter(am, ['a', 'c'], [1, 1], 'bad', { combination: 'linear' }), /needs adapters of one rank/);
  });

  it('ties trims, elects a sign by total mass and averages the agreeing values', () => {
    const t1 = Float64Array.from([1, -2, 0.1, 3]);
    const t2 = Float64Array.from([-1.5, -1, 0.2, -4]);
    const t3 = Float64Array.from([0.5, 2.5, -0.3, 1]);
    // density 0.5 keeps the 2 largest magnitudes of each: t1 [_, -2, _, 3], t2 [-1.5, _, _, -4], t3 [_, 2.5, _, 1]
    const out = taskArithmetic([t1, t2, t3], [1, 1, 1], { combination: 'ties', density: 0.5 }, new ak.Rng(0));
    // elem0: only -1.5 → -1.5; elem1: -2 + 2.5 = 0.5 > 0 → mean of agreeing (2.5) = 2.5;
    // elem2: nothing kept → 0; elem3: 3 - 4 + 1 = 0 → sign + → mean(3, 1) = 2
    assert.deepEqual(Array.from(out), [-1.5, 2.5, 0, 2]);
    const mp = taskArithmetic([t1, t2], [2, 1], { combination: 'magnitude_prune', density: 0.5 }, new ak.Rng(0));
    assert.deepEqual(Array.from(mp), [-1.5, -4, 0, 2]);
  });

  it('dare keeps about density of the entries, rescaled by 1/density', () => {
    const t = new Float64Array(10000).fill(1);
    const out = taskArithmetic([t], [1], { combination: 'dare_linear', density: 0.3 }, new ak.Rng(4));
    const kept = out.filter((v) => v !== 0);
    assert.ok(Math.abs(kept.length / 10000 - 0.3) < 0.02);
    assert.ok(kept.every((v) => Math.abs(v - 1 / 0.3) < 1e-12));
  });
});
