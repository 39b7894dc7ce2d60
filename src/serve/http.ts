/**
 * The OpenAI-compatible HTTP API (fastify). `model` selects the base model or an adapter by name.
 * Routes: POST /v1/completions and /v1/chat/completions (SSE when `stream`), GET /v1/models,
 * POST /v1/load_lora_adapter and /v1/unload_lora_adapter (vLLM's shapes), GET /health and
 * Prometheus GET /metrics. The engine runs in a worker thread.
 */
import { randomUUID } from 'node:crypto';
import { Worker } from 'node:worker_threads';
import { fileURLToPath, pathToFileURL } from 'node:url';
import Fastify, { type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import type { DoneEvent, EngineMetrics, EngineOptions, GenerationRequest } from './engine.js';
import type { FromWorker, ToWorker, WorkerInit } from './protocol.js';

export interface ServerOptions {
  model: string;
  tokenizer?: string;
  servedModelName: string;
  apiKey?: string;
  engine: EngineOptions;
  maxTokensLimit: number;
  maxPromptTokens: number;
  bodyLimit?: number;
  backend?: 'js' | 'native';
  threads?: number;
}

class HttpError extends Error {
  constructor(readonly status: number, message: string, readonly type = 'invalid_request_error', readonly param: string | null = null) {
    super(message);
  }
}

interface Handlers {
  onToken: (text: string) => void;
  onDone: (e: DoneEvent) => void;
  onError: (status: number, message: string) => void;
}

/** The HTTP side of the worker: submissions with streamed events, and calls with replies. */
class EngineClient {
  private worker: Worker;
  private streams = new Map<string, Handlers>();
  private calls = new Map<number, (m: Extract<FromWorker, { type: 'reply' }>) => void>();
  private nextCall = 1;
  ready: Promise<{ vocabSize: number; contextLength: number; adapters: string[] }>;

  constructor(init: WorkerInit) {
    const self = fileURLToPath(import.meta.url);
    const file = self.replace(/http\.(ts|js)$/, 'worker.$1');
    // from compiled code the worker is a plain module; from TypeScript sources (tests, development)
    // it is loaded through tsx, registered inside the worker
    this.worker = file.endsWith('.ts')
      ? new Worker(`import('tsx/esm/api').then((m) => { m.register(); return import(${JSON.stringify(pathToFileURL(file).href)}); });`, { eval: true, workerData: init })
      : new Worker(file, { workerData: init });
    this.ready = new Promise((resolve, reject) => {
      this.worker.once('error', reject);
      this.worker.on('message', (m: FromWorker) => {
        if (m.type === 'ready') resolve(m);
        else if (m.type === 'fatal') reject(new Error(m.message));
        else if (m.type === 'reply') {
          this.calls.get(m.call)?.(m);
          this.calls.delete(m.call);
        } else {
          const h = this.streams.get(m.id);
          if (!h) return;
          if (m.type === 'token') h.onToken(m.text);
          else if (m.type === 'done') {
            this.streams.delete(m.id);
            h.onDone(m);
          } else {
            this.streams.delete(m.id);
            h.onError(m.status, m.message);
          }
        }
      });
    });
  }

  submit(req: GenerationRequest, h: Handlers): void {
    this.streams.set(req.id, h);
    this.worker.postMessage({ type: 'submit', req } satisfies ToWorker);
  }

  async call<T>(msg: Record<string, unknown> & { type: string }): Promise<T> {
    const call = this.nextCall++;
    const reply = await new Promise<Extract<FromWorker, { type: 'reply' }>>((resolve) => {
      this.calls.set(call, resolve);
      this.worker.postMessage({ ...msg, call } as ToWorker);
    });
    if (!reply.ok) throw new HttpError(reply.status ?? 500, reply.message ?? 'error');
    return reply.value as T;
  }

  get inFlight(): number {
    return this.streams.size;
  }

  terminate(): Promise<number> {
    return this.worker.terminate();
  }
}

function intField(body: Record<string, unknown>, key: string, fallback: number, min: number, max: number): number {
  const v = body[key];
  if (v === undefined || v === null) return fallback;
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) throw new HttpError(400, `"${key}" must be an integer in [${min}, ${max}]`, 'invalid_request_error', key);
  return v;
}

function numField(body: Record<string, unknown>, key: string, fallback: number | undefined, min: number, max: number): number | undefined {
  const v = body[key];
  if (v === undefined || v === null) return fallback;
  if (typeof v !== 'number' || !Number.isFinite(v) || v < min || v > max) throw new HttpError(400, `"${key}" must be a number in [${min}, ${max}]`, 'invalid_request_error', key);
  return v;
}

function stopField(body: Record<string, unknown>): string[] | undefined {
  const v = body.stop;
  if (v === undefined || v === null) return undefined;
  if (typeof v === 'string') return [v];
  if (Array.isArray(v) && v.length <= 4 && v.every((x) => typeof x === 'string')) return v as string[];
  throw new HttpError(400, '"stop" must be a string or a list of up to 4 strings', 'invalid_request_error', 'stop');
}

export interface Server {
  app: FastifyInstance;
  url: string;
  close(): Promise<void>;
}

export async function startServer(o: ServerOptions, listen: { port: number; host: string }): Promise<Server> {
  const client = new EngineClient({ model: o.model, tokenizer: o.tokenizer, engine: o.engine, backend: o.backend, threads: o.threads });
  await client.ready;
  const app = Fastify({ bodyLimit: o.bodyLimit ?? 1 << 20, logger: false });
  const counters = { requests: new Map<string, number>() };
  let closing = false;
  const count = (code: number) => counters.requests.set(String(code), (counters.requests.get(String(code)) ?? 0) + 1);

  app.setErrorHandler((err: Error & { statusCode?: number; validation?: unknown }, _req, reply) => {
    const status = err instanceof HttpError ? err.status : err.statusCode && err.statusCode < 500 ? err.statusCode : 500;
    const message = status === 500 ? `internal error: ${err.message}` : err.message;
    count(status);
    if (status === 429) void reply.header('retry-after', '1');
    void reply.status(status).send({ error: { message, type: err instanceof HttpError ? err.type : status === 401 ? 'authentication_error' : 'invalid_request_error', param: err instanceof HttpError ? err.param : null, code: null } });
  });

  app.addHook('onRequest', async (req) => {
    if (closing && req.url.startsWith('/v1/')) throw new HttpError(503, 'the server is shutting down', 'server_error');
    if (o.apiKey && req.url.startsWith('/v1/')) {
      const auth = req.headers.authorization ?? '';
      if (auth !== `Bearer ${o.apiKey}`) throw new HttpError(401, auth ? 'invalid API key' : 'missing API key (send "Authorization: Bearer <key>")', 'authentication_error');
    }
  });

  const adapterOf = (model: unknown): string | null => {
    if (typeof model !== 'string' || model.length === 0) throw new HttpError(400, '"model" is required', 'invalid_request_error', 'model');
    return model === o.servedModelName ? null : model;
  };

  const generate = async (req: FastifyRequest, reply: FastifyReply, chat: boolean) => {
    const body = req.body as Record<string, unknown> | null;
    if (!body || typeof body !== 'object' || Array.isArray(body)) throw new HttpError(400, 'the body must be a JSON object');
    const adapter = adapterOf(body.model);
    if (intField(body, 'n', 1, 1, 1) !== 1) throw new HttpError(400, 'only n = 1 is supported', 'invalid_request_error', 'n');
    const maxTokens = intField(body, 'max_tokens', chat ? Math.min(256, o.maxTokensLimit) : 16, 1, o.maxTokensLimit);
    let promptIds: number[];
    if (chat) {
      const msgs = body.messages;
      if (!Array.isArray(msgs) || msgs.length === 0 || !msgs.every((m) => m && typeof m.role === 'string' && typeof m.content === 'string')) {
        throw new HttpError(400, '"messages" must be a non-empty list of {"role", "content"} strings', 'invalid_request_error', 'messages');
      }
      promptIds = await client.call<number[]>({ type: 'encode', text: '', chat: msgs as { role: string; content: string }[] });
    } else {
      if (typeof body.prompt !== 'string') throw new HttpError(400, '"prompt" must be a string', 'invalid_request_error', 'prompt');
      promptIds = await client.call<number[]>({ type: 'encode', text: body.prompt });
    }
    if (promptIds.length > o.maxPromptTokens) throw new HttpError(400, `the prompt has ${promptIds.length} tokens, more than the limit of ${o.maxPromptTokens}`, 'invalid_request_error', chat ? 'messages' : 'prompt');
    const id = `${chat ? 'chatcmpl' : 'cmpl'}-${randomUUID()}`;
    const greq: GenerationRequest = {
      id, promptIds, adapter, maxTokens,
      temperature: numField(body, 'temperature', 1, 0, 2)!,
      topP: numField(body, 'top_p', undefined, 0, 1),
      topK: body.top_k === undefined ? undefined : intField(body, 'top_k', 0, 1, 1 << 20),
      repetitionPenalty: numField(body, 'repetition_penalty', undefined, 0.01, 10),
      seed: body.seed === undefined ? undefined : intField(body, 'seed', 0, 0, 2 ** 31 - 1),
      stop: stopField(body),
    };
    const created = Math.floor(Date.now() / 1000);
    const model = String(body.model);
    const object = chat ? 'chat.completion' : 'text_completion';
    const usage = (d: DoneEvent) => ({ prompt_tokens: d.promptTokens, completion_tokens: d.completionTokens, total_tokens: d.promptTokens + d.completionTokens });
    if (body.stream === true) {
      return new Promise<void>((resolve) => {
        let started = false;
        const start = () => {
          if (started) return;
          started = true;
          reply.hijack();
          reply.raw.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache', connection: 'keep-alive' });
        };
        const send = (obj: unknown) => reply.raw.write(`data: ${JSON.stringify(obj)}\n\n`);
        const chunk = (text: string | null, finish: string | null) => chat
          ? { id, object: 'chat.completion.chunk', created, model, choices: [{ index: 0, delta: text === null ? {} : { content: text }, finish_reason: finish }] }
          : { id, object: 'text_completion', created, model, choices: [{ index: 0, text: text ?? '', finish_reason: finish, logprobs: null }] };
        client.submit(greq, {
          onToken: (t) => {
            if (!started) {
              start();
              if (chat) send({ id, object: 'chat.completion.chunk', created, model, choices: [{ index: 0, delta: { role: 'assistant', content: '' }, finish_reason: null }] });
            }
            send(chunk(t, null));
          },
          onDone: (d) => {
            start();
            send({ ...chunk(null, d.finishReason), usage: usage(d) });
            reply.raw.end('data: [DONE]\n\n');
            count(200);
            resolve();
          },
          onError: (status, message) => {
            if (!started) {
              count(status);
              if (status === 429) void reply.header('retry-after', '1');
              void reply.status(status).send({ error: { message, type: status === 429 ? 'rate_limit_error' : 'invalid_request_error', param: null, code: null } });
            } else {
              send({ error: { message } });
              reply.raw.end();
            }
            resolve();
          },
        });
      });
    }
    const done = await new Promise<DoneEvent>((resolve, reject) => {
      client.submit(greq, { onToken: () => {}, onDone: resolve, onError: (status, message) => reject(new HttpError(status, message, status === 429 ? 'rate_limit_error' : 'invalid_request_error')) });
    });
    count(200);
    const choice = chat
      ? { index: 0, message: { role: 'assistant', content: done.text }, finish_reason: done.finishReason }
      : { index: 0, text: done.text, finish_reason: done.finishReason, logprobs: null };
    return { id, object, created, model, choices: [choice], usage: usage(done) };
  };

  app.post('/v1/completions', (req, reply) => generate(req, reply, false));
  app.post('/v1/chat/completions', (req, reply) => generate(req, reply, true));

  app.get('/v1/models', async () => {
    const names = await client.call<string[]>({ type: 'list' });
    const created = Math.floor(Date.now() / 1000);
    return {
      object: 'list',
      data: [
        { id: o.servedModelName, object: 'model', created, owned_by: 'adaptkit', root: o.model, parent: null },
        ...names.map((n) => ({ id: n, object: 'model', created, owned_by: 'adaptkit', root: n, parent: o.servedModelName })),
      ],
    };
  });

  app.post('/v1/load_lora_adapter', async (req) => {
    const b = req.body as Record<string, unknown> | null;
    if (!b || typeof b.lora_name !== 'string' || typeof b.lora_path !== 'string') throw new HttpError(400, 'give "lora_name" and "lora_path"');
    await client.call({ type: 'load', name: b.lora_name, path: b.lora_path });
    return `Success: LoRA adapter '${b.lora_name}' added successfully.`;
  });

  app.post('/v1/unload_lora_adapter', async (req) => {
    const b = req.body as Record<string, unknown> | null;
    if (!b || typeof b.lora_name !== 'string') throw new HttpError(400, 'give "lora_name"');
    await client.call({ type: 'unload', name: b.lora_name });
    return `Success: LoRA adapter '${b.lora_name}' removed successfully.`;
  });

  app.get('/health', async () => ({ status: closing ? 'shutting_down' : 'ok' }));

  app.get('/metrics', async (_req, reply) => {
    const m = await client.call<EngineMetrics>({ type: 'metrics' });
    const lines = [
      '# HELP adaptkit_queue_length Requests waiting to be admitted.', '# TYPE adaptkit_queue_length gauge', `adaptkit_queue_length ${m.queue}`,
      '# HELP adaptkit_running_batch_size Sequences in the running batch.', '# TYPE adaptkit_running_batch_size gauge', `adaptkit_running_batch_size ${m.running}`,
      '# HELP adaptkit_generated_tokens_total Tokens generated.', '# TYPE adaptkit_generated_tokens_total counter', `adaptkit_generated_tokens_total ${m.generatedTokens}`,
      '# HELP adaptkit_tokens_per_second Generated tokens per second over the last second.', '# TYPE adaptkit_tokens_per_second gauge', `adaptkit_tokens_per_second ${m.tokensPerSecond.toFixed(2)}`,
      '# HELP adaptkit_kv_blocks_free Free KV-cache blocks.', '# TYPE adaptkit_kv_blocks_free gauge', `adaptkit_kv_blocks_free ${m.freeBlocks}`,
      '# HELP adaptkit_kv_blocks_total KV-cache blocks.', '# TYPE adaptkit_kv_blocks_total gauge', `adaptkit_kv_blocks_total ${m.totalBlocks}`,
      '# HELP adaptkit_preemptions_total Sequences preempted for KV-cache room.', '# TYPE adaptkit_preemptions_total counter', `adaptkit_preemptions_total ${m.preemptions}`,
      '# HELP adaptkit_adapter_cache_hits_total Requests whose adapter was loaded.', '# TYPE adaptkit_adapter_cache_hits_total counter', `adaptkit_adapter_cache_hits_total ${m.adapterHits}`,
      '# HELP adaptkit_adapter_cache_misses_total Adapter loads.', '# TYPE adaptkit_adapter_cache_misses_total counter', `adaptkit_adapter_cache_misses_total ${m.adapterMisses}`,
      '# HELP adaptkit_adapter_evictions_total Adapters evicted (LRU).', '# TYPE adaptkit_adapter_evictions_total counter', `adaptkit_adapter_evictions_total ${m.adapterEvictions}`,
      '# HELP adaptkit_loaded_adapters Adapters in memory.', '# TYPE adaptkit_loaded_adapters gauge', `adaptkit_loaded_adapters ${m.loadedAdapters}`,
      '# HELP adaptkit_adapter_memory_bytes Memory of the adapter slots (fixed by --max-loaded-adapters and --max-rank).', '# TYPE adaptkit_adapter_memory_bytes gauge', `adaptkit_adapter_memory_bytes ${m.adapterBytes}`,
      '# HELP adaptkit_kv_cache_bytes Memory of the KV-cache block pool (fixed by --kv-cache-mb).', '# TYPE adaptkit_kv_cache_bytes gauge', `adaptkit_kv_cache_bytes ${m.kvCacheBytes}`,
      '# HELP adaptkit_http_requests_total HTTP generation requests by status.', '# TYPE adaptkit_http_requests_total counter',
      ...[...counters.requests].map(([code, n]) => `adaptkit_http_requests_total{status="${code}"} ${n}`),
    ];
    return reply.type('text/plain; version=0.0.4').send(`${lines.join('\n')}\n`);
  });

  const url = await app.listen({ port: listen.port, host: listen.host });
  return {
    app,
    url,
    async close() {
      // stop taking requests, let the running ones finish, then stop the engine
      closing = true;
      const deadline = Date.now() + 60_000;
      while (client.inFlight > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
      await app.close();
      await client.terminate();
    },
  };
}
