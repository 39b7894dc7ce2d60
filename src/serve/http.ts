/**
 * The OpenAI-compatible HTTP API (fastify). `model` selects the base model or an adapter by name.
 * Routes: POST /v1/completions and /v1/chat/completions (SSE when `stream`), GET /v1/models,
 * POST /v1/load_lora_adapter and /v1/unload_lora_adapter (vLLM's shapes, only with
 * `allowRuntimeLora`), GET /health and Prometheus GET /metrics. The engine runs in one worker
 * thread and prompt encoding in another, so this thread only parses, checks and streams.
 */
import { createHash, randomUUID, timingSafeEqual } from 'node:crypto';
import { constants as fsc } from 'node:fs';
import { type FileHandle, open, realpath, stat } from 'node:fs/promises';
import { join, resolve, sep } from 'node:path';
import { Worker } from 'node:worker_threads';
import { fileURLToPath, pathToFileURL } from 'node:url';
import Fastify, { type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import { AdaptkitError } from '../tensor/index.js';
import type { DoneEvent, EngineMetrics, EngineOptions, GenerationRequest, TokenEvent, TokenLogprob } from './engine.js';
import type { ChatMessage, FromWorker, ReadyInfo, ToTokenizer, ToWorker, WorkerInit } from './protocol.js';
import { SAMPLING_RANGES as R } from '../models/sampling-rules.js';

export interface ServerOptions {
  model: string;
  /** Modules that register adapter methods or model families (the CLI's --plugin). */
  plugins?: string[];
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
const CONFIG_MAX_BYTES = 1 << 20;
const HEADER_MAX_BYTES = 1 << 20;
const ADAPTER_NAME = /^[A-Za-z0-9._-]{1,64}$/;
/** The most choices (`n`) one request may ask for; each is a sequence in the running batch. */
const MAX_CHOICES = 16;
/** What a request's handlers hear when its client has left; nothing is sent then. */
const CLIENT_GONE = 499;

class HttpError extends Error {
  constructor(readonly status: number, message: string, readonly type = 'invalid_request_error', readonly param: string | null = null, readonly code: string | null = null) {
    super(message);
  }
}

/** OpenAI's error body. */
const errorBody = (message: string, type: string, param: string | null = null, code: string | null = null) => ({ error: { message, type, param, code } });

/** The error type and code OpenAI gives a status the engine answers with. */
const engineErrorKind = (status: number): { type: string; code: string | null } => status === 429
  ? { type: 'rate_limit_error', code: null }
  : status === 404 ? { type: 'invalid_request_error', code: 'model_not_found' } : { type: status >= 500 ? 'server_error' : 'invalid_request_error', code: null };

interface Handlers {
  onToken: (e: TokenEvent) => void;
  onDone: (e: DoneEvent) => void;
  onError: (status: number, message: string) => void;
}

type Reply = Extract<FromWorker, { type: 'reply' }>;

/** A worker thread answering numbered calls; subclasses take the other messages. */
class WorkerClient {
  protected worker: Worker;
  private calls = new Map<number, (m: Reply) => void>();
  private nextCall = 1;
  private stopped: string | null = null;
  private outbox: (ToWorker | ToTokenizer)[] = [];
  ready: Promise<ReadyInfo>;

  constructor(init: WorkerInit) {
    const self = fileURLToPath(import.meta.url);
    const file = self.replace(/http\.(ts|js)$/, 'worker.$1');
    // from compiled code the worker is a plain module; from TypeScript sources (tests, development)
    // it is loaded through tsx, registered inside the worker
    this.worker = file.endsWith('.ts')
      ? new Worker(`import('tsx/esm/api').then((m) => { m.register(); return import(${JSON.stringify(pathToFileURL(file).href)}); });`, { eval: true, workerData: init })
      : new Worker(file, { workerData: init });
    this.ready = new Promise((resolve, reject) => {
      this.worker.on('error', (e) => {
        this.stopped = e.message;
        reject(e);
      });
      this.worker.on('message', (batch: FromWorker[]) => {
        for (const m of batch) {
          if (m.type === 'ready') resolve(m);
          else if (m.type === 'fatal') reject(new Error(m.message));
          else if (m.type === 'reply') {
            this.calls.get(m.call)?.(m);
            this.calls.delete(m.call);
          } else this.onEvent(m);
        }
      });
    });
    // a thread that died must not leave callers waiting forever
    this.worker.on('exit', () => {
      this.stopped ??= 'the worker thread stopped';
      for (const answer of this.calls.values()) answer({ type: 'reply', call: 0, ok: false, status: 503, message: 'the server is not running' });
      this.calls.clear();
      this.onExit();
    });
  }

  protected onEvent(_m: FromWorker): void {}

  protected onExit(): void {}

  /** Queue a message; what this event-loop turn queued goes out together once its I/O is done. */
  protected post(msg: ToWorker | ToTokenizer): void {
    if (this.outbox.length === 0) setImmediate(() => this.flush());
    this.outbox.push(msg);
  }

  private flush(): void {
    const batch = this.outbox;
    this.outbox = [];
    if (batch.length > 0 && !this.stopped) this.worker.postMessage(batch);
  }

  /** Calls sent and not yet answered. */
  get pending(): number {
    return this.calls.size;
  }

  async call<T>(msg: Record<string, unknown> & { type: string }): Promise<T> {
    if (this.stopped) throw new HttpError(503, 'the server is not running', 'server_error');
    const call = this.nextCall++;
    const reply = await new Promise<Reply>((resolve) => {
      this.calls.set(call, resolve);
      this.post({ ...msg, call } as ToWorker);
    });
    if (!reply.ok) throw new HttpError(reply.status ?? 500, reply.message ?? 'error', (reply.status ?? 500) >= 500 ? 'server_error' : 'invalid_request_error');
    return reply.value as T;
  }

  terminate(): Promise<number> {
    return this.worker.terminate();
  }
}

/** The engine thread: submissions with streamed events, cancellations, and calls with replies. */
class EngineClient extends WorkerClient {
  private streams = new Map<string, Handlers>();

  protected override onEvent(m: FromWorker): void {
    if (m.type !== 'token' && m.type !== 'done' && m.type !== 'error') return;
    const h = this.streams.get(m.id);
    if (!h) return;
    if (m.type === 'token') h.onToken(m);
    else if (m.type === 'done') {
      this.streams.delete(m.id);
      h.onDone(m);
    } else {
      this.streams.delete(m.id);
      h.onError(m.status, m.message);
    }
  }

  protected override onExit(): void {
    for (const h of this.streams.values()) h.onError(503, 'the engine stopped');
    this.streams.clear();
  }

  submit(req: GenerationRequest, stream: boolean, h: Handlers): void {
    this.streams.set(req.id, h);
    this.post({ type: 'submit', req, stream });
  }

  /** The client left: stop generating for it and free its cache now, not after max_tokens. */
  cancel(id: string): void {
    const h = this.streams.get(id);
    if (!h) return;
    this.streams.delete(id);
    this.post({ type: 'cancel', id });
    h.onError(CLIENT_GONE, 'the client closed the connection');
  }

  get inFlight(): number {
    return this.streams.size;
  }
}

class TokenizerClient extends WorkerClient {
  encode(text: string, chat?: ChatMessage[]): Promise<number[]> {
    return this.call<number[]>({ type: 'encode', text, chat });
  }
}

function intField(body: Record<string, unknown>, key: string, fallback: number, min: number, max: number): number {
  const v = body[key];
  if (v === undefined || v === null) return fallback;
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) throw new HttpError(400, `"${key}" must be an integer in [${min}, ${max}]`, 'invalid_request_error', key);
  return v;
}

const optionalInt = (body: Record<string, unknown>, key: string, min: number, max: number): number | undefined =>
  body[key] === undefined || body[key] === null ? undefined : intField(body, key, 0, min, max);

function numField(body: Record<string, unknown>, key: string, fallback: number | undefined, min: number, max: number): number | undefined {
  const v = body[key];
  if (v === undefined || v === null) return fallback;
  if (typeof v !== 'number' || !Number.isFinite(v) || v < min || v > max) throw new HttpError(400, `"${key}" must be a number in [${min}, ${max}]`, 'invalid_request_error', key);
  return v;
}

function boolField(body: Record<string, unknown>, key: string): boolean {
  const v = body[key];
  if (v === undefined || v === null) return false;
  if (typeof v !== 'boolean') throw new HttpError(400, `"${key}" must be true or false`, 'invalid_request_error', key);
  return v;
}

function stopField(body: Record<string, unknown>): string[] | undefined {
  const v = body.stop;
  if (v === undefined || v === null) return undefined;
  // an empty stop string would end every generation before its first token
  if (typeof v === 'string' && v.length > 0) return [v];
  if (Array.isArray(v) && v.length <= 4 && v.every((x) => typeof x === 'string' && x.length > 0)) return v.length ? v as string[] : undefined;
  throw new HttpError(400, '"stop" must be a non-empty string or a list of up to 4 non-empty strings', 'invalid_request_error', 'stop');
}

/** OpenAI's `logit_bias`: token ids (as strings) to a bias in [-100, 100]. */
function logitBiasField(body: Record<string, unknown>, vocabSize: number): [number, number][] | undefined {
  const v = body.logit_bias;
  if (v === undefined || v === null) return undefined;
  const bad = () => new HttpError(400, `"logit_bias" must map token ids in [0, ${vocabSize}) to numbers in [-100, 100]`, 'invalid_request_error', 'logit_bias');
  if (typeof v !== 'object' || Array.isArray(v)) throw bad();
  const out: [number, number][] = [];
  for (const [k, b] of Object.entries(v as Record<string, unknown>)) {
    const id = /^\d{1,9}$/.test(k) ? Number(k) : NaN;
    if (!(id < vocabSize) || typeof b !== 'number' || !(Math.abs(b) <= 100)) throw bad();
    out.push([id, b]);
  }
  return out.length ? out : undefined;
}

/**
 * Request fields, per route, that the server implements, and those that change nothing by
 * definition (identifiers, tags and hints for OpenAI's own storage, caching and billing). A field
 * in neither list is refused with 400 naming it, so no request is answered as if it had been
 * honoured when it was not.
 */
const SAMPLING_FIELDS = ['model', 'stream', 'stream_options', 'n', 'max_tokens', 'temperature', 'top_p', 'stop', 'seed', 'presence_penalty', 'frequency_penalty', 'logit_bias', 'logprobs', 'top_k', 'repetition_penalty'];
const NO_EFFECT_FIELDS = ['user', 'metadata', 'safety_identifier', 'prompt_cache_key', 'service_tier'];
const COMPLETION_FIELDS = new Set([...SAMPLING_FIELDS, ...NO_EFFECT_FIELDS, 'prompt', 'echo']);
const CHAT_FIELDS = new Set([...SAMPLING_FIELDS, ...NO_EFFECT_FIELDS, 'messages', 'max_completion_tokens', 'top_logprobs', 'parallel_tool_calls']);

type Inert = (v: unknown, body: Record<string, unknown>) => boolean;
const onlyNull: Inert = () => false;
const emptyList: Inert = (v) => Array.isArray(v) && v.length === 0;
/**
 * OpenAI fields the server does not implement, with the values that ask for nothing beyond what
 * it does (null always does): those are accepted, any other value is refused.
 */
const COMPLETION_INERT: Record<string, Inert> = {
  suffix: (v) => v === '',
  best_of: (v, body) => v === (body.n ?? 1),
};
const CHAT_INERT: Record<string, Inert> = {
  tools: emptyList,
  functions: emptyList,
  tool_choice: (v) => v === 'none',
  function_call: (v) => v === 'none',
  response_format: (v) => !!v && typeof v === 'object' && Object.keys(v).length === 1 && (v as { type?: unknown }).type === 'text',
  modalities: (v) => Array.isArray(v) && v.length === 1 && v[0] === 'text',
  store: (v) => v === false,
  audio: onlyNull,
  prediction: onlyNull,
  reasoning_effort: onlyNull,
  verbosity: onlyNull,
  web_search_options: onlyNull,
};

function checkFields(body: Record<string, unknown>, chat: boolean): void {
  const known = chat ? CHAT_FIELDS : COMPLETION_FIELDS;
  const inertValues = chat ? CHAT_INERT : COMPLETION_INERT;
  for (const [k, v] of Object.entries(body)) {
    if (known.has(k)) continue;
    const inert = Object.hasOwn(inertValues, k) ? inertValues[k]! : null;
    if (inert && (v === null || inert(v, body))) continue;
    const what = k.length > 64 ? `${k.slice(0, 64)}...` : k;
    throw new HttpError(400, inert
      ? `"${what}" with this value is not supported by this server`
      : `"${what}" is not a field this server supports on ${chat ? '/v1/chat/completions' : '/v1/completions'}`, 'invalid_request_error', what);
  }
}

/** What a completion or chat request asks for, checked. */
interface ParsedRequest {
  n: number;
  maxTokens: number;
  sampling: Omit<GenerationRequest, 'id' | 'promptIds' | 'adapter' | 'maxTokens'>;
  stream: boolean;
  includeUsage: boolean;
  echo: boolean;
}

function parseRequest(body: Record<string, unknown>, chat: boolean, lim: { maxTokens: number; maxN: number; vocabSize: number }): ParsedRequest {
  checkFields(body, chat);
  const n = intField(body, 'n', 1, 1, lim.maxN);
  let maxTokens = optionalInt(body, 'max_tokens', 1, lim.maxTokens);
  if (chat) {
    const mct = optionalInt(body, 'max_completion_tokens', 1, lim.maxTokens);
    if (mct !== undefined && maxTokens !== undefined && mct !== maxTokens) {
      throw new HttpError(400, '"max_tokens" and "max_completion_tokens" differ; give one of them ("max_tokens" is the older name)', 'invalid_request_error', 'max_completion_tokens');
    }
    maxTokens = mct ?? maxTokens ?? Math.min(256, lim.maxTokens);
  } else maxTokens ??= Math.min(16, lim.maxTokens);

  // log-probabilities: a count of alternatives for completions; a switch and a count for chat
  let logprobs: number | undefined;
  if (chat) {
    const on = boolField(body, 'logprobs');
    const top = optionalInt(body, 'top_logprobs', 0, 20);
    if (top !== undefined && !on) throw new HttpError(400, '"top_logprobs" needs "logprobs": true', 'invalid_request_error', 'top_logprobs');
    if (on) logprobs = top ?? 0;
  } else logprobs = optionalInt(body, 'logprobs', 0, 5);

  const echo = !chat && boolField(body, 'echo');
  // the prompt's own log-probabilities would need the logits of every prompt position, which the
  // engine does not keep
  if (echo && logprobs !== undefined) throw new HttpError(400, '"echo" together with "logprobs" is not supported by this server', 'invalid_request_error', 'echo');

  const stream = boolField(body, 'stream');
  let includeUsage = false;
  const so = body.stream_options;
  if (so !== undefined && so !== null) {
    if (!stream) throw new HttpError(400, '"stream_options" is only allowed with "stream": true', 'invalid_request_error', 'stream_options');
    if (typeof so !== 'object' || Array.isArray(so)) throw new HttpError(400, '"stream_options" must be an object', 'invalid_request_error', 'stream_options');
    for (const [k, v] of Object.entries(so)) {
      const param = `stream_options.${k.slice(0, 64)}`;
      if (k === 'include_usage' && (v === null || typeof v === 'boolean')) includeUsage = v === true;
      // OpenAI's padding against size side channels; the server sends none, which is what false asks
      else if (k === 'include_obfuscation' && (v === null || v === false)) continue;
      else throw new HttpError(400, `"${param}" with this value is not supported by this server`, 'invalid_request_error', param);
    }
  }

  const seed = optionalInt(body, 'seed', R.seed.min, R.seed.max);
  return {
    n, maxTokens, stream, includeUsage, echo,
    sampling: {
      temperature: numField(body, 'temperature', 1, R.temperature.min, R.temperature.max)!,
      topP: numField(body, 'top_p', undefined, R.top_p.min, R.top_p.max),
      topK: optionalInt(body, 'top_k', R.top_k.min, R.top_k.max),
      repetitionPenalty: numField(body, 'repetition_penalty', undefined, R.repetition_penalty.min, R.repetition_penalty.max),
      presencePenalty: numField(body, 'presence_penalty', undefined, R.presence_penalty.min, R.presence_penalty.max),
      frequencyPenalty: numField(body, 'frequency_penalty', undefined, R.frequency_penalty.min, R.frequency_penalty.max),
      logitBias: logitBiasField(body, lim.vocabSize),
      // unseeded requests sample with seed 0, as `adaptkit generate` does; choice i uses seed + i
      seed,
      stop: stopField(body),
      logprobs,
    },
  };
}

/** OpenAI's legacy completions `logprobs` object. */
function completionLogprobs(lp: TokenLogprob[], offsetBase = 0) {
  return {
    tokens: lp.map((t) => t.token),
    token_logprobs: lp.map((t) => t.logprob),
    // the k most likely tokens and, as OpenAI does, always the sampled one
    top_logprobs: lp.map((t) => Object.fromEntries([...t.top.map((a) => [a.token, a.logprob] as const), [t.token, t.logprob] as const])),
    text_offset: lp.map((t) => offsetBase + t.offset),
  };
}

/** OpenAI's chat `logprobs` object. */
const chatLogprobs = (lp: TokenLogprob[]) => ({
  content: lp.map((t) => ({ token: t.token, logprob: t.logprob, bytes: t.bytes, top_logprobs: t.top.map((a) => ({ token: a.token, logprob: a.logprob, bytes: a.bytes })) })),
  refusal: null,
});

/** Hash both sides so the comparison takes the same time whatever the lengths and contents. */
const sha256 = (s: string) => createHash('sha256').update(s, 'utf8').digest();

/** The folder runtime loads must stay in: the path as configured, and what it really is. */
interface LoraRoot {
  abs: string;
  real: string;
}

/** Whether `p` lies strictly below `root`; the separator keeps /a/adapters-evil out of /a/adapters. */
function under(p: string, root: string): boolean {
  return p.startsWith(root.endsWith(sep) ? root : root + sep);
}

const refused = (message: string) => new HttpError(403, message, 'permission_error', 'lora_path');
const badAdapter = (message: string) => new HttpError(400, message, 'invalid_request_error', 'lora_path');

/**
 * Open one of an adapter folder's files for the checks, refusing anything a reader could stall on
 * or be flooded by: links out of the root, FIFOs, devices, sockets and oversized files. The file
 * is examined by stat before it is opened (opening some devices has effects), opened without
 * blocking (a FIFO swapped in meanwhile cannot hang the open), and examined again on the handle.
 */
async function openAdapterFile(dir: string, root: LoraRoot, name: string, maxBytes: number): Promise<{ fh: FileHandle; size: number }> {
  let real: string;
  try {
    real = await realpath(join(dir, name));
  } catch {
    throw badAdapter(`the adapter folder has no readable ${name}`);
  }
  if (!under(real, root.real)) throw refused(`${name} links to a file outside the adapter root`);
  const check = (st: { isFile(): boolean; size: number }) => {
    if (!st.isFile()) throw badAdapter(`${name} is not a regular file`);
    if (st.size > maxBytes) throw badAdapter(`${name} has ${st.size} bytes, more than the limit of ${maxBytes}`);
  };
  const before = await stat(real);
  check(before);
  let fh: FileHandle;
  try {
    fh = await open(real, fsc.O_RDONLY | (fsc.O_NONBLOCK ?? 0));
  } catch {
    throw badAdapter(`${name} cannot be read`);
  }
  try {
    const st = await fh.stat();
    check(st);
    if (st.ino !== before.ino || st.dev !== before.dev) throw badAdapter(`${name} changed while it was checked`);
    return { fh, size: st.size };
  } catch (e) {
    await fh.close();
    throw e;
  }
}

async function readExactly(fh: FileHandle, n: number, at: number): Promise<Buffer> {
  const buf = Buffer.alloc(n);
  let got = 0;
  while (got < n) {
    const { bytesRead } = await fh.read(buf, got, n - got, at + got);
    if (bytesRead === 0) break;
    got += bytesRead;
  }
  return buf.subarray(0, got);
}

/** JSON that must be an object; errors never quote the text, which may be anything. */
function parseObject(buf: Buffer, what: string): Record<string, unknown> {
  let v: unknown;
  try {
    v = JSON.parse(buf.toString('utf8'));
  } catch {
    throw badAdapter(`${what} is not valid JSON`);
  }
  if (!v || typeof v !== 'object' || Array.isArray(v)) throw badAdapter(`${what} is not a JSON object`);
  return v as Record<string, unknown>;
}

/**
 * Check a runtime-load request's folder on this thread, before the engine sees it: the folder is
 * below the root (by its real path), its config and weights are bounded regular files, and both
 * parse. Returns the real path, which is what the engine then registers.
 */
async function checkAdapterFolder(given: string, root: LoraRoot, maxWeightBytes: number): Promise<string> {
  if (given.length === 0 || given.length > 4096 || given.includes('\0')) throw badAdapter('"lora_path" must be a path of 1 to 4096 characters');
  // relative paths name folders inside the root; a path that is outside on its face is refused
  // before the file system is asked, so answers do not reveal what exists elsewhere
  const lexical = resolve(root.abs, given);
  if (!under(lexical, root.abs) && !under(lexical, root.real)) throw refused('"lora_path" must be a folder under the server\'s adapter root');
  let real: string;
  try {
    real = await realpath(lexical);
  } catch {
    throw badAdapter('"lora_path" does not exist or cannot be read');
  }
  if (!under(real, root.real)) throw refused('"lora_path" must be a folder under the server\'s adapter root');
  if (!(await stat(real)).isDirectory()) throw badAdapter('"lora_path" is not a folder');

  const cfg = await openAdapterFile(real, root, 'adapter_config.json', CONFIG_MAX_BYTES);
  try {
    const raw = parseObject(await readExactly(cfg.fh, cfg.size, 0), 'adapter_config.json');
    // which methods exist is the engine's to say; only the name's shape is checked here, since
    // the engine quotes it in its errors
    if (typeof raw.peft_type !== 'string' || !/^[A-Za-z0-9_]{1,64}$/.test(raw.peft_type)) throw badAdapter('adapter_config.json: "peft_type" must name an adapter method');
  } finally {
    await cfg.fh.close();
  }
  const w = await openAdapterFile(real, root, 'adapter_model.safetensors', maxWeightBytes);
  try {
    const head = await readExactly(w.fh, 8, 0);
    if (head.length < 8) throw badAdapter('adapter_model.safetensors is shorter than a safetensors header');
    const len = head.readBigUInt64LE(0);
    if (len > BigInt(Math.min(HEADER_MAX_BYTES, w.size - 8))) throw badAdapter(`adapter_model.safetensors: the header is longer than the file or the ${HEADER_MAX_BYTES}-byte limit`);
    parseObject(await readExactly(w.fh, Number(len), 8), 'adapter_model.safetensors\'s header');
  } finally {
    await w.fh.close();
  }
  return real;
}

async function loraRootOf(dir: string | undefined): Promise<LoraRoot> {
  if (!dir) throw new AdaptkitError('runtime adapter loading needs a folder to load from: pass --lora-root or --adapters');
  const abs = resolve(dir);
  let real: string;
  try {
    real = await realpath(abs);
  } catch {
    throw new AdaptkitError(`the adapter root ${dir} does not exist`);
  }
  if (!(await stat(real)).isDirectory()) throw new AdaptkitError(`the adapter root ${dir} is not a folder`);
  return { abs, real };
}

export interface Server {
  app: FastifyInstance;
  url: string;
  close(): Promise<void>;
}

export async function startServer(o: ServerOptions, listen: { port: number; host: string }): Promise<Server> {
  const maxPromptBytes = o.maxPromptBytes ?? PROMPT_BYTES_PER_TOKEN * o.maxPromptTokens;
  const loraRoot = o.allowRuntimeLora ? await loraRootOf(o.loraRoot ?? o.engine.adapterDir) : null;
  const poolBytes = Math.round((o.poolMb ?? o.engine.kvCacheMb) * 2 ** 20);
  const client = new EngineClient({ role: 'engine', model: o.model, tokenizer: o.tokenizer, engine: o.engine, backend: o.backend, threads: o.threads, poolBytes, plugins: o.plugins });
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
