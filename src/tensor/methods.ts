/** Fluent methods on Tensor (`a.matmul(b).add(c)`), defined on the prototype over the functional ops. */
import { backward } from './autograd.js';
import * as C from './composite.js';
import * as O from './ops.js';
import { Tensor } from './tensor.js';

type Operand = Tensor | number;

declare module './tensor.js' {
  interface Tensor {
    add(b: Operand): Tensor;
    sub(b: Operand): Tensor;
    mul(b: Operand): Tensor;
    div(b: Operand): Tensor;
    neg(): Tensor;
    exp(): Tensor;
    log(): Tensor;
    sqrt(): Tensor;
    tanh(): Tensor;
    sigmoid(): Tensor;
    relu(): Tensor;
    silu(): Tensor;
    abs(): Tensor;
    square(): Tensor;
    sum(axes?: number | readonly number[], keepdim?: boolean): Tensor;
    mean(axes?: number | readonly number[], keepdim?: boolean): Tensor;
    max(axis?: number, keepdim?: boolean): Tensor;
    matmul(b: Tensor): Tensor;
    reshape(shape: readonly number[]): Tensor;
    permute(dims: readonly number[]): Tensor;
    transpose(d0?: number, d1?: number): Tensor;
    narrow(dim: number, start: number, length: number): Tensor;
    expand(shape: readonly number[]): Tensor;
    unsqueeze(dim: number): Tensor;
    squeeze(dim: number): Tensor;
    contiguous(): Tensor;
    clone(): Tensor;
    detach(): Tensor;
    softmax(): Tensor;
    logSoftmax(): Tensor;
    backward(grad?: Tensor): void;
    /** A copy of the values as a flat typed array (row-major). */
    toArray(): Float32Array | Int32Array;
    /** The value of a one-element tensor. */
    item(): number;
    /** Nested arrays, for printing and tests. */
    toNested(): unknown;
  }
}

const P = Tensor.prototype;
P.add = function (b) { return C.add(this, b); };
P.sub = function (b) { return C.sub(this, b); };
P.mul = function (b) { return C.mul(this, b); };
P.div = function (b) { return C.div(this, b); };
P.neg = function () { return C.neg(this); };
P.exp = function () { return C.exp(this); };
P.log = function () { return C.log(this); };
P.sqrt = function () { return C.sqrt(this); };
P.tanh = function () { return C.tanh(this); };
P.sigmoid = function () { return C.sigmoid(this); };
P.relu = function () { return C.relu(this); };
P.silu = function () { return C.silu(this); };
P.abs = function () { return C.abs(this); };
P.square = function () { return C.square(this); };
P.sum = function (axes, keepdim) { return O.sum(this, axes, keepdim); };
P.mean = function (axes, keepdim) { return C.mean(this, axes, keepdim); };
P.max = function (axis, keepdim) { return O.max(this, axis, keepdim); };
P.matmul = function (b) { return O.matmul(this, b); };
P.reshape = function (shape) { return O.reshape(this, shape); };
P.permute = function (dims) { return O.permute(this, dims); };
P.transpose = function (d0, d1) { return C.transpose(this, d0, d1); };
P.narrow = function (dim, start, length) { return O.narrow(this, dim, start, length); };
P.expand = function (shape) { return O.expand(this, shape); };
P.unsqueeze = function (dim) { return C.unsqueeze(this, dim); };
P.squeeze = function (dim) { return C.squeeze(this, dim); };
P.contiguous = function () { return O.contiguous(this); };
P.clone = function () { return O.clone(this); };
P.detach = function () { return O.detach(this); };
P.softmax = function () { return O.softmax(this); };
P.logSoftmax = function () { return O.logSoftmax(this); };
P.backward = function (grad) { backward(this, grad); };
P.toArray = function () {
  const c = O.contiguousCopy(this);
  const out = c.buffer().slice();
  c.dispose();
  return out;
};
P.item = function () {
  if (this.size !== 1) throw new Error(`item: tensor has ${this.size} elements, not 1`);
  return this.storage.data[this.offset]!;
};
P.toNested = function () {
  const flat = Array.from(this.toArray());
  const build = (dim: number, at: number): unknown => {
    if (dim === this.ndim) return flat[at];
    const stride = this.shape.slice(dim + 1).reduce((p, q) => p * q, 1);
    return Array.from({ length: this.shape[dim]! }, (_, i) => build(dim + 1, at + i * stride));
  };
  return build(0, 0);
};
