/**
 * Every registered method is served: adapters of each preset on stories260K, one server, all
 * requests at once (so batches mix methods and the bare base model), and each served greedy text
 * equals `adaptkit generate --adapter` on the same adapter, token for token.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as ak from '../src/index.js';
import { AdapterModel, registeredMethods } from '../src/adapters/index.js';
import { describeModel } from '../src/nn/index.js';
import { main } from '../src/cli/main.js';
import { startServer, type Server } from '../src/serve/http.js';

const D = join(ak.dataDir(), 'models', 'stories260K');
const MODEL = join(D, 'stories260K.bin');
const TOK = join(D, 'tok512.bin');
const tmp = mkdtempSync(join(tmpdir(), 'adaptkit-serve-methods-'));
const ADAPTERS = join(tmp, 'adapters');
const PROMPT = 'Once upon a time';
const MAX = 20;
let server: Server;
let names: string[] = [];

/** One adapter per preset, its parameters moved well away from the identity. */
function makeAdapters(): string[] {
  const out: string[] = [];
  const am = new AdapterModel(ak.loadModel(MODEL).model);
  const d = describeModel(am.model);
  for (const m of registeredMethods()) {
    for (const p of m.presets ?? []) {
      am.add(p.name, p.config({ r: 4, 'virtual-tokens': 4, 'reduction-factor': 4 }, d), { seed: out.length + 1 });
      am.setActive([p.name]);
      const rng = new ak.Rng(100 + out.length);
      ak.noGrad(() => {
        for (const t of am.trainableParameters()) {
          const a = t.storage.data as Float32Array;
          for (let j = 0; j < t.size; j++) a[t.offset + j]! += rng.normal() * 1.0;
        }
      });
      am.save(join(ADAPTERS, p.name), p.name);
      am.setActive([]);
      out.push(p.name);
    }
  }
  return out;
}

/** `adaptkit generate` in-process, its streamed text captured. */
async function cliGenerate(adapter: string | null): Promise<string> {
  let out = '';
  const ow = process.stdout.write.bind(process.stdout);
  process.stdout.write = ((s: string | Uint8Array) => ((out += String(s)), true)) as typeof process.stdout.write;
  try {
    const code = await main(['node', 'adaptkit', 'generate', '--model', MODEL, '--tokenizer', TOK, '--prompt', PROMPT, '--max-tokens', String(MAX),
      ...(adapter ? ['--adapter', join(ADAPTERS, adapter)] : [])]);
    assert.equal(code, 0);
  } finally {
    process.stdout.write = ow;
  }
  // the CLI echoes the prompt and ends with a newline
  return out.slice(PROMPT.length, -1);
}

async function complete(model: string): Promise<string> {
  const res = await fetch(`${server.url}/v1/completions`, {
    method: 'POST', headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model, prompt: PROMPT, max_tokens: MAX, temperature: 0 }),
  });
  const body = (await res.json()) as { choices?: { text: string }[]; error?: { message: string } };
  assert.equal(res.status, 200, `${model}: ${body.error?.message}`);
  return body.choices![0]!.text;
}

before(async () => {
  names = makeAdapters();
  server = await startServer({
    model: MODEL, tokenizer: TOK, servedModelName: 'base', maxTokensLimit: 64, maxPromptTokens: 64,
    engine: { maxBatch: 32, kvCacheMb: 8, blockSize: 8, maxLoadedAdapters: 16, maxRank: 8, maxQueue: 256, contextLength: 256, adapterDir: ADAPTERS },
  }, { port: 0, host: '127.0.0.1' });
});

after(async () => {
  await server?.close();
  rmSync(tmp, { recursive: true, force: true });
});

describe('serving every method', () => {
  it('lists every adapter, and serves each with the text of `adaptkit generate --adapter`, in batches that mix methods', async () => {
    assert.ok(names.length >= 10, `adapters of every preset: ${names.join(', ')}`);
    const listed = ((await (await fetch(`${server.url}/v1/models`)).json()) as { data: { id: string }[] }).data.map((x) => x.id);
    assert.deepEqual(listed.slice(1).sort(), [...names].sort());
    // twice each, all at once: rows of different methods and of the base model share steps
    const models = [...names, 'base', ...names, 'base'];
    const served = await Promise.all(models.map((m) => complete(m)));
    const expected = new Map<string, string>();
    for (const n of [...names, 'base']) expected.set(n, await cliGenerate(n === 'base' ? null : n));
    models.forEach((m, i) => assert.equal(served[i], expected.get(m), `${m}: served text differs from adaptkit generate`));
    const byText = new Map<string, string[]>();
    for (const [n, t] of expected) byText.set(t, [...(byText.get(t) ?? []), n]);
    const same = [...byText.values()].filter((v) => v.length > 1);
    // a context-generated adapter is the base model until it is given a context, so one may match the base
    assert.ok(byText.size >= names.length - 1, `the adapters change the greedy text; these give the same: ${JSON.stringify(same)}`);
  });

  it('refuses an adapter whose rank is above --max-rank with a 400 naming the field', async () => {
    const am = new AdapterModel(ak.loadModel(MODEL).model);
    am.add('big', { peft_type: 'LORA', r: 16, lora_alpha: 16, target_modules: ['q_proj'] });
    am.save(join(ADAPTERS, 'big'), 'big');
    const s = await startServer({
      model: MODEL, tokenizer: TOK, servedModelName: 'base', maxTokensLimit: 8, maxPromptTokens: 64,
      engine: { maxBatch: 4, kvCacheMb: 2, blockSize: 8, maxLoadedAdapters: 4, maxRank: 8, maxQueue: 8, contextLength: 128, adapterDir: ADAPTERS },
    }, { port: 0, host: '127.0.0.1' });
    try {
      const res = await fetch(`${s.url}/v1/completions`, {
        method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'big', prompt: PROMPT, max_tokens: 4 }),
      });
      assert.equal(res.status, 400);
      assert.match(((await res.json()) as { error: { message: string } }).error.message, /"r" is 16, above the server's --max-rank 8/);
    } finally {
      await s.close();
    }
  });
});
