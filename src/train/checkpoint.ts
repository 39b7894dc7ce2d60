/**
 * Crash-safe checkpoints: each is a folder written under a temporary name and renamed into place,
 * so a checkpoint either exists whole or not at all (a full disk leaves the previous one intact).
 * The newest `keep` checkpoints are kept.
 */
import { existsSync, mkdirSync, readFileSync, readdirSync, renameSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { AdaptkitError, type Tensor, fromBuffer } from '../tensor/index.js';
import { writeFileAtomic } from '../io/atomic.js';
import { readSafetensors, serializeSafetensors } from '../io/safetensors.js';
import type { OptimizerState } from './optim.js';

export const CHECKPOINTS = 'checkpoints';

function stepDir(step: number): string {
  return `step-${String(step).padStart(8, '0')}`;
}

/** Write a checkpoint: `writeModel(dir)` writes the trainable weights, the rest is written here. */
export function saveCheckpoint(
  runDir: string, step: number, writeModel: (dir: string) => void, optim: OptimizerState, state: Record<string, unknown>, keep: number,
): string {
  const root = join(runDir, CHECKPOINTS);
  mkdirSync(root, { recursive: true });
  const final = join(root, stepDir(step));
  const tmp = join(root, `.tmp-${stepDir(step)}-${randomBytes(4).toString('hex')}`);
  mkdirSync(tmp);
  try {
    writeModel(tmp);
    const tensors: Record<string, Tensor> = {};
    for (const [name, list] of Object.entries(optim.buffers)) list.forEach((a, i) => (tensors[`${name}.${i}`] = fromBuffer(a, [a.length])));
    writeFileAtomic(join(tmp, 'optimizer.safetensors'), serializeSafetensors(tensors, { metadata: { step: String(optim.step) } }));
    writeFileAtomic(join(tmp, 'trainer_state.json'), Buffer.from(JSON.stringify({ ...state, optimizer_step: optim.step }, null, 1)));
    if (existsSync(final)) rmSync(final, { recursive: true, force: true });
    renameSync(tmp, final);
  } catch (e) {
    rmSync(tmp, { recursive: true, force: true });
    throw e;
  }
  const all = listCheckpoints(runDir);
  for (const old of all.slice(0, Math.max(0, all.length - keep))) rmSync(join(root, stepDir(old)), { recursive: true, force: true });
  return final;
}

/** Steps of complete checkpoints, oldest first (temporary folders of interrupted writes are ignored). */
export function listCheckpoints(runDir: string): number[] {
  const root = join(runDir, CHECKPOINTS);
  if (!existsSync(root)) return [];
  return readdirSync(root)
    .filter((d) => /^step-\d{8}$/.test(d) && existsSync(join(root, d, 'trainer_state.json')))
    .map((d) => Number(d.slice(5)))
    .sort((a, b) => a - b);
}

export interface LoadedCheckpoint {
  dir: string;
  state: Record<string, unknown>;
  optim: OptimizerState;
}

export function loadCheckpoint(runDir: string, step?: number): LoadedCheckpoint {
  const steps = listCheckpoints(runDir);
  const s = step ?? steps[steps.length - 1];
  if (s === undefined) throw new AdaptkitError(`${runDir}: no checkpoint to resume from`);
  const dir = join(runDir, CHECKPOINTS, stepDir(s));
  const state = JSON.parse(readFileSync(join(dir, 'trainer_state.json'), 'utf8')) as Record<string, unknown>;
  const { tensors } = readSafetensors(join(dir, 'optimizer.safetensors'));
  const buffers: Record<string, Float32Array[]> = {};
  for (const [k, t] of Object.entries(tensors)) {
    const [name, idx] = k.split('.') as [string, string];
    (buffers[name] ??= [])[Number(idx)] = t.toArray() as Float32Array;
  }
  return { dir, state, optim: { step: Number(state.optimizer_step ?? 0), buffers } };
}
