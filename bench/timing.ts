import { describeMachine } from './machine.js';

/** Median wall time of fn over repeated runs (after one warm-up), spending about `budgetS` seconds. */
export function medianSeconds(fn: () => void, budgetS = 0.5, minReps = 3, maxReps = 200): number {
  fn();
  const times: number[] = [];
  const start = process.hrtime.bigint();
  while (times.length < maxReps) {
    const t0 = process.hrtime.bigint();
    fn();
    times.push(Number(process.hrtime.bigint() - t0) / 1e9);
    const spent = Number(process.hrtime.bigint() - start) / 1e9;
    if (times.length >= minReps && spent > budgetS) break;
  }
  times.sort((a, b) => a - b);
  return times[Math.floor(times.length / 2)]!;
}

let machine: Record<string, unknown> | null = null;

/** One JSON line of a benchmark, naming the machine it ran on (measured once per process). */
export function emit(obj: Record<string, unknown>): void {
  machine ??= describeMachine();
  process.stdout.write(`${JSON.stringify({ ...obj, machine })}\n`);
}
