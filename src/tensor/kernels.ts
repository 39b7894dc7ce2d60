import type { AnyArray } from './dtype.js';
import { AdaptkitError } from './errors.js';

/**
 * The kernel contract between the tensor layer and a backend. Ops validate every argument
 * before calling a kernel; kernels trust their arguments and never call ops. Buffers are
 * contiguous unless a `StridedView` is passed.
 */
export type UnaryOp =
  | 'neg' | 'exp' | 'log' | 'sqrt' | 'tanh' | 'sigmoid' | 'relu' | 'gelu' | 'gelu_tanh' | 'silu' | 'abs';
export type BinaryOp = 'add' | 'sub' | 'mul' | 'div' | 'max' | 'min';
export type CompareOp = 'eq' | 'ne' | 'lt' | 'le' | 'gt' | 'ge';

export const UNARY_OPS: readonly UnaryOp[] =
  ['neg', 'exp', 'log', 'sqrt', 'tanh', 'sigmoid', 'relu', 'gelu', 'gelu_tanh', 'silu', 'abs'];
export const BINARY_OPS: readonly BinaryOp[] = ['add', 'sub', 'mul', 'div', 'max', 'min'];
export const COMPARE_OPS: readonly CompareOp[] = ['eq', 'ne', 'lt', 'le', 'gt', 'ge'];

/** A strided window into a buffer (stride 0 broadcasts). */
export interface StridedView {
  data: AnyArray;
  offset: number;
  strides: readonly number[];
}

/** C[b] (+)= op(A[b]) · op(B[b]); element (i, p) of A is a[i*lda + p], or a[p*lda + i] when transA. */
export interface MatmulArgs {
  a: Float32Array;
  b: Float32Array;
  out: Float32Array;
  batch: number;
  m: number;
  n: number;
  k: number;
  lda: number;
  ldb: number;
  transA: boolean;
  transB: boolean;
  strideA: number;
  strideB: number;
  /** C is contiguous: ldc = n, strideC = m * n. */
  accumulate: boolean;
}

/**
 * Scaled dot-product attention over q [B, H, Tq, D], k/v [B, Hkv, Tk, D] (H a multiple of Hkv:
 * grouped-query attention). Query row t sits at absolute position t + Tk - Tq, so a causal mask
 * also works for decoding against a cache. keyMask [B, Tk] holds 1 for real keys and 0 for padding.
 */
export interface AttentionArgs {
  q: Float32Array;
  k: Float32Array;
  v: Float32Array;
  batch: number;
  heads: number;
  kvHeads: number;
  tq: number;
  tk: number;
  dim: number;
  scale: number;
  causal: boolean;
  keyMask: Float32Array | null;
  out: Float32Array;
  /** log-sum-exp of each query row's scores, saved for the backward pass (-Infinity if nothing visible). */
  lse: Float32Array;
}

export interface AttentionBackwardArgs extends Omit<AttentionArgs, 'out'> {
  out: Float32Array;
  gradOut: Float32Array;
  dq: Float32Array;
  dk: Float32Array;
  dv: Float32Array;
}

/**
 * A weight matrix [rows, cols] held in a packed (quantized) form. The tensor layer never reads
 * its bytes: it hands it to the kernels, which know the formats (backend/quant).
 */
export interface PackedWeight {
  readonly format: string;
  /** [rows, cols]: the logical row-major shape. */
  readonly shape: readonly number[];
  /** The tensor's name, for messages. */
  readonly name?: string;
}

/**
 * Products with a packed weight W [n, k], never making an f32 copy of all of W: y [m, n] = x [m, k]·Wᵀ,
 * or with `transpose` y [m, k] = x [m, n]·W (the input gradient). Accumulation is f32 into `out`.
 */
export interface QuantMatmulArgs {
  x: Float32Array;
  m: number;
  w: PackedWeight;
  out: Float32Array;
  transpose: boolean;
  /** int8, forward only: LLM.int8() outlier threshold (0: every column in int8). */
  threshold: number;
}

export interface KernelSet {
  readonly name: string;
  unary(op: UnaryOp, x: Float32Array, out: Float32Array): void;
  /** out = g * f'(x); y = f(x) is given because several derivatives are cheaper from it. */
  unaryBackward(op: UnaryOp, x: Float32Array, y: Float32Array, g: Float32Array, out: Float32Array): void;
  binary(op: BinaryOp, shape: readonly number[], a: StridedView, b: StridedView, out: Float32Array): void;
  /** out = 1 where the comparison holds, else 0. */
  compare(op: CompareOp, shape: readonly number[], a: StridedView, b: StridedView, out: Float32Array): void;
  /** out = cond != 0 ? a : b */
  where(shape: readonly number[], cond: StridedView, a: StridedView, b: StridedView, out: Float32Array): void;
  /** dst[idx] = src[idx] over every index of shape; both of the same dtype. */
  copy(shape: readonly number[], src: StridedView, dst: StridedView): void;
  /** out[o, i] = sum_j x[o, j, i] for x [outer, n, inner]. */
  sum(x: Float32Array, outer: number, n: number, inner: number, out: Float32Array): void;
  max(x: Float32Array, outer: number, n: number, inner: number, out: Float32Array): void;
  matmul(args: MatmulArgs): void;
  /** out [outer, idx.length, inner] = x [outer, rows, inner] at rows idx. */
  indexSelect(x: AnyArray, outer: number, rows: number, inner: number, idx: Int32Array, out: AnyArray): void;
  /** out[o, idx[j], i] += src[o, j, i]. */
  indexAdd(src: Float32Array, outer: number, rows: number, inner: number, idx: Int32Array, out: Float32Array): void;
  softmax(x: Float32Array, rows: number, cols: number, out: Float32Array, log: boolean): void;
  softmaxBackward(y: Float32Array, g: Float32Array, rows: number, cols: number, out: Float32Array, log: boolean): void;
  rmsnorm(x: Float32Array, w: Float32Array, rows: number, cols: number, eps: number, out: Float32Array, rstd: Float32Array): void;
  rmsnormBackward(
    x: Float32Array, w: Float32Array, rstd: Float32Array, g: Float32Array, rows: number, cols: number,
    dx: Float32Array | null, dw: Float32Array | null,
  ): void;
  layernorm(
    x: Float32Array, w: Float32Array, b: Float32Array, rows: number, cols: number, eps: number,
    out: Float32Array, mean: Float32Array, rstd: Float32Array,
  ): void;
  layernormBackward(
    x: Float32Array, w: Float32Array, mean: Float32Array, rstd: Float32Array, g: Float32Array, rows: number, cols: number,
    dx: Float32Array | null, dw: Float32Array | null, db: Float32Array | null,
  ): void;
  /** Per-row loss (0 for ignored rows) and log-sum-exp. */
  crossEntropy(
    logits: Float32Array, targets: Int32Array, rows: number, cols: number, ignoreIndex: number,
    loss: Float32Array, lse: Float32Array,
  ): void;
  /** dlogits[r] = scale[r] * (softmax - onehot) on rows whose target is not ignored, 0 elsewhere. */
  crossEntropyBackward(
    logits: Float32Array, targets: Int32Array, lse: Float32Array, rows: number, cols: number, ignoreIndex: number,
    scale: Float32Array, dlogits: Float32Array,
  ): void;
  attention(args: AttentionArgs): void;
  attentionBackward(args: AttentionBackwardArgs): void;
  /**
   * Rotary embedding, rotate-half layout, on x [outer, T, D] with tables cos/sin [T, D/2]
   * (`inverse` rotates by the negative angle, which is the VJP).
   */
  rope(x: Float32Array, cos: Float32Array, sin: Float32Array, outer: number, t: number, d: number, out: Float32Array, inverse: boolean): void;
  /** A product with a packed weight (see QuantMatmulArgs). */
  quantMatmul(args: QuantMatmulArgs): void;
}

let active: KernelSet | null = null;

/** The backend layer installs the kernels that ops run on. */
export function installKernels(k: KernelSet): void {
  active = k;
}

export function kernels(): KernelSet {
  if (!active) throw new AdaptkitError('no backend installed: import adaptkit (or call setBackend) before running ops');
  return active;
}
