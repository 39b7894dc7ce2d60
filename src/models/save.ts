/** Write a model as a Hugging Face folder: config.json, model.safetensors, tokenizer files. */
import { copyFileSync, existsSync, mkdirSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { AdaptkitError, type Tensor } from '../tensor/index.js';
import type { Module } from '../nn/index.js';
import { writeFileAtomic } from '../io/atomic.js';
import { serializeSafetensors } from '../io/safetensors.js';
import { packedCheckpoint } from './quantize.js';

const TOKENIZER_FILES = ['tokenizer.json', 'tokenizer_config.json', 'special_tokens_map.json', 'tokenizer.model', 'generation_config.json', 'tokenizer.bin'];

export function saveModelFolder(
  model: Module, config: Record<string, unknown>, dir: string, opts: { copyFrom?: string; overwrite?: boolean } = {},
): void {
  if (existsSync(dir) && readdirSync(dir).length > 0 && !opts.overwrite) {
    throw new AdaptkitError(`${dir} is not empty (pass --overwrite to replace its files)`);
  }
  mkdirSync(dir, { recursive: true });
  const tensors: Record<string, Tensor> = {};
  for (const [k, t] of model.namedParameters()) tensors[k] = t;
  // quantized layers are written packed, with the quantization_config (if any) that says how
  const packed = packedCheckpoint(model);
  writeFileAtomic(join(dir, 'model.safetensors'), serializeSafetensors(tensors, { metadata: { format: 'pt' }, raw: packed?.tensors }));
  const { quantization_config: _old, ...rest } = config;
  const out = packed?.quantizationConfig ? { ...rest, quantization_config: packed.quantizationConfig } : rest;
  writeFileAtomic(join(dir, 'config.json'), Buffer.from(`${JSON.stringify(out, null, 2)}\n`));
  if (opts.copyFrom && existsSync(opts.copyFrom) && statSync(opts.copyFrom).isDirectory()) {
    for (const f of TOKENIZER_FILES) if (existsSync(join(opts.copyFrom, f))) copyFileSync(join(opts.copyFrom, f), join(dir, f));
  }
}
