import type { BinaryOp, CompareOp, StridedView, UnaryOp } from '../../tensor/index.js';
import { gelu, geluGrad, geluTanh, geluTanhGrad, sigmoid } from './math.js';

type Fn1 = (x: number) => number;

const UNARY: Record<UnaryOp, Fn1> = {
  neg: (x) => -x,
  exp: Math.exp,
  log: Math.log,
  sqrt: Math.sqrt,
  tanh: Math.tanh,
  sigmoid,
  relu: (x) => (x > 0 ? x : 0),
  gelu,
  gelu_tanh: geluTanh,
  silu: (x) => x * sigmoid(x),
  abs: Math.abs,
};

/** d f(x)/dx from x and y = f(x). */
const DERIV: Record<UnaryOp, (x: number, y: number) => number> = {
  neg: () => -1,
  exp: (_x, y) => y,
  log: (x) => 1 / x,
  sqrt: (_x, y) => 0.5 / y,
  tanh: (_x, y) => 1 - y * y,
  sigmoid: (_x, y) => y * (1 - y),
  relu: (x) => (x > 0 ? 1 : 0),
  gelu: geluGrad,
  gelu_tanh: geluTanhGrad,
  silu: (x) => {
    const s = sigmoid(x);
    return s * (1 + x * (1 - s));
  },
  abs: (x) => (x > 0 ? 1 : x < 0 ? -1 : 0),
};

export function unary(op: UnaryOp, x: Float32Array, out: Float32Array): void {
  const f = UNARY[op];
  for (let i = 0; i < x.length; i++) out[i] = f(x[i]!);
}

export function unaryBackward(op: UnaryOp, x: Float32Array, y: Float32Array, g: Float32Array, out: Float32Array): void {
  const d = DERIV[op];
  for (let i = 0; i < x.length; i++) out[i] = g[i]! * d(x[i]!, y[i]!);
}

const BINARY: Record<BinaryOp, (a: number, b: number) => number> = {
  add: (a, b) => a + b,
  sub: (a, b) => a - b,
  mul: (a, b) => a * b,
  div: (a, b) => a / b,
  max: (a, b) => (a >= b ? a : b),
  min: (a, b) => (a <= b ? a : b),
};

const COMPARE: Record<CompareOp, (a: number, b: number) => number> = {
  eq: (a, b) => (a === b ? 1 : 0),
  ne: (a, b) => (a !== b ? 1 : 0),
  lt: (a, b) => (a < b ? 1 : 0),
  le: (a, b) => (a <= b ? 1 : 0),
  gt: (a, b) => (a > b ? 1 : 0),
  ge: (a, b) => (a >= b ? 1 : 0),
};

/**
 * Visit every index of `shape` in row-major order, calling inner(len, offsets) once per innermost
 * row with the starting offset of each operand; the caller walks the row with each operand's last stride.
 */
export function forEachRow(
  shape: readonly number[],
  views: readonly { offset: number; strides: readonly number[] }[],
  inner: (len: number, offs: number[], lastStrides: number[], row: number) => void,
): void {
  const nd = shape.length;
  const nv = views.length;
  if (nd === 0) {
    inner(1, views.map((v) => v.offset), views.map(() => 0), 0);
    return;
  }
  for (const d of shape) if (d === 0) return;
  const len = shape[nd - 1]!;
  const last = views.map((v) => v.strides[nd - 1]!);
  const idx = new Array<number>(nd - 1).fill(0);
  const offs = views.map((v) => v.offset);
  let rows = 1;
  for (let i = 0; i < nd - 1; i++) rows *= shape[i]!;
  for (let r = 0; r < rows; r++) {
    inner(len, offs, last, r);
    for (let d = nd - 2; d >= 0; d--) {
      idx[d]!++;
      for (let v = 0; v < nv; v++) offs[v]! += views[v]!.strides[d]!;
      if (idx[d]! < shape[d]!) break;
      for (let v = 0; v < nv; v++) offs[v]! -= views[v]!.strides[d]! * shape[d]!;
      idx[d] = 0;
    }
  }
}

function binaryLike(
  f: (a: number, b: number) => number, shape: readonly number[], a: StridedView, b: StridedView, out: Float32Array,
): void {
  const ad = a.data;
  const bd = b.data;
  forEachRow(shape, [a, b], (len, offs, st, row) => {
    let ia = offs[0]!;
    let ib = offs[1]!;
    const sa = st[0]!;
    const sb = st[1]!;
    let o = row * len;
    for (let j = 0; j < len; j++, ia += sa, ib += sb) out[o++] = f(ad[ia]!, bd[ib]!);
  });
}

export function binary(op: BinaryOp, shape: readonly number[], a: StridedView, b: StridedView, out: Float32Array): void {
  binaryLike(BINARY[op], shape, a, b, out);
}

export function compare(op: CompareOp, shape: readonly number[], a: StridedView, b: StridedView, out: Float32Array): void {
  binaryLike(COMPARE[op], shape, a, b, out);
}

export function where(shape: readonly number[], cond: StridedView, a: StridedView, b: StridedView, out: Float32Array): void {
  const cd = cond.data;
  const ad = a.data;
  const bd = b.data;
  forEachRow(shape, [cond, a, b], (len, offs, st, row) => {
    let ic = offs[0]!;
    let ia = offs[1]!;
    let ib = offs[2]!;
    let o = row * len;
    for (let j = 0; j < len; j++, ic += st[0]!, ia += st[1]!, ib += st[2]!) out[o++] = cd[ic] !== 0 ? ad[ia]! : bd[ib]!;
  });
}

export function copy(shape: readonly number[], src: StridedView, dst: StridedView): void {
  const sd = src.data;
  const dd = dst.data;
  forEachRow(shape, [src, dst], (len, offs, st) => {
    let is = offs[0]!;
    let id = offs[1]!;
    const ss = st[0]!;
    const sdst = st[1]!;
    if (ss === 1 && sdst === 1) {
      dd.set(sd.subarray(is, is + len), id);
      return;
    }
    for (let j = 0; j < len; j++, is += ss, id += sdst) dd[id] = sd[is]!;
  });
}
