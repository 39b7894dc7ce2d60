/**
 * Runs one format's mutants in sequence and reports each outcome to the parent over IPC; the parent
 * watches the clock and the memory, and kills and restarts this process on a hang.
 *
 * Run by hand to reproduce one mutant (its files are kept and its stack printed):
 *   node --import tsx test/fuzz/child.ts <format> <index> [base seed]
 */
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { AdaptkitError } from '../../src/tensor/index.js';
import { BadOutput, type FormatCtx, formatByName } from './formats.js';
import { DEFAULT_SEED, Rng, seedFor } from './mutate.js';

export type Status = 'ok' | 'clear' | 'unclear' | 'bad-output';

export interface Result {
  type: 'result';
  index: number;
  id: string;
  desc: string;
  status: Status;
  reason?: string;
  message?: string;
  where?: string;
  ms: number;
  rss: number;
}

const MAX_MESSAGE = 2000;

function clip(s: string, n: number): string {
  return s.length > n ? `${s.slice(0, n)}… (${s.length} chars)` : s;
}

/** The first stack frames, to tell two errors with the same message apart (node_modules frames included). */
function where(e: Error): string {
  const frames = (e.stack ?? '').split('\n').slice(1).map((l) => l.trim().replace(/^at /, '')).filter((l) => !l.includes('test/fuzz/'));
  return frames.slice(0, 2).map((f) => f.replace(/\(?(file:\/\/)?\/[^)]*\/(src|node_modules)\//, '$2/').replace(/\)$/, '')).join(' < ');
}

export function classify(e: unknown, names: string[]): Pick<Result, 'status' | 'reason' | 'message' | 'where'> {
  if (!(e instanceof Error)) return { status: 'unclear', reason: 'threw a non-Error value', message: clip(String(e), 400) };
  const message = clip(e.message, 400);
  if (e instanceof BadOutput) return { status: 'bad-output', reason: 'loaded, but gave unusable output', message };
  if (!(e instanceof AdaptkitError)) return { status: 'unclear', reason: `raw ${e.name}`, message, where: where(e) };
  const cause = (e as { cause?: unknown }).cause;
  if (cause instanceof Error && !(cause instanceof AdaptkitError)) {
    return { status: 'unclear', reason: `AdaptkitError passing a raw ${cause.name} through`, message, where: where(cause) };
  }
  if (!names.some((n) => e.message.includes(n))) return { status: 'unclear', reason: 'AdaptkitError that does not name the file', message, where: where(e) };
  if (e.message.length > MAX_MESSAGE) return { status: 'unclear', reason: `message of ${e.message.length} characters`, message, where: where(e) };
  return { status: 'clear', message };
}

export function mutantAt(ctx: FormatCtx, format: string, base: number, index: number) {
  const F = ctx.fixed.length;
  if (index < F) return { id: `${format} fixed "${ctx.fixed[index]!.name}"`, mutant: ctx.fixed[index]!.make() };
  return { id: `${format}#${index}`, mutant: ctx.random(new Rng(seedFor(base, format, index))) };
}

function runOne(ctx: FormatCtx, format: string, base: number, index: number, currentFile?: string): Result & { error?: unknown } {
  const { id, mutant } = mutantAt(ctx, format, base, index);
  const desc = clip(mutant.desc, 300);
  // written before the load so the parent can name the mutant that hung or crashed
  if (currentFile) writeFileSync(currentFile, JSON.stringify({ index, id, desc }));
  const target = ctx.target(mutant.seed);
  writeFileSync(target.file, mutant.bytes);
  const t0 = performance.now();
  let out: Pick<Result, 'status' | 'reason' | 'message' | 'where'> = { status: 'ok' };
  let error: unknown;
  try {
    ctx.load(mutant.seed);
  } catch (e) {
    error = e;
    out = classify(e, target.names);
  }
  const ms = performance.now() - t0;
  return { type: 'result', index, id, desc, ...out, ms, rss: process.memoryUsage().rss, error };
}

function main(): void {
  const args = process.argv.slice(2);
  const format = args[0];
  if (!format) throw new Error('usage: child.ts <format> <index> [base seed]');
  const spec = formatByName(format);
  if (process.send) {
    const [, startArg, countArg, baseArg, work] = args;
    const base = Number(baseArg);
    const ctx = spec.setup(work!);
    const total = ctx.fixed.length + Number(countArg);
    process.send({ type: 'ready', fixed: ctx.fixed.length, total });
    for (let i = Number(startArg); i < total; i++) {
      const { error: _, ...r } = runOne(ctx, format, base, i, join(work!, 'current.json'));
      process.send(r);
    }
    process.send({ type: 'done' }, () => process.exit(0));
    return;
  }
  // by hand: one mutant, files kept
  const base = Number(args[2] ?? DEFAULT_SEED);
  const dir = mkdtempSync(join(tmpdir(), `adaptkit-fuzz-${format.replace(/\W/g, '')}-`));
  const ctx = spec.setup(dir);
  const r = runOne(ctx, format, base, Number(args[1] ?? 0));
  const { error, ...shown } = r;
  console.log(JSON.stringify(shown, null, 1));
  console.log(`files kept in ${dir}`);
  if (error instanceof Error) console.log(error.stack);
}

main();
