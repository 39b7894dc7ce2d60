import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import * as ak from '../src/index.js';
import type { KernelSet } from '../src/index.js';
import { backends } from './helpers.js';

/** Wrap the active kernels to count how often each runs. */
function countingKernels(base: KernelSet): { counts: Record<string, number>; restore: () => void } {
  const counts: Record<string, number> = {};
  const proxy = new Proxy(base, {
    get(target, prop, recv) {
      const v = Reflect.get(target, prop, recv);
      if (typeof v !== 'function') return v;
      return (...args: unknown[]) => {
        counts[String(prop)] = (counts[String(prop)] ?? 0) + 1;
        return (v as (...a: unknown[]) => unknown).apply(target, args);
      };
    },
  });
  ak.installKernels(proxy);
  return { counts, restore: () => ak.installKernels(base) };
}

for (const backend of backends()) {
  describe(`autodiff on ${backend}`, () => {
    it('records nothing when no input requires grad', () => {
      ak.setBackend(backend);
      const a = ak.randn([3, 4]);
      const b = ak.randn([4, 2]);
      const y = ak.matmul(a, b).relu().sum();
      assert.equal(y.node, null);
      assert.equal(y.requiresGrad, false);
      assert.throws(() => y.backward(), /does not require grad/);
    });

    it('frozen weights get no gradient buffer and no weight-gradient GEMM', () => {
      const be = ak.setBackend(backend);
      const x = ak.randn([8, 4], { requiresGrad: true });
      const frozen = ak.randn([5, 4]);
      const trainable = ak.parameter(ak.randn([5, 4]));
      const { counts, restore } = countingKernels(be);
      try {
        const loss = ak.add(ak.linear(x, frozen), ak.linear(x, trainable)).square().sum();
        assert.equal(counts.matmul, 2);
        loss.backward();
      } finally {
        restore();
      }
      assert.equal(frozen.grad, null);
      assert.ok(trainable.grad);
      assert.ok(x.grad);
      // forward 2, backward: dx through both weights (2) + dW for the trainable one only (1)
      assert.equal(counts.matmul, 5);
    });

    it('noGrad records nothing and gradients accumulate across backward calls', () => {
      ak.setBackend(backend);
      const w = ak.parameter(ak.tensor([1, 2, 3]));
      const y = ak.noGrad(() => ak.mul(w, w).sum());
      assert.equal(y.node, null);
      ak.mul(w, w).sum().backward();
      ak.mul(w, w).sum().backward();
      assert.deepEqual(Array.from(w.grad!.toArray()), [4, 8, 12]);
    });

    it('handles a tensor used twice and gradients through views', () => {
      ak.setBackend(backend);
      const x = ak.tensor([1, 2, 3, 4, 5, 6], [2, 3], { requiresGrad: true });
      const t = ak.transpose(x);
      const y = ak.add(ak.mul(t, t), ak.narrow(t, 0, 1, 2).sum()).sum();
      y.backward();
      // y = Σ x² + 6 · Σ x[:, 1:3] (the narrowed sum is broadcast onto all 6 elements of t)
      assert.deepEqual(Array.from(x.grad!.toArray()), [2, 10, 12, 8, 16, 18]);
    });

    it('tidy disposes intermediates and keeps returned and kept tensors', () => {
      ak.setBackend(backend);
      const p = ak.parameter(ak.randn([4]));
      let inner: ak.Tensor | null = null;
      const out = ak.tidy(() => {
        inner = ak.mul(p, 2);
        return ak.add(inner, 1);
      });
      assert.equal(inner!.isDisposed, true);
      assert.equal(out.isDisposed, false);
      assert.equal(p.isDisposed, false);
      assert.throws(() => inner!.toArray(), /was disposed/);
    });

    it('keeps memory flat over 10,000 training steps of a tiny MLP', () => {
      ak.setBackend(backend);
      const rng = new ak.Rng(7);
      const w1 = ak.parameter(ak.randn([16, 8], { rng, std: 0.3 }));
      const b1 = ak.parameter(ak.zeros([16]));
      const w2 = ak.parameter(ak.randn([4, 16], { rng, std: 0.3 }));
      const b2 = ak.parameter(ak.zeros([4]));
      const params = [w1, b1, w2, b2];
      const x = ak.randn([32, 8], { rng }).keep();
      const y = ak.tensor(Array.from({ length: 32 }, (_, i) => i % 4), [32], { dtype: 'i32' }).keep();
      const step = (): number =>
        ak.tidy(() => {
          const h = ak.relu(ak.linear(x, w1, b1));
          const loss = ak.crossEntropy(ak.linear(h, w2, b2), y);
          loss.backward();
          ak.noGrad(() => {
            for (const p of params) {
              ak.assign(p, ak.sub(p, ak.mul(p.grad!, 0.05)));
              p.grad!.dispose();
              p.grad = null;
            }
          });
          return loss.item();
        });
      const first = step();
      for (let i = 0; i < 200; i++) step();
      const missesWarm = ak.bufferPool.misses;
      global.gc?.();
      const rssWarm = process.memoryUsage().rss;
      let last = 0;
      for (let i = 0; i < 10_000; i++) last = step();
      global.gc?.();
      const rssEnd = process.memoryUsage().rss;
      assert.ok(last < first * 0.5, `loss should fall: ${first} -> ${last}`);
      // after warm-up every buffer comes from the pool: no new allocations at all
      assert.equal(ak.bufferPool.misses, missesWarm, 'buffers were allocated after warm-up');
      assert.ok(rssEnd - rssWarm < 32 * 2 ** 20, `RSS grew by ${((rssEnd - rssWarm) / 2 ** 20).toFixed(1)} MiB`);
    });
  });
}
