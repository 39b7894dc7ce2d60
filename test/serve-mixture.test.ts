/**
 * Per-request adapter mixtures: `"model": "a:0.7,b:0.3"` applies the weighted sum of the two
 * LoRA updates inside the batched kernel, with no merging; its logprobs equal the model with the
 * merged 0.7/0.3 linear combination (Σ w·s·BA, PEFT's exact "cat" combination), and bad mixtures
 * are refused with 4xx.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as ak from '../src/index.js';
import { startServer, type Server } from '../src/serve/http.js';

const D = join(ak.dataDir(), 'models', 'stories260K');
const MODEL = join(D, 'stories260K.bin');
const TOK = join(D, 'tok512.bin');
const tmp = mkdtempSync(join(tmpdir(), 'adaptkit-mixture-'));
const ADAPTERS = join(tmp, 'adapters');
const PROMPT = 'Once upon a time';
let server: Server;

function perturbed(am: ak.AdapterModel, name: string, seed: number): void {
  am.setActive([name]);
  const rng = new ak.Rng(seed);
  ak.noGrad(() => {
    for (const t of am.trainableParameters()) {
      const a = t.storage.data as Float32Array;
      for (let j = 0; j < t.size; j++) a[t.offset + j] = rng.normal() * 0.3;
    }
  });
}

before(async () => {
  const am = new ak.AdapterModel(ak.loadModel(MODEL).model);
  am.add('a', { peft_type: 'LORA', r: 4, lora_alpha: 8, target_modules: ['q_proj', 'v_proj', 'down_proj'] }, { seed: 1 });
  am.add('b', { peft_type: 'LORA', r: 2, lora_alpha: 4, target_modules: ['q_proj', 'o_proj'] }, { seed: 2 });
  am.add('i', { peft_type: 'IA3' }, { seed: 3 });
  perturbed(am, 'a', 10);
  perturbed(am, 'b', 11);
  for (const n of ['a', 'b', 'i']) am.save(join(ADAPTERS, n), n);
  server = await startServer({
    model: MODEL, tokenizer: TOK, servedModelName: 'base', maxTokensLimit: 16, maxPromptTokens: 64,
    engine: { maxBatch: 8, kvCacheMb: 4, blockSize: 8, maxLoadedAdapters: 4, maxRank: 8, maxQueue: 32, contextLength: 128, adapterDir: ADAPTERS },
  }, { port: 0, host: '127.0.0.1' });
});

after(async () => {
  await server?.close();
  rmSync(tmp, { recursive: true, force: true });
});

async function complete(model: string, logprobs = 5): Promise<{ status: number; body: any }> {
  const res = await fetch(`${server.url}/v1/completions`, {
    method: 'POST', headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model, prompt: PROMPT, max_tokens: 3, temperature: 0, logprobs }),
  });
  return { status: res.status, body: await res.json() };
}

describe('per-request adapter mixtures', () => {
  it('a:0.7,b:0.3 gives the logprobs of the merged 0.7/0.3 combination, within 1e-4', async () => {
    const am = new ak.AdapterModel(ak.loadModel(MODEL).model);
    am.load(join(ADAPTERS, 'a'), 'a');
    am.load(join(ADAPTERS, 'b'), 'b');
    ak.addWeightedAdapter(am, ['a', 'b'], [0.7, 0.3], 'mix', { combination: 'cat' });
    am.setActive(['mix']);
    am.merge();
    const tok = ak.loadTokenizer(MODEL, TOK, 512);
    const prompt = tok.encode(PROMPT, { bos: true });
    // the merged model's greedy tokens and their logprobs, step by step
    const ids = [...prompt];
    const expected: number[] = [];
    for (let step = 0; step < 3; step++) {
      const lp = ak.tidy(() => ak.noGrad(() => {
        const l = am.forward(ak.tensor(ids, [1, ids.length], { dtype: 'i32' }));
        return Float64Array.from(ak.logSoftmax(ak.narrow(l, 1, ids.length - 1, 1)).toArray());
      }));
      let best = 0;
      for (let j = 1; j < lp.length; j++) if (lp[j]! > lp[best]!) best = j;
      expected.push(lp[best]!);
      ids.push(best);
    }
    const mixed = await complete('a:0.7,b:0.3');
    assert.equal(mixed.status, 200, JSON.stringify(mixed.body));
    const got = mixed.body.choices[0].logprobs.token_logprobs as number[];
    assert.equal(got.length, 3);
    got.forEach((v, i) => assert.ok(Math.abs(v - expected[i]!) < 1e-4, `token ${i}: served ${v}, merged ${expected[i]}`));
    assert.equal(mixed.body.choices[0].text, tok.decode(ids.slice(prompt.length)));
    // and it differs from either adapter alone
    const alone = await complete('a');
    assert.notDeepEqual(alone.body.choices[0].logprobs.token_logprobs, got);
  });

  it('refuses bad mixtures with 4xx naming the problem', async () => {
    const nan = await complete('a:nan,b:0.3');
    assert.equal(nan.status, 400);
    assert.match(nan.body.error.message, /the weight of "a" must be a finite number/);
    const unknown = await complete('a:0.5,zzz:0.5');
    assert.equal(unknown.status, 404);
    const ia3 = await complete('a:0.5,i:0.5');
    assert.equal(ia3.status, 400);
    assert.match(ia3.body.error.message, /adapter "i" cannot be part of a mixture/);
    const twice = await complete('a:0.5,a:0.5');
    assert.equal(twice.status, 400);
    assert.match(twice.body.error.message, /"a" appears twice/);
    // nothing stays pinned: the adapters still serve
    assert.equal((await complete('b')).status, 200);
  });
});
