/**
 * Sparse training in the optimizers: "no gradient" is not "zero gradient". A parameter without a
 * gradient in a step does not step (its bias correction counts only its own steps, as PyTorch's
 * per-parameter state does), and entries a gradMask excludes keep their value and optimizer state
 * under weight decay. Checked against AdamW's update written out by hand.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import * as ak from '../src/index.js';

function adamRef(w0: number[], grads: (number[] | null)[], o: { lr: number; b1: number; b2: number; eps: number; wd: number }, mask?: number[]): number[] {
  const w = w0.slice();
  const m = w.map(() => 0);
  const v = w.map(() => 0);
  let t = 0;
  for (const g of grads) {
    if (!g) continue;
    t++;
    for (let j = 0; j < w.length; j++) {
      if (mask && mask[j] === 0) continue;
      m[j] = o.b1 * m[j]! + (1 - o.b1) * g[j]!;
      v[j] = o.b2 * v[j]! + (1 - o.b2) * g[j]! * g[j]!;
      const mh = m[j]! / (1 - o.b1 ** t);
      const vh = v[j]! / (1 - o.b2 ** t);
      w[j] = w[j]! * (1 - o.lr * o.wd) - (o.lr * mh) / (Math.sqrt(vh) + o.eps);
    }
  }
  return w;
}

describe('sparse training in the optimizers', () => {
  const o = { lr: 0.1, b1: 0.9, b2: 0.99, eps: 1e-8, wd: 0.1 };
  const grads: (number[] | null)[] = [[0.5, -1, 2, 0.25], null, [1, 1, -0.5, 0], null, [-0.3, 0.2, 0.1, 1]];

  it('a parameter skipped in some steps steps only when it has a gradient; masked entries never move', () => {
    const a = ak.parameter(ak.tensor([1, 2, 3, 4], [4]));
    const b = ak.parameter(ak.tensor([1, 2, 3, 4], [4]));
    b.gradMask = new Float32Array([1, 0, 1, 0]);
    const opt = new ak.AdamW([a, b], { lr: o.lr, betas: [o.b1, o.b2], eps: o.eps, weightDecay: o.wd });
    const every = [[0.1, 0.1, 0.1, 0.1], [0.2, -0.2, 0.2, -0.2], [0.3, 0.3, 0.3, 0.3], [0.1, 0.2, 0.3, 0.4], [1, 1, 1, 1]];
    for (let s = 0; s < grads.length; s++) {
      a.grad = grads[s] ? ak.tensor(grads[s]!, [4]) : null;
      b.grad = ak.tensor(every[s]!, [4]);
      ak.maskGrads([a, b]);
      assert.deepEqual(Array.from(b.grad!.toArray()), every[s]!.map((g, j) => (j % 2 === 1 ? 0 : g)).map((x) => Math.fround(x)));
      opt.step();
      opt.zeroGrad();
    }
    const wa = Array.from(a.toArray());
    adamRef([1, 2, 3, 4], grads, o).forEach((x, j) => assert.ok(Math.abs(wa[j]! - x) < 1e-5, `a[${j}] ${wa[j]} vs ${x}`));
    const wb = Array.from(b.toArray());
    adamRef([1, 2, 3, 4], every, o, [1, 0, 1, 0]).forEach((x, j) => assert.ok(Math.abs(wb[j]! - x) < 1e-5, `b[${j}] ${wb[j]} vs ${x}`));
    assert.equal(wb[1], 2, 'a masked entry keeps its value under weight decay');
    assert.equal(wb[3], 4);
    // the per-parameter steps survive a state round trip
    const again = new ak.AdamW([a, b], { lr: o.lr });
    again.loadState(opt.state());
    assert.deepEqual(Array.from(again.state().buffers.steps![0]!), [3, 5]);
  });

  it('SGD leaves masked entries alone too', () => {
    const p = ak.parameter(ak.tensor([1, 1, 1], [3]));
    p.gradMask = new Float32Array([0, 1, 1]);
    const opt = new ak.SGD([p], { lr: 0.5, momentum: 0.9, weightDecay: 0.1 });
    p.grad = ak.tensor([1, 1, 1], [3]);
    opt.step();
    const w = Array.from(p.toArray());
    assert.equal(w[0], 1);
    assert.ok(Math.abs(w[1]! - (1 - 0.5 * (1 + 0.1))) < 1e-6);
  });
});
