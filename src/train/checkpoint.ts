/**
 * Crash-safe checkpoints: each is a folder written under a temporary name and renamed into place,
 * so a checkpoint either exists whole or not at all (a full disk leaves the previous one intact).
 * The newest `keep` checkpoints are kept.
 */
import { existsSync, mkdirSync, readFileSync, readdirSync, renameSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { AdaptkitError, type Tensor, fromBuffer } from '../tensor/index.js';
import { WriteError, fsyncDir, writeError, writeFileAtomic } from '../io/atomic.js';
import { readSafetensors, serializeSafetensors } from '../io/safetensors.js';
import type { OptimizerState } from './optim.js';

export const CHECKPOINTS = 'checkpoints';
const STATE = 'trainer_state.json';
const STEP_DIR = /^step-\d{8}$/;
/** Folders of a write or a deletion that a kill interrupted; nothing else in the checkpoint root matches. */
const TEMP_DIR = /^\.tmp-(?:old-)?step-\d{8}-[0-9a-f]{8}$/;

function stepDir(step: number): string {
  return `step-${String(step).padStart(8, '0')}`;
}

function suffix(): string {
  return randomBytes(4).toString('hex');
}

/**
 * Delete a checkpoint folder without ever exposing a half-deleted one under its step name (a kill in
 * the middle of a recursive delete could leave trainer_state.json behind without the weights): move
 * it to a temporary name first, which `removeStaleTemps` clears if the delete does not finish.
 */
function discard(root: string, name: string): void {
  const trash = join(root, `.tmp-old-${name}-${suffix()}`);
  renameSync(join(root, name), trash);
  rmSync(trash, { recursive: true, force: true });
}

/** Sizes of the files under `dir`, so a later load can tell a complete checkpoint from a damaged one. */
function fileSizes(dir: string): Record<string, number> {
  const out: Record<string, number> = {};
  for (const rel of readdirSync(dir, { recursive: true, encoding: 'utf8' }).sort()) {
    const st = statSync(join(dir, rel));
    if (st.isFile()) out[rel] = st.size;
  }
  return out;
}

/** The error of a failed checkpoint write, naming the file as it would have been called in the finished checkpoint. */
function checkpointError(e: unknown, tmp: string, final: string): AdaptkitError {
  if (e instanceof WriteError) return new WriteError(e.path.replace(tmp, final), e.reason, e.code, { cause: e.cause ?? e });
  if (e instanceof AdaptkitError) return e;
  const path = (e as NodeJS.ErrnoException | undefined)?.path;
  return writeError(typeof path === 'string' ? path.replace(tmp, final) : final, e);
}

/**
 * Write a checkpoint: `writeModel(dir)` writes the trainable weights, the rest is written here. A
 * failure throws an AdaptkitError naming the file, removes the partial folder and leaves the
 * earlier checkpoints as they were.
 */
export function saveCheckpoint(
  runDir: string, step: number, writeModel: (dir: string) => void, optim: OptimizerState, state: Record<string, unknown>, keep: number,
): string {
  const root = join(runDir, CHECKPOINTS);
  const name = stepDir(step);
  const final = join(root, name);
  const tmp = join(root, `.tmp-${name}-${suffix()}`);
  try {
    mkdirSync(root, { recursive: true });
    mkdirSync(tmp);
    writeModel(tmp);
    const tensors: Record<string, Tensor> = {};
    for (const [k, list] of Object.entries(optim.buffers)) list.forEach((a, i) => (tensors[`${k}.${i}`] = fromBuffer(a, [a.length])));
    writeFileAtomic(join(tmp, 'optimizer.safetensors'), serializeSafetensors(tensors, { metadata: { step: String(optim.step) } }));
    // written last: a folder with this file in it holds everything listed in `files`
    writeFileAtomic(join(tmp, STATE), Buffer.from(JSON.stringify({ ...state, optimizer_step: optim.step, files: fileSizes(tmp) }, null, 1)));
    if (existsSync(final)) discard(root, name);
    renameSync(tmp, final);
  } catch (e) {
    rmSync(tmp, { recursive: true, force: true });
    throw checkpointError(e, tmp, final);
  }
  fsyncDir(root);
  const all = listCheckpoints(runDir);
  try {
    for (const old of all.slice(0, Math.max(0, all.length - keep))) discard(root, stepDir(old));
  } catch (e) {
    throw writeError(root, e);
  }
  return final;
}

/**
 * Remove the temporary folders that killed checkpoint writes and deletions leave behind. Only
 * this module's own temporary names are touched; call it when no checkpoint is being written.
 */
export function removeStaleTemps(runDir: string): string[] {
  const root = join(runDir, CHECKPOINTS);
  if (!existsSync(root)) return [];
  const stale = readdirSync(root).filter((d) => TEMP_DIR.test(d));
  for (const d of stale) rmSync(join(root, d), { recursive: true, force: true });
  return stale;
}

/** Steps of checkpoint folders, oldest first (temporary folders of interrupted writes are ignored). */
export function listCheckpoints(runDir: string): number[] {
  const root = join(runDir, CHECKPOINTS);
  if (!existsSync(root)) return [];
  return readdirSync(root)
    .filter((d) => STEP_DIR.test(d) && existsSync(join(root, d, STATE)))
    .map((d) => Number(d.slice(5)))
    .sort((a, b) => a - b);
}

export interface LoadedCheckpoint {
  dir: string;
  step: number;
  state: Record<string, unknown>;
  optim: OptimizerState;
}

/** Read one checkpoint, checking that every file it was written with is there at its size. */
function readCheckpoint(dir: string): Omit<LoadedCheckpoint, 'step'> {
  const state = JSON.parse(readFileSync(join(dir, STATE), 'utf8')) as Record<string, unknown>;
  const files = (state.files as Record<string, number> | undefined) ?? { 'optimizer.safetensors': -1 };
  for (const [rel, size] of Object.entries(files)) {
    const p = join(dir, rel);
    if (!existsSync(p)) throw new AdaptkitError(`${p} is missing`);
    const actual = statSync(p).size;
    if (size >= 0 && actual !== size) throw new AdaptkitError(`${p} has ${actual} bytes, ${size} were written`);
  }
  const { tensors } = readSafetensors(join(dir, 'optimizer.safetensors'));
  const buffers: Record<string, Float32Array[]> = {};
  for (const [k, t] of Object.entries(tensors)) {
    const [name, idx] = k.split('.') as [string, string];
    (buffers[name] ??= [])[Number(idx)] = t.toArray() as Float32Array;
  }
  return { dir, state, optim: { step: Number(state.optimizer_step ?? 0), buffers } };
}

/**
 * Load checkpoint `step`, or the newest complete one. A damaged newest checkpoint is skipped with a
 * warning, so a resume never continues from a partial state.
 */
export function loadCheckpoint(runDir: string, step?: number): LoadedCheckpoint {
  const steps = step === undefined ? listCheckpoints(runDir).reverse() : [step];
  const problems: string[] = [];
  for (const s of steps) {
    const dir = join(runDir, CHECKPOINTS, stepDir(s));
    try {
      return { ...readCheckpoint(dir), step: s };
    } catch (e) {
      const why = `${dir}: ${(e as Error).message}`;
      if (step !== undefined) throw new AdaptkitError(`cannot load checkpoint ${why}`);
      problems.push(why);
      process.emitWarning(`skipping a damaged checkpoint: ${why}`, { code: 'ADAPTKIT_CHECKPOINT' });
    }
  }
  throw new AdaptkitError(`${runDir}: no checkpoint to resume from${problems.length ? ` (damaged: ${problems.join('; ')})` : ''}`);
}
