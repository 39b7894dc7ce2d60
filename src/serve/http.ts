/**
 * The OpenAI-compatible HTTP API (fastify). `model` selects the base model or an adapter by name.
 * Routes: POST /v1/completions and /v1/chat/completions (SSE when `stream`), GET /v1/models,
 * POST /v1/load_lora_adapter and /v1/unload_lora_adapter (vLLM's shapes, only with
 * `allowRuntimeLora`), GET /health and Prometheus GET /metrics. The engine runs in one worker
 * thread and prompt encoding in another, so this thread only parses, checks and streams.
 */
import { createHash, randomUUID, timingSafeEqual } from 'node:crypto';
import Fastify, { type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import type { DoneEvent, EngineMetrics, EngineOptions, GenerationRequest, TokenLogprob } from './engine.js';
import type { ChatMessage } from './protocol.js';
import { CLIENT_GONE, HttpError, engineErrorKind, errorBody } from './http-errors.js';
import { EngineClient, TokenizerClient } from './worker-clients.js';
import { chatLogprobs, completionLogprobs, parseRequest } from './request.js';
import { checkAdapterFolder, loraRootOf } from './adapter-paths.js';

export interface ServerOptions {
  model: string;
  /** Modules that register adapter methods or model families (the CLI's --plugin). */
  plugins?: string[];
  /** Quantize the base model's linear layers into this format as it loads (the CLI's --quantize). */
  quantize?: string;
  tokenizer?: string;
  servedModelName: string;
  apiKey?: string;
  engine: EngineOptions;
  maxTokensLimit: number;
  maxPromptTokens: number;
  /** Longest prompt in UTF-8 bytes, checked before tokenizing (default: PROMPT_BYTES_PER_TOKEN × maxPromptTokens). */
  maxPromptBytes?: number;
  bodyLimit?: number;
  backend?: 'js' | 'native';
  threads?: number;
  /** Serve POST /v1/load_lora_adapter and /v1/unload_lora_adapter (off: they answer 404). */
  allowRuntimeLora?: boolean;
  /** The folder runtime-loaded adapters must lie under (default: engine.adapterDir). */
  loraRoot?: string;
  /** Cap of the engine thread's tensor buffer pool in MiB (default: engine.kvCacheMb). */
  poolMb?: number;
  /**
   * Largest adapter weights file a runtime load may name, in MiB (default: what a LoRA of rank
   * engine.maxRank on every linear layer of the model needs, in the widest dtype).
   */
  maxAdapterMb?: number;
}

/**
 * The default prompt byte limit per allowed prompt token. Real tokenizers average 3-5 bytes per
 * token on text; 16 leaves room for long merged tokens (runs of spaces, code) while keeping the
 * text a request can make the tokenizer chew through proportional to what it may use.
 */
export const PROMPT_BYTES_PER_TOKEN = 16;
const ADAPTER_NAME = /^[A-Za-z0-9._-]{1,64}$/;
/** The most choices (`n`) one request may ask for; each is a sequence in the running batch. */
const MAX_CHOICES = 16;

const sha256 = (s: string) => createHash('sha256').update(s, 'utf8').digest();

export interface Server {
  app: FastifyInstance;
  url: string;
  close(): Promise<void>;
}

export async function startServer(o: ServerOptions, listen: { port: number; host: string }): Promise<Server> {
  const maxPromptBytes = o.maxPromptBytes ?? PROMPT_BYTES_PER_TOKEN * o.maxPromptTokens;
  const loraRoot = o.allowRuntimeLora ? await loraRootOf(o.loraRoot ?? o.engine.adapterDir) : null;
  const poolBytes = Math.round((o.poolMb ?? o.engine.kvCacheMb) * 2 ** 20);
  const client = new EngineClient({ role: 'engine', model: o.model, tokenizer: o.tokenizer, engine: o.engine, backend: o.backend, threads: o.threads, poolBytes, plugins: o.plugins, quantize: o.quantize });
  const info = await client.ready;
  const maxWeightBytes = o.maxAdapterMb === undefined ? info.maxAdapterBytes : Math.round(o.maxAdapterMb * 2 ** 20);
  const tokenizer = new TokenizerClient({ role: 'tokenizer', model: o.model, tokenizer: o.tokenizer, vocabSize: info.vocabSize });
  try {
    await tokenizer.ready;
  } catch (e) {
    await client.terminate();
    throw e;
  }
  // a body must be able to carry the longest prompt allowed, JSON escapes included
  // fastify leaves the time to receive a request unbounded unless told; a client that trickles
  // its headers or body in must not hold a connection for ever (responses may stream for longer)
  const app = Fastify({ bodyLimit: o.bodyLimit ?? Math.max(1 << 20, 2 * maxPromptBytes + (64 << 10)), requestTimeout: 60_000, logger: false });
  const counters = { requests: new Map<string, number>() };
  // what the model objects report as their creation time
  const startedAt = Math.floor(Date.now() / 1000);
  let closing = false;
  const count = (code: number) => counters.requests.set(String(code), (counters.requests.get(String(code)) ?? 0) + 1);
  const keyDigest = o.apiKey ? sha256(o.apiKey) : null;

  app.setErrorHandler((err: Error & { statusCode?: number; validation?: unknown }, _req, reply) => {
    const status = err instanceof HttpError ? err.status : err.statusCode && err.statusCode < 500 ? err.statusCode : 500;
    const message = status === 500 ? `internal error: ${err.message}` : err.message;
    count(status);
    if (status === 429) void reply.header('retry-after', '1');
    void reply.status(status).send(errorBody(message, err instanceof HttpError ? err.type : status === 401 ? 'authentication_error' : 'invalid_request_error', err instanceof HttpError ? err.param : null, err instanceof HttpError ? err.code : null));
  });

  const authenticate = (req: FastifyRequest): void => {
    if (!keyDigest) return;
    const auth = req.headers.authorization;
    if (!auth) throw new HttpError(401, 'missing API key (send "Authorization: Bearer <key>")', 'authentication_error');
    const space = auth.indexOf(' ');
    const bearer = space > 0 && auth.slice(0, space).toLowerCase() === 'bearer';
    const same = timingSafeEqual(sha256(bearer ? auth.slice(space + 1).trim() : ''), keyDigest);
    if (!bearer || !same) throw new HttpError(401, 'invalid API key', 'authentication_error');
  };

  // a path that matches no route needs the key too, so unauthenticated clients learn nothing
  // from how the router reads a path (percent-escapes, doubled or dotted segments)
  app.setNotFoundHandler(async (req) => {
    authenticate(req);
    throw new HttpError(404, `${req.method} ${req.url.slice(0, 200)} is not a route of this server`);
  });

  const adapterOf = (model: unknown): string | null => {
    if (typeof model !== 'string' || model.length === 0) throw new HttpError(400, '"model" is required', 'invalid_request_error', 'model');
    return model === o.servedModelName ? null : model;
  };

  const promptBytes = (bytes: number, param: string) => {
    if (bytes > maxPromptBytes) throw new HttpError(400, `the prompt has ${bytes} bytes, more than the limit of ${maxPromptBytes}`, 'invalid_request_error', param);
  };

  const limits = { maxTokens: o.maxTokensLimit, maxN: Math.min(MAX_CHOICES, o.engine.maxBatch), vocabSize: info.vocabSize };

  const generate = async (req: FastifyRequest, reply: FastifyReply, chat: boolean) => {
    const id = `${chat ? 'chatcmpl' : 'cmpl'}-${randomUUID()}`;
    // each choice is a sequence of its own in the engine
    let ids = [id];
    // from here on a client that leaves stops its request, whether it waits for tokens or for the end
    let gone = false;
    reply.raw.once('close', () => {
      gone = true;
      for (const x of ids) client.cancel(x);
    });
    const body = req.body as Record<string, unknown> | null;
    if (!body || typeof body !== 'object' || Array.isArray(body)) throw new HttpError(400, 'the body must be a JSON object');
    const adapter = adapterOf(body.model);
    const p = parseRequest(body, chat, limits);
    // the byte bound comes first: what is tokenized is never more than the limits allow; and
    // prompts waiting for the tokenizer count against the queue like requests waiting for the engine
    if (tokenizer.pending >= o.engine.maxQueue) throw new HttpError(429, 'the server is busy: the request queue is full', 'rate_limit_error');
    let promptIds: number[];
    if (chat) {
      const msgs = body.messages;
      if (!Array.isArray(msgs) || msgs.length === 0 || !msgs.every((m) => m && typeof m.role === 'string' && typeof m.content === 'string')) {
        throw new HttpError(400, '"messages" must be a non-empty list of {"role", "content"} strings', 'invalid_request_error', 'messages');
      }
      const messages = (msgs as ChatMessage[]).map((m) => ({ role: m.role, content: m.content }));
      promptBytes(messages.reduce((n, m) => n + Buffer.byteLength(m.role) + Buffer.byteLength(m.content), 0), 'messages');
      promptIds = await tokenizer.encode('', messages);
    } else {
      if (typeof body.prompt !== 'string') throw new HttpError(400, '"prompt" must be a string', 'invalid_request_error', 'prompt');
      promptBytes(Buffer.byteLength(body.prompt), 'prompt');
      promptIds = await tokenizer.encode(body.prompt);
    }
    if (promptIds.length > o.maxPromptTokens) throw new HttpError(400, `the prompt has ${promptIds.length} tokens, more than the limit of ${o.maxPromptTokens}`, 'invalid_request_error', chat ? 'messages' : 'prompt');
    if (gone) {
      count(CLIENT_GONE);
      return reply.hijack();
    }
    if (p.n > 1) ids = Array.from({ length: p.n }, (_, i) => `${id}-${i}`);
    const greqs: GenerationRequest[] = ids.map((x, i) => ({ id: x, promptIds, adapter, maxTokens: p.maxTokens, ...p.sampling, seed: (p.sampling.seed ?? 0) + i }));
    const echoed = p.echo ? (body.prompt as string) : '';
    const created = Math.floor(Date.now() / 1000);
    const model = String(body.model);
    const object = chat ? 'chat.completion' : 'text_completion';
    const usage = (completionTokens: number) => ({ prompt_tokens: promptIds.length, completion_tokens: completionTokens, total_tokens: promptIds.length + completionTokens });
    const wantLogprobs = p.sampling.logprobs !== undefined;
    // one choice failed: the others are no use to anyone
    const dropAll = () => {
      for (const x of ids) client.cancel(x);
    };

    if (p.stream) {
      return new Promise<void>((resolve) => {
        let started = false;
        let over = false;
        let left = p.n;
        let completionTokens = 0;
        const opened = new Array<boolean>(p.n).fill(false);
        const start = () => {
          if (started) return;
          started = true;
          reply.hijack();
          reply.raw.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache', connection: 'keep-alive' });
        };
        // with include_usage every chunk has a usage field, null until the last, as OpenAI sends them
        const send = (choice: Record<string, unknown> | null) => reply.raw.write(`data: ${JSON.stringify({
          id, object: chat ? 'chat.completion.chunk' : 'text_completion', created, model, choices: choice ? [choice] : [],
          ...(p.includeUsage ? { usage: choice ? null : usage(completionTokens) } : {}),
        })}\n\n`);
        const piece = (index: number, text: string | null, finish: string | null, lp?: TokenLogprob[]) => chat
          ? { index, delta: text === null ? {} : { content: text }, logprobs: wantLogprobs && lp?.length ? chatLogprobs(lp) : null, finish_reason: finish }
          : { index, text: text ?? '', logprobs: wantLogprobs && lp?.length ? completionLogprobs(lp) : null, finish_reason: finish };
        // a choice opens with the assistant's role (chat) or the echoed prompt (completions)
        const open = (index: number) => {
          start();
          if (opened[index]) return;
          opened[index] = true;
          if (chat) send({ index, delta: { role: 'assistant', content: '' }, logprobs: null, finish_reason: null });
          else if (p.echo) send(piece(index, echoed, null));
        };
        greqs.forEach((g, index) => client.submit(g, true, {
          onToken: (e) => {
            if (over) return;
            open(index);
            send(piece(index, e.text, null, e.logprobs));
          },
          onDone: (d) => {
            if (over) return;
            open(index);
            send(piece(index, chat ? null : '', d.finishReason));
            completionTokens += d.completionTokens;
            if (--left > 0) return;
            over = true;
            if (p.includeUsage) send(null);
            reply.raw.end('data: [DONE]\n\n');
            count(200);
            resolve();
          },
          onError: (status, message) => {
            if (over) return;
            over = true;
            dropAll();
            if (status === CLIENT_GONE) {
              count(status);
              if (!started) reply.hijack();
            } else if (!started) {
              count(status);
              if (status === 429) void reply.header('retry-after', '1');
              const k = engineErrorKind(status);
              void reply.status(status).send(errorBody(message, k.type, null, k.code));
            } else {
              reply.raw.write(`data: ${JSON.stringify(errorBody(message, engineErrorKind(status).type))}\n\n`);
              reply.raw.end();
            }
            resolve();
          },
        }));
      });
    }

    let dones: (DoneEvent | null)[];
    try {
      dones = await Promise.all(greqs.map((g) => new Promise<DoneEvent | null>((resolve, reject) => {
        client.submit(g, false, {
          onToken: () => {},
          onDone: resolve,
          onError: (status, message) => {
            if (status === CLIENT_GONE) return resolve(null);
            const k = engineErrorKind(status);
            reject(new HttpError(status, message, k.type, null, k.code));
          },
        });
      })));
    } catch (e) {
      dropAll();
      throw e;
    }
    if (dones.some((d) => d === null)) {
      count(CLIENT_GONE);
      return reply.hijack();
    }
    count(200);
    const choices = (dones as DoneEvent[]).map((d, index) => chat
      ? { index, message: { role: 'assistant', content: d.text, refusal: null }, logprobs: wantLogprobs ? chatLogprobs(d.logprobs ?? []) : null, finish_reason: d.finishReason }
      : { index, text: echoed + d.text, logprobs: wantLogprobs ? completionLogprobs(d.logprobs ?? []) : null, finish_reason: d.finishReason });
    return { id, object, created, model, choices, usage: usage((dones as DoneEvent[]).reduce((n, d) => n + d.completionTokens, 0)) };
  };

  const adapterName = (v: unknown, loading: boolean): string => {
    if (typeof v !== 'string' || !ADAPTER_NAME.test(v)) throw new HttpError(400, '"lora_name" must be 1 to 64 of the characters A-Z a-z 0-9 . _ -', 'invalid_request_error', 'lora_name');
    if (loading && v === o.servedModelName) throw new HttpError(400, '"lora_name" must differ from the base model\'s name', 'invalid_request_error', 'lora_name');
    return v;
  };

  // every /v1 route sits behind this plugin's hook, so whatever path reached one of its handlers
  // (escaped or not), that request was authenticated
  await app.register(async (v1) => {
    v1.addHook('onRequest', async (req) => {
      authenticate(req);
      if (closing) throw new HttpError(503, 'the server is shutting down', 'server_error');
    });

    v1.post('/completions', (req, reply) => generate(req, reply, false));
    v1.post('/chat/completions', (req, reply) => generate(req, reply, true));

    // OpenAI's model object; `root` and `parent` are vLLM's, saying what an adapter is served on
    const modelObject = (id: string) => id === o.servedModelName
      ? { id, object: 'model', created: startedAt, owned_by: 'adaptkit', root: o.model, parent: null }
      : { id, object: 'model', created: startedAt, owned_by: 'adaptkit', root: id, parent: o.servedModelName };

    v1.get('/models', async () => {
      const names = await client.call<string[]>({ type: 'list' });
      return { object: 'list', data: [o.servedModelName, ...names].map(modelObject) };
    });

    // a wildcard, so a served name with a slash in it (an org/model id) is found however it is escaped
    v1.get('/models/*', async (req) => {
      const id = (req.params as { '*': string })['*'];
      if (id !== o.servedModelName && !(await client.call<string[]>({ type: 'list' })).includes(id)) {
        throw new HttpError(404, `The model '${id.slice(0, 200)}' does not exist`, 'invalid_request_error', 'model', 'model_not_found');
      }
      return modelObject(id);
    });

    if (!loraRoot) {
      const off = async () => {
        throw new HttpError(404, 'loading adapters at run time is off (start the server with --allow-runtime-lora)');
      };
      v1.post('/load_lora_adapter', off);
      v1.post('/unload_lora_adapter', off);
      return;
    }
    v1.post('/load_lora_adapter', async (req) => {
      const b = req.body as Record<string, unknown> | null;
      if (!b || typeof b !== 'object' || typeof b.lora_path !== 'string') throw new HttpError(400, 'give "lora_name" and "lora_path"');
      const name = adapterName(b.lora_name, true);
      const path = await checkAdapterFolder(b.lora_path, loraRoot, maxWeightBytes);
      await client.call({ type: 'load', name, path });
      return `Success: LoRA adapter '${name}' added successfully.`;
    });

    v1.post('/unload_lora_adapter', async (req) => {
      const b = req.body as Record<string, unknown> | null;
      if (!b || typeof b !== 'object') throw new HttpError(400, 'give "lora_name"');
      const name = adapterName(b.lora_name, false);
      await client.call({ type: 'unload', name });
      return `Success: LoRA adapter '${name}' removed successfully.`;
    });
  }, { prefix: '/v1' });

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
      '# HELP adaptkit_cancelled_requests_total Requests dropped because their client disconnected.', '# TYPE adaptkit_cancelled_requests_total counter', `adaptkit_cancelled_requests_total ${m.cancelled}`,
      '# HELP adaptkit_adapter_cache_hits_total Requests whose adapter was loaded.', '# TYPE adaptkit_adapter_cache_hits_total counter', `adaptkit_adapter_cache_hits_total ${m.adapterHits}`,
      '# HELP adaptkit_adapter_cache_misses_total Adapter loads.', '# TYPE adaptkit_adapter_cache_misses_total counter', `adaptkit_adapter_cache_misses_total ${m.adapterMisses}`,
      '# HELP adaptkit_adapter_evictions_total Adapters evicted (LRU).', '# TYPE adaptkit_adapter_evictions_total counter', `adaptkit_adapter_evictions_total ${m.adapterEvictions}`,
      '# HELP adaptkit_loaded_adapters Adapters in memory.', '# TYPE adaptkit_loaded_adapters gauge', `adaptkit_loaded_adapters ${m.loadedAdapters}`,
      '# HELP adaptkit_adapter_memory_bytes Memory of the adapter slots (fixed by --max-loaded-adapters and --max-rank).', '# TYPE adaptkit_adapter_memory_bytes gauge', `adaptkit_adapter_memory_bytes ${m.adapterBytes}`,
      '# HELP adaptkit_kv_cache_bytes Memory of the KV-cache block pool (fixed by --kv-cache-mb).', '# TYPE adaptkit_kv_cache_bytes gauge', `adaptkit_kv_cache_bytes ${m.kvCacheBytes}`,
      '# HELP adaptkit_tensor_pool_bytes Idle tensor buffers the engine keeps for reuse.', '# TYPE adaptkit_tensor_pool_bytes gauge', `adaptkit_tensor_pool_bytes ${m.bufferPoolBytes}`,
      '# HELP adaptkit_tensor_pool_limit_bytes Cap of the tensor buffer pool (--pool-mb).', '# TYPE adaptkit_tensor_pool_limit_bytes gauge', `adaptkit_tensor_pool_limit_bytes ${m.bufferPoolLimitBytes}`,
      '# HELP process_resident_memory_bytes Resident memory of the server process.', '# TYPE process_resident_memory_bytes gauge', `process_resident_memory_bytes ${process.memoryUsage.rss()}`,
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
      await Promise.all([client.terminate(), tokenizer.terminate()]);
    },
  };
}
