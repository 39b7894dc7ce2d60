/** The server over real HTTP on loopback: batched equals sequential, bad requests, a bounded load test. */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, cpSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as ak from '../src/index.js';
import { startServer, type Server } from '../src/serve/http.js';

const D = join(ak.dataDir(), 'models', 'stories260K');
const tmp = mkdtempSync(join(tmpdir(), 'adaptkit-serve-'));
const ADAPTERS = join(tmp, 'adapters');
const N_ADAPTERS = 50;
const KEY = 'test-key';
let server: Server;

function makeAdapters(): void {
  ak.getBackend();
  const am = new ak.AdapterModel(ak.loadModel(join(D, 'stories260K.bin')).model);
  for (let i = 0; i < N_ADAPTERS; i++) {
    const name = `ad${i}`;
    am.add(name, { peft_type: 'LORA', r: 2 + (i % 4), lora_alpha: 8, target_modules: i % 3 === 0 ? ['q_proj', 'v_proj'] : i % 3 === 1 ? 'all-linear' : ['up_proj', 'o_proj'] }, { seed: i });
    am.setActive([name]);
    const rng = new ak.Rng(1000 + i);
    for (const p of am.trainableParameters()) {
      const d = p.storage.data as Float32Array;
      for (let j = 0; j < p.size; j++) d[p.offset + j] = rng.normal() * 0.4;
    }
    am.save(join(ADAPTERS, name), name);
  }
}

async function post(path: string, body: unknown, key: string | null = KEY, raw?: string): Promise<{ status: number; json: any; headers: Headers; text: string }> {
  const res = await fetch(`${server.url}${path}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...(key ? { authorization: `Bearer ${key}` } : {}) },
    body: raw ?? JSON.stringify(body),
  });
  const text = await res.text();
  let json: any = null;
  try {
    json = JSON.parse(text);
  } catch {
    // SSE or plain text
  }
  return { status: res.status, json, headers: res.headers, text };
}

const complete = (model: string, prompt: string, max = 12) => post('/v1/completions', { model, prompt, max_tokens: max, temperature: 0 });

before(async () => {
  makeAdapters();
  server = await startServer({
    model: join(D, 'stories260K.bin'), tokenizer: join(D, 'tok512.bin'), servedModelName: 'stories260K', apiKey: KEY,
    maxTokensLimit: 64, maxPromptTokens: 200, allowRuntimeLora: true, loraRoot: tmp,
    engine: { maxBatch: 32, kvCacheMb: 4, blockSize: 8, maxLoadedAdapters: 12, maxRank: 8, maxQueue: 4000, contextLength: 256, adapterDir: ADAPTERS },
  }, { port: 0, host: '127.0.0.1' });
});

after(async () => {
  await server.close();
  rmSync(tmp, { recursive: true, force: true });
});

describe('HTTP server', () => {
  const prompts = ['Once upon a time', 'Lily saw a big dog', 'The sun was', 'Tom and his mom went to'];

  it('lists the base model and every adapter', async () => {
    const res = await fetch(`${server.url}/v1/models`, { headers: { authorization: `Bearer ${KEY}` } });
    const body = await res.json() as { data: { id: string; parent: string | null }[] };
    assert.equal(body.data[0]!.id, 'stories260K');
    assert.equal(body.data.length, 1 + N_ADAPTERS);
    assert.equal(body.data.find((m) => m.id === 'ad7')!.parent, 'stories260K');
  });

  it('concurrent requests on different adapters give the outputs of the same requests one at a time', async () => {
    const cases = Array.from({ length: 24 }, (_, i) => ({ model: i % 6 === 0 ? 'stories260K' : `ad${i % 9}`, prompt: prompts[i % 4]! }));
    const sequential: string[] = [];
    for (const c of cases) {
      const r = await complete(c.model, c.prompt);
      assert.equal(r.status, 200, r.text);
      sequential.push(r.json.choices[0].text);
    }
    const concurrent = await Promise.all(cases.map((c) => complete(c.model, c.prompt)));
    concurrent.forEach((r, i) => assert.equal(r.json.choices[0].text, sequential[i], `case ${i} (${cases[i]!.model})`));
    // adapters change the output
    assert.ok(new Set(sequential.filter((_, i) => cases[i]!.prompt === prompts[0])).size > 1);
  });

  it('streams server-sent events whose pieces add up to the non-streamed text', async () => {
    const plain = await complete('ad3', prompts[1]!, 16);
    const sse = await post('/v1/completions', { model: 'ad3', prompt: prompts[1], max_tokens: 16, temperature: 0, stream: true });
    assert.equal(sse.status, 200);
    const events = sse.text.split('\n\n').filter((e) => e.startsWith('data: ')).map((e) => e.slice(6));
    assert.equal(events[events.length - 1], '[DONE]');
    const text = events.slice(0, -1).map((e) => JSON.parse(e).choices[0].text).join('');
    assert.equal(text, plain.json.choices[0].text);
    const chat = await post('/v1/chat/completions', { model: 'ad3', messages: [{ role: 'user', content: 'Hello' }], max_tokens: 8, temperature: 0 });
    assert.equal(chat.status, 200);
    assert.equal(chat.json.choices[0].message.role, 'assistant');
    assert.equal(chat.json.usage.completion_tokens, 8);
  });

  it('answers bad requests with 4xx and a clear message, and keeps serving', async () => {
    const cases: [Promise<{ status: number; json: any }>, number, RegExp][] = [
      [complete('no-such-adapter', 'hi'), 404, /the model "no-such-adapter" does not exist/],
      [post('/v1/completions', null, KEY, '{"model": "stories260K", "prompt": '), 400, /JSON/i],
      [post('/v1/completions', { model: 'stories260K', prompt: 'hi', max_tokens: 1000 }), 400, /"max_tokens" must be an integer in \[1, 64\]/],
      [post('/v1/completions', { model: 'stories260K', prompt: 'x'.repeat(500) }), 400, /the prompt has \d+ tokens, more than the limit of 200/],
      [post('/v1/completions', { model: 'stories260K', prompt: 42 }), 400, /"prompt" must be a string/],
      [post('/v1/completions', { model: 'stories260K', prompt: 'hi' }, null), 401, /missing API key/],
      [post('/v1/completions', { model: 'stories260K', prompt: 'hi' }, 'wrong'), 401, /invalid API key/],
      [post('/v1/chat/completions', { model: 'stories260K', messages: [] }), 400, /"messages" must be a non-empty list/],
    ];
    for (const [p, status, re] of cases) {
      const r = await p;
      assert.equal(r.status, status, JSON.stringify(r.json));
      assert.match(r.json.error.message, re);
    }
    // an adapter made for another base model is refused on load, and nothing breaks
    const bad = join(tmp, 'bad');
    const other = new ak.AdapterModel(ak.loadModel(new URL('./fixtures/models/llama-gqa', import.meta.url).pathname).model);
    other.add('x', { peft_type: 'LORA', r: 2, target_modules: ['q_proj'] });
    other.save(bad, 'x');
    const load = await post('/v1/load_lora_adapter', { lora_name: 'bad', lora_path: bad });
    assert.equal(load.status, 400);
    assert.match(load.json.error.message, /adapter weights do not match the model; missing: base_model\.model\.model\.layers\.2\.self_attn\.q_proj\.lora_A\.weight/);
    const ok = await complete('stories260K', 'Once upon a time', 4);
    assert.equal(ok.status, 200);
    const h = await fetch(`${server.url}/health`);
    assert.equal(h.status, 200);
  });

  it('loads and unloads adapters at run time', async () => {
    const p = join(tmp, 'extra');
    cpSync(join(ADAPTERS, 'ad5'), p, { recursive: true });
    assert.equal((await post('/v1/load_lora_adapter', { lora_name: 'extra', lora_path: p })).status, 200);
    const a = await complete('extra', prompts[0]!);
    const b = await complete('ad5', prompts[0]!);
    assert.equal(a.json.choices[0].text, b.json.choices[0].text);
    assert.equal((await post('/v1/load_lora_adapter', { lora_name: 'extra', lora_path: p })).status, 400);
    assert.equal((await post('/v1/unload_lora_adapter', { lora_name: 'extra' })).status, 200);
    assert.equal((await complete('extra', 'hi')).status, 404);
  });

  it('a bounded load test: 200 concurrent clients, 50 adapters, 2,000 requests, every answer right', async () => {
    // the right answers, one request at a time
    const expect = new Map<string, string>();
    for (let i = 0; i < N_ADAPTERS; i++) {
      for (const p of prompts.slice(0, 2)) {
        const r = await complete(`ad${i}`, p, 4);
        expect.set(`ad${i}|${p}`, r.json.choices[0].text);
      }
    }
    let next = 0;
    let wrong = 0;
    let errors = 0;
    const total = 2000;
    const clients = Array.from({ length: 200 }, async () => {
      while (next < total) {
        const i = next++;
        const model = `ad${(i * 7) % N_ADAPTERS}`;
        const p = prompts[i % 2]!;
        const r = await complete(model, p, 4);
        if (r.status !== 200) errors++;
        else if (r.json.choices[0].text !== expect.get(`${model}|${p}`)) wrong++;
      }
    });
    await Promise.all(clients);
    assert.equal(errors, 0);
    assert.equal(wrong, 0);
    const metrics = await (await fetch(`${server.url}/metrics`)).text();
    assert.match(metrics, /adaptkit_running_batch_size 0/);
    assert.match(metrics, /adaptkit_adapter_cache_misses_total \d+/);
    const free = Number(/adaptkit_kv_blocks_free (\d+)/.exec(metrics)![1]);
    const totalBlocks = Number(/adaptkit_kv_blocks_total (\d+)/.exec(metrics)![1]);
    assert.equal(free, totalBlocks, 'every KV block is back in the pool');
    assert.ok(Number(/adaptkit_adapter_evictions_total (\d+)/.exec(metrics)![1]) > 0, 'adapters were evicted and reloaded');
    // memory stays within the configured budgets: 4 MiB of KV cache, 12 adapter slots
    assert.ok(Number(/adaptkit_kv_cache_bytes (\d+)/.exec(metrics)![1]) <= 4 * 2 ** 20);
    assert.match(metrics, /adaptkit_loaded_adapters (\d|1[0-2])\n/);
  });
});

describe('backpressure and shutdown', () => {
  it('answers 429 with Retry-After when the queue is full, and finishes in-flight requests on close', async () => {
    const small = await startServer({
      model: join(D, 'stories260K.bin'), tokenizer: join(D, 'tok512.bin'), servedModelName: 's', maxTokensLimit: 64, maxPromptTokens: 200,
      engine: { maxBatch: 2, kvCacheMb: 4, blockSize: 8, maxLoadedAdapters: 2, maxRank: 8, maxQueue: 2, contextLength: 256 },
    }, { port: 0, host: '127.0.0.1' });
    const call = () => fetch(`${small.url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 's', prompt: 'Once upon a time', max_tokens: 48, temperature: 0 }) });
    const responses = await Promise.all(Array.from({ length: 12 }, call));
    const busy = responses.filter((r) => r.status === 429);
    assert.ok(busy.length > 0, 'some requests were turned away');
    assert.equal(busy[0]!.headers.get('retry-after'), '1');
    assert.ok(responses.some((r) => r.status === 200));
    // graceful shutdown: requests already running complete
    const inflight = [call(), call()];
    await new Promise((r) => setTimeout(r, 5));
    const closing = small.close();
    const done = await Promise.all(inflight);
    await closing;
    for (const r of done) {
      assert.equal(r.status, 200);
      assert.equal(((await r.json()) as { usage: { completion_tokens: number } }).usage.completion_tokens, 48);
    }
  });
});

import { Engine } from '../src/serve/engine.js';

describe('engine', () => {
  it('preempts sequences when the KV cache is full and recomputes them to the same outputs', () => {
    const bin = join(D, 'stories260K.bin');
    const tok = ak.loadTokenizer(bin, join(D, 'tok512.bin'), 512);
    const reqs = Array.from({ length: 6 }, (_, i) => ({ id: String(i), promptIds: tok.encode(['Once upon a time', 'Lily saw', 'The dog'][i % 3]!), adapter: i % 2 ? 'ad1' : null, maxTokens: 40, temperature: 0 }));
    const run = (kvMb: number, batch: number) => {
      // 0.12 MiB holds 12 blocks of 8 positions for this model: two requests fit, six do not
      const e = new Engine(ak.loadModel(bin).model as any, tok, { maxBatch: batch, kvCacheMb: kvMb, blockSize: 8, maxLoadedAdapters: 4, maxRank: 8, maxQueue: 100, contextLength: 256, adapterDir: ADAPTERS });
      const out: Record<string, string> = {};
      for (const r of reqs) e.submit(r, () => {}, (d) => (out[d.id] = d.text), (err) => { throw err; });
      while (!e.idle) e.step();
      return { out, m: e.metrics() };
    };
    const alone = run(8, 1);
    const tight = run(0.12, 6);
    assert.ok(tight.m.preemptions > 0, `preemptions: ${tight.m.preemptions} (blocks ${tight.m.totalBlocks})`);
    assert.deepEqual(tight.out, alone.out);
    assert.equal(tight.m.freeBlocks, tight.m.totalBlocks);
  });
});
