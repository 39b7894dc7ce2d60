/** The native backend against the js reference, and its argument checks. */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as ak from '../src/index.js';
import { assertClose, randomArray } from './helpers.js';

const native = ak.nativeBackend();
if (!native && process.env.ADAPTKIT_REQUIRE_NATIVE === '1') throw new Error(`native backend required: ${ak.nativeLoadError()}`);

function gemmArgs(m: number, n: number, k: number, transA: boolean, transB: boolean, batch: number, seed: number) {
  const lda = (transA ? m : k) + (seed % 3);
  const ldb = (transB ? k : n) + (seed % 2);
  const aRows = transA ? k : m;
  const bRows = transB ? n : k;
  const strideA = aRows * lda + 5;
  const strideB = bRows * ldb + 3;
  return {
    a: randomArray(strideA * batch, seed), b: randomArray(strideB * batch, seed + 1),
    batch, m, n, k, lda, ldb, transA, transB, strideA, strideB,
  };
}

describe('native backend', { skip: native ? false : `not built: ${ak.nativeLoadError()}` }, () => {
  const kernels = ['avx512', 'avx2', 'generic'] as const;
  const shapes: [number, number, number][] = [
    [1, 1, 1], [3, 5, 7], [14, 32, 16], [15, 33, 17], [29, 65, 400], [130, 70, 390], [64, 8, 768], [200, 300, 8], [1, 257, 64],
    [97, 300, 600], [256, 257, 300], [300, 40, 520],
  ];
  for (const kernel of kernels) {
    for (const threads of [1, 2]) {
      it(`SGEMM (${kernel} micro-kernel, ${threads} thread${threads > 1 ? 's' : ''}) equals the js reference`, (t) => {
        if (!native!.setGemmKernel(kernel)) {
          t.skip(`this CPU has no ${kernel}`);
          return;
        }
        native!.setThreads(threads);
        try {
          let seed = 1;
          for (const [m, n, k] of shapes) {
            for (const transA of [false, true]) {
              for (const transB of [false, true]) {
                for (const accumulate of [false, true]) {
                  const batch = seed % 3 === 0 ? 3 : 1;
                  const args = gemmArgs(m, n, k, transA, transB, batch, seed++);
                  const init = randomArray(batch * m * n, seed);
                  const want = { ...args, out: init.slice(), accumulate };
                  const got = { ...args, out: init.slice(), accumulate };
                  ak.jsKernels.matmul(want);
                  native!.matmul(got);
                  assertClose(got.out, want.out, `${m}x${k}x${n} transA=${transA} transB=${transB} acc=${accumulate} batch=${batch}`, 1e-4, 1e-4);
                }
              }
            }
          }
        } finally {
          native!.setGemmKernel('avx512') || native!.setGemmKernel('avx2');
          native!.setThreads(2);
        }
      });
    }
  }

  it('large elementwise, softmax, norm and attention kernels equal the js reference (threaded paths)', () => {
    const n = 300_007;
    const x = randomArray(n, 3);
    for (const op of ak.UNARY_OPS) {
      const xin = op === 'log' || op === 'sqrt' ? x.map((v) => Math.abs(v) + 0.1) : x;
      const a = new Float32Array(n);
      const b = new Float32Array(n);
      ak.jsKernels.unary(op, xin, a);
      native!.unary(op, xin, b);
      assertClose(b, a, `unary ${op}`, 1e-6, 2e-6);
      const g = randomArray(n, 4);
      ak.jsKernels.unaryBackward(op, xin, a, g, a);
      native!.unaryBackward(op, xin, b, g, b);
      assertClose(b, a, `unaryBackward ${op}`, 1e-5, 1e-5);
    }
    const rows = 300;
    const cols = 1000;
    const s1 = new Float32Array(rows * cols);
    const s2 = new Float32Array(rows * cols);
    ak.jsKernels.softmax(x.subarray(0, rows * cols), rows, cols, s1, false);
    native!.softmax(x.subarray(0, rows * cols), rows, cols, s2, false);
    assertClose(s2, s1, 'softmax', 1e-7, 1e-5);
    const w = randomArray(cols, 9);
    const r1 = new Float32Array(rows);
    const r2 = new Float32Array(rows);
    ak.jsKernels.rmsnorm(x, w, rows, cols, 1e-5, s1, r1);
    native!.rmsnorm(x, w, rows, cols, 1e-5, s2, r2);
    assertClose(s2, s1, 'rmsnorm', 1e-5, 1e-4);
    const dw1 = new Float32Array(cols);
    const dw2 = new Float32Array(cols);
    const g = randomArray(rows * cols, 11);
    const dx1 = new Float32Array(rows * cols);
    const dx2 = new Float32Array(rows * cols);
    ak.jsKernels.rmsnormBackward(x, w, r1, g, rows, cols, dx1, dw1);
    native!.rmsnormBackward(x, w, r1, g, rows, cols, dx2, dw2);
    assertClose(dx2, dx1, 'rmsnorm dx', 1e-5, 1e-4);
    assertClose(dw2, dw1, 'rmsnorm dw', 1e-3, 1e-4);
    // attention with GQA, a cache offset and padding
    const [B, H, Hkv, Tq, Tk, D] = [2, 4, 2, 7, 19, 16];
    const mask = new Float32Array(B * Tk).fill(1);
    mask[Tk + 3] = 0;
    const base = {
      q: randomArray(B * H * Tq * D, 20), k: randomArray(B * Hkv * Tk * D, 21), v: randomArray(B * Hkv * Tk * D, 22),
      batch: B, heads: H, kvHeads: Hkv, tq: Tq, tk: Tk, dim: D, scale: 0.25, causal: true, keyMask: mask,
    };
    const a1 = { ...base, out: new Float32Array(B * H * Tq * D), lse: new Float32Array(B * H * Tq) };
    const a2 = { ...base, out: new Float32Array(B * H * Tq * D), lse: new Float32Array(B * H * Tq) };
    ak.jsKernels.attention(a1);
    native!.attention(a2);
    assertClose(a2.out, a1.out, 'attention out', 1e-5, 1e-4);
    assertClose(a2.lse, a1.lse, 'attention lse', 1e-5, 1e-5);
    const gradOut = randomArray(B * H * Tq * D, 23);
    const mk = () => ({ dq: new Float32Array(B * H * Tq * D), dk: new Float32Array(B * Hkv * Tk * D), dv: new Float32Array(B * Hkv * Tk * D) });
    const b1 = { ...a1, gradOut, ...mk() };
    const b2 = { ...a1, gradOut, ...mk() };
    ak.jsKernels.attentionBackward(b1);
    native!.attentionBackward(b2);
    assertClose(b2.dq, b1.dq, 'attention dq', 1e-5, 1e-4);
    assertClose(b2.dk, b1.dk, 'attention dk', 1e-5, 1e-4);
    assertClose(b2.dv, b1.dv, 'attention dv', 1e-5, 1e-4);
  });

  it('rejects arguments that would read or write out of bounds, without crashing', () => {
    const small = new Float32Array(4);
    assert.throws(
      () => native!.matmul({ a: small, b: small, out: small, batch: 1, m: 3, n: 3, k: 3, lda: 3, ldb: 3, transA: false, transB: false, strideA: 0, strideB: 0, accumulate: false }),
      /matmul \(native\): out holds 4 elements, 9 needed/,
    );
    assert.throws(() => native!.unary('exp', new Float32Array(8), small), /unary \(native\): out holds 4/);
    assert.throws(() => native!.indexSelect(small, 1, 4, 1, new Int32Array([7]), small), /index 7 out of range/);
    assert.throws(() => native!.binary('add', [2, 3], { data: small, offset: 0, strides: [3, 1] }, { data: small, offset: 0, strides: [0, 0] }, new Float32Array(6)), /a is too short/);
    assert.throws(() => native!.crossEntropy(small, new Int32Array([9]), 1, 4, -100, small, small), /target 9 out of range/);
    assert.throws(() => native!.setThreads(0), /thread count/);
    // wrong types are caught by the addon itself
    assert.throws(() => (native!.softmax as any)(new Int32Array(4), 1, 4, small, false), /must be a Float32Array/);
  });

  it('reports its SIMD kernel and a positive FMA peak', () => {
    assert.match(native!.simd, /^(avx512|avx2|generic)$/);
    assert.ok(native!.fmaPeakGflops(1, 0.02) > 0);
  });
});

describe('native failures are errors, not aborts', { skip: native ? false : `not built: ${ak.nativeLoadError()}` }, () => {
  const root = fileURLToPath(new URL('..', import.meta.url));
  const fixture = fileURLToPath(new URL('./fixtures/native-failures.ts', import.meta.url));
  type Case = { case: string; error?: string | null; type?: string; ok?: boolean; threads?: number; code?: number };

  // In a child process, so an abort fails the test instead of killing the runner.
  function runFixture(mode: string, env: NodeJS.ProcessEnv = {}): Map<string, Case> {
    const r = spawnSync(process.execPath, ['--import', 'tsx', fixture, mode], {
      cwd: root, encoding: 'utf8', env: { ...process.env, ...env }, timeout: 120_000,
    });
    assert.equal(r.error, undefined, `the child did not run: ${r.error}`);
    assert.equal(r.signal, null, `the child died of ${r.signal}:\n${r.stdout}\n${r.stderr}`);
    assert.equal(r.status, 0, `the child exited with ${r.status}:\n${r.stdout}\n${r.stderr}`);
    const cases = new Map<string, Case>();
    for (const line of r.stdout.split('\n')) {
      if (!line.startsWith('{')) continue;
      const c = JSON.parse(line) as Case;
      cases.set(c.case, c);
    }
    return cases;
  }
  function get(cases: Map<string, Case>, name: string): Case {
    const c = cases.get(name);
    assert.ok(c, `the child reported nothing for "${name}"`);
    return c;
  }
  let oom: Map<string, Case> | undefined;
  const oomCases = () => (oom ??= runFixture('oom'));

  it('attention whose scratch cannot be allocated throws an AdaptkitError naming the op, then computes as before', () => {
    const cases = oomCases();
    for (const op of ['attention', 'attentionBackward']) {
      const c = get(cases, `${op} huge scratch`);
      assert.equal(c.type, 'AdaptkitError', `${op}: ${c.error}`);
      assert.match(c.error ?? '', new RegExp(`^${op} \\(native\\): cannot allocate .+ of scratch for T=4194304 \\(`));
    }
    assert.equal(get(cases, 'after scratch failure').ok, true);
  });

  it('setThreads refuses counts outside [1, max] before they reach the thread pool', () => {
    const cases = oomCases();
    for (const n of ['1024', '0', '1.5', 'NaN']) {
      const c = get(cases, `setThreads ${n}`);
      assert.equal(c.type, 'AdaptkitError', `setThreads(${n}): ${c.error}`);
      assert.match(c.error ?? '', new RegExp(`^setThreads \\(native\\): thread count must be an integer in \\[1, \\d+\\], got ${n}$`));
    }
    assert.deepEqual(get(cases, 'after bad thread counts'), { case: 'after bad thread counts', ok: true, threads: 3 });
  });

  it('absurd extents next to an empty one return at once instead of looping for 2^53 steps', () => {
    const cases = oomCases();
    assert.equal(get(cases, 'empty extents').ok, true);
    assert.match(get(cases, 'copy through zero strides').error ?? '', /^copy \(native\): dst view has \d+ elements, its buffer 1$/);
  });

  it('adaptkit --threads 1024 fails with the range instead of starting 1024 threads', () => {
    const c = get(runFixture('cli'), 'cli --threads 1024');
    assert.equal(c.code, 1);
    assert.match(c.error ?? '', /^adaptkit: .*thread count must be an integer in \[1, \d+\], got 1024$/);
  });

  it('threads the OS refuses to create are an error; the pool falls back and keeps computing', { skip: process.platform !== 'linux' && 'needs LD_PRELOAD' }, (t) => {
    const dir = mkdtempSync(join(tmpdir(), 'adaptkit-native-'));
    try {
      const so = join(dir, 'fail-thread-create.so');
      const cc = spawnSync(process.env.CC ?? 'cc', ['-shared', '-fPIC', '-O1', '-o', so, join(root, 'test', 'fixtures', 'fail-thread-create.c'), '-ldl'], { encoding: 'utf8' });
      if (cc.status !== 0) {
        t.skip(`no C compiler for the preload: ${cc.error?.message ?? cc.stderr}`);
        return;
      }
      const cases = runFixture('threads', { LD_PRELOAD: [so, process.env.LD_PRELOAD].filter(Boolean).join(' ') });
      // loading the addon could not start its workers either: it runs on the calling thread
      assert.equal(get(cases, 'threads at load').threads, 1);
      const c = get(cases, 'setThreads 8');
      assert.equal(c.type, 'AdaptkitError', c.error ?? '');
      assert.match(c.error ?? '', /^setThreads \(native\): cannot start 8 threads \(.+\); 1 running$/);
      assert.equal(get(cases, 'after thread creation failure').ok, true);
      assert.equal(get(cases, 'one thread').ok, true);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
