/**
 * The server's defences over real HTTP on loopback: authentication whatever the path's spelling,
 * runtime adapter loading (off by default, confined to a root, hostile folders refused without
 * stalling generation), cancellation of abandoned requests, prompt limits checked before any
 * tokenizing, /health under load, and bounded memory. Every loop is bounded in count and time.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { cpSync, mkdirSync, mkdtempSync, rmSync, symlinkSync, truncateSync, writeFileSync, copyFileSync } from 'node:fs';
import { request } from 'node:http';
import { tmpdir } from 'node:os';
import { Worker } from 'node:worker_threads';
import { join } from 'node:path';
import * as ak from '../src/index.js';
import { startServer, type Server } from '../src/serve/http.js';

const D = join(ak.dataDir(), 'models', 'stories260K');
const tmp = mkdtempSync(join(tmpdir(), 'adaptkit-serve-sec-'));
const ROOT = join(tmp, 'adapters');
const OUTSIDE = join(tmp, 'outside');
const KEY = 'sec-key-0123456789';
const SECRET = 'TOP-SECRET-CONTENT-42';
const POOL_MB = 8;
let server: Server;
let off: Server;
let rssAtStart = 0;

/** A thread of 200 clients (plain JavaScript, so it needs no TypeScript loader). */
const LOAD_CLIENTS = `
const { workerData: { url, key, clients, rounds }, parentPort } = require('node:worker_threads');
let errors = 0;
Promise.all(Array.from({ length: clients }, async (_, i) => {
  for (let k = 0; k < rounds; k++) {
    const r = await fetch(url + '/v1/completions', {
      method: 'POST', headers: { 'content-type': 'application/json', authorization: 'Bearer ' + key },
      body: JSON.stringify({ model: i % 2 ? 'scanned' : 'stories260K', prompt: 'Once upon a time', max_tokens: 8, temperature: 0 }),
    });
    if (r.status !== 200) errors++;
    await r.text();
  }
})).then(() => parentPort.postMessage({ errors }), (e) => parentPort.postMessage({ errors: -1, message: String(e) }));
`;

/** A thread that does nothing but measure how late its 5 ms timers fire. */
const TIMER_NOISE = `
const { parentPort } = require('node:worker_threads');
let worst = 0;
let stop = false;
parentPort.once('message', () => { stop = true; parentPort.postMessage(worst); });
const tick = () => {
  const s = performance.now();
  setTimeout(() => { worst = Math.max(worst, performance.now() - s - 5); if (!stop) tick(); }, 5);
};
tick();
`;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const auth = { authorization: `Bearer ${KEY}` };

/** One adapter saved the way the trainer saves it, then copied around to build the cases. */
function makeAdapterFolders(): void {
  ak.getBackend();
  const am = new ak.AdapterModel(ak.loadModel(join(D, 'stories260K.bin')).model);
  am.add('good', { peft_type: 'LORA', r: 2, lora_alpha: 8, target_modules: ['q_proj', 'v_proj'] }, { seed: 1 });
  am.setActive(['good']);
  const rng = new ak.Rng(7);
  for (const p of am.trainableParameters()) {
    const d = p.storage.data as Float32Array;
    for (let j = 0; j < p.size; j++) d[p.offset + j] = rng.normal() * 0.4;
  }
  const good = join(tmp, 'good');
  am.save(good, 'good');
  const copy = (to: string) => cpSync(good, to, { recursive: true });
  copy(join(ROOT, 'scanned'));
  copy(join(ROOT, 'good2'));
  copy(join(OUTSIDE, 'ad'));
  copy(join(tmp, 'adapters-evil', 'ad'));
  writeFileSync(join(OUTSIDE, 'secret.json'), `{"peft_type": "LORA", "note": "${SECRET}"}`);
  // a FIFO as the config: a reader that opens it waits for a writer forever
  mkdirSync(join(ROOT, 'fifo'));
  copyFileSync(join(good, 'adapter_model.safetensors'), join(ROOT, 'fifo', 'adapter_model.safetensors'));
  execFileSync('mkfifo', [join(ROOT, 'fifo', 'adapter_config.json')]);
  // weights that never end
  mkdirSync(join(ROOT, 'zero'));
  copyFileSync(join(good, 'adapter_config.json'), join(ROOT, 'zero', 'adapter_config.json'));
  symlinkSync('/dev/zero', join(ROOT, 'zero', 'adapter_model.safetensors'));
  // a config that is a link to a file outside the root
  mkdirSync(join(ROOT, 'leak'));
  copyFileSync(join(good, 'adapter_model.safetensors'), join(ROOT, 'leak', 'adapter_model.safetensors'));
  symlinkSync(join(OUTSIDE, 'secret.json'), join(ROOT, 'leak', 'adapter_config.json'));
  // a folder that is a link out of the root
  symlinkSync(join(OUTSIDE, 'ad'), join(ROOT, 'linkout'));
  // a config that is not JSON, whose text must not come back in the error
  copy(join(ROOT, 'badjson'));
  writeFileSync(join(ROOT, 'badjson', 'adapter_config.json'), `${SECRET} is not json`);
  // a weights file far larger than any rank-8 adapter of this model (sparse: no disk is used)
  copy(join(ROOT, 'huge'));
  truncateSync(join(ROOT, 'huge', 'adapter_model.safetensors'), 2 ** 30);
}

function raw(base: string, method: string, path: string, headers: Record<string, string> = {}, body?: string): Promise<{ status: number; text: string }> {
  const u = new URL(base);
  return new Promise((resolve, reject) => {
    const req = request({ host: u.hostname, port: u.port, method, path, headers: { ...(body ? { 'content-type': 'application/json' } : {}), ...headers }, agent: false, timeout: 10_000 }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => (text += c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, text }));
    });
    req.on('timeout', () => req.destroy(new Error(`${method} ${path} timed out`)));
    req.on('error', reject);
    req.end(body);
  });
}

async function post(path: string, body: unknown, s: Server = server): Promise<{ status: number; json: any; text: string; ms: number }> {
  const t0 = performance.now();
  const res = await fetch(`${s.url}${path}`, { method: 'POST', headers: { 'content-type': 'application/json', ...auth }, body: JSON.stringify(body) });
  const text = await res.text();
  let json: any = null;
  try {
    json = JSON.parse(text);
  } catch {
    // plain text
  }
  return { status: res.status, json, text, ms: performance.now() - t0 };
}

async function metrics(s: Server = server): Promise<Record<string, number>> {
  const text = await (await fetch(`${s.url}/metrics`)).text();
  const out: Record<string, number> = {};
  for (const line of text.split('\n')) {
    const m = /^(\w+) ([\d.e+-]+)$/.exec(line);
    if (m) out[m[1]!] = Number(m[2]);
  }
  return out;
}

/** Poll until the KV cache is whole again; returns how long it took, or -1 past the bound. */
async function blocksBack(boundMs: number): Promise<number> {
  const t0 = performance.now();
  for (let i = 0; i < 200 && performance.now() - t0 < boundMs; i++) {
    const m = await metrics();
    if (m.adaptkit_kv_blocks_free === m.adaptkit_kv_blocks_total && m.adaptkit_running_batch_size === 0 && m.adaptkit_queue_length === 0) return performance.now() - t0;
    await sleep(5);
  }
  return -1;
}

/** Streaming generations one after another, stamping each token's arrival, until stopped. */
function backgroundStreams(): { stamps: number[]; stop(): Promise<void> } {
  const stamps: number[] = [];
  let stop = false;
  const deadline = performance.now() + 30_000;
  const done = (async () => {
    for (let i = 0; i < 40 && !stop && performance.now() < deadline; i++) {
      const res = await fetch(`${server.url}/v1/completions`, {
        method: 'POST', headers: { 'content-type': 'application/json', ...auth },
        body: JSON.stringify({ model: 'stories260K', prompt: 'Once upon a time', max_tokens: 400, temperature: 0, stream: true }),
      });
      assert.equal(res.status, 200);
      const reader = res.body!.getReader();
      const dec = new TextDecoder();
      for (;;) {
        const { done: end, value } = await reader.read();
        if (end) break;
        const now = performance.now();
        for (const _ of dec.decode(value, { stream: true }).matchAll(/"text":/g)) stamps.push(now);
        if (stop) {
          await reader.cancel();
          break;
        }
      }
    }
  })();
  return {
    stamps,
    async stop() {
      stop = true;
      await done;
    },
  };
}

async function waitFor(cond: () => boolean, boundMs: number): Promise<void> {
  const t0 = performance.now();
  while (!cond() && performance.now() - t0 < boundMs) await sleep(5);
  assert.ok(cond(), 'timed out waiting');
}

before(async () => {
  makeAdapterFolders();
  server = await startServer({
    model: join(D, 'stories260K.bin'), tokenizer: join(D, 'tok512.bin'), servedModelName: 'stories260K', apiKey: KEY,
    maxTokensLimit: 400, maxPromptTokens: 100, allowRuntimeLora: true, poolMb: POOL_MB,
    engine: { maxBatch: 32, kvCacheMb: 8, blockSize: 8, maxLoadedAdapters: 4, maxRank: 8, maxQueue: 1000, contextLength: 512, adapterDir: ROOT },
  }, { port: 0, host: '127.0.0.1' });
  off = await startServer({
    model: join(D, 'stories260K.bin'), tokenizer: join(D, 'tok512.bin'), servedModelName: 'base', maxTokensLimit: 8, maxPromptTokens: 100,
    engine: { maxBatch: 4, kvCacheMb: 1, blockSize: 8, maxLoadedAdapters: 2, maxRank: 8, maxQueue: 10, contextLength: 128 },
  }, { port: 0, host: '127.0.0.1' });
  rssAtStart = process.memoryUsage.rss();
});

after(async () => {
  await Promise.all([server?.close(), off?.close()]);
  rmSync(tmp, { recursive: true, force: true });
});

describe('authentication', () => {
  const gen = JSON.stringify({ model: 'stories260K', prompt: 'Once', max_tokens: 1, temperature: 0 });
  const load = JSON.stringify({ lora_name: 'sneaky', lora_path: 'good2' });
  const variants: [string, string, string?][] = [
    ['POST', '/%76%31/completions', gen],
    ['POST', '/v%31/load_lora_adapter', load],
    ['GET', '/%76%31/models'],
    ['GET', '/%56%31/models'],
    ['GET', '/v1/%6Dodels'],
    ['GET', '/v1/%6dodels'],
    ['GET', '/v1%2Fmodels'],
    ['GET', '/v1%2fmodels'],
    ['GET', '//v1/models'],
    ['GET', '/v1//models'],
    ['GET', '/v1/../v1/models'],
    ['GET', '/x/../v1/models'],
    ['GET', '/v1/./models'],
    ['GET', '/v1/models/'],
    ['GET', '/v1/models?x=1'],
    ['POST', '/V1/completions', gen],
    ['POST', '/v1/completions', gen],
    ['GET', '/v1/models'],
    ['POST', '/v1/unload_lora_adapter', JSON.stringify({ lora_name: 'scanned' })],
  ];

  it('refuses every spelling of a /v1 path without the right key, and accepts the key', async () => {
    const u = new URL(server.url);
    const all: [string, string, string?][] = [...variants, ['GET', `http://${u.host}/v1/models`]];
    const wrong: (Record<string, string> | undefined)[] = [
      undefined, { authorization: 'Bearer nope' }, { authorization: `Bearer ${KEY}x` }, { authorization: `Bearer ${KEY.slice(0, -1)}` },
      { authorization: `Basic ${Buffer.from(`u:${KEY}`).toString('base64')}` }, { authorization: KEY }, { authorization: 'Bearer ' },
    ];
    for (const [method, path, body] of all) {
      for (const h of wrong) {
        const r = await raw(server.url, method, path, h, body);
        assert.equal(r.status, 401, `${method} ${path} with ${JSON.stringify(h)} answered ${r.status}: ${r.text}`);
        assert.match(JSON.parse(r.text).error.message, /API key/);
      }
    }
    // nothing was loaded or unloaded by the refused requests
    const models = JSON.parse((await raw(server.url, 'GET', '/v1/models', auth)).text) as { data: { id: string }[] };
    assert.ok(!models.data.some((m) => m.id === 'sneaky'));
    assert.ok(models.data.some((m) => m.id === 'scanned'));
    // with the key, the plain paths work and no spelling answers 401
    assert.equal((await raw(server.url, 'GET', '/v1/models', auth)).status, 200);
    assert.equal((await raw(server.url, 'GET', '/v1/models', { authorization: `bearer ${KEY}` })).status, 200);
    assert.equal((await raw(server.url, 'POST', '/v1/completions', auth, gen)).status, 200);
    assert.equal((await raw(server.url, 'GET', '/%76%31/models', auth)).status, 200);
    for (const [method, path, body] of all.filter(([, p]) => !/load_lora/.test(p))) {
      const r = await raw(server.url, method, path, auth, body);
      assert.ok(r.status === 200 || r.status === 404, `${method} ${path} with the key answered ${r.status}: ${r.text}`);
    }
    // the public routes stay public
    assert.equal((await raw(server.url, 'GET', '/health')).status, 200);
    assert.equal((await raw(server.url, 'GET', '/metrics')).status, 200);
  });
});

describe('runtime adapter loading', () => {
  it('is off unless enabled', async () => {
    for (const path of ['/v1/load_lora_adapter', '/v1/unload_lora_adapter']) {
      const r = await post(path, { lora_name: 'good2', lora_path: join(ROOT, 'good2') }, off);
      assert.equal(r.status, 404, r.text);
      assert.match(r.json.error.message, /--allow-runtime-lora/);
    }
    const models = await (await fetch(`${off.url}/v1/models`)).json() as { data: { id: string }[] };
    assert.ok(!models.data.some((m) => m.id === 'good2'));
  });

  it('loads folders under the root only, and refuses hostile ones quickly while generation goes on', { timeout: 30_000 }, async () => {
    const bg = backgroundStreams();
    try {
      await waitFor(() => bg.stamps.length > 0, 10_000);
      const t0 = performance.now();
      const before = bg.stamps.length;
      const refusals: [string, unknown, number, RegExp][] = [
        ['FIFO config', 'fifo', 400, /adapter_config\.json is not a regular file/],
        ['weights linked to /dev/zero', 'zero', 403, /outside the adapter root/],
        ['../ escape', '../outside/ad', 403, /under the server's adapter root/],
        ['absolute path outside', join(OUTSIDE, 'ad'), 403, /under the server's adapter root/],
        ['sibling with the root as prefix', join(tmp, 'adapters-evil', 'ad'), 403, /under the server's adapter root/],
        ['escape through .. inside an absolute path', `${ROOT}/../outside/ad`, 403, /under the server's adapter root/],
        ['folder linked out of the root', 'linkout', 403, /under the server's adapter root/],
        ['config linked out of the root', 'leak', 403, /outside the adapter root/],
        ['config that is not JSON', 'badjson', 400, /adapter_config\.json is not valid JSON/],
        ['weights larger than any adapter', 'huge', 400, /adapter_model\.safetensors has \d+ bytes, more than the limit of \d+/],
        ['missing folder', 'nope', 400, /does not exist/],
        ['a device', '/dev/zero', 403, /under the server's adapter root/],
        ['the root itself', ROOT, 403, /under the server's adapter root/],
        ['a system folder', '/etc', 403, /under the server's adapter root/],
        ['not a string', 42, 400, /give "lora_name" and "lora_path"/],
      ];
      for (const [what, lora_path, status, re] of refusals) {
        const r = await post('/v1/load_lora_adapter', { lora_name: `x-${status}`, lora_path });
        assert.equal(r.status, status, `${what}: ${r.text}`);
        assert.match(r.json.error.message, re, what);
        assert.ok(!r.text.includes(SECRET) && !r.text.includes('peft_type'), `${what}: the answer shows file contents: ${r.text}`);
        assert.ok(r.ms < 1000, `${what} took ${r.ms.toFixed(0)} ms`);
      }
      for (const [name, re] of [['bad name!', /"lora_name" must be/], ['x'.repeat(65), /"lora_name" must be/], ['../up', /"lora_name" must be/], ['stories260K', /differ from the base model/]] as const) {
        const r = await post('/v1/load_lora_adapter', { lora_name: name, lora_path: 'good2' });
        assert.equal(r.status, 400, r.text);
        assert.match(r.json.error.message, re);
      }
      const elapsed = performance.now() - t0;
      const during = bg.stamps.length - before;
      assert.ok(during > 0, `no tokens arrived during the ${elapsed.toFixed(0)} ms of refusals`);
      // the refused folders left nothing behind and generation still works
      const models = await (await fetch(`${server.url}/v1/models`, { headers: auth })).json() as { data: { id: string }[] };
      assert.ok(!models.data.some((m) => m.id.startsWith('x-')));
      // folders under the root load, by a relative or an absolute path
      assert.equal((await post('/v1/load_lora_adapter', { lora_name: 'fresh', lora_path: 'good2' })).status, 200);
      assert.equal((await post('/v1/load_lora_adapter', { lora_name: 'fresh-abs', lora_path: join(ROOT, 'good2') })).status, 200);
      assert.equal((await post('/v1/load_lora_adapter', { lora_name: 'fresh', lora_path: 'good2' })).status, 400, 'names are unique');
      const a = await post('/v1/completions', { model: 'fresh', prompt: 'Once upon a time', max_tokens: 8, temperature: 0 });
      const b = await post('/v1/completions', { model: 'scanned', prompt: 'Once upon a time', max_tokens: 8, temperature: 0 });
      assert.equal(a.status, 200, a.text);
      assert.equal(a.json.choices[0].text, b.json.choices[0].text);
      assert.equal((await post('/v1/unload_lora_adapter', { lora_name: 'fresh' })).status, 200);
      assert.equal((await post('/v1/unload_lora_adapter', { lora_name: 'fresh-abs' })).status, 200);
      assert.equal((await post('/v1/unload_lora_adapter', { lora_name: 'no such/name' })).status, 400);
    } finally {
      await bg.stop();
    }
    assert.ok(await blocksBack(2000) >= 0);
  });
});

describe('abandoned requests', () => {
  it('a client that leaves a stream after its first token frees its KV blocks at once', { timeout: 20_000 }, async () => {
    assert.ok(await blocksBack(2000) >= 0);
    const m0 = await metrics();
    const N = 6;
    const controllers = Array.from({ length: N }, () => new AbortController());
    await Promise.all(controllers.map(async (ac) => {
      const res = await fetch(`${server.url}/v1/completions`, {
        method: 'POST', headers: { 'content-type': 'application/json', ...auth }, signal: ac.signal,
        body: JSON.stringify({ model: 'stories260K', prompt: 'Once upon a time', max_tokens: 400, temperature: 0, stream: true }),
      });
      const reader = res.body!.getReader();
      await reader.read();
      ac.abort();
    }));
    const ms = await blocksBack(1000);
    assert.ok(ms >= 0, 'the KV blocks did not come back');
    const m1 = await metrics();
    assert.equal(m1.adaptkit_cancelled_requests_total! - m0.adaptkit_cancelled_requests_total!, N);
    const spent = m1.adaptkit_generated_tokens_total! - m0.adaptkit_generated_tokens_total!;
    assert.ok(spent < (N * 400) / 4, `the abandoned streams cost ${spent} tokens`);
    // a non-streaming client that gives up while waiting is dropped too, and its adapter's pin
    // goes with it
    assert.equal((await post('/v1/load_lora_adapter', { lora_name: 'pinned', lora_path: 'good2' })).status, 200);
    const ac = new AbortController();
    const waiting = fetch(`${server.url}/v1/completions`, {
      method: 'POST', headers: { 'content-type': 'application/json', ...auth }, signal: ac.signal,
      body: JSON.stringify({ model: 'pinned', prompt: 'Once upon a time', max_tokens: 400, temperature: 0 }),
    }).catch((e: Error) => e);
    const t0 = performance.now();
    for (let i = 0; i < 100 && performance.now() - t0 < 2000; i++) {
      if ((await metrics()).adaptkit_running_batch_size === 1) break;
      await sleep(2);
    }
    ac.abort();
    assert.ok((await waiting) instanceof Error);
    assert.ok(await blocksBack(1000) >= 0, 'the KV blocks did not come back');
    const m2 = await metrics();
    assert.equal(m2.adaptkit_cancelled_requests_total! - m1.adaptkit_cancelled_requests_total!, 1);
    // a pinned adapter could not be unloaded (409)
    assert.equal((await post('/v1/unload_lora_adapter', { lora_name: 'pinned' })).status, 200);
  });
});

describe('prompt limits', () => {
  it('answers a 400 KB prompt with 400 while another stream keeps producing tokens', { timeout: 30_000 }, async () => {
    const bg = backgroundStreams();
    try {
      await waitFor(() => bg.stamps.length > 0, 10_000);
      const big = 'Once upon a time there was a little girl. '.repeat(10_000).slice(0, 400_000);
      const t0 = performance.now();
      const before = bg.stamps.length;
      let worst = 0;
      for (let i = 0; i < 30 && (i < 3 || performance.now() - t0 < 400); i++) {
        const r = i % 3 === 2
          ? await post('/v1/chat/completions', { model: 'stories260K', messages: [{ role: 'user', content: big }], max_tokens: 4 })
          : await post('/v1/completions', { model: 'stories260K', prompt: big, max_tokens: 4 });
        assert.equal(r.status, 400, r.text);
        assert.match(r.json.error.message, /the prompt has \d+ bytes, more than the limit of 1600/);
        worst = Math.max(worst, r.ms);
      }
      const window = performance.now() - t0;
      const during = bg.stamps.filter((s) => s >= t0).length;
      assert.ok(bg.stamps.length > before && during > 0, `no tokens arrived in the ${window.toFixed(0)} ms of long prompts`);
      assert.ok(worst < 1000, `a long prompt took ${worst.toFixed(0)} ms to refuse`);
      // under the byte bound but over the token bound: tokenized, then refused
      const r = await post('/v1/completions', { model: 'stories260K', prompt: 'a b c d '.repeat(150) });
      assert.equal(r.status, 400, r.text);
      assert.match(r.json.error.message, /the prompt has \d+ tokens, more than the limit of 100/);
    } finally {
      await bg.stop();
    }
  });
});

describe('responsiveness and memory', () => {
  it('/health answers within 100 ms while 200 clients generate', { timeout: 40_000 }, async (t) => {
    // the clients run on their own thread, so what is measured is the server's thread, not theirs
    const attempt = async () => {
      const load = new Worker(LOAD_CLIENTS, { eval: true, workerData: { url: server.url, key: KEY, clients: 200, rounds: 2 } });
      const noise = new Worker(TIMER_NOISE, { eval: true });
      let result: { errors: number; message?: string } | null = null;
      load.once('message', (m) => (result = m));
      load.once('error', (e) => (result = { errors: -1, message: e.message }));
      const latencies: number[] = [];
      const t0 = performance.now();
      while (!result && latencies.length < 2000 && performance.now() - t0 < 15_000) {
        const s = performance.now();
        const h = await fetch(`${server.url}/health`);
        assert.equal(h.status, 200);
        await h.text();
        latencies.push(performance.now() - s);
        await sleep(5);
      }
      await waitFor(() => result !== null, 10_000);
      noise.postMessage('stop');
      const osNoise = await new Promise<number>((r) => noise.once('message', r));
      await Promise.all([load.terminate(), noise.terminate()]);
      assert.equal(result!.errors, 0, result!.message);
      assert.ok(latencies.length >= 5, 'the load ended before /health was measured');
      latencies.sort((a, b) => a - b);
      const worst = latencies[latencies.length - 1]!;
      t.diagnostic(`/health: ${latencies.length} probes, median ${latencies[latencies.length >> 1]!.toFixed(1)} ms, worst ${worst.toFixed(1)} ms; an idle thread's worst timer lateness meanwhile ${osNoise.toFixed(1)} ms`);
      return { worst, osNoise };
    };
    // what the scheduler of shared, oversubscribed cores adds to every thread is not the server's
    // doing, so it is measured alongside and allowed for; a second run absorbs one unlucky burst,
    // while work on the server's thread (tokenizing, file reads, compute) would fail both
    const runs = [await attempt()];
    if (runs[0]!.worst >= 100 + runs[0]!.osNoise) runs.push(await attempt());
    assert.ok(runs.some((r) => r.worst < 100 + r.osNoise), `/health took up to ${runs.map((r) => `${r.worst.toFixed(1)} ms (scheduler noise ${r.osNoise.toFixed(1)} ms)`).join(', then ')}`);
  });

  it('reports the tensor pool under its cap and keeps memory bounded', async (t) => {
    const m = await metrics();
    assert.equal(m.adaptkit_tensor_pool_limit_bytes, POOL_MB * 2 ** 20);
    assert.ok(m.adaptkit_tensor_pool_bytes! <= m.adaptkit_tensor_pool_limit_bytes!);
    // without --pool-mb the cap follows the KV-cache budget
    assert.equal((await metrics(off)).adaptkit_tensor_pool_limit_bytes, 1 * 2 ** 20);
    const rss = m.process_resident_memory_bytes!;
    const mib = (n: number) => `${(n / 2 ** 20).toFixed(0)} MiB`;
    t.diagnostic(`rss ${mib(rss)} (${mib(rssAtStart)} after start-up), tensor pool ${(m.adaptkit_tensor_pool_bytes! / 2 ** 20).toFixed(1)} of ${POOL_MB} MiB`);
    // two servers (four worker threads, each with its own TypeScript loader) and the test itself,
    // on a 1 MB model; the load above must not have grown it by more than a fraction of that
    assert.ok(rss < 600 * 2 ** 20, `rss is ${mib(rss)}`);
    assert.ok(rss - rssAtStart < 200 * 2 ** 20, `rss grew from ${mib(rssAtStart)} to ${mib(rss)}`);
  });
});
