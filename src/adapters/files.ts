/**
 * PEFT adapter folders: adapter_config.json and adapter_model.safetensors, and the key scheme
 * of the saved tensors. Folders are untrusted input: only regular files of bounded size are read.
 */
import { closeSync, fstatSync, openSync, readSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { AdaptkitError, type Tensor } from '../tensor/index.js';
import { SafetensorsFile } from '../io/safetensors.js';
import type { RawAdapterConfig } from './types.js';

/** PEFT saves tuner weights as `base_model.model.<module path>.<parameter path>`. */
export const PEFT_MODEL_PREFIX = 'base_model.model.';

export function peftKey(path: string, param: string): string {
  return `${PEFT_MODEL_PREFIX}${path}.${param}`;
}

/** The module path and parameter name of a saved key under a known parameter name, or null. */
export function splitPeftKey(key: string, param: string): string | null {
  if (!key.startsWith(PEFT_MODEL_PREFIX) || !key.endsWith(`.${param}`)) return null;
  return key.slice(PEFT_MODEL_PREFIX.length, key.length - param.length - 1);
}

export const MAX_CONFIG_BYTES = 1 << 20;

/** A regular file's size; FIFOs, devices, sockets and folders are refused with a clear error. */
export function regularFileSize(path: string, what: string): number {
  let st;
  try {
    st = statSync(path);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new AdaptkitError(code === 'ENOENT' ? `${path}: no ${what}` : `${path}: cannot read the ${what} (${code ?? (e as Error).message})`);
  }
  if (!st.isFile()) throw new AdaptkitError(`${path}: the ${what} is not a regular file`);
  return st.size;
}

export function readAdapterConfig(dir: string): RawAdapterConfig {
  let dst;
  try {
    dst = statSync(dir);
  } catch {
    throw new AdaptkitError(`${dir}: no such adapter folder`);
  }
  if (!dst.isDirectory()) throw new AdaptkitError(`${dir}: not a folder (an adapter is a folder with adapter_config.json and adapter_model.safetensors)`);
  const path = join(dir, 'adapter_config.json');
  const size = regularFileSize(path, 'adapter_config.json');
  if (size > MAX_CONFIG_BYTES) throw new AdaptkitError(`${path}: ${size} bytes, more than the ${MAX_CONFIG_BYTES} an adapter config may have`);
  const fd = openSync(path, 'r');
  let text: string;
  try {
    // read what the opened file holds, not what a stat before the open saw
    const n = Math.min(fstatSync(fd).size, MAX_CONFIG_BYTES + 1);
    const buf = Buffer.alloc(n);
    let got = 0;
    while (got < n) {
      const r = readSync(fd, buf, got, n - got, got);
      if (r === 0) break;
      got += r;
    }
    if (got > MAX_CONFIG_BYTES) throw new AdaptkitError(`${path}: more than the ${MAX_CONFIG_BYTES} bytes an adapter config may have`);
    text = buf.toString('utf8', 0, got);
  } finally {
    closeSync(fd);
  }
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (e) {
    throw new AdaptkitError(`${path}: not valid JSON (${(e as Error).message})`);
  }
  if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) {
    throw new AdaptkitError(`${path}: must be a JSON object, got ${raw === null ? 'null' : Array.isArray(raw) ? 'a list' : typeof raw}`);
  }
  return raw as RawAdapterConfig;
}

export function adapterWeightsFile(dir: string): string {
  const file = join(dir, 'adapter_model.safetensors');
  regularFileSize(file, 'adapter_model.safetensors');
  return file;
}

/** Every tensor of a safetensors file, by name. */
export function readTensorMap(file: string): Map<string, Tensor> {
  const f = new SafetensorsFile(file);
  const out = new Map<string, Tensor>();
  try {
    for (const k of f.keys()) out.set(k, f.read(k));
  } finally {
    f.close();
  }
  return out;
}

/** Instances whose saved keys are `base_model.model.<path>.<parameter path in the delta>`. */
export function deltaStateDict(deltas: Map<string, { namedParameters(): [string, Tensor][] }>): Map<string, Tensor> {
  const out = new Map<string, Tensor>();
  for (const [p, d] of deltas) for (const [k, t] of d.namedParameters()) out.set(peftKey(p, k), t);
  return out;
}
