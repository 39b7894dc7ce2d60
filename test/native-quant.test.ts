/**
 * The native packed-weight kernels (native/src/quant.cc) against the js reference kernel, for
 * every format they cover, both products, every SIMD kernel the CPU has and 1 or 2 threads.
 * Reordered f32 sums differ by rounding only, so each element is held to 1e-5 of Σ|x·w| over its
 * terms (the scale of any reordering error), computed here with plain loops on the dequantized W.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import * as ak from '../src/index.js';
import { quantMatmul as jsQuantMatmul } from '../src/backend/js/quant.js';
import { dequantize, quantize, type GgmlTensor, type QuantizedTensor } from '../src/backend/quant/index.js';
import { randomArray } from './helpers.js';

const native = ak.nativeBackend();
if (!native) throw new Error(`the native packed-weight kernels need the addon: ${ak.nativeLoadError()}`);
const nb = native;

const KERNELS = (['avx512', 'avx2', 'generic'] as const).filter((k) => nb.setGemmKernel(k));
const DEFAULT_KERNEL = nb.simd;
const DEFAULT_THREADS = nb.threads();
nb.setGemmKernel(DEFAULT_KERNEL as 'avx512' | 'avx2' | 'generic');

interface Case {
  label: string;
  format: string;
  n: number;
  k: number;
  opts?: { blocksize?: number; doubleQuant?: boolean };
  /** Weight magnitude (default 0.5). */
  scale?: number;
}

const CASES: Case[] = [
  { label: 'q8_0 k=96', format: 'q8_0', n: 131, k: 96 },
  { label: 'q8_0 k=288', format: 'q8_0', n: 67, k: 288 },
  { label: 'q4_0 k=96', format: 'q4_0', n: 131, k: 96 },
  { label: 'q4_0 k=288', format: 'q4_0', n: 67, k: 288 },
  { label: 'bf16 k=77', format: 'bf16', n: 131, k: 77 },
  { label: 'bf16 k=301', format: 'bf16', n: 67, k: 301 },
  { label: 'f16 k=77', format: 'f16', n: 131, k: 77 },
  { label: 'f16 k=301', format: 'f16', n: 67, k: 301 },
  // most of these values are f16 subnormals (below 6.1e-5)
  { label: 'f16 k=77 subnormal', format: 'f16', n: 131, k: 77, scale: 2e-5 },
  { label: 'nf4 k=77', format: 'nf4', n: 131, k: 77, opts: { blocksize: 64 } },
  { label: 'nf4 k=301 nested', format: 'nf4', n: 67, k: 301, opts: { blocksize: 32, doubleQuant: true } },
  { label: 'fp4 k=77', format: 'fp4', n: 131, k: 77, opts: { blocksize: 128 } },
  { label: 'fp4 k=301 nested', format: 'fp4', n: 67, k: 301, opts: { blocksize: 64, doubleQuant: true } },
  // formats without a native kernel keep the tiled path
  { label: 'q4_K k=256', format: 'q4_K', n: 37, k: 256 },
];
const MS = [1, 3, 8, 33];

/** Weights with a few large values, so block scales differ and 4-bit codes use the whole table. */
function weights(n: number, k: number, seed: number, scale = 0.5): Float32Array {
  const w = randomArray(n * k, seed, scale);
  for (let i = 0; i < w.length; i += 37) w[i]! *= 6;
  return w;
}

/** Σ|x·w| for each output element: out [m, n] (forward) or [m, k] (transposed), W dense [n, k]. */
function termScale(x: Float32Array, m: number, wd: Float32Array, n: number, k: number, transpose: boolean): Float64Array {
  const s = new Float64Array(m * (transpose ? k : n));
  for (let i = 0; i < m; i++) {
    for (let r = 0; r < n; r++) {
      for (let c = 0; c < k; c++) {
        const term = Math.abs(wd[r * k + c]! * (transpose ? x[i * n + r]! : x[i * k + c]!));
        s[transpose ? i * k + c : i * n + r]! += term;
      }
    }
  }
  return s;
}

function assertNear(got: Float32Array, want: Float32Array, scale: Float64Array, what: string): void {
  assert.equal(got.length, want.length, `${what}: length`);
  for (let i = 0; i < want.length; i++) {
    const err = Math.abs(got[i]! - want[i]!);
    if (!(err <= 1e-5 * scale[i]! + 1e-30)) {
      assert.fail(`${what}: element ${i} is ${got[i]}, the js reference ${want[i]} (|Σ terms| ${scale[i]})`);
    }
  }
}

/** A copy of a at an odd element offset inside a larger buffer, so views that start unaligned are exercised. */
function offsetCopy<T extends Float32Array | Uint8Array | Uint16Array>(a: T): T {
  const C = a.constructor as new (n: number) => T;
  const big = new C(a.length + 3);
  big.set(a as never, 1);
  return big.subarray(1, 1 + a.length) as T;
}

/** The same packed tensor with every array moved to an odd offset of a larger buffer. */
function misaligned(q: QuantizedTensor): QuantizedTensor {
  if ('data' in q) return { ...q, data: offsetCopy(q.data) } as QuantizedTensor;
  if (q.format === 'nf4' || q.format === 'fp4') {
    return { ...q, weight: offsetCopy(q.weight), absmax: offsetCopy(q.absmax), quantMap: offsetCopy(q.quantMap) };
  }
  return q;
}

function product(w: QuantizedTensor, x: Float32Array, m: number, rows: number, transpose: boolean, kernel: 'js' | 'native'): Float32Array {
  const out = new Float32Array(m * rows).fill(Number.NaN);
  const args = { x, m, w, out, transpose, threshold: 0 };
  if (kernel === 'js') jsQuantMatmul(args);
  else nb.quantMatmul(args);
  return out;
}

describe('native packed-weight products', () => {
  let seed = 1;
  for (const c of CASES) {
    it(`${c.label}: forward and transposed equal the js reference (m ${MS.join(', ')}; ${KERNELS.join(', ')}; 1 and 2 threads)`, () => {
      try {
        const w = quantize(c.format, weights(c.n, c.k, seed++, c.scale), [c.n, c.k], c.opts);
        const wd = dequantize(w);
        for (const m of MS) {
          for (const transpose of [false, true]) {
            const x = randomArray(m * (transpose ? c.n : c.k), seed++);
            const rows = transpose ? c.k : c.n;
            const want = product(w, x, m, rows, transpose, 'js');
            const scale = termScale(x, m, wd, c.n, c.k, transpose);
            for (const kernel of KERNELS) {
              assert.ok(nb.setGemmKernel(kernel));
              for (const threads of [1, 2]) {
                nb.setThreads(threads);
                const what = `${c.label} m=${m} ${transpose ? 'dy·W' : 'x·Wᵀ'} ${kernel} ${threads}t`;
                assertNear(product(w, x, m, rows, transpose, 'native'), want, scale, what);
              }
            }
          }
        }
      } finally {
        nb.setGemmKernel(DEFAULT_KERNEL as 'avx512' | 'avx2' | 'generic');
        nb.setThreads(DEFAULT_THREADS);
      }
    });
  }

  it('reads weights, scales and activations through views at odd offsets', () => {
    try {
      nb.setThreads(2);
      for (const c of CASES) {
        const w = quantize(c.format, weights(c.n, c.k, seed++, c.scale), [c.n, c.k], c.opts);
        const wv = misaligned(w);
        const wd = dequantize(w);
        for (const [m, transpose] of [[1, false], [8, false], [33, false], [5, true], [33, true]] as const) {
          const x = randomArray(m * (transpose ? c.n : c.k), seed++);
          const xv = offsetCopy(x);
          const rows = transpose ? c.k : c.n;
          const want = product(w, x, m, rows, transpose, 'js');
          const big = new Float32Array(m * rows + 2).fill(Number.NaN);
          const out = big.subarray(1, 1 + m * rows);
          nb.quantMatmul({ x: xv, m, w: wv, out, transpose, threshold: 0 });
          assertNear(out, want, termScale(x, m, wd, c.n, c.k, transpose), `${c.label} m=${m} transpose=${transpose} (views)`);
          // nothing outside the output view is written
          assert.ok(Number.isNaN(big[0]!) && Number.isNaN(big[big.length - 1]!), `${c.label}: wrote outside out`);
        }
      }
    } finally {
      nb.setThreads(DEFAULT_THREADS);
    }
  });

  it('the int8 gradient (tiled path) still equals the js reference', () => {
    const [n, k] = [45, 70];
    const w = quantize('int8', weights(n, k, 99), [n, k]);
    const x = randomArray(9 * n, 100);
    const want = product(w, x, 9, k, true, 'js');
    assertNear(product(w, x, 9, k, true, 'native'), want, termScale(x, 9, dequantize(w), n, k, true), 'int8 dy·W');
  });

  it('rejects activations and outputs of the wrong length with an AdaptkitError', () => {
    const w = quantize('q8_0', weights(5, 64, 7), [5, 64]) as GgmlTensor;
    assert.throws(() => nb.quantMatmul({ x: new Float32Array(63), m: 1, w, out: new Float32Array(5), transpose: false, threshold: 0 }),
      (e: unknown) => e instanceof ak.AdaptkitError && /quantMatmul.*x/.test(e.message));
    assert.throws(() => nb.quantMatmul({ x: new Float32Array(64), m: 1, w, out: new Float32Array(4), transpose: false, threshold: 0 }),
      (e: unknown) => e instanceof ak.AdaptkitError && /quantMatmul.*out/.test(e.message));
    const bad = { ...w, data: w.data.subarray(0, 33) } as QuantizedTensor;
    assert.throws(() => nb.quantMatmul({ x: new Float32Array(64), m: 1, w: bad, out: new Float32Array(5), transpose: false, threshold: 0 }),
      (e: unknown) => e instanceof ak.AdaptkitError && /data/.test(e.message));
  });
});
