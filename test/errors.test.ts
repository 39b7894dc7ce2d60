/** Bad input gets an error that names the op and the shapes, on every backend. */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import * as ak from '../src/index.js';
import { backends } from './helpers.js';

for (const backend of backends()) {
  describe(`argument errors on ${backend}`, () => {
    const cases: [string, () => unknown, RegExp][] = [
      ['matmul inner dims', () => ak.matmul(ak.zeros([2, 3]), ak.zeros([4, 5])), /^matmul: inner dimensions differ \(3 vs 4\): a \[2, 3\] b \[4, 5\]$/],
      ['matmul 1-D', () => ak.matmul(ak.zeros([3]), ak.zeros([3, 2])), /^matmul: both operands need at least 2 dimensions/],
      ['matmul batch', () => ak.matmul(ak.zeros([2, 3, 4]), ak.zeros([3, 4, 5])), /^matmul: shapes do not broadcast: a \[2\] b \[3\]$/],
      ['add broadcast', () => ak.add(ak.zeros([2, 3]), ak.zeros([4])), /^add: shapes do not broadcast: a \[2, 3\] b \[4\]$/],
      ['add dtype', () => ak.add(ak.zeros([2]), ak.zeros([2], { dtype: 'i32' })), /^add: b must be f32, got i32: b \[2\]$/],
      ['reshape size', () => ak.reshape(ak.zeros([2, 3]), [4, 2]), /^reshape: cannot reshape 6 elements: x \[2, 3\] shape \[4, 2\]$/],
      ['reshape two -1', () => ak.reshape(ak.zeros([2, 3]), [-1, -1]), /^reshape: at most one -1/],
      ['permute', () => ak.permute(ak.zeros([2, 3]), [0, 0]), /^permute: invalid permutation \[0,0\]: x \[2, 3\]$/],
      ['narrow range', () => ak.narrow(ak.zeros([2, 3]), 1, 2, 2), /^narrow: range 2\.\.4 outside dim 1 of size 3: x \[2, 3\]$/],
      ['axis range', () => ak.sum(ak.zeros([2, 3]), 2), /^sum: axis 2 out of range for a tensor with 2 dimensions$/],
      ['index range', () => ak.embedding(ak.zeros([4, 2]), ak.tensor([1, 4], [2], { dtype: 'i32' })), /^indexSelect: index 4 out of range for a dimension of size 4: index \[2\]$/],
      ['index dtype', () => ak.embedding(ak.zeros([4, 2]), ak.tensor([1, 2])), /^indexSelect: index must be i32 indices, got f32: index \[2\]$/],
      ['concat shapes', () => ak.concat([ak.zeros([2, 3]), ak.zeros([3, 3])], 1), /^concat: shapes\/dtypes differ outside dim 1: first \[2, 3\] other \[3, 3\]$/],
      ['rmsNorm weight', () => ak.rmsNorm(ak.zeros([2, 4]), ak.zeros([3])), /^rmsNorm: weight must be 1-D of the last dim: x \[2, 4\] w \[3\]$/],
      ['crossEntropy target', () => ak.crossEntropy(ak.zeros([2, 3]), ak.tensor([0, 3], [2], { dtype: 'i32' })), /^crossEntropy: target 3 out of range for 3 classes: logits \[2, 3\]$/],
      ['crossEntropy shapes', () => ak.crossEntropy(ak.zeros([2, 3]), ak.tensor([0], [1], { dtype: 'i32' })), /^crossEntropy: targets must have the shape of logits without the last dim: logits \[2, 3\] targets \[1\]$/],
      ['attention heads', () => ak.attention(ak.zeros([1, 3, 2, 4]), ak.zeros([1, 2, 2, 4]), ak.zeros([1, 2, 2, 4])), /^attention: q\/k\/v shapes disagree .*: q \[1, 3, 2, 4\] k \[1, 2, 2, 4\] v \[1, 2, 2, 4\]$/],
      ['rope tables', () => ak.rope(ak.zeros([1, 2, 4]), ak.zeros([2, 3]), ak.zeros([2, 3])), /^rope: cos\/sin must be \[T, D\/2\] \(or \[B, T, D\/2\] for x \[B, H, T, D\]\) and D even/],
      ['tensor size', () => ak.tensor([1, 2, 3], [2, 2]), /^tensor: 3 values do not fill the shape: shape \[2, 2\]$/],
      ['assign non-contiguous', () => ak.assign(ak.transpose(ak.zeros([2, 3])), ak.zeros([3, 2])), /^assign: destination must be contiguous: dst \[3, 2\]$/],
      ['buffer of a view', () => ak.transpose(ak.zeros([2, 3])).buffer(), /^buffer: tensor is not contiguous: shape \[3, 2\]$/],
      ['backward non-scalar', () => ak.mul(ak.zeros([2], { requiresGrad: true }), 2).backward(), /^backward: a gradient is needed for a non-scalar tensor of shape \[2\]$/],
    ];
    for (const [name, fn, re] of cases) {
      it(name, () => {
        ak.setBackend(backend);
        assert.throws(fn, (e: Error) => {
          assert.ok(e instanceof ak.AdaptkitError, `${name}: expected an AdaptkitError, got ${e}`);
          assert.match(e.message, re);
          return true;
        });
      });
    }
  });
}

for (const backend of backends()) {
  describe(`empty tensors on ${backend}`, () => {
    it('every op accepts zero-size dimensions and returns the right shape', () => {
      ak.setBackend(backend);
      const z = ak.zeros([0, 5], { requiresGrad: true });
      const cases: [() => ak.Tensor, number[]][] = [
        [() => ak.matmul(z, ak.zeros([5, 3])), [0, 3]],
        [() => ak.matmul(ak.zeros([2, 0]), ak.zeros([0, 3])), [2, 3]],
        [() => ak.softmax(z), [0, 5]],
        [() => ak.sum(z, 0), [5]],
        [() => ak.exp(z), [0, 5]],
        [() => ak.add(z, ak.zeros([5])), [0, 5]],
        [() => ak.rmsNorm(z, ak.ones([5])), [0, 5]],
        [() => ak.layerNorm(z, ak.ones([5]), ak.zeros([5])), [0, 5]],
        [() => ak.crossEntropy(z, ak.zeros([0], { dtype: 'i32' })), []],
        [() => ak.concat([z, z], 0), [0, 5]],
        [() => ak.contiguous(ak.transpose(z)), [5, 0]],
        [() => ak.attention(ak.zeros([1, 1, 0, 4]), ak.zeros([1, 1, 0, 4]), ak.zeros([1, 1, 0, 4])), [1, 1, 0, 4]],
        [() => ak.embedding(ak.zeros([3, 4]), ak.zeros([0], { dtype: 'i32' })), [0, 4]],
      ];
      for (const [fn, shape] of cases) {
        const t = fn();
        assert.deepEqual(t.shape, shape);
        if (t.requiresGrad) ak.sum(t).backward();
      }
      assert.deepEqual(z.grad!.shape, [0, 5]);
    });
  });
}
