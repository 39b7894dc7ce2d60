/**
 * The server through OpenAI's own client library (the `openai` package) on loopback, each API field
 * checked against its definition: token limits, model objects, n choices, presence and frequency
 * penalties and logit bias (against the model's logits adjusted by hand), stop strings,
 * log-probabilities (against the log-softmax of the model's logits), echo, usage in streams, and
 * 400s naming the fields the server does not implement.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import OpenAI, { APIError } from 'openai';
import * as ak from '../src/index.js';
import { startServer, type Server } from '../src/serve/http.js';

const D = join(ak.dataDir(), 'models', 'stories260K');
const MODEL = join(D, 'stories260K.bin');
const TOK = join(D, 'tok512.bin');
const tmp = mkdtempSync(join(tmpdir(), 'adaptkit-openai-'));
const ADAPTERS = join(tmp, 'adapters');
const KEY = 'openai-test-key';
const BASE = 'stories260K';
const PROMPT = 'Once upon a time';
const HELLO = [{ role: 'user' as const, content: 'Hello' }];
let server: Server;
let client: OpenAI;

const ref = ak.loadModel(MODEL).model;
const tok = ak.loadTokenizer(MODEL, TOK, ref.config.vocabSize);
const promptIds = tok.encode(PROMPT, { bos: true });
// a model without a chat template gets its messages as "role: content" lines
const chatIds = tok.encode(`${HELLO[0]!.role}: ${HELLO[0]!.content}\nassistant:`, { bos: true });

/** The log-softmax of the model's logits after `ids`, from a forward over the whole sequence. */
function logSoftmaxAfter(ids: number[]): Float64Array {
  const row = ak.tidy(() => ak.noGrad(() => {
    const out = ref.forward(ak.tensor(ids, [1, ids.length], { dtype: 'i32' }));
    return ak.narrow(out, 1, ids.length - 1, 1).toArray() as Float32Array;
  }));
  let max = -Infinity;
  for (const v of row) max = Math.max(max, v);
  let sum = 0;
  for (const v of row) sum += Math.exp(v - max);
  const logZ = max + Math.log(sum);
  return Float64Array.from(row, (v) => v - logZ);
}

/**
 * Greedy decoding by hand: at each step the model's log-probabilities (logits up to a constant,
 * which the argmax and the penalties do not care about), changed by `adjust`, then the argmax.
 */
function greedy(prompt: number[], steps: number, adjust: (v: Float64Array, generated: number[]) => void = () => {}): { ids: number[]; logprobs: Float64Array[] } {
  const ids: number[] = [];
  const logprobs: Float64Array[] = [];
  while (ids.length < steps) {
    const lp = logSoftmaxAfter([...prompt, ...ids]);
    const v = Float64Array.from(lp);
    adjust(v, ids);
    let best = 0;
    for (let i = 1; i < v.length; i++) if (v[i]! > v[best]!) best = i;
    if (best === tok.eosId) break;
    ids.push(best);
    logprobs.push(lp);
  }
  return { ids, logprobs };
}

const textOf = (prompt: number[], ids: number[]) => tok.decode([...prompt, ...ids]).slice(tok.decode(prompt).length);

/** The k largest values of a row, largest first. */
const topValues = (v: Float64Array, k: number) => Array.from(v).sort((a, b) => b - a).slice(0, k);

function close(actual: number, expected: number, what: string, tol = 1e-4): void {
  assert.ok(Math.abs(actual - expected) <= tol, `${what}: ${actual} vs ${expected}`);
}

/** The SDK's error for a request the server refuses. */
async function refused(p: Promise<unknown>, status: number): Promise<APIError> {
  try {
    await p;
  } catch (e) {
    assert.ok(e instanceof APIError, String(e));
    assert.equal(e.status, status, e.message);
    return e;
  }
  assert.fail('the request was answered');
}

async function collect<T>(stream: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = [];
  for await (const c of stream) out.push(c);
  return out;
}

before(async () => {
  const am = new ak.AdapterModel(ak.loadModel(MODEL).model);
  am.add('tuned', { peft_type: 'LORA', r: 2, lora_alpha: 8, target_modules: ['q_proj', 'v_proj'] }, { seed: 1 });
  am.save(join(ADAPTERS, 'tuned'), 'tuned');
  server = await startServer({
    model: MODEL, tokenizer: TOK, servedModelName: BASE, apiKey: KEY, maxTokensLimit: 64, maxPromptTokens: 200,
    engine: { maxBatch: 8, kvCacheMb: 4, blockSize: 8, maxLoadedAdapters: 4, maxRank: 8, maxQueue: 256, contextLength: 256, adapterDir: ADAPTERS },
  }, { port: 0, host: '127.0.0.1' });
  client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: KEY, maxRetries: 0, timeout: 20_000 });
});

after(async () => {
  await server.close();
  rmSync(tmp, { recursive: true, force: true });
});

describe('the OpenAI API through the openai package', { timeout: 60_000 }, () => {
  it('honours max_completion_tokens (and the older max_tokens), and refuses the two when they differ', async () => {
    const a = await client.chat.completions.create({ model: BASE, messages: HELLO, max_completion_tokens: 5, temperature: 0 });
    assert.equal(a.usage!.completion_tokens, 5);
    assert.equal(a.choices[0]!.finish_reason, 'length');
    const b = await client.chat.completions.create({ model: BASE, messages: HELLO, max_tokens: 5, temperature: 0 });
    assert.equal(b.choices[0]!.message.content, a.choices[0]!.message.content);
    const same = await client.chat.completions.create({ model: BASE, messages: HELLO, max_tokens: 3, max_completion_tokens: 3, temperature: 0 });
    assert.equal(same.usage!.completion_tokens, 3);
    const e = await refused(client.chat.completions.create({ model: BASE, messages: HELLO, max_tokens: 3, max_completion_tokens: 5 }), 400);
    assert.match(e.message, /"max_tokens" and "max_completion_tokens" differ/);
    // the legacy completions route has only max_tokens
    const f = await refused(client.completions.create({ model: BASE, prompt: PROMPT, max_completion_tokens: 5 } as never), 400);
    assert.match(f.message, /"max_completion_tokens"/);
    const c = await client.completions.create({ model: BASE, prompt: PROMPT, max_tokens: 4, temperature: 0 });
    assert.equal(c.usage!.completion_tokens, 4);
  });

  it('retrieves the base model and every adapter, and answers unknown ids with 404 model_not_found', async () => {
    const base = await client.models.retrieve(BASE);
    assert.equal(base.id, BASE);
    assert.equal(base.object, 'model');
    assert.equal(base.owned_by, 'adaptkit');
    assert.equal(typeof base.created, 'number');
    const tuned = await client.models.retrieve('tuned');
    assert.equal(tuned.id, 'tuned');
    assert.equal((tuned as unknown as { parent: string }).parent, BASE);
    const listed = [];
    for await (const m of client.models.list()) listed.push(m);
    assert.deepEqual(listed.map((m) => m.id), [BASE, 'tuned']);
    assert.deepEqual(listed[1], tuned);
    for (const id of ['nope', 'org/nope']) {
      const e = await refused(client.models.retrieve(id), 404);
      assert.equal(e.code, 'model_not_found');
      assert.equal(e.type, 'invalid_request_error');
      assert.match(e.message, new RegExp(`The model '${id}' does not exist`));
    }
  });

  it('returns n choices: equal when greedy, seed + i for choice i when sampling, streamed by index', async () => {
    const one = await client.completions.create({ model: BASE, prompt: PROMPT, max_tokens: 8, temperature: 0 });
    const three = await client.completions.create({ model: BASE, prompt: PROMPT, max_tokens: 8, temperature: 0, n: 3 });
    assert.deepEqual(three.choices.map((c) => c.index), [0, 1, 2]);
    for (const c of three.choices) assert.equal(c.text, one.choices[0]!.text);
    assert.equal(three.usage!.prompt_tokens, promptIds.length);
    assert.equal(three.usage!.completion_tokens, 3 * one.usage!.completion_tokens);

    const sampled = await client.completions.create({ model: BASE, prompt: PROMPT, max_tokens: 10, temperature: 1, seed: 11, n: 3 });
    const alone = await Promise.all([0, 1, 2].map((i) => client.completions.create({ model: BASE, prompt: PROMPT, max_tokens: 10, temperature: 1, seed: 11 + i })));
    sampled.choices.forEach((c, i) => assert.equal(c.text, alone[i]!.choices[0]!.text, `choice ${i}`));
    assert.ok(new Set(sampled.choices.map((c) => c.text)).size > 1, 'different seeds sample different texts');

    const chat = await client.chat.completions.create({ model: BASE, messages: HELLO, max_completion_tokens: 6, temperature: 1, seed: 5, n: 2 });
    const chunks = await collect(await client.chat.completions.create({ model: BASE, messages: HELLO, max_completion_tokens: 6, temperature: 1, seed: 5, n: 2, stream: true }));
    for (const i of [0, 1]) {
      const mine = chunks.flatMap((c) => c.choices.filter((x) => x.index === i));
      assert.equal(mine[0]!.delta.role, 'assistant');
      assert.equal(mine.map((x) => x.delta.content ?? '').join(''), chat.choices[i]!.message.content, `choice ${i}`);
      assert.equal(mine.at(-1)!.finish_reason, chat.choices[i]!.finish_reason);
    }
    const e = await refused(client.completions.create({ model: BASE, prompt: PROMPT, n: 17 }), 400);
    assert.equal(e.param, 'n');
  });

  it('applies presence and frequency penalties to the generated tokens as OpenAI defines them', async () => {
    // long enough for tokens to repeat: this model's distributions are sharp
    const plain = greedy(promptIds, 40);
    const cases = [{ presence: 2, frequency: 0 }, { presence: 2, frequency: 2 }, { presence: 0.5, frequency: -2 }];
    let changed = 0;
    for (const { presence, frequency } of cases) {
      // logit[j] -= presence * [count_j > 0] + frequency * count_j, counting only generated tokens
      const expected = greedy(promptIds, 40, (v, gen) => {
        const counts = new Map<number, number>();
        for (const t of gen) counts.set(t, (counts.get(t) ?? 0) + 1);
        for (const [t, c] of counts) v[t] = v[t]! - presence * (c > 0 ? 1 : 0) - frequency * c;
      });
      const r = await client.completions.create({ model: BASE, prompt: PROMPT, max_tokens: 40, temperature: 0, presence_penalty: presence, frequency_penalty: frequency, logprobs: 0 });
      const what = `presence ${presence}, frequency ${frequency}`;
      assert.equal(r.choices[0]!.text, textOf(promptIds, expected.ids), what);
      if (textOf(promptIds, expected.ids) !== textOf(promptIds, plain.ids)) changed++;
      // the reported log-probabilities are the model's, not the penalized ones
      r.choices[0]!.logprobs!.token_logprobs!.forEach((lp, i) => close(lp, expected.logprobs[i]![expected.ids[i]!]!, `${what}, token ${i}`));
    }
    assert.equal(changed, cases.length, 'every penalty changes the output');
    const chat = await client.chat.completions.create({ model: BASE, messages: HELLO, max_completion_tokens: 30, temperature: 0, presence_penalty: 1.5 });
    const expected = greedy(chatIds, 30, (v, gen) => {
      for (const t of new Set(gen)) v[t] = v[t]! - 1.5;
    });
    assert.equal(chat.choices[0]!.message.content, textOf(chatIds, expected.ids));
    assert.notEqual(textOf(chatIds, expected.ids), textOf(chatIds, greedy(chatIds, 30).ids));
    const e = await refused(client.completions.create({ model: BASE, prompt: PROMPT, frequency_penalty: 2.5 }), 400);
    assert.equal(e.param, 'frequency_penalty');
  });

  it('adds logit_bias to the logits', async () => {
    const id = tok.encode(' dog')[0]!;
    const r = await client.completions.create({ model: BASE, prompt: PROMPT, max_tokens: 4, temperature: 0, logit_bias: { [String(id)]: 100 } });
    assert.equal(r.choices[0]!.text, textOf(promptIds, [id, id, id, id]));
    const first = greedy(promptIds, 1).ids[0]!;
    const banned = await client.completions.create({ model: BASE, prompt: PROMPT, max_tokens: 3, temperature: 0, logit_bias: { [String(first)]: -100 } });
    assert.equal(banned.choices[0]!.text, textOf(promptIds, greedy(promptIds, 3, (v) => (v[first] = v[first]! - 100)).ids));
    const e = await refused(client.completions.create({ model: BASE, prompt: PROMPT, logit_bias: { 100000: 1 } }), 400);
    assert.equal(e.param, 'logit_bias');
  });

  it('ends at stop strings without returning them, and never streams part of one', async () => {
    const full = (await client.completions.create({ model: BASE, prompt: PROMPT, max_tokens: 30, temperature: 0 })).choices[0]!.text;
    // a stop string of several tokens, so its first tokens arrive before it is complete
    const stop = full.slice(full.indexOf(' little') + 1, full.indexOf(' little') + 12);
    assert.ok(stop.length === 11 && full.indexOf(stop) > 0, full);
    const expected = full.slice(0, full.indexOf(stop));
    const r = await client.completions.create({ model: BASE, prompt: PROMPT, max_tokens: 30, temperature: 0, stop: ['zzz', stop] });
    assert.equal(r.choices[0]!.text, expected);
    assert.equal(r.choices[0]!.finish_reason, 'stop');
    const chunks = await collect(await client.completions.create({ model: BASE, prompt: PROMPT, max_tokens: 30, temperature: 0, stop: [stop], stream: true }));
    assert.equal(chunks.map((c) => c.choices[0]!.text).join(''), expected);
    assert.equal(chunks.at(-1)!.choices[0]!.finish_reason, 'stop');
    const one = await client.completions.create({ model: BASE, prompt: PROMPT, max_tokens: 30, temperature: 0, stop: stop });
    assert.equal(one.choices[0]!.text, expected);
    await refused(client.completions.create({ model: BASE, prompt: PROMPT, stop: ['a', 'b', 'c', 'd', 'e'] }), 400);
    await refused(client.completions.create({ model: BASE, prompt: PROMPT, stop: '' }), 400);
  });

  it('returns completion logprobs equal to the log-softmax of the model\'s logits', async () => {
    const g = greedy(promptIds, 6);
    const r = await client.completions.create({ model: BASE, prompt: PROMPT, max_tokens: 6, temperature: 0, logprobs: 3 });
    const c = r.choices[0]!;
    const lp = c.logprobs!;
    assert.equal(lp.tokens!.length, 6);
    assert.equal(lp.tokens!.join(''), c.text);
    let offset = 0;
    g.ids.forEach((id, i) => {
      assert.equal(lp.tokens![i], textOf([...promptIds, ...g.ids.slice(0, i)], [id]));
      close(lp.token_logprobs![i]!, g.logprobs[i]![id]!, `token ${i}`);
      // greedy: the chosen token is among the 3 most likely, so there are exactly 3
      const top = Object.values(lp.top_logprobs![i]!).sort((a, b) => b - a);
      assert.equal(top.length, 3);
      topValues(g.logprobs[i]!, 3).forEach((v, j) => close(top[j]!, v, `token ${i}, alternative ${j}`));
      assert.equal(lp.text_offset![i], offset);
      offset += lp.tokens![i]!.length;
    });
    const chunks = await collect(await client.completions.create({ model: BASE, prompt: PROMPT, max_tokens: 6, temperature: 0, logprobs: 3, stream: true }));
    const streamed = chunks.flatMap((x) => x.choices[0]!.logprobs?.tokens ?? []);
    assert.deepEqual(streamed, lp.tokens);
    assert.deepEqual(chunks.flatMap((x) => x.choices[0]!.logprobs?.text_offset ?? []), lp.text_offset);
    const none = await client.completions.create({ model: BASE, prompt: PROMPT, max_tokens: 2, temperature: 0 });
    assert.equal(none.choices[0]!.logprobs, null);
    await refused(client.completions.create({ model: BASE, prompt: PROMPT, logprobs: 6 }), 400);
  });

  it('returns chat logprobs with bytes and top_logprobs, streamed or not', async () => {
    const g = greedy(chatIds, 5);
    const r = await client.chat.completions.create({ model: BASE, messages: HELLO, max_completion_tokens: 5, temperature: 0, logprobs: true, top_logprobs: 5 });
    const content = r.choices[0]!.logprobs!.content!;
    assert.equal(content.length, g.ids.length);
    assert.equal(content.map((t) => t.token).join(''), r.choices[0]!.message.content);
    content.forEach((t, i) => {
      close(t.logprob, g.logprobs[i]![g.ids[i]!]!, `token ${i}`);
      assert.deepEqual(t.bytes, [...Buffer.from(t.token, 'utf8')]);
      assert.equal(t.top_logprobs.length, 5);
      assert.equal(t.top_logprobs[0]!.token, t.token);
      topValues(g.logprobs[i]!, 5).forEach((v, j) => close(t.top_logprobs[j]!.logprob, v, `token ${i}, alternative ${j}`));
    });
    const chunks = await collect(await client.chat.completions.create({ model: BASE, messages: HELLO, max_completion_tokens: 5, temperature: 0, logprobs: true, top_logprobs: 5, stream: true }));
    const streamed = chunks.flatMap((x) => x.choices[0]?.logprobs?.content ?? []);
    assert.deepEqual(streamed, content);
    const bare = await client.chat.completions.create({ model: BASE, messages: HELLO, max_completion_tokens: 2, temperature: 0, logprobs: true });
    assert.deepEqual(bare.choices[0]!.logprobs!.content!.map((t) => t.top_logprobs), [[], []]);
    const e = await refused(client.chat.completions.create({ model: BASE, messages: HELLO, top_logprobs: 2 }), 400);
    assert.equal(e.param, 'top_logprobs');
    await refused(client.chat.completions.create({ model: BASE, messages: HELLO, logprobs: true, top_logprobs: 21 }), 400);
  });

  it('echoes the prompt before the completion, and refuses echo with logprobs', async () => {
    const plain = await client.completions.create({ model: BASE, prompt: PROMPT, max_tokens: 5, temperature: 0 });
    const echoed = await client.completions.create({ model: BASE, prompt: PROMPT, max_tokens: 5, temperature: 0, echo: true });
    assert.equal(echoed.choices[0]!.text, PROMPT + plain.choices[0]!.text);
    const chunks = await collect(await client.completions.create({ model: BASE, prompt: PROMPT, max_tokens: 5, temperature: 0, echo: true, stream: true }));
    assert.equal(chunks.map((c) => c.choices[0]!.text).join(''), PROMPT + plain.choices[0]!.text);
    const e = await refused(client.completions.create({ model: BASE, prompt: PROMPT, echo: true, logprobs: 1 }), 400);
    assert.equal(e.param, 'echo');
  });

  it('sends usage in a last chunk with empty choices only when stream_options.include_usage asks', async () => {
    const without = await collect(await client.completions.create({ model: BASE, prompt: PROMPT, max_tokens: 4, temperature: 0, stream: true }));
    assert.ok(without.every((c) => c.usage === undefined && c.choices.length === 1));
    const chunks = await collect(await client.chat.completions.create({ model: BASE, messages: HELLO, max_completion_tokens: 4, temperature: 0, n: 2, stream: true, stream_options: { include_usage: true } }));
    const last = chunks.at(-1)!;
    assert.deepEqual(last.choices, []);
    assert.deepEqual(last.usage, { prompt_tokens: chatIds.length, completion_tokens: 8, total_tokens: chatIds.length + 8 });
    assert.ok(chunks.slice(0, -1).every((c) => c.usage === null && c.choices.length === 1));
    const off = await collect(await client.completions.create({ model: BASE, prompt: PROMPT, max_tokens: 2, stream: true, stream_options: { include_usage: false } }));
    assert.ok(off.every((c) => c.usage === undefined));
    const e = await refused(client.completions.create({ model: BASE, prompt: PROMPT, stream_options: { include_usage: true } }), 400);
    assert.equal(e.param, 'stream_options');
  });

  it('refuses fields it does not implement with a 400 naming them, and accepts those without effect', async () => {
    const cases: [Promise<unknown>, string][] = [
      [client.completions.create({ model: BASE, prompt: PROMPT, foo: 1 } as never), 'foo'],
      [client.completions.create({ model: BASE, prompt: PROMPT, suffix: ' the end' }), 'suffix'],
      [client.completions.create({ model: BASE, prompt: PROMPT, best_of: 3 }), 'best_of'],
      [client.chat.completions.create({ model: BASE, messages: HELLO, tools: [{ type: 'function', function: { name: 'f' } }] }), 'tools'],
      [client.chat.completions.create({ model: BASE, messages: HELLO, response_format: { type: 'json_object' } }), 'response_format'],
      [client.chat.completions.create({ model: BASE, messages: HELLO, echo: true } as never), 'echo'],
      [client.chat.completions.create({ model: BASE, messages: HELLO, store: true }), 'store'],
    ];
    for (const [p, field] of cases) {
      const e = await refused(p, 400);
      assert.equal(e.param, field);
      assert.match(e.message, new RegExp(`"${field}"`));
    }
    const ok = await client.chat.completions.create({
      model: BASE, messages: HELLO, max_completion_tokens: 3, temperature: 0, user: 'u1', metadata: { team: 'a' }, store: false,
      response_format: { type: 'text' }, tools: [], parallel_tool_calls: false, service_tier: 'auto',
    });
    assert.equal(ok.usage!.completion_tokens, 3);
    const legacy = await client.completions.create({ model: BASE, prompt: PROMPT, max_tokens: 2, user: 'u1', best_of: 1, suffix: null });
    assert.equal(legacy.choices.length, 1);
  });
});
