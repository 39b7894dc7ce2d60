/**
 * Open a model by path: a Hugging Face folder (config.json + safetensors), a llama2.c `.bin` or a
 * GGUF file (told apart by its magic bytes).
 */
import { existsSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { AdaptkitError } from '../tensor/index.js';
import { WeightSource } from '../io/safetensors.js';
import { llama2cHfConfig, readLlama2c } from '../io/llama2c.js';
import { Llama2cTokenizer } from '../io/tokenizer-llama2c.js';
import { HfTokenizer } from '../io/tokenizer-hf.js';
import { ggufTokenizer } from '../io/tokenizer-gguf.js';
import { isGgufFile, loadGgufModel } from './gguf.js';
import { describeModel } from '../nn/index.js';
import { type RawConfig, readConfigFile } from './config.js';
import type { LlamaForCausalLM } from './llama/model.js';
import type { GPT2LMHeadModel } from './gpt2/model.js';
import type { BertForSequenceClassification } from './bert/model.js';
import { WeightMap } from './weights.js';
import type { Tokenizer } from './tokenizer.js';
import { familyFor } from './registry.js';
import { bnbQuantization, installPacked, readBnbWeights } from './bnb.js';
import { type QuantizeModelOptions, type QuantizeReport, quantizeModel } from './quantize.js';
import './families.js';

export type CausalModel = LlamaForCausalLM | GPT2LMHeadModel;
export type AnyModel = CausalModel | BertForSequenceClassification;

export function readConfig(dir: string): RawConfig {
  const path = join(dir, 'config.json');
  if (!existsSync(path)) throw new AdaptkitError(`${dir}: no config.json`);
  return readConfigFile(path);
}

export interface LoadedModel<M = CausalModel> {
  model: M;
  config: RawConfig;
  /** Weights in the checkpoint that no module used. */
  unused: string[];
  /** What `quantize` did, when it was given. */
  quantized?: QuantizeReport;
  /** Linear layers read packed from a bitsandbytes checkpoint, and their bits. */
  bnb?: { layers: number; bits: 4 | 8 };
}

export interface LoadOptions {
  /** Quantize the float linear layers into this format once loaded (see quantizeModel). */
  quantize?: string;
  quantizeOptions?: QuantizeModelOptions;
}

/** A causal language model (Llama family, GPT-2). */
export function loadModel(path: string, opts: LoadOptions = {}): LoadedModel {
  const r = loadAnyModel(path, opts);
  const d = describeModel(r.model);
  if (d.task !== 'causal-lm') throw new AdaptkitError(`${path}: a ${d.family} ${d.task} model is not a causal language model`);
  return r as LoadedModel;
}

/** Any supported model, including encoders (BERT); `quantize` quantizes its linear layers once loaded. */
export function loadAnyModel(path: string, opts: LoadOptions = {}): LoadedModel<AnyModel> {
  const r = loadFloatOrPacked(path);
  if (opts.quantize === undefined) return r;
  if (r.bnb) throw new AdaptkitError(`${path} is already quantized by bitsandbytes (${r.bnb.bits}-bit); load it without --quantize`);
  return { ...r, quantized: quantizeModel(r.model, opts.quantize, opts.quantizeOptions) };
}

function loadFloatOrPacked(path: string): LoadedModel<AnyModel> {
  if (!existsSync(path)) throw new AdaptkitError(`model not found: ${path}`);
  if (statSync(path).isFile()) {
    if (isGgufFile(path)) return loadGgufModel(path);
    const ckpt = readLlama2c(path);
    const raw = llama2cHfConfig(ckpt.config);
    const w = WeightMap.fromMap(ckpt.weights, path);
    const model = familyFor(String(raw.model_type), path).build(raw, w, path) as AnyModel;
    return { model, config: raw, unused: w.unused() };
  }
  const raw = readConfig(path);
  const type = String(raw.model_type ?? '');
  const src = new WeightSource(path);
  try {
    const bnb = bnbQuantization(raw, join(path, 'config.json'));
    const read = bnb ? readBnbWeights(src, bnb, path) : null;
    const w = new WeightMap((n) => (src.has(n) ? src.read(n) : undefined), src.keys(), path, read?.packed);
    if (read) w.markUsed(read.state);
    const family = familyFor(type, path);
    const model = family.build(raw, w, path) as AnyModel;
    const layers = bnb ? installPacked(model, w, bnb.threshold) : 0;
    return { model, config: raw, unused: w.unused().filter((n) => !family.ignoresWeight?.(n)), ...(bnb ? { bnb: { layers, bits: bnb.bits } } : {}) };
  } finally {
    src.close();
  }
}

/** A tokenizer for a model: an explicit llama2.c tokenizer.bin, or the one in an HF folder. */
export function loadTokenizer(modelPath: string, tokenizerPath: string | undefined, vocabSize: number): Tokenizer {
  if (tokenizerPath) {
    if (!existsSync(tokenizerPath)) throw new AdaptkitError(`tokenizer not found: ${tokenizerPath}`);
    if (tokenizerPath.endsWith('.bin')) return Llama2cTokenizer.fromFile(tokenizerPath, vocabSize);
  }
  const gguf = tokenizerPath ?? modelPath;
  if (isGgufFile(gguf)) return ggufTokenizer(gguf);
  const dir = tokenizerPath ?? modelPath;
  if (existsSync(join(dir, 'tokenizer.json'))) return HfTokenizer.fromDir(dir);
  if (existsSync(join(dir, 'tokenizer.bin'))) return Llama2cTokenizer.fromFile(join(dir, 'tokenizer.bin'), vocabSize);
  throw new AdaptkitError(`no tokenizer found for ${modelPath}: pass --tokenizer (a llama2.c tokenizer.bin or an HF folder)`);
}
