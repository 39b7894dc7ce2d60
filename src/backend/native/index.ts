/**
 * The native backend: a C++ N-API addon (built by `npm install`) with packed SGEMM micro-kernels
 * (AVX-512 / AVX2+FMA / portable, chosen at run time), a persistent thread pool and native
 * elementwise, reduction, normalization, loss and attention kernels.
 *
 * Every call is checked here before it crosses into C++: buffer lengths against the sizes the
 * arguments imply, so no argument can make the addon read or write out of bounds. What only the
 * addon can judge (scratch that does not fit in memory, threads the OS refuses) comes back as a
 * JavaScript error naming the op, which `guard` turns into an AdaptkitError; the process survives.
 */
import { createRequire } from 'node:module';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  AdaptkitError, type AnyArray, type AttentionArgs, type AttentionBackwardArgs, type BinaryOp, type CompareOp,
  type KernelSet, type MatmulArgs, type QuantMatmulArgs, type StridedView, UNARY_OPS, type UnaryOp,
} from '../../tensor/index.js';
import { quantMatmul as jsQuantMatmul } from '../js/quant.js';
import { formatOf, type Bnb4bitTensor, type QuantizedTensor } from '../quant/index.js';

interface Addon {
  info(): { kernel: string; threads: number; maxThreads: number };
  setThreads(n: number): void;
  setGemmKernel(name: string): boolean;
  fmaPeak(threads: number, seconds: number): number;
  unary(op: number, x: Float32Array, out: Float32Array): void;
  unaryBackward(op: number, x: Float32Array, y: Float32Array, g: Float32Array, out: Float32Array): void;
  binary(op: number, meta: Float64Array, a: AnyArray, b: AnyArray, out: Float32Array): void;
  where(meta: Float64Array, c: AnyArray, a: AnyArray, b: AnyArray, out: Float32Array): void;
  copy(meta: Float64Array, src: AnyArray, dst: AnyArray): void;
  reduce(isMax: boolean, x: Float32Array, outer: number, n: number, inner: number, out: Float32Array): void;
  matmul(
    a: Float32Array, b: Float32Array, out: Float32Array, batch: number, m: number, n: number, k: number,
    lda: number, ldb: number, transA: boolean, transB: boolean, strideA: number, strideB: number, accumulate: boolean,
  ): void;
  indexSelect(x: AnyArray, outer: number, rows: number, inner: number, idx: Int32Array, out: AnyArray): void;
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
  crossEntropy(logits: Float32Array, targets: Int32Array, rows: number, cols: number, ignore: number, loss: Float32Array, lse: Float32Array): void;
  crossEntropyBackward(
    logits: Float32Array, targets: Int32Array, lse: Float32Array, rows: number, cols: number, ignore: number,
    scale: Float32Array, dlogits: Float32Array,
  ): void;
  attention(...args: unknown[]): void;
  attentionBackward(...args: unknown[]): void;
  rope(x: Float32Array, cos: Float32Array, sin: Float32Array, outer: number, t: number, d: number, out: Float32Array, inverse: boolean): void;
  quantMatmul(
    kind: number, data: Uint8Array, n: number, k: number, absmax: Float32Array | null, code: Float32Array | null,
    blocksize: number, x: Float32Array, m: number, out: Float32Array, transpose: boolean,
  ): void;
}

const BINARY_CODE: Record<BinaryOp | CompareOp, number> = {
  add: 0, sub: 1, mul: 2, div: 3, max: 4, min: 5, eq: 6, ne: 7, lt: 8, le: 9, gt: 10, ge: 11,
};
const UNARY_CODE = Object.fromEntries(UNARY_OPS.map((op, i) => [op, i])) as Record<UnaryOp, number>;
const MAX_DIMS = 16;

function fail(op: string, msg: string): never {
  throw new AdaptkitError(`${op} (native): ${msg}`);
}

function need(ok: boolean, op: string, msg: string): void {
  if (!ok) fail(op, msg);
}

function isInt(n: number): boolean {
  return Number.isSafeInteger(n) && n >= 0;
}

/** Largest element index a strided view reaches over shape (or -1 when the shape is empty). */
function reach(op: string, shape: readonly number[], v: StridedView): number {
  need(shape.length <= MAX_DIMS, op, `at most ${MAX_DIMS} dimensions`);
  need(isInt(v.offset) && v.strides.length === shape.length, op, 'bad offset or strides');
  let hi = v.offset;
  for (let d = 0; d < shape.length; d++) {
    const n = shape[d]!;
    need(isInt(n) && isInt(v.strides[d]!), op, 'bad shape or strides');
    if (n === 0) return -1;
    hi += (n - 1) * v.strides[d]!;
  }
  return hi;
}

function checkView(op: string, shape: readonly number[], v: StridedView, name: string): void {
  need(reach(op, shape, v) < v.data.length, op, `${name} is too short for the view`);
}

function size(shape: readonly number[]): number {
  return shape.reduce((p, q) => p * q, 1);
}

function meta(shape: readonly number[], views: readonly StridedView[]): Float64Array {
  const nd = shape.length;
  const m = new Float64Array(1 + nd + views.length * (1 + nd));
  m[0] = nd;
  m.set(shape, 1);
  let at = 1 + nd;
  for (const v of views) {
    m[at] = v.offset;
    m.set(v.strides, at + 1);
    at += 1 + nd;
  }
  return m;
}

function len(op: string, a: AnyArray, n: number, name: string): void {
  need(isInt(n) && a.length >= n, op, `${name} holds ${a.length} elements, ${n} needed`);
}

function isF32(a: unknown): a is Float32Array {
  return a instanceof Float32Array;
}

export interface NativeBackend extends KernelSet {
  readonly simd: string;
  threads(): number;
  setThreads(n: number): void;
  setGemmKernel(name: 'avx512' | 'avx2' | 'generic'): boolean;
  fmaPeakGflops(threads: number, seconds?: number): number;
}

/** `op (native): detail` for an error the addon threw as `op: detail`. */
function nativeError(name: string, e: unknown): AdaptkitError {
  if (e instanceof AdaptkitError) return e;
  const message = e instanceof Error ? e.message : String(e);
  const detail = message.startsWith(`${name}: `) ? message.slice(name.length + 2) : message;
  return new AdaptkitError(`${name} (native): ${detail}`, { cause: e });
}

/** The addon with every function's errors turned into AdaptkitErrors (one try per call, not per element). */
function guard(addon: Addon): Addon {
  const out: Record<string, unknown> = {};
  for (const [name, fn] of Object.entries(addon)) {
    if (typeof fn !== 'function') continue;
    out[name] = (...args: unknown[]) => {
      try {
        return (fn as (...a: unknown[]) => unknown)(...args);
      } catch (e) {
        throw nativeError(name, e);
      }
    };
  }
  return out as unknown as Addon;
}

function checkThreads(op: string, n: number, max: number): void {
  need(Number.isInteger(n) && n >= 1 && n <= max, op, `thread count must be an integer in [1, ${max}], got ${n}`);
}

function wrap(raw: Addon): NativeBackend {
  const addon = guard(raw);
  // the addon's bound: the hardware threads, but at least 256 (native/src/threadpool.h)
  const maxThreads = addon.info().maxThreads ?? 256;
  return {
    name: 'native',
    get simd() {
      return addon.info().kernel;
    },
    threads: () => addon.info().threads,
    setThreads(n) {
      checkThreads('setThreads', n, maxThreads);
      addon.setThreads(n);
    },
    setGemmKernel: (name) => addon.setGemmKernel(name),
    fmaPeakGflops(threads, seconds = 0.5) {
      checkThreads('fmaPeak', threads, maxThreads);
      need(Number.isFinite(seconds) && seconds > 0 && seconds <= 60, 'fmaPeak', `seconds must be in (0, 60], got ${seconds}`);
      return addon.fmaPeak(threads, seconds);
    },
    unary(op, x, out) {
      need(op in UNARY_CODE, 'unary', `unknown op ${op}`);
      len('unary', out, x.length, 'out');
      addon.unary(UNARY_CODE[op], x, out);
    },
    unaryBackward(op, x, y, g, out) {
      need(op in UNARY_CODE, 'unaryBackward', `unknown op ${op}`);
      for (const [a, n] of [[y, 'y'], [g, 'g'], [out, 'out']] as const) len('unaryBackward', a, x.length, n);
      addon.unaryBackward(UNARY_CODE[op], x, y, g, out);
    },
    binary(op, shape, a, b, out) {
      need(op in BINARY_CODE && isF32(a.data) && isF32(b.data), op, 'f32 operands and a known op needed');
      checkView(op, shape, a, 'a');
      checkView(op, shape, b, 'b');
      len(op, out, size(shape), 'out');
      addon.binary(BINARY_CODE[op], meta(shape, [a, b]), a.data, b.data, out);
    },
    compare(op, shape, a, b, out) {
      need(op in BINARY_CODE && isF32(a.data) && isF32(b.data), op, 'f32 operands and a known op needed');
      checkView(op, shape, a, 'a');
      checkView(op, shape, b, 'b');
      len(op, out, size(shape), 'out');
      addon.binary(BINARY_CODE[op], meta(shape, [a, b]), a.data, b.data, out);
    },
    where(shape, c, a, b, out) {
      need(isF32(c.data) && isF32(a.data) && isF32(b.data), 'where', 'f32 operands needed');
      checkView('where', shape, c, 'cond');
      checkView('where', shape, a, 'a');
      checkView('where', shape, b, 'b');
      len('where', out, size(shape), 'out');
      addon.where(meta(shape, [c, a, b]), c.data, a.data, b.data, out);
    },
    copy(shape, src, dst) {
      need(src.data.constructor === dst.data.constructor, 'copy', 'source and destination dtypes differ');
      checkView('copy', shape, src, 'src');
      checkView('copy', shape, dst, 'dst');
      // a view that writes each element once has at most as many elements as its buffer; this also
      // bounds the loop when zero strides would let a huge shape pass the reach checks
      need(size(shape) <= dst.data.length, 'copy', `dst view has ${size(shape)} elements, its buffer ${dst.data.length}`);
      addon.copy(meta(shape, [src, dst]), src.data, dst.data);
    },
    sum(x, outer, n, inner, out) {
      len('sum', x, outer * n * inner, 'x');
      len('sum', out, outer * inner, 'out');
      addon.reduce(false, x, outer, n, inner, out);
    },
    max(x, outer, n, inner, out) {
      need(n >= 1, 'max', 'cannot reduce an empty dimension');
      len('max', x, outer * n * inner, 'x');
      len('max', out, outer * inner, 'out');
      addon.reduce(true, x, outer, n, inner, out);
    },
    matmul(p: MatmulArgs) {
      const { m, n, k, batch } = p;
      for (const v of [m, n, k, batch, p.lda, p.ldb, p.strideA, p.strideB]) need(isInt(v), 'matmul', 'dimensions must be non-negative integers');
      len('matmul', p.out, batch * m * n, 'out');
      if (batch > 0 && m > 0 && n > 0 && k > 0) {
        const aRows = p.transA ? k : m;
        const aCols = p.transA ? m : k;
        const bRows = p.transB ? n : k;
        const bCols = p.transB ? k : n;
        need(p.lda >= aCols || aRows === 1, 'matmul', `lda ${p.lda} < ${aCols}`);
        need(p.ldb >= bCols || bRows === 1, 'matmul', `ldb ${p.ldb} < ${bCols}`);
        len('matmul', p.a, (batch - 1) * p.strideA + (aRows - 1) * p.lda + aCols, 'a');
        len('matmul', p.b, (batch - 1) * p.strideB + (bRows - 1) * p.ldb + bCols, 'b');
      }
      addon.matmul(p.a, p.b, p.out, batch, m, n, k, p.lda, p.ldb, p.transA, p.transB, p.strideA, p.strideB, p.accumulate);
    },
    indexSelect(x, outer, rows, inner, idx, out) {
      need(x.constructor === out.constructor, 'indexSelect', 'source and output dtypes differ');
      len('indexSelect', x, outer * rows * inner, 'x');
      len('indexSelect', out, outer * idx.length * inner, 'out');
      for (let i = 0; i < idx.length; i++) need(idx[i]! >= 0 && idx[i]! < rows, 'indexSelect', `index ${idx[i]} out of range for ${rows} rows`);
      addon.indexSelect(x, outer, rows, inner, idx, out);
    },
    indexAdd(src, outer, rows, inner, idx, out) {
      len('indexAdd', src, outer * idx.length * inner, 'src');
      len('indexAdd', out, outer * rows * inner, 'out');
      for (let i = 0; i < idx.length; i++) need(idx[i]! >= 0 && idx[i]! < rows, 'indexAdd', `index ${idx[i]} out of range for ${rows} rows`);
      addon.indexAdd(src, outer, rows, inner, idx, out);
    },
    softmax(x, rows, cols, out, log) {
      len('softmax', x, rows * cols, 'x');
      len('softmax', out, rows * cols, 'out');
      addon.softmax(x, rows, cols, out, log);
    },
    softmaxBackward(y, g, rows, cols, out, log) {
      for (const [a, nm] of [[y, 'y'], [g, 'g'], [out, 'out']] as const) len('softmaxBackward', a, rows * cols, nm);
      addon.softmaxBackward(y, g, rows, cols, out, log);
    },
    rmsnorm(x, w, rows, cols, eps, out, rstd) {
      len('rmsnorm', x, rows * cols, 'x');
      len('rmsnorm', out, rows * cols, 'out');
      len('rmsnorm', w, cols, 'w');
      len('rmsnorm', rstd, rows, 'rstd');
      addon.rmsnorm(x, w, rows, cols, eps, out, rstd);
    },
    rmsnormBackward(x, w, rstd, g, rows, cols, dx, dw) {
      len('rmsnormBackward', x, rows * cols, 'x');
      len('rmsnormBackward', g, rows * cols, 'g');
      len('rmsnormBackward', w, cols, 'w');
      len('rmsnormBackward', rstd, rows, 'rstd');
      if (dx) len('rmsnormBackward', dx, rows * cols, 'dx');
      if (dw) len('rmsnormBackward', dw, cols, 'dw');
      addon.rmsnormBackward(x, w, rstd, g, rows, cols, dx, dw);
    },
    layernorm(x, w, b, rows, cols, eps, out, mean, rstd) {
      len('layernorm', x, rows * cols, 'x');
      len('layernorm', out, rows * cols, 'out');
      len('layernorm', w, cols, 'w');
      len('layernorm', b, cols, 'b');
      len('layernorm', mean, rows, 'mean');
      len('layernorm', rstd, rows, 'rstd');
      addon.layernorm(x, w, b, rows, cols, eps, out, mean, rstd);
    },
    layernormBackward(x, w, mean, rstd, g, rows, cols, dx, dw, db) {
      len('layernormBackward', x, rows * cols, 'x');
      len('layernormBackward', g, rows * cols, 'g');
      len('layernormBackward', w, cols, 'w');
      len('layernormBackward', mean, rows, 'mean');
      len('layernormBackward', rstd, rows, 'rstd');
      if (dx) len('layernormBackward', dx, rows * cols, 'dx');
      if (dw) len('layernormBackward', dw, cols, 'dw');
      if (db) len('layernormBackward', db, cols, 'db');
      addon.layernormBackward(x, w, mean, rstd, g, rows, cols, dx, dw, db);
    },
    crossEntropy(logits, targets, rows, cols, ignore, loss, lse) {
      len('crossEntropy', logits, rows * cols, 'logits');
      len('crossEntropy', targets, rows, 'targets');
      len('crossEntropy', loss, rows, 'loss');
      len('crossEntropy', lse, rows, 'lse');
      checkTargets('crossEntropy', targets, rows, cols, ignore);
      addon.crossEntropy(logits, targets, rows, cols, ignore, loss, lse);
    },
    crossEntropyBackward(logits, targets, lse, rows, cols, ignore, scale, dlogits) {
      len('crossEntropyBackward', logits, rows * cols, 'logits');
      len('crossEntropyBackward', dlogits, rows * cols, 'dlogits');
      len('crossEntropyBackward', targets, rows, 'targets');
      len('crossEntropyBackward', lse, rows, 'lse');
      len('crossEntropyBackward', scale, rows, 'scale');
      checkTargets('crossEntropyBackward', targets, rows, cols, ignore);
      addon.crossEntropyBackward(logits, targets, lse, rows, cols, ignore, scale, dlogits);
    },
    attention(a: AttentionArgs) {
      checkAttention('attention', a);
      addon.attention(a.q, a.k, a.v, a.batch, a.heads, a.kvHeads, a.tq, a.tk, a.dim, a.scale, a.causal, a.keyMask, a.out, a.lse);
    },
    attentionBackward(a: AttentionBackwardArgs) {
      checkAttention('attentionBackward', a);
      const qn = a.batch * a.heads * a.tq * a.dim;
      const kn = a.batch * a.kvHeads * a.tk * a.dim;
      len('attentionBackward', a.gradOut, qn, 'gradOut');
      len('attentionBackward', a.dq, qn, 'dq');
      len('attentionBackward', a.dk, kn, 'dk');
      len('attentionBackward', a.dv, kn, 'dv');
      addon.attentionBackward(
        a.q, a.k, a.v, a.batch, a.heads, a.kvHeads, a.tq, a.tk, a.dim, a.scale, a.causal, a.keyMask, a.out, a.lse,
        a.gradOut, a.dq, a.dk, a.dv,
      );
    },
    rope(x, cos, sin, outer, t, d, out, inverse) {
      need(d % 2 === 0, 'rope', 'head dim must be even');
      len('rope', x, outer * t * d, 'x');
      len('rope', out, outer * t * d, 'out');
      len('rope', cos, (t * d) / 2, 'cos');
      len('rope', sin, (t * d) / 2, 'sin');
      addon.rope(x, cos, sin, outer, t, d, out, inverse);
    },
    quantMatmul: (a) => packedMatmul(addon, a),
  };
}

/** Values of a packed weight decoded at once for the addon's GEMM: a bounded scratch, never all of W. */
const TILE_VALUES = 1 << 16;
const scratchBuffers: Float32Array[] = [new Float32Array(0), new Float32Array(0)];

/** A reused buffer of at least n values (grown, never shrunk), so a step does not allocate one per product. */
function scratch(i: number, n: number): Float32Array {
  if (scratchBuffers[i]!.length < n) scratchBuffers[i] = new Float32Array(n);
  return scratchBuffers[i]!.subarray(0, n);
}

/** Format ids of native/src/quant.h (QuantKind); formats not listed take the tiled js-decode path. */
const NATIVE_QUANT_KIND: Partial<Record<QuantizedTensor['format'], number>> = { q8_0: 0, q4_0: 1, bf16: 2, f16: 3, nf4: 4, fp4: 4 };

/** Per-block f32 scales of a 4-bit tensor, nested ones decoded once per tensor (the tensor is never mutated). */
const bnbScales = new WeakMap<Bnb4bitTensor, Float32Array>();

function bnbAbsmax(w: Bnb4bitTensor): Float32Array {
  const { nested, absmax } = w;
  if (!nested) return absmax as Float32Array;
  let s = bnbScales.get(w);
  if (!s) {
    // the same f32 steps as the js decoder (bnb.ts blockScale), so both backends see equal scales
    const offset = Math.fround(nested.offset);
    s = new Float32Array(absmax.length);
    for (let b = 0; b < s.length; b++) {
      s[b] = Math.fround(Math.fround(nested.quantMap[absmax[b]!]! * nested.absmax[Math.floor(b / nested.blocksize)]!) + offset);
    }
    bnbScales.set(w, s);
  }
  return s;
}

/** The packed bytes as a Uint8Array view of the same memory (16-bit data is little-endian in both). */
function packedBytes(w: QuantizedTensor): Uint8Array {
  const d = 'data' in w ? w.data : w.weight;
  return d instanceof Uint8Array ? d : new Uint8Array(d.buffer, d.byteOffset, d.byteLength);
}

/**
 * q8_0, q4_0, bf16, f16, nf4 and fp4 run on the addon's packed kernels (native/src/quant.cc),
 * which decode blocks inside the product. LLM.int8()'s forward multiplies integer codes, so it
 * runs the js reference; the remaining products (int8's gradient, the K-quants) decode a tile of
 * weight rows with the js format code into an f32 scratch and multiply it with the addon's SGEMM.
 */
function packedMatmul(addon: Addon, a: QuantMatmulArgs): void {
  const w = a.w as QuantizedTensor;
  if (!a.transpose && w.format === 'int8') return jsQuantMatmul(a);
  const format = formatOf(w);
  format.validate(w);
  need(w.shape.length === 2, 'quantMatmul', `${w.name ?? 'the packed weight'} must be [rows, cols]`);
  const [n, k] = w.shape as [number, number];
  const { m, x, out } = a;
  need(isInt(m), 'quantMatmul', 'm must be a non-negative integer');
  len('quantMatmul', x, m * (a.transpose ? n : k), 'x');
  len('quantMatmul', out, m * (a.transpose ? k : n), 'out');
  const kind = NATIVE_QUANT_KIND[w.format];
  if (kind !== undefined) {
    // validate() has checked the data against the shape (and, for 4-bit, absmax against the blocks)
    const bnb = w.format === 'nf4' || w.format === 'fp4' ? w : null;
    addon.quantMatmul(
      kind, packedBytes(w), n, k, bnb ? bnbAbsmax(bnb) : null, bnb ? bnb.quantMap : null, bnb ? bnb.blocksize : 0,
      x, m, out, a.transpose,
    );
    return;
  }
  tiledMatmul(addon, a, w, n, k);
}

function tiledMatmul(addon: Addon, a: QuantMatmulArgs, w: QuantizedTensor, n: number, k: number): void {
  const format = formatOf(w);
  const { m, x, out } = a;
  if (a.transpose) out.fill(0);
  if (m === 0 || n === 0 || k === 0) return;
  const rows = Math.max(1, Math.min(n, Math.floor(TILE_VALUES / k)));
  const tile = scratch(0, rows * k);
  const part = a.transpose ? null : scratch(1, m * rows);
  for (let r0 = 0; r0 < n; r0 += rows) {
    const nr = Math.min(rows, n - r0);
    const t = nr === rows ? tile : tile.subarray(0, nr * k);
    format.dequantizeRange(w, r0 * k, nr * k, t);
    if (a.transpose) {
      // out [m, k] += dy[:, r0:r0+nr] · tile [nr, k], the gradient's columns read in place
      addon.matmul(x.subarray(r0), t, out, 1, m, k, nr, n, k, false, false, 0, 0, true);
    } else {
      // part [m, nr] = x [m, k] · tileᵀ, then its columns go to out[:, r0:r0+nr]
      const p = part!.subarray(0, m * nr);
      addon.matmul(x, t, p, 1, m, nr, k, k, k, false, true, 0, 0, false);
      for (let i = 0; i < m; i++) out.set(p.subarray(i * nr, (i + 1) * nr), i * n + r0);
    }
  }
}

function checkTargets(op: string, targets: Int32Array, rows: number, cols: number, ignore: number): void {
  for (let i = 0; i < rows; i++) {
    const y = targets[i]!;
    need(y === ignore || (y >= 0 && y < cols), op, `target ${y} out of range for ${cols} classes`);
  }
}

function checkAttention(op: string, a: AttentionArgs): void {
  for (const v of [a.batch, a.heads, a.kvHeads, a.tq, a.tk, a.dim]) need(isInt(v), op, 'dimensions must be non-negative integers');
  need(a.kvHeads > 0 && a.heads % a.kvHeads === 0, op, 'heads must be a multiple of kv heads');
  need(!a.causal || a.tq <= a.tk, op, 'causal attention needs tq <= tk');
  const qn = a.batch * a.heads * a.tq * a.dim;
  const kn = a.batch * a.kvHeads * a.tk * a.dim;
  len(op, a.q, qn, 'q');
  len(op, a.k, kn, 'k');
  len(op, a.v, kn, 'v');
  len(op, a.out, qn, 'out');
  len(op, a.lse, a.batch * a.heads * a.tq, 'lse');
  if (a.keyMask) len(op, a.keyMask, a.batch * a.tk, 'keyMask');
}

function packageRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 6; i++) {
    if (existsSync(join(dir, 'package.json')) && existsSync(join(dir, 'binding.gyp'))) return dir;
    dir = dirname(dir);
  }
  return dir;
}

let cached: NativeBackend | null | undefined;
let loadError = '';

/** The native backend, or null when the addon is missing or fails to load (see nativeLoadError). */
export function loadNative(): NativeBackend | null {
  if (cached !== undefined) return cached;
  const root = packageRoot();
  const candidates = [join(root, 'build', 'Release', 'adaptkit_native.node'), join(root, 'build', 'Debug', 'adaptkit_native.node')];
  const file = candidates.find((f) => existsSync(f));
  if (!file) {
    loadError = `addon not built (${candidates[0]} missing; run npm install or npm rebuild)`;
    cached = null;
    return null;
  }
  try {
    const addon = createRequire(import.meta.url)(file) as Addon;
    cached = wrap(addon);
  } catch (e) {
    loadError = `addon failed to load: ${(e as Error).message.split('\n')[0]}`;
    cached = null;
  }
  return cached;
}

export function nativeLoadError(): string {
  return loadError;
}
