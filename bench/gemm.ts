/**
 * SGEMM throughput: native at 1 and 2 threads, the js backend at 1 thread, next to the machine's
 * FMA peak measured by the addon and (when Debian's python3-torch is installed) PyTorch on the
 * same shapes in the same run. One JSON object per line.
 */
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { jsKernels, nativeBackend, nativeLoadError, type KernelSet, type MatmulArgs } from '../src/index.js';
import { emit, medianSeconds } from './timing.js';

/** m x k x n */
export const GEMM_SHAPES: [number, number, number][] = [
  [256, 256, 256], [1024, 1024, 1024], [2048, 2048, 2048],
  [512, 768, 3072], [512, 3072, 768],
  [512, 768, 8], [512, 8, 768],
];

function args(m: number, k: number, n: number): MatmulArgs {
  const a = new Float32Array(m * k).map((_, i) => Math.sin(i) * 0.5);
  const b = new Float32Array(k * n).map((_, i) => Math.cos(i) * 0.5);
  return { a, b, out: new Float32Array(m * n), batch: 1, m, n, k, lda: k, ldb: n, transA: false, transB: false, strideA: 0, strideB: 0, accumulate: false };
}

function gflops(kernels: KernelSet, m: number, k: number, n: number, budget: number): number {
  const p = args(m, k, n);
  const s = medianSeconds(() => kernels.matmul(p), budget, 3);
  return (2 * m * k * n) / s / 1e9;
}

const TORCH_SCRIPT = `
import json, sys, time, torch
shapes = json.loads(sys.argv[1]); threads = int(sys.argv[2])
torch.set_num_threads(threads)
for m, k, n in shapes:
    a = torch.randn(m, k); b = torch.randn(k, n); c = torch.empty(m, n)
    torch.mm(a, b, out=c)
    ts = []
    t_end = time.perf_counter() + 0.5
    while len(ts) < 3 or (time.perf_counter() < t_end and len(ts) < 200):
        t0 = time.perf_counter(); torch.mm(a, b, out=c); ts.append(time.perf_counter() - t0)
    ts.sort()
    print(json.dumps({"m": m, "k": k, "n": n, "gflops": 2 * m * k * n / ts[len(ts) // 2] / 1e9}))
`;

function torchBaseline(threads: number): { m: number; k: number; n: number; gflops: number }[] | null {
  const py = '/usr/bin/python3';
  if (!existsSync(py)) return null;
  // this machine pins OpenBLAS to Haswell kernels for old-library safety; the baseline runs unpinned
  const env = { ...process.env };
  delete env.OPENBLAS_CORETYPE;
  delete env.OPENBLAS_L2_SIZE;
  const r = spawnSync(py, ['-c', TORCH_SCRIPT, JSON.stringify(GEMM_SHAPES), String(threads)], { env, encoding: 'utf8' });
  if (r.status !== 0) return null;
  return r.stdout.trim().split('\n').map((l) => JSON.parse(l));
}

export interface GemmBenchOptions {
  js?: boolean;
  pytorch?: boolean;
  threads?: number[];
}

export function runGemmBench(opts: GemmBenchOptions = {}): void {
  const native = nativeBackend();
  const threadList = opts.threads ?? [1, 2];
  if (!native) {
    emit({ bench: 'gemm', backend: 'native', error: nativeLoadError() });
  } else {
    const before = native.threads();
    for (const t of threadList) {
      native.setThreads(t);
      const peak = native.fmaPeakGflops(t, 0.5);
      emit({ bench: 'gemm', peak_gflops: round(peak), threads: t, simd: native.simd });
      for (const [m, k, n] of GEMM_SHAPES) {
        const g = gflops(native, m, k, n, 0.5);
        emit({ bench: 'gemm', backend: 'native', threads: t, m, k, n, gflops: round(g), of_peak: round(g / peak, 3) });
      }
    }
    native.setThreads(before);
  }
  if (opts.pytorch !== false) {
    for (const t of threadList) {
      const rows = torchBaseline(t);
      if (!rows) {
        emit({ bench: 'gemm', backend: 'pytorch', threads: t, error: 'python3-torch not available' });
        break;
      }
      for (const r of rows) emit({ bench: 'gemm', backend: 'pytorch', threads: t, m: r.m, k: r.k, n: r.n, gflops: round(r.gflops) });
    }
  }
  if (opts.js !== false) {
    for (const [m, k, n] of GEMM_SHAPES) {
      emit({ bench: 'gemm', backend: 'js', threads: 1, m, k, n, gflops: round(gflops(jsKernels, m, k, n, 1.0)) });
    }
  }
}

function round(x: number, digits = 1): number {
  const f = 10 ** digits;
  return Math.round(x * f) / f;
}
