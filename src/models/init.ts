/**
 * A randomly initialized model of any registered family, from a config.json alone: the family's
 * own builder runs on a weight map that makes each weight, with the shape the builder asks for,
 * as transformers initializes it (normal(0, initializer_range) for matrices, embeddings, tokens
 * and kernels; ones for the scales of norms; zeros for biases). Seeded, so the same config and
 * seed give the same bytes.
 */
import { existsSync, mkdirSync, readdirSync, renameSync, rmSync, statSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { AdaptkitError, Rng, type Tensor, ones, randn, zeros } from '../tensor/index.js';
import type { DescribedModel } from '../nn/index.js';
import { fsyncDir, writeError } from '../io/atomic.js';
import { preview } from '../io/json.js';
import { type RawConfig, readConfigFile } from './config.js';
import { familyFor } from './registry.js';
import { saveModelFolder } from './save.js';
import { WeightMap } from './weights.js';
import './families.js';

/** transformers' default `initializer_range`. */
const DEFAULT_INIT_STD = 0.02;

/** Weights made on request, each the first time a builder asks for it. */
class RandomWeights extends WeightMap {
  constructor(private readonly rng: Rng, private readonly std: number, private readonly absent: ReadonlySet<string>, source: string) {
    super(() => undefined, [], source);
  }

  override has(name: string): boolean {
    return !this.absent.has(name);
  }

  override get(name: string, shape: readonly number[]): Tensor {
    const leaf = name.split('.').pop();
    // in these architectures every 1-D weight is the scale of a LayerNorm or RMSNorm
    const t = leaf === 'bias' ? zeros(shape) : leaf === 'weight' && shape.length === 1 ? ones(shape) : randn(shape, { std: this.std, rng: this.rng });
    t.requiresGrad = false;
    t.kept = true;
    t.name = name;
    return t;
  }

  override unused(): string[] {
    return [];
  }
}

export interface InitOptions {
  seed?: number;
  /** Where the config came from, for messages. */
  source?: string;
}

/** A model of the config's `model_type` with fresh weights. */
export function initModel(raw: RawConfig, opts: InitOptions = {}): DescribedModel {
  const source = opts.source ?? 'config.json';
  const type = raw.model_type;
  if (typeof type !== 'string' || type === '') throw new AdaptkitError(`${source}: "model_type" is required to know which model to build (e.g. "vit", "llama", "gpt2", "bert")`);
  const std = raw.initializer_range ?? DEFAULT_INIT_STD;
  if (typeof std !== 'number' || !Number.isFinite(std) || std <= 0) throw new AdaptkitError(`${source}: "initializer_range" must be a positive number, got ${preview(std)}`);
  // a tied output head is the input embedding itself, not a weight of its own
  const absent = new Set(raw.tie_word_embeddings === true ? ['lm_head.weight'] : []);
  const w = new RandomWeights(new Rng(opts.seed ?? 0), std, absent, source);
  const family = familyFor(type, source);
  // builders name `<folder>/config.json` in their messages; here the config may have another name
  const named = join(dirname(source), 'config.json');
  try {
    return family.build(raw, w, dirname(source));
  } catch (e) {
    if (e instanceof AdaptkitError && named !== source && e.message.includes(named)) throw new AdaptkitError(e.message.split(named).join(source), { cause: e });
    throw e;
  }
}

export interface InitFolderOptions extends InitOptions {
  /** Replace a folder that already holds files. */
  overwrite?: boolean;
}

/**
 * Write a fresh model of the config at `configPath` as a Hugging Face folder (config.json and
 * model.safetensors) at `outDir`. The folder appears whole or not at all: it is written under a
 * temporary name beside `outDir` and renamed into place.
 */
export function initModelFolder(configPath: string, outDir: string, opts: InitFolderOptions = {}): DescribedModel {
  const raw = readConfigFile(configPath);
  if (existsSync(outDir)) {
    if (!statSync(outDir).isDirectory()) throw new AdaptkitError(`${outDir} is a file, not a folder`);
    if (readdirSync(outDir).length > 0 && !opts.overwrite) throw new AdaptkitError(`${outDir} is not empty (pass --overwrite to replace it)`);
  }
  const model = initModel(raw, { seed: opts.seed, source: configPath });
  const parent = dirname(outDir);
  const tmp = join(parent, `.${basename(outDir)}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`);
  const old = `${tmp}.old`;
  try {
    mkdirSync(parent, { recursive: true });
    saveModelFolder(model, raw, tmp);
    if (existsSync(outDir)) renameSync(outDir, old);
    renameSync(tmp, outDir);
  } catch (e) {
    rmSync(tmp, { recursive: true, force: true });
    if (existsSync(old) && !existsSync(outDir)) renameSync(old, outDir);
    throw writeError(outDir, e);
  }
  rmSync(old, { recursive: true, force: true });
  fsyncDir(parent);
  return model;
}
