/** Reading PEFT adapter folders: adapter_config.json and adapter_model.safetensors. */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { AdaptkitError, type Tensor } from '../tensor/index.js';
import { SafetensorsFile } from '../io/safetensors.js';
import type { RawAdapterConfig } from './types.js';

export function readAdapterConfig(dir: string): RawAdapterConfig {
  const path = join(dir, 'adapter_config.json');
  if (!existsSync(path)) throw new AdaptkitError(`${dir}: no adapter_config.json`);
  try {
    return JSON.parse(readFileSync(path, 'utf8')) as RawAdapterConfig;
  } catch (e) {
    throw new AdaptkitError(`${path}: not valid JSON (${(e as Error).message})`);
  }
}

export function adapterWeightsFile(dir: string): string {
  const file = join(dir, 'adapter_model.safetensors');
  if (!existsSync(file)) throw new AdaptkitError(`${dir}: no adapter_model.safetensors`);
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
  for (const [p, d] of deltas) for (const [k, t] of d.namedParameters()) out.set(`base_model.model.${p}.${k}`, t);
  return out;
}
