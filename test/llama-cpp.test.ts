/**
 * llama.cpp itself as the independent check of adaptkit's GGUF exports: it loads the model files
 * adaptkit writes (stories260K, a random Llama-shaped model) and the LoRA adapters (plain, rsLoRA
 * with rank/alpha patterns, ZeroI2V written as LoRA), and its greedy tokens and text equal
 * `adaptkit generate` on the same files. llama.cpp comes from `bash scripts/install-llama-cpp.sh`
 * (prebuilt binaries of the npm package node-llama-cpp, in the git-ignored .llama-cpp/); without
 * it these tests are skipped with that reason, and fail where ADAPTKIT_REQUIRE_LLAMA_CPP=1 (CI).
 *
 * Both sides compute in f32: F32 weights, an F32 KV cache and no flash attention in llama.cpp,
 * so the only differences are summation orders (about 1e-6). Each comparison first checks that
 * adaptkit's top two logits are at least 1e-3 apart at every generated position, so an
 * equality can only fail because the implementations differ, not because of a near tie.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import * as ak from '../src/index.js';
import { loadModel, loadTokenizer } from '../src/models/load.js';
import { generate } from '../src/models/generate.js';
import { runCli } from './cli-run.js';
import { HAVE_STORIES, STORIES_BIN, STORIES_TOK, logitsOf, perturbAdapters, randomLlamaConfig, randomLlamaFolder, tmp } from './gguf-fixtures.js';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const LLAMA_CPP = join(ROOT, '.llama-cpp', 'node_modules', 'node-llama-cpp', 'dist', 'index.js');
const INSTALLED = existsSync(LLAMA_CPP);
const REQUIRED = process.env.ADAPTKIT_REQUIRE_LLAMA_CPP === '1';
const SKIP = !INSTALLED
  ? 'llama.cpp is not installed: bash scripts/install-llama-cpp.sh puts it in .llama-cpp/'
  : !HAVE_STORIES ? 'needs ../shared/data (stories260K)' : false;
const PROMPT = 'Once upon a time';
const N = 40;
const TARGETS = ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'];

// the minimal surface of node-llama-cpp these tests use
interface LlamaModelLike {
  tokens: { bos: number | null };
  tokenize(text: string, special?: boolean): number[];
  detokenize(tokens: readonly number[]): string;
  createContext(o: Record<string, unknown>): Promise<{ getSequence(): { evaluate(t: number[], o: Record<string, unknown>): AsyncGenerator<number> }; dispose(): Promise<void> }>;
  dispose(): Promise<void>;
}
interface LlamaLike {
  loadModel(o: { modelPath: string }): Promise<LlamaModelLike>;
  dispose(): Promise<void>;
}

describe('llama.cpp reads adaptkit\'s GGUF files', () => {
  it('is installed where it is required', { skip: REQUIRED ? false : 'ADAPTKIT_REQUIRE_LLAMA_CPP is not set' }, () => {
    assert.ok(INSTALLED, `ADAPTKIT_REQUIRE_LLAMA_CPP=1 but ${LLAMA_CPP} is missing: run bash scripts/install-llama-cpp.sh`);
  });

  describe('greedy decoding equals adaptkit generate', { skip: SKIP }, () => {
    let llama: LlamaLike;
    const dir = tmp('adaptkit-llama-cpp-');
    const stories = join(dir, 'stories260K.gguf');

    before(async () => {
      const m = (await import(pathToFileURL(LLAMA_CPP).href)) as { getLlama(o: Record<string, unknown>): Promise<LlamaLike>; LlamaLogLevel: Record<string, string> };
      llama = await m.getLlama({ gpu: false, build: 'never', progressLogs: false, logLevel: m.LlamaLogLevel.error, logger: () => {} });
      const r = await runCli('export', '--format', 'gguf', '--model', STORIES_BIN, '--tokenizer', STORIES_TOK, '--out', stories);
      assert.equal(r.code, 0, r.err);
    });
    after(async () => {
      await llama?.dispose();
    });

    /** llama.cpp's greedy continuation of BOS + the prompt: its prompt tokens, generated tokens and text. */
    async function llamaCpp(modelPath: string, lora?: string): Promise<{ prompt: number[]; tokens: number[]; text: string }> {
      const model = await llama.loadModel({ modelPath });
      try {
        const ctx = await model.createContext({
          contextSize: 128, threads: 1, flashAttention: false, experimentalKvCacheKeyType: 'F32', experimentalKvCacheValueType: 'F32',
          ...(lora ? { lora: { adapters: [{ filePath: lora, scale: 1 }] } } : {}),
        });
        try {
          const prompt = [model.tokens.bos!, ...model.tokenize(PROMPT, false)];
          const tokens: number[] = [];
          // end-of-generation tokens end the loop, as adaptkit's stop tokens do
          for await (const t of ctx.getSequence().evaluate(prompt, { temperature: 0 })) {
            tokens.push(t);
            if (tokens.length >= N) break;
          }
          return { prompt, tokens, text: model.detokenize(tokens) };
        } finally {
          await ctx.dispose();
        }
      } finally {
        await model.dispose();
      }
    }

    /** adaptkit on the same file: `adaptkit generate`'s output, and its greedy tokens with the smallest top-2 logit gap. */
    async function adaptkit(modelPath: string, adapter?: string): Promise<{ prompt: number[]; tokens: number[]; out: string; minGap: number }> {
      const extra = adapter ? ['--adapter', adapter] : [];
      const cli = await runCli('generate', '--model', modelPath, '--prompt', PROMPT, '--max-tokens', String(N), ...extra);
      assert.equal(cli.code, 0, cli.err);
      const { model } = loadModel(modelPath);
      const am = new ak.AdapterModel(model);
      if (adapter) am.load(adapter);
      const tok = loadTokenizer(modelPath, undefined, model.config.vocabSize);
      const prompt = tok.encode(PROMPT, { bos: true });
      const { tokens } = generate(am, tok, prompt, { maxTokens: N, temperature: 0 });
      const ids = [...prompt, ...tokens];
      const V = model.config.vocabSize;
      const logits = logitsOf(am, ids);
      let minGap = Infinity;
      for (let t = prompt.length - 1; t < ids.length - 1; t++) {
        const row = Array.from(logits.subarray(t * V, (t + 1) * V)).sort((a, b) => b - a);
        minGap = Math.min(minGap, row[0]! - row[1]!);
      }
      return { prompt, tokens, out: cli.out, minGap };
    }

    async function same(modelPath: string, adapter?: { dir: string; gguf: string }): Promise<number[]> {
      const a = await adaptkit(modelPath, adapter?.dir);
      assert.ok(a.minGap >= 1e-3, `adaptkit's greedy choice is a near tie somewhere (top-2 gap ${a.minGap}): pick another seed`);
      const l = await llamaCpp(modelPath, adapter?.gguf);
      assert.deepEqual(l.prompt, a.prompt, 'llama.cpp tokenizes the prompt as adaptkit does');
      assert.deepEqual(l.tokens, a.tokens, 'greedy tokens');
      assert.equal(a.out, `${PROMPT}${l.text}\n`, 'greedy text');
      return a.tokens;
    }

    async function loraCase(config: Record<string, unknown>, seed: number, std: number, name: string): Promise<{ dir: string; gguf: string }> {
      const am = new ak.AdapterModel(loadModel(stories).model);
      am.add('x', config);
      perturbAdapters(am, seed, std);
      const adir = join(dir, name);
      am.save(adir, 'x');
      const gguf = join(dir, `${name}.gguf`);
      const r = await runCli('export', '--format', 'gguf', '--adapter', adir, '--model', stories, '--out', gguf);
      assert.equal(r.code, 0, r.err);
      return { dir: adir, gguf };
    }

    let baseTokens: number[] = [];
    it('stories260K (llama2.c checkpoint, tied head) exported as F32', async () => {
      baseTokens = await same(stories);
      assert.equal(baseTokens.length, N);
    });

    it('a random Llama-shaped HF model (GQA, untied head, attention biases, its tokenizer.json) exported as F32', async () => {
      const folder = randomLlamaFolder(join(dir, 'random'), randomLlamaConfig({ attention_bias: true }), 7);
      const out = join(dir, 'random.gguf');
      const r = await runCli('export', '--format', 'gguf', '--model', folder, '--out', out);
      assert.equal(r.code, 0, r.err);
      await same(out);
    });

    // [name, config, seed, noise added to the adapter's weights]
    for (const [name, config, seed, std] of [
      ['lora', { peft_type: 'LORA', r: 4, lora_alpha: 8, target_modules: TARGETS }, 1, 0.03],
      ['rslora-patterns', { peft_type: 'LORA', r: 4, lora_alpha: 6, use_rslora: true, rank_pattern: { q_proj: 2 }, alpha_pattern: { down_proj: 3 }, target_modules: TARGETS }, 2, 0.03],
      ['zeroi2v-as-lora', { peft_type: 'ZEROI2V', r: 4 }, 3, 0.05],
    ] as const) {
      it(`stories260K with a ${name} adapter exported as a GGUF LoRA`, async () => {
        const adapter = await loraCase(config, seed, std, name);
        const tokens = await same(stories, adapter);
        assert.notDeepEqual(tokens, baseTokens, 'the adapter changes the generation');
      });
    }
  });
});
