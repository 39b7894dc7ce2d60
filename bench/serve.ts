/**
 * Serving throughput with many distinct LoRA adapters: generated tokens/s of the continuous-
 * batching engine with 1, 10, 100 and 1000 distinct adapters (rank 8) across the requests, next to
 * the baseline of merging each request's adapter into the base weights and generating alone.
 * Models: stories260K and a GPT-2-small-shaped random model. One JSON object per line.
 */
import { existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { AdapterModel } from '../src/adapters/index.js';
import { Rng, type Tensor, getBackend, randn, writeSafetensors } from '../src/index.js';
import { dataDir } from '../src/io/data.js';
import { writeFileAtomic } from '../src/io/atomic.js';
import { loadModel } from '../src/models/load.js';
import type { CausalModel } from '../src/models/load.js';
import { generate } from '../src/models/generate.js';
import { Engine, type ServedModel } from '../src/serve/engine.js';
import type { Tokenizer } from '../src/models/tokenizer.js';
import { Linear } from '../src/nn/index.js';
import { gpt2Random } from './models.js';
import { emit } from './timing.js';

const R = 8;

/** Write `n` random rank-8 LoRA adapters on the attention projections of `model` into dir. */
function writeAdapters(model: CausalModel, dir: string, n: number, targets: string[]): void {
  const paths = model.namedModules().filter(([p, m]) => m instanceof Linear && targets.includes(p.split('.').pop()!)).map(([p, m]) => [p, m as Linear] as const);
  const rng = new Rng(7);
  for (let i = 0; i < n; i++) {
    const d = join(dir, `a${i}`);
    mkdirSync(d, { recursive: true });
    const tensors: Record<string, Tensor> = {};
    for (const [p, lin] of paths) {
      tensors[`base_model.model.${p}.lora_A.weight`] = randn([R, lin.inFeatures], { rng, std: 0.05 });
      tensors[`base_model.model.${p}.lora_B.weight`] = randn([lin.outFeatures, R], { rng, std: 0.05 });
    }
    writeSafetensors(join(d, 'adapter_model.safetensors'), tensors);
    writeFileAtomic(join(d, 'adapter_config.json'), Buffer.from(JSON.stringify({
      peft_type: 'LORA', r: R, lora_alpha: 16, target_modules: targets, fan_in_fan_out: paths[0]![1].fanInFanOut,
    })));
    for (const t of Object.values(tensors)) t.dispose();
  }
}

/** A tokenizer stand-in for a random model: ids are the bytes. */
const byteTokenizer: Tokenizer = {
  vocabSize: 256, bosId: null, eosId: null,
  encode: (s) => [...Buffer.from(s)],
  decode: (ids) => Buffer.from(ids.map((i) => i % 256)).toString('latin1'),
};

function engineThroughput(model: CausalModel, tok: Tokenizer, dir: string, k: number, requests: number, maxTokens: number, prompt: number[]): number {
  const engine = new Engine(model as unknown as ServedModel, tok, {
    maxBatch: 32, kvCacheMb: 512, blockSize: 16, maxLoadedAdapters: Math.min(k, 1000), maxRank: R, maxQueue: requests + 1,
    contextLength: 1024, adapterDir: dir,
  });
  let tokens = 0;
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < requests; i++) {
    engine.submit({ id: String(i), promptIds: prompt, adapter: `a${i % k}`, maxTokens, temperature: 0 }, () => {}, (d) => {
      tokens += d.completionTokens;
    }, (e) => {
      throw e;
    });
  }
  while (!engine.idle) engine.step();
  const tps = tokens / (Number(process.hrtime.bigint() - t0) / 1e9);
  // hand the model back without the engine's adapter layers
  engine.store.detach();
  return tps;
}

/** The baseline: merge each request's adapter into the weights, generate alone, unmerge. */
function mergeBaseline(model: CausalModel, tok: Tokenizer, dir: string, k: number, requests: number, maxTokens: number, prompt: number[]): number {
  const am = new AdapterModel(model);
  let tokens = 0;
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < requests; i++) {
    const name = `a${i % k}`;
    am.load(join(dir, name), name);
    const merged = am.merge();
    tokens += generate(merged as unknown as Parameters<typeof generate>[0], tok, prompt, { maxTokens, stopTokens: [] }).tokens.length;
    am.unmerge();
    am.delete(name);
  }
  return tokens / (Number(process.hrtime.bigint() - t0) / 1e9);
}

export function runServeBench(opts: { counts?: number[]; quick?: boolean } = {}): void {
  getBackend();
  const counts = opts.counts ?? [1, 10, 100, 1000];
  const root = mkdtempSync(join(tmpdir(), 'adaptkit-bench-serve-'));
  try {
    const stories = join(dataDir(), 'models', 'stories260K', 'stories260K.bin');
    const cases: { name: string; make: () => CausalModel; targets: string[]; requests: number; maxTokens: number; baseline: number }[] = [];
    if (existsSync(stories)) cases.push({ name: 'stories260K', make: () => loadModel(stories).model, targets: ['q_proj', 'v_proj'], requests: 1000, maxTokens: 32, baseline: 32 });
    cases.push({ name: 'gpt2-small-random', make: () => gpt2Random(), targets: ['c_attn'], requests: opts.quick ? 32 : 128, maxTokens: 16, baseline: 8 });
    for (const c of cases) {
      const model = c.make();
      const dir = join(root, c.name);
      const maxK = Math.max(...counts);
      writeAdapters(model, dir, maxK, c.targets);
      const prompt = Array.from({ length: 8 }, (_, i) => 1 + ((i * 37) % 200));
      let single = 0;
      for (const k of counts) {
        const v = engineThroughput(model, byteTokenizer, dir, k, Math.max(c.requests, k), c.maxTokens, prompt);
        if (k === counts[0]) single = v;
        emit({ bench: 'serve', impl: 'adaptkit', model: c.name, adapters: k, requests: Math.max(c.requests, k), max_tokens: c.maxTokens, tokens_per_s: Math.round(v), vs_single_adapter: Number((v / single).toFixed(2)) });
      }
      const base = mergeBaseline(model, byteTokenizer, dir, Math.min(maxK, c.baseline), c.baseline, c.maxTokens, prompt);
      emit({ bench: 'serve', impl: 'merge-per-request', model: c.name, adapters: Math.min(maxK, c.baseline), requests: c.baseline, max_tokens: c.maxTokens, tokens_per_s: Math.round(base) });
      model.dispose();
    }
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
}
