/**
 * The primitive ops: each validates its arguments (errors name the op and the shapes), runs one or
 * a few kernels, and records a node for autodiff when an input requires grad. Their VJP rules all
 * live in vjp.ts. Everything else (composite.ts) is built from these.
 */
import { needsRecord, record } from './autograd.js';
import { full, scalar } from './create.js';
import { opError } from './errors.js';
import {
  type BinaryOp, type CompareOp, type PackedWeight, type UnaryOp, BINARY_OPS, COMPARE_OPS, UNARY_OPS, kernels,
} from './kernels.js';
import {
  type Shape, broadcastShapes, broadcastStrides, contiguousStrides, normAxis, numel, sameShape,
} from './shape.js';
import { Tensor, empty, makeView } from './tensor.js';

export { onesLike, zerosLike } from './create.js';

type Operand = Tensor | number;

function f32(op: string, t: Tensor, name = 'x'): void {
  if (t.dtype !== 'f32') throw opError(op, `${name} must be f32, got ${t.dtype}`, { [name]: t.shape });
}

function i32(op: string, t: Tensor, name: string): void {
  if (t.dtype !== 'i32') throw opError(op, `${name} must be i32 indices, got ${t.dtype}`, { [name]: t.shape });
}

function asTensor(x: Operand): Tensor {
  return typeof x === 'number' ? scalar(x) : x;
}

function f32buf(t: Tensor): Float32Array {
  return t.buffer() as Float32Array;
}

/** `t` itself when contiguous, else a contiguous copy (no autodiff record: callers record). */
export function contiguousCopy(t: Tensor): Tensor {
  const out = empty(t.shape, t.dtype);
  kernels().copy(t.shape, t.view(), out.view());
  return out;
}

function contig(t: Tensor): Tensor {
  return t.isContiguous() ? t : contiguousCopy(t);
}

function drop(tmp: Tensor, orig: Tensor): void {
  if (tmp !== orig) tmp.dispose();
}

// ---------- elementwise ----------

export function unary(op: UnaryOp, x: Tensor): Tensor {
  if (!UNARY_OPS.includes(op)) throw opError('unary', `unknown op ${op}`);
  f32(op, x);
  const xc = contig(x);
  const out = empty(x.shape);
  kernels().unary(op, f32buf(xc), f32buf(out));
  if (needsRecord([x])) record(out, op, [x], { x: xc, y: out });
  else drop(xc, x);
  return out;
}

export function binary(op: BinaryOp, a: Operand, b: Operand): Tensor {
  if (!BINARY_OPS.includes(op)) throw opError('binary', `unknown op ${op}`);
  const ta = asTensor(a);
  const tb = asTensor(b);
  f32(op, ta, 'a');
  f32(op, tb, 'b');
  const shape = broadcastShapes(op, ta.shape, tb.shape);
  const out = empty(shape);
  kernels().binary(op, shape, bview(ta, shape), bview(tb, shape), f32buf(out));
  return record(out, op, [ta, tb], { a: ta, b: tb });
}

function bview(t: Tensor, shape: Shape) {
  return { data: t.storage.data, offset: t.offset, strides: broadcastStrides(t.shape, t.strides, shape) };
}

/** dst += src in place (dst contiguous, src broadcastable to dst). Not recorded: for gradient accumulation. */
export function addInto(dst: Tensor, src: Tensor): void {
  f32('addInto', dst, 'dst');
  f32('addInto', src, 'src');
  if (!dst.isContiguous()) throw opError('addInto', 'destination must be contiguous', { dst: dst.shape });
  const shape = broadcastShapes('addInto', dst.shape, src.shape);
  if (!sameShape(shape, dst.shape)) throw opError('addInto', 'source does not broadcast to destination', { dst: dst.shape, src: src.shape });
  kernels().binary('add', shape, dst.view(), bview(src, shape), f32buf(dst));
}

/** Elementwise comparison, a 0/1 f32 mask. Not differentiable. */
export function compare(op: CompareOp, a: Operand, b: Operand): Tensor {
  if (!COMPARE_OPS.includes(op)) throw opError('compare', `unknown op ${op}`);
  const ta = asTensor(a);
  const tb = asTensor(b);
  f32(op, ta, 'a');
  f32(op, tb, 'b');
  const shape = broadcastShapes(op, ta.shape, tb.shape);
  const out = empty(shape);
  kernels().compare(op, shape, bview(ta, shape), bview(tb, shape), f32buf(out));
  return out;
}

/** cond != 0 ? a : b, broadcasting all three. cond is a mask and gets no gradient. */
export function where(cond: Tensor, a: Operand, b: Operand): Tensor {
  const ta = asTensor(a);
  const tb = asTensor(b);
  f32('where', cond, 'cond');
  f32('where', ta, 'a');
  f32('where', tb, 'b');
  const shape = broadcastShapes('where', broadcastShapes('where', cond.shape, ta.shape), tb.shape);
  const out = empty(shape);
  kernels().where(shape, bview(cond, shape), bview(ta, shape), bview(tb, shape), f32buf(out));
  return record(out, 'where', [ta, tb], { cond });
}

// ---------- reductions ----------

function reduceAxes(op: string, x: Tensor, axes: number | readonly number[] | undefined): number[] {
  if (axes === undefined) return x.shape.map((_, i) => i);
  const list = typeof axes === 'number' ? [axes] : [...axes];
  const norm = list.map((a) => normAxis(op, a, x.ndim));
  if (new Set(norm).size !== norm.length) throw opError(op, `repeated axis in ${JSON.stringify(list)}`, { x: x.shape });
  return norm.sort((p, q) => p - q);
}

function keptShape(shape: Shape, axes: readonly number[]): number[] {
  return shape.map((d, i) => (axes.includes(i) ? 1 : d));
}

function reduceOnce(kind: 'sum' | 'max', x: Tensor, axis: number): Tensor {
  const outer = numel(x.shape.slice(0, axis));
  const n = x.shape[axis]!;
  const inner = numel(x.shape.slice(axis + 1));
  const out = empty(keptShape(x.shape, [axis]));
  if (kind === 'max' && n === 0) throw opError('max', 'cannot reduce an empty dimension', { x: x.shape });
  kernels()[kind](f32buf(x), outer, n, inner, f32buf(out));
  return out;
}

/** Sum over `axes` (all when omitted). */
export function sum(x: Tensor, axes?: number | readonly number[], keepdim = false): Tensor {
  f32('sum', x);
  const ax = reduceAxes('sum', x, axes);
  let cur = contig(x);
  let owned = cur !== x;
  // reduce runs of adjacent axes in one pass each, from the last so earlier axis numbers stay valid
  for (let i = ax.length - 1; i >= 0; ) {
    let j = i;
    while (j > 0 && ax[j - 1] === ax[j]! - 1) j--;
    const first = ax[j]!;
    const last = ax[i]!;
    const merged = [...cur.shape.slice(0, first), numel(cur.shape.slice(first, last + 1)), ...cur.shape.slice(last + 1)];
    const flat = makeView(cur, merged, contiguousStrides(merged), cur.offset);
    const red = reduceOnce('sum', flat, first);
    flat.dispose();
    const nextShape = cur.shape.map((d, k) => (k >= first && k <= last ? 1 : d));
    const next = makeView(red, nextShape, contiguousStrides(nextShape), 0);
    red.dispose();
    if (owned) cur.dispose();
    cur = next;
    owned = true;
    i = j - 1;
  }
  const shape = keepdim ? keptShape(x.shape, ax) : x.shape.filter((_, i) => !ax.includes(i));
  const src = owned ? cur : contiguousCopy(x);
  const out = makeView(src, shape, contiguousStrides(shape), src.offset);
  src.dispose();
  return record(out, 'sum', [x], { axes: ax, keepdim });
}

/** Maximum along one axis (the gradient goes to every position equal to the maximum). */
export function max(x: Tensor, axis = -1, keepdim = false): Tensor {
  f32('max', x);
  const a = normAxis('max', axis, x.ndim);
  const xc = contig(x);
  const red = x.ndim === 0 ? contiguousCopy(xc) : reduceOnce('max', xc, a);
  const shape = keepdim || x.ndim === 0 ? red.shape : x.shape.filter((_, i) => i !== a);
  const out = makeView(red, shape, contiguousStrides(shape), 0);
  red.dispose();
  if (needsRecord([x])) record(out, 'reduceMax', [x], { x: xc, axis: a, keepdim });
  else drop(xc, x);
  return out;
}

// ---------- matmul ----------

interface MatOperand {
  t: Tensor;
  ld: number;
  trans: boolean;
  batchStride: number;
}

/** Express t [...batch, r, c] (batch broadcast to `batch`) as strided matrices, copying only if needed. */
function asMatrices(t: Tensor, batch: Shape): MatOperand {
  const nd = t.ndim;
  const r = t.shape[nd - 2]!;
  const c = t.shape[nd - 1]!;
  const bShape = t.shape.slice(0, nd - 2);
  const bStrides = broadcastStrides(bShape, t.strides.slice(0, nd - 2), batch);
  let batchStride = 0;
  let ok = true;
  // the batch dims must collapse into one stride (or all broadcast)
  let expect = -1;
  for (let i = batch.length - 1; i >= 0; i--) {
    const d = batch[i]!;
    const s = bStrides[i]!;
    if (d === 1) continue;
    if (expect === -1) {
      batchStride = s;
      expect = s * d;
    } else if (s === expect || (s === 0 && batchStride === 0)) {
      expect = s * d;
    } else {
      ok = false;
    }
  }
  const sr = t.strides[nd - 2]!;
  const sc = t.strides[nd - 1]!;
  if (ok && (sc === 1 || c === 1)) return { t, ld: r === 1 ? Math.max(c, 1) : sr, trans: false, batchStride };
  if (ok && (sr === 1 || r === 1)) return { t, ld: c === 1 ? Math.max(r, 1) : sc, trans: true, batchStride };
  // materialize the broadcast batch as one contiguous block, which always collapses
  const shape = [...batch, r, c];
  const expanded = makeView(t, shape, broadcastStrides(t.shape, t.strides, shape), t.offset);
  const copy = contiguousCopy(expanded);
  expanded.dispose();
  return asMatrices(copy, batch);
}

/**
 * Matrix product over the last two dims with broadcast batch dims: a [..., M, K] · b [..., K, N].
 * Transposed views are read in place, never copied.
 */
export function matmul(a: Tensor, b: Tensor): Tensor {
  return record(matmulForward('matmul', a, b), 'matmul', [a, b], { a, b });
}

/** The product itself (unrecorded); `out` is written when given (accumulate adds to it). */
function matmulForward(op: string, a: Tensor, b: Tensor, into?: { out: Tensor; accumulate: boolean }): Tensor {
  f32(op, a, 'a');
  f32(op, b, 'b');
  if (a.ndim < 2 || b.ndim < 2) throw opError(op, 'both operands need at least 2 dimensions', { a: a.shape, b: b.shape });
  const m = a.shape[a.ndim - 2]!;
  const k = a.shape[a.ndim - 1]!;
  const k2 = b.shape[b.ndim - 2]!;
  const n = b.shape[b.ndim - 1]!;
  if (k !== k2) throw opError(op, `inner dimensions differ (${k} vs ${k2})`, { a: a.shape, b: b.shape });
  const batch = broadcastShapes(op, a.shape.slice(0, -2), b.shape.slice(0, -2));
  const outShape = [...batch, m, n];
  if (into && (!sameShape(into.out.shape, outShape) || !into.out.isContiguous())) {
    throw opError(op, 'the output does not have the product\'s shape', { out: into.out.shape, a: a.shape, b: b.shape });
  }
  const out = into ? into.out : empty(outShape);
  const accumulate = into?.accumulate ?? false;
  const nb = numel(batch);
  if (numel(outShape) > 0) {
    if (k === 0) {
      if (!accumulate) out.buffer().fill(0);
    } else {
      // a [..., M, K] against a single matrix b: fold the batch into M (one big GEMM)
      const foldA = b.ndim === 2 && a.ndim > 2 && a.isContiguous();
      const A = foldA ? asMatrices(makeView(a, [nb * m, k], [k, 1], a.offset), []) : asMatrices(a, batch);
      const B = asMatrices(b, foldA ? [] : batch);
      kernels().matmul({
        a: subFrom(A.t), b: subFrom(B.t), out: f32buf(out),
        batch: foldA ? 1 : nb, m: foldA ? nb * m : m, n, k,
        lda: A.ld, ldb: B.ld, transA: A.trans, transB: B.trans,
        strideA: A.batchStride, strideB: B.batchStride, accumulate,
      });
      if (A.t !== a) A.t.dispose();
      if (B.t !== b) B.t.dispose();
    }
  }
  return out;
}

/**
 * y = x · Wᵀ (+ b) for W [out, in], as one op: the bias goes into the GEMM's output in place, so
 * no intermediate is kept. A transposed view of W is read without a copy.
 */
export function linear(x: Tensor, w: Tensor, b?: Tensor | null): Tensor {
  if (w.ndim !== 2 || x.ndim < 1 || x.shape[x.ndim - 1] !== w.shape[1]) {
    throw opError('linear', 'x [..., in] and W [out, in] disagree', { x: x.shape, w: w.shape });
  }
  if (b && (b.ndim !== 1 || b.shape[0] !== w.shape[0])) throw opError('linear', 'bias must be [out]', { w: w.shape, b: b.shape });
  const x2 = x.ndim === 1 ? makeView(x, [1, x.shape[0]!], [x.strides[0]!, 1], x.offset) : x;
  const wt = makeView(w, [w.shape[1]!, w.shape[0]!], [w.strides[1]!, w.strides[0]!], w.offset);
  let y = matmulForward('linear', x2, wt);
  wt.dispose();
  if (b) {
    f32('linear', b, 'b');
    kernels().binary('add', y.shape, y.view(), bview(b, y.shape), f32buf(y));
  }
  if (x2 !== x) {
    const y1 = makeView(y, [w.shape[0]!], [1], 0);
    y.dispose();
    x2.dispose();
    y = y1;
  }
  return record(y, 'linear', b ? [x, w, b] : [x, w], { x, w });
}

/**
 * y = x · Wᵀ (+ b) for a packed weight W [out, in] (a quantized base layer): the kernel computes on
 * the packed form. W is frozen by construction, so the op records a gradient for x and b only,
 * and no weight-gradient product is ever run.
 */
export function quantLinear(x: Tensor, w: PackedWeight, b?: Tensor | null, opts: { threshold?: number } = {}): Tensor {
  f32('quantLinear', x);
  if (w.shape.length !== 2) throw opError('quantLinear', `the packed weight${w.name ? ` ${w.name}` : ''} must be [out, in], got [${w.shape.join(', ')}]`, { x: x.shape });
  const [n, k] = w.shape as [number, number];
  if (x.ndim < 1 || x.shape[x.ndim - 1] !== k) throw opError('quantLinear', 'x [..., in] and W [out, in] disagree', { x: x.shape, w: w.shape });
  if (b) {
    f32('quantLinear', b, 'b');
    if (b.ndim !== 1 || b.shape[0] !== n) throw opError('quantLinear', 'bias must be [out]', { w: w.shape, b: b.shape });
  }
  const threshold = opts.threshold ?? 0;
  if (!(threshold >= 0)) throw opError('quantLinear', `threshold must be a number >= 0, got ${threshold}`);
  const xc = contig(x);
  const m = x.size / k;
  const out = empty([...x.shape.slice(0, -1), n]);
  runQuantMatmul(f32buf(xc), m, w, f32buf(out), false, threshold);
  drop(xc, x);
  if (b) kernels().binary('add', out.shape, out.view(), bview(b, out.shape), f32buf(out));
  return record(out, 'quantLinear', b ? [x, b] : [x], { w });
}

/** g [..., out] · W [out, in] on the packed form: the input gradient of quantLinear (unrecorded). */
export function quantLinearBackward(g: Tensor, w: PackedWeight): Tensor {
  f32('quantLinearBackward', g, 'g');
  const [n, k] = w.shape as [number, number];
  if (g.ndim < 1 || g.shape[g.ndim - 1] !== n) throw opError('quantLinearBackward', 'g [..., out] and W [out, in] disagree', { g: g.shape, w: w.shape });
  const gc = contig(g);
  const out = empty([...g.shape.slice(0, -1), k]);
  runQuantMatmul(f32buf(gc), g.size / n, w, f32buf(out), true, 0);
  drop(gc, g);
  return out;
}

function runQuantMatmul(x: Float32Array, m: number, w: PackedWeight, out: Float32Array, transpose: boolean, threshold: number): void {
  const k = kernels();
  if (typeof k.quantMatmul !== 'function') throw opError('quantLinear', `quantMatmul has no kernel on ${k.name}`);
  k.quantMatmul({ x, m, w, out, transpose, threshold });
}

/** y + a · b (b 2-D) as one op: the product accumulates into a copy of y, no intermediate is kept. */
export function addmm(y: Tensor, a: Tensor, b: Tensor): Tensor {
  f32('addmm', y, 'y');
  if (b.ndim !== 2 || a.ndim < 2) throw opError('addmm', 'a must be [..., k] and b [k, n]', { a: a.shape, b: b.shape });
  const out = contiguousCopy(y);
  const outShape = [...a.shape.slice(0, -1), b.shape[1]!];
  if (!sameShape(outShape, y.shape)) throw opError('addmm', 'y must have the shape of a · b', { y: y.shape, a: a.shape, b: b.shape });
  matmulForward('addmm', a, b, { out, accumulate: true });
  return record(out, 'addmm', [y, a, b], { a, b });
}


function subFrom(t: Tensor): Float32Array {
  const d = t.storage.data as Float32Array;
  return t.offset === 0 ? d : d.subarray(t.offset);
}

// ---------- indexing ----------

function checkIndices(op: string, idx: Tensor, size: number): Int32Array {
  i32(op, idx, 'index');
  const ic = idx.isContiguous() ? (idx.buffer() as Int32Array) : (contiguousCopy(idx).buffer() as Int32Array);
  for (let i = 0; i < ic.length; i++) {
    const v = ic[i]!;
    if (v < 0 || v >= size) throw opError(op, `index ${v} out of range for a dimension of size ${size}`, { index: idx.shape });
  }
  return ic;
}

/** Rows of x along `dim` at the indices `idx` (any shape): out shape replaces dim by idx.shape. */
export function indexSelect(x: Tensor, dim: number, idx: Tensor): Tensor {
  const d = normAxis('indexSelect', dim, x.ndim);
  const ids = checkIndices('indexSelect', idx, x.shape[d]!);
  const xc = contig(x);
  const outer = numel(x.shape.slice(0, d));
  const inner = numel(x.shape.slice(d + 1));
  const outShape = [...x.shape.slice(0, d), ...idx.shape, ...x.shape.slice(d + 1)];
  const out = empty(outShape, x.dtype);
  kernels().indexSelect(xc.buffer(), outer, x.shape[d]!, inner, ids, out.buffer());
  drop(xc, x);
  return record(out, 'indexSelect', [x], { dim: d, idx, shape: x.shape });
}

/** x with src added at the indices idx along dim (out[..., idx[j], ...] += src[..., j, ...]). */
export function indexAdd(x: Tensor, dim: number, idx: Tensor, src: Tensor): Tensor {
  f32('indexAdd', x);
  f32('indexAdd', src, 'src');
  const d = normAxis('indexAdd', dim, x.ndim);
  const ids = checkIndices('indexAdd', idx, x.shape[d]!);
  const expect = [...x.shape.slice(0, d), ...idx.shape, ...x.shape.slice(d + 1)];
  if (!sameShape(src.shape, expect)) throw opError('indexAdd', 'src shape must be x shape with dim replaced by index shape', { x: x.shape, index: idx.shape, src: src.shape });
  const out = contiguousCopy(x);
  const sc = contig(src);
  kernels().indexAdd(f32buf(sc), numel(x.shape.slice(0, d)), x.shape[d]!, numel(x.shape.slice(d + 1)), ids, f32buf(out));
  drop(sc, src);
  return record(out, 'indexAdd', [x, src], { dim: d, idx });
}

// ---------- shape and views ----------

export function concat(xs: readonly Tensor[], dim = 0): Tensor {
  if (xs.length === 0) throw opError('concat', 'needs at least one tensor');
  const first = xs[0]!;
  const d = normAxis('concat', dim, first.ndim);
  let total = 0;
  for (const x of xs) {
    if (x.dtype !== first.dtype || x.ndim !== first.ndim || x.shape.some((s, i) => i !== d && s !== first.shape[i])) {
      throw opError('concat', `shapes/dtypes differ outside dim ${d}`, { first: first.shape, other: x.shape });
    }
    total += x.shape[d]!;
  }
  const shape = first.shape.slice();
  shape[d] = total;
  const out = empty(shape, first.dtype);
  const strides = contiguousStrides(shape);
  let at = 0;
  for (const x of xs) {
    kernels().copy(x.shape, x.view(), { data: out.storage.data, offset: at * strides[d]!, strides });
    at += x.shape[d]!;
  }
  return record(out, 'concat', xs.slice(), { dim: d, sizes: xs.map((x) => x.shape[d]!) });
}

/** A view with a new shape (one -1 is inferred); copies only when the strides cannot express it. */
export function reshape(x: Tensor, shape: readonly number[]): Tensor {
  const s = shape.slice();
  const neg = s.indexOf(-1);
  if (neg !== s.lastIndexOf(-1)) throw opError('reshape', 'at most one -1', { x: x.shape, shape });
  if (neg >= 0) {
    const rest = numel(s.filter((_, i) => i !== neg));
    if (rest === 0 || x.size % rest !== 0) throw opError('reshape', 'cannot infer -1', { x: x.shape, shape });
    s[neg] = x.size / rest;
  }
  if (s.some((v) => !Number.isInteger(v) || v < 0) || numel(s) !== x.size) {
    throw opError('reshape', `cannot reshape ${x.size} elements`, { x: x.shape, shape });
  }
  const src = contig(x);
  const out = makeView(src, s, contiguousStrides(s), src.offset);
  drop(src, x);
  return record(out, 'reshape', [x], { shape: x.shape });
}

export function permute(x: Tensor, dims: readonly number[]): Tensor {
  const nd = x.ndim;
  const norm = dims.map((d) => normAxis('permute', d, nd));
  if (norm.length !== nd || new Set(norm).size !== nd) throw opError('permute', `invalid permutation ${JSON.stringify(dims)}`, { x: x.shape });
  const out = makeView(x, norm.map((d) => x.shape[d]!), norm.map((d) => x.strides[d]!), x.offset);
  return record(out, 'permute', [x], { dims: norm });
}

/** Elements start..start+length-1 along dim, as a view. */
export function narrow(x: Tensor, dim: number, start: number, length: number): Tensor {
  const d = normAxis('narrow', dim, x.ndim);
  const size = x.shape[d]!;
  if (!Number.isInteger(start) || !Number.isInteger(length) || start < 0 || length < 0 || start + length > size) {
    throw opError('narrow', `range ${start}..${start + length} outside dim ${d} of size ${size}`, { x: x.shape });
  }
  const shape = x.shape.slice();
  shape[d] = length;
  const out = makeView(x, shape, x.strides, x.offset + start * x.strides[d]!);
  return record(out, 'narrow', [x], { dim: d, start, shape: x.shape });
}

/** Zeros of `shape` with g written at start..start+len along dim: the adjoint of narrow. */
export function padNarrow(g: Tensor, shape: readonly number[], dim: number, start: number): Tensor {
  f32('padNarrow', g);
  const out = full(shape, 0);
  const strides = contiguousStrides(shape);
  kernels().copy(g.shape, g.view(), { data: out.storage.data, offset: start * strides[dim]!, strides });
  return record(out, 'padNarrow', [g], { dim, start });
}

/** Broadcast view to a larger shape (stride 0 on expanded dims). */
export function expand(x: Tensor, shape: readonly number[]): Tensor {
  const target = broadcastShapes('expand', x.shape, shape);
  if (!sameShape(target, shape)) throw opError('expand', 'cannot expand', { x: x.shape, shape });
  const out = makeView(x, shape, broadcastStrides(x.shape, x.strides, shape), x.offset);
  return record(out, 'expand', [x], { shape: x.shape });
}

/** A contiguous tensor with the same values (x itself if already contiguous). */
export function contiguous(x: Tensor): Tensor {
  if (x.isContiguous()) return x;
  return record(contiguousCopy(x), 'copy', [x]);
}

/** Always a fresh copy. */
export function clone(x: Tensor): Tensor {
  return record(contiguousCopy(x), 'copy', [x]);
}

/** The same values with no autodiff history. */
export function detach(x: Tensor): Tensor {
  return makeView(x, x.shape, x.strides, x.offset);
}

// ---------- fused neural-network primitives ----------

function rowsOf(x: Tensor): number {
  return x.ndim === 0 ? 1 : x.size / x.shape[x.ndim - 1]!;
}

function lastDim(x: Tensor): number {
  return x.ndim === 0 ? 1 : x.shape[x.ndim - 1]!;
}

export function softmax(x: Tensor, log = false): Tensor {
  const op = log ? 'logSoftmax' : 'softmax';
  f32(op, x);
  const xc = contig(x);
  const out = empty(x.shape);
  kernels().softmax(f32buf(xc), rowsOf(x), lastDim(x), f32buf(out), log);
  drop(xc, x);
  return record(out, op, [x], { y: out });
}

export function logSoftmax(x: Tensor): Tensor {
  return softmax(x, true);
}

/** RMSNorm over the last dim: x / sqrt(mean(x²) + eps) * w. */
export function rmsNorm(x: Tensor, w: Tensor, eps = 1e-6): Tensor {
  f32('rmsNorm', x);
  f32('rmsNorm', w, 'w');
  const c = lastDim(x);
  if (w.ndim !== 1 || w.shape[0] !== c) throw opError('rmsNorm', 'weight must be 1-D of the last dim', { x: x.shape, w: w.shape });
  const xc = contig(x);
  const wc = contig(w);
  const out = empty(x.shape);
  const rstd = empty([rowsOf(x)]);
  kernels().rmsnorm(f32buf(xc), f32buf(wc), rowsOf(x), c, eps, f32buf(out), f32buf(rstd));
  if (needsRecord([x, w])) return record(out, 'rmsNorm', [x, w], { x: xc, w: wc, rstd });
  drop(xc, x);
  drop(wc, w);
  rstd.dispose();
  return out;
}

/** LayerNorm over the last dim with weight and bias. */
export function layerNorm(x: Tensor, w: Tensor, b: Tensor, eps = 1e-5): Tensor {
  f32('layerNorm', x);
  f32('layerNorm', w, 'w');
  f32('layerNorm', b, 'b');
  const c = lastDim(x);
  if (w.ndim !== 1 || w.shape[0] !== c || b.ndim !== 1 || b.shape[0] !== c) {
    throw opError('layerNorm', 'weight and bias must be 1-D of the last dim', { x: x.shape, w: w.shape, b: b.shape });
  }
  const xc = contig(x);
  const wc = contig(w);
  const bc = contig(b);
  const rows = rowsOf(x);
  const out = empty(x.shape);
  const mean = empty([rows]);
  const rstd = empty([rows]);
  kernels().layernorm(f32buf(xc), f32buf(wc), f32buf(bc), rows, c, eps, f32buf(out), f32buf(mean), f32buf(rstd));
  drop(bc, b);
  if (needsRecord([x, w, b])) return record(out, 'layerNorm', [x, w, b], { x: xc, w: wc, mean, rstd });
  drop(xc, x);
  drop(wc, w);
  mean.dispose();
  rstd.dispose();
  return out;
}

export type Reduction = 'mean' | 'sum' | 'none';

/**
 * Cross-entropy of logits [..., V] against i32 targets [...]. Rows whose target is ignoreIndex
 * count for nothing; 'mean' divides by the number of counted rows (0 when none are counted).
 */
export function crossEntropy(
  logits: Tensor, targets: Tensor, opts: { ignoreIndex?: number; reduction?: Reduction } = {},
): Tensor {
  f32('crossEntropy', logits, 'logits');
  i32('crossEntropy', targets, 'targets');
  const ignoreIndex = opts.ignoreIndex ?? -100;
  const reduction = opts.reduction ?? 'mean';
  const v = lastDim(logits);
  const rows = rowsOf(logits);
  if (logits.ndim < 1 || !sameShape(targets.shape, logits.shape.slice(0, -1))) {
    throw opError('crossEntropy', 'targets must have the shape of logits without the last dim', { logits: logits.shape, targets: targets.shape });
  }
  const tc = contig(targets);
  const t = tc.buffer() as Int32Array;
  let counted = 0;
  for (let i = 0; i < t.length; i++) {
    const y = t[i]!;
    if (y === ignoreIndex) continue;
    if (y < 0 || y >= v) throw opError('crossEntropy', `target ${y} out of range for ${v} classes`, { logits: logits.shape });
    counted++;
  }
  const lc = contig(logits);
  const loss = empty([rows]);
  const lse = empty([rows]);
  kernels().crossEntropy(f32buf(lc), t, rows, v, ignoreIndex, f32buf(loss), f32buf(lse));
  let out: Tensor;
  if (reduction === 'none') {
    out = makeView(loss, targets.shape, contiguousStrides(targets.shape), 0);
  } else {
    const buf = f32buf(loss);
    let s = 0;
    for (let i = 0; i < rows; i++) s += buf[i]!;
    out = scalar(reduction === 'mean' ? (counted > 0 ? s / counted : 0) : s);
  }
  loss.dispose();
  if (needsRecord([logits])) {
    return record(out, 'crossEntropy', [logits], { logits: lc, targets: tc, lse, ignoreIndex, reduction, counted });
  }
  drop(lc, logits);
  drop(tc, targets);
  lse.dispose();
  return out;
}

export interface AttentionOptions {
  causal?: boolean;
  /** [B, Tk], 1 for real keys, 0 for padding. */
  keyMask?: Tensor | null;
  /** Defaults to 1/sqrt(D). */
  scale?: number;
}

/** Fused scaled-dot-product attention: q [B, H, Tq, D], k/v [B, Hkv, Tk, D] → [B, H, Tq, D]. */
export function attention(q: Tensor, k: Tensor, v: Tensor, opts: AttentionOptions = {}): Tensor {
  for (const [name, t] of [['q', q], ['k', k], ['v', v]] as const) {
    f32('attention', t, name);
    if (t.ndim !== 4) throw opError('attention', `${name} must be 4-D [B, H, T, D]`, { q: q.shape, k: k.shape, v: v.shape });
  }
  const [B, H, Tq, D] = q.shape as [number, number, number, number];
  const [Bk, Hkv, Tk, Dk] = k.shape as [number, number, number, number];
  if (Bk !== B || Dk !== D || !sameShape(k.shape, v.shape) || Hkv === 0 || H % Hkv !== 0) {
    throw opError('attention', 'q/k/v shapes disagree (batch, head dim, or heads not a multiple of kv heads)', { q: q.shape, k: k.shape, v: v.shape });
  }
  const causal = opts.causal ?? false;
  if (causal && Tq > Tk) throw opError('attention', 'causal attention needs at least as many keys as queries', { q: q.shape, k: k.shape });
  let mask: Tensor | null = null;
  if (opts.keyMask) {
    f32('attention', opts.keyMask, 'keyMask');
    if (!sameShape(opts.keyMask.shape, [B, Tk])) throw opError('attention', 'keyMask must be [B, Tk]', { keyMask: opts.keyMask.shape, k: k.shape });
    mask = contig(opts.keyMask);
  }
  const qc = contig(q);
  const kc = contig(k);
  const vc = contig(v);
  const out = empty(q.shape);
  const lse = empty([B, H, Tq]);
  const scale = opts.scale ?? 1 / Math.sqrt(D);
  const args = {
    q: f32buf(qc), k: f32buf(kc), v: f32buf(vc), batch: B, heads: H, kvHeads: Hkv, tq: Tq, tk: Tk, dim: D,
    scale, causal, keyMask: mask ? f32buf(mask) : null, out: f32buf(out), lse: f32buf(lse),
  };
  kernels().attention(args);
  if (needsRecord([q, k, v])) {
    return record(out, 'attention', [q, k, v], { q: qc, k: kc, v: vc, mask, lse, scale, causal, out });
  }
  drop(qc, q);
  drop(kc, k);
  drop(vc, v);
  if (mask && opts.keyMask) drop(mask, opts.keyMask);
  lse.dispose();
  return out;
}

/**
 * Rotary position embedding (rotate-half layout) on x [..., T, D] with cos/sin tables [T, D/2],
 * or per batch row [B, T, D/2] when x is [B, H, T, D] (rows at different positions).
 */
export function rope(x: Tensor, cos: Tensor, sin: Tensor, inverse = false): Tensor {
  f32('rope', x);
  f32('rope', cos, 'cos');
  f32('rope', sin, 'sin');
  if (x.ndim < 2) throw opError('rope', 'x must be [..., T, D]', { x: x.shape });
  const t = x.shape[x.ndim - 2]!;
  const d = x.shape[x.ndim - 1]!;
  const perRow = cos.ndim === 3;
  const B = perRow ? cos.shape[0]! : 1;
  const want = perRow ? [B, t, d / 2] : [t, d / 2];
  if (d % 2 !== 0 || !sameShape(cos.shape, want) || !sameShape(sin.shape, want) || (perRow && (x.ndim !== 4 || x.shape[0] !== B))) {
    throw opError('rope', 'cos/sin must be [T, D/2] (or [B, T, D/2] for x [B, H, T, D]) and D even', { x: x.shape, cos: cos.shape, sin: sin.shape });
  }
  const xc = contig(x);
  const cc = contig(cos);
  const sc = contig(sin);
  const out = empty(x.shape);
  const rows = x.size / (t * d);
  const xb = f32buf(xc);
  const ob = f32buf(out);
  const cb = f32buf(cc);
  const sb = f32buf(sc);
  const per = rows / B;
  for (let b = 0; b < B; b++) {
    const span = per * t * d;
    const tab = (t * d) / 2;
    kernels().rope(
      xb.subarray(b * span, (b + 1) * span), cb.subarray(b * tab, (b + 1) * tab), sb.subarray(b * tab, (b + 1) * tab),
      per, t, d, ob.subarray(b * span, (b + 1) * span), inverse,
    );
  }
  drop(xc, x);
  return record(out, 'rope', [x], { cos: cc, sin: sc, inverse });
}

/**
 * Overwrite dst's values with src's (broadcast to dst's shape), in place and unrecorded: for
 * optimizer updates and loading weights. dst must be contiguous.
 */
export function assign(dst: Tensor, src: Tensor): Tensor {
  if (dst.dtype !== src.dtype) throw opError('assign', `dtypes differ (${dst.dtype} vs ${src.dtype})`, { dst: dst.shape, src: src.shape });
  if (!dst.isContiguous()) throw opError('assign', 'destination must be contiguous', { dst: dst.shape });
  const shape = broadcastShapes('assign', dst.shape, src.shape);
  if (!sameShape(shape, dst.shape)) throw opError('assign', 'source does not broadcast to destination', { dst: dst.shape, src: src.shape });
  kernels().copy(shape, bview(src, shape), dst.view());
  return dst;
}
