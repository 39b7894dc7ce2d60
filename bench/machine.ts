/**
 * The machine a benchmark ran on, for every JSON line: CPU model, architecture, cores, cache
 * sizes, backend, SIMD path and threads, the measured FMA peak and copy bandwidth. Figures from
 * different machines can then be compared.
 */
import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { availableParallelism, cpus } from 'node:os';
import { join } from 'node:path';
import { getBackend, nativeBackend } from '../src/backend/index.js';

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}

function round(x: number, digits: number): number {
  const f = 10 ** digits;
  return Math.round(x * f) / f;
}

export function cacheSizes(): string | null {
  const base = '/sys/devices/system/cpu/cpu0/cache';
  if (!existsSync(base)) return null;
  const parts: string[] = [];
  for (const d of readdirSync(base).filter((n) => n.startsWith('index')).sort()) {
    try {
      const read = (f: string) => readFileSync(join(base, d, f), 'utf8').trim();
      const type = read('type');
      parts.push(`L${read('level')}${type === 'Data' ? 'd' : type === 'Instruction' ? 'i' : ''} ${read('size')}`);
    } catch {
      // an unreadable cache level is left out
    }
  }
  return parts.length ? parts.join(', ') : null;
}

/** Copy bandwidth of 64 MiB buffers (read + write), median of 5: what memory-bound steps can expect. */
export function copyBandwidthGBs(): number {
  const n = 1 << 23;
  const a = new Float64Array(n).fill(1);
  const b = new Float64Array(n);
  const times: number[] = [];
  for (let i = 0; i < 6; i++) {
    const t0 = process.hrtime.bigint();
    b.set(a);
    if (i > 0) times.push(Number(process.hrtime.bigint() - t0) / 1e9);
  }
  return (2 * 8 * n) / median(times) / 1e9;
}

/** The machine every line names: CPU, SIMD path, cores, caches, measured FMA peak and copy bandwidth. */
export function describeMachine(): Record<string, unknown> {
  const be = getBackend();
  const native = nativeBackend();
  const threads = native?.threads() ?? 1;
  return {
    cpu: cpus()[0]?.model ?? 'unknown',
    arch: process.arch,
    cores: availableParallelism(),
    caches: cacheSizes(),
    backend: be.name,
    simd: native?.simd ?? null,
    threads,
    fma_peak_gflops: native ? round(native.fmaPeakGflops(threads, 0.3), 1) : null,
    copy_bandwidth_gbs: round(copyBandwidthGBs(), 1),
    node: process.version,
  };
}

