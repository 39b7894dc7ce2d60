/** Parsing and checking the fields of completion and chat requests, and shaping logprobs. */
import type { GenerationRequest, TokenLogprob } from './engine.js';
import { SAMPLING_RANGES as R } from '../models/sampling-rules.js';
import { HttpError } from './http-errors.js';

export function intField(body: Record<string, unknown>, key: string, fallback: number, min: number, max: number): number {
  const v = body[key];
  if (v === undefined || v === null) return fallback;
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) throw new HttpError(400, `"${key}" must be an integer in [${min}, ${max}]`, 'invalid_request_error', key);
  return v;
}

export const optionalInt = (body: Record<string, unknown>, key: string, min: number, max: number): number | undefined =>
  body[key] === undefined || body[key] === null ? undefined : intField(body, key, 0, min, max);

export function numField(body: Record<string, unknown>, key: string, fallback: number | undefined, min: number, max: number): number | undefined {
  const v = body[key];
  if (v === undefined || v === null) return fallback;
  if (typeof v !== 'number' || !Number.isFinite(v) || v < min || v > max) throw new HttpError(400, `"${key}" must be a number in [${min}, ${max}]`, 'invalid_request_error', key);
  return v;
}

export function boolField(body: Record<string, unknown>, key: string): boolean {
  const v = body[key];
  if (v === undefined || v === null) return false;
  if (typeof v !== 'boolean') throw new HttpError(400, `"${key}" must be true or false`, 'invalid_request_error', key);
  return v;
}

export function stopField(body: Record<string, unknown>): string[] | undefined {
  const v = body.stop;
  if (v === undefined || v === null) return undefined;
  // an empty stop string would end every generation before its first token
  if (typeof v === 'string' && v.length > 0) return [v];
  if (Array.isArray(v) && v.length <= 4 && v.every((x) => typeof x === 'string' && x.length > 0)) return v.length ? v as string[] : undefined;
  throw new HttpError(400, '"stop" must be a non-empty string or a list of up to 4 non-empty strings', 'invalid_request_error', 'stop');
}

/** OpenAI's `logit_bias`: token ids (as strings) to a bias in [-100, 100]. */
export function logitBiasField(body: Record<string, unknown>, vocabSize: number): [number, number][] | undefined {
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

export function checkFields(body: Record<string, unknown>, chat: boolean): void {
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
export interface ParsedRequest {
  n: number;
  maxTokens: number;
  sampling: Omit<GenerationRequest, 'id' | 'promptIds' | 'adapter' | 'maxTokens'>;
  stream: boolean;
  includeUsage: boolean;
  echo: boolean;
}

export function parseRequest(body: Record<string, unknown>, chat: boolean, lim: { maxTokens: number; maxN: number; vocabSize: number }): ParsedRequest {
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
export function completionLogprobs(lp: TokenLogprob[], offsetBase = 0) {
  return {
    tokens: lp.map((t) => t.token),
    token_logprobs: lp.map((t) => t.logprob),
    // the k most likely tokens and, as OpenAI does, always the sampled one
    top_logprobs: lp.map((t) => Object.fromEntries([...t.top.map((a) => [a.token, a.logprob] as const), [t.token, t.logprob] as const])),
    text_offset: lp.map((t) => offsetBase + t.offset),
  };
}

/** OpenAI's chat `logprobs` object. */
export const chatLogprobs = (lp: TokenLogprob[]) => ({
  content: lp.map((t) => ({ token: t.token, logprob: t.logprob, bytes: t.bytes, top_logprobs: t.top.map((a) => ({ token: a.token, logprob: a.logprob, bytes: a.bytes })) })),
  refusal: null,
});

/** Hash both sides so the comparison takes the same time whatever the lengths and contents. */
