/** Autoregressive decoding with a KV cache: greedy or sampled, streamed token by token. */
import { AdaptkitError, Rng, type Tensor, narrow, noGrad, tensor, tidy } from '../tensor/index.js';
import { type Tokenizer, stopTokensOf } from './tokenizer.js';
import { TextStream } from './detokenize.js';

/**
 * Any model with a forward over a KV cache: a base model, or an adapter model wrapping one. The
 * cache `newCache()` returns is handed back to `forward` unchanged.
 */
export interface CausalLM {
  forward(ids: Tensor, opts?: { cache?: unknown }): Tensor;
  newCache(): { dispose(): void };
}

export interface SamplingOptions {
  maxTokens?: number;
  /** 0 = greedy (argmax). */
  temperature?: number;
  topK?: number;
  topP?: number;
  /** HF-style: divide positive logits (multiply negative ones) of tokens already present. */
  repetitionPenalty?: number;
  seed?: number;
  /** Token ids that end generation (not included in the output). */
  stopTokens?: readonly number[];
  /** Strings that end generation (the text is cut before them). */
  stopStrings?: readonly string[];
}

export interface GenerateResult {
  tokens: number[];
  text: string;
  finishReason: 'stop' | 'length';
}

/**
 * What `sampleToken` takes beyond `SamplingOptions`: the adjustments OpenAI's API defines, which
 * need what was generated so far (the prompt does not count for them).
 */
export interface TokenSamplingOptions extends SamplingOptions {
  /** Subtracted once from the logit of every token generated at least once (OpenAI, in [-2, 2]). */
  presencePenalty?: number;
  /** Subtracted from a token's logit once per time it was generated (OpenAI, in [-2, 2]). */
  frequencyPenalty?: number;
  /** The tokens generated so far, which the presence and frequency penalties count. */
  generated?: readonly number[];
  /** Added to the logits of the given token ids before anything else (OpenAI's `logit_bias`). */
  logitBias?: ReadonlyArray<readonly [number, number]>;
}

function argmax(v: ArrayLike<number>): number {
  let best = 0;
  for (let i = 1; i < v.length; i++) if (v[i]! > v[best]!) best = i;
  return best;
}

/**
 * Choose the next token from a row of logits. The adjustments go in the order vLLM applies them:
 * logit bias, repetition penalty (over the history), presence and frequency penalties (over the
 * generated tokens), then temperature, top-k and top-p.
 */
export function sampleToken(logits: Float32Array, history: readonly number[], o: TokenSamplingOptions, rng: Rng): number {
  const pen = o.repetitionPenalty ?? 1;
  const presence = o.presencePenalty ?? 0;
  const frequency = o.frequencyPenalty ?? 0;
  const counted = (presence !== 0 || frequency !== 0) && (o.generated?.length ?? 0) > 0;
  const biased = (o.logitBias?.length ?? 0) > 0;
  // greedy without adjustments: the argmax, with no copy of the row
  if ((o.temperature ?? 0) <= 0 && pen === 1 && !counted && !biased) return argmax(logits);
  const v = Float64Array.from(logits);
  if (biased) for (const [t, b] of o.logitBias!) if (t >= 0 && t < v.length) v[t] = v[t]! + b;
  if (pen !== 1) {
    for (const t of new Set(history)) if (t >= 0 && t < v.length) v[t] = v[t]! > 0 ? v[t]! / pen : v[t]! * pen;
  }
  if (counted) {
    const counts = new Map<number, number>();
    for (const t of o.generated!) counts.set(t, (counts.get(t) ?? 0) + 1);
    for (const [t, c] of counts) if (t >= 0 && t < v.length) v[t] = v[t]! - presence - frequency * c;
  }
  const temp = o.temperature ?? 0;
  if (temp <= 0) return argmax(v);
  let idx = Array.from(v.keys()).sort((a, b) => v[b]! - v[a]!);
  if (o.topK && o.topK > 0) idx = idx.slice(0, o.topK);
  const m = v[idx[0]!]!;
  let probs = idx.map((i) => Math.exp((v[i]! - m) / temp));
  let total = probs.reduce((a, b) => a + b, 0);
  probs = probs.map((p) => p / total);
  if (o.topP !== undefined && o.topP < 1) {
    let cum = 0;
    let keep = 0;
    while (keep < probs.length && cum < o.topP) cum += probs[keep++]!;
    idx = idx.slice(0, Math.max(keep, 1));
    probs = probs.slice(0, idx.length);
    total = probs.reduce((a, b) => a + b, 0);
    probs = probs.map((p) => p / total);
  }
  let r = rng.uniform();
  for (let i = 0; i < idx.length; i++) {
    r -= probs[i]!;
    if (r <= 0) return idx[i]!;
  }
  return idx[idx.length - 1]!;
}

/**
 * Generate from prompt ids. `onText` receives each new piece of decoded text as soon as it forms
 * complete characters.
 */
export function generate(
  model: CausalLM, tokenizer: Tokenizer, promptIds: readonly number[], opts: SamplingOptions = {},
  onText?: (piece: string) => void,
): GenerateResult {
  if (promptIds.length === 0) throw new AdaptkitError('generate: the prompt has no tokens (add BOS or some text)');
  const maxTokens = opts.maxTokens ?? 256;
  const stops = new Set(opts.stopTokens ?? stopTokensOf(tokenizer));
  const rng = new Rng(opts.seed ?? 0);
  const cache = model.newCache();
  const out: number[] = [];
  let emitted = '';
  let finish: 'stop' | 'length' = 'length';
  const step = (ids: readonly number[]): Float32Array =>
    tidy(() => noGrad(() => {
      const logits = model.forward(tensor(ids, [1, ids.length], { dtype: 'i32' }), { cache });
      // the last position: a prompt adapter may have put virtual positions before the ids
      const last = narrow(logits, 1, logits.shape[1]! - 1, 1);
      return last.toArray() as Float32Array;
    }));
  const stream = new TextStream(tokenizer, promptIds);
  try {
    let logits = step(promptIds);
    const history = [...promptIds];
    while (out.length < maxTokens) {
      const next = sampleToken(logits, history, opts, rng);
      if (stops.has(next)) {
        finish = 'stop';
        break;
      }
      out.push(next);
      history.push(next);
      stream.push(next);
      let text = stream.text;
      const hit = opts.stopStrings?.map((s) => text.indexOf(s, Math.max(0, emitted.length - s.length))).filter((i) => i >= 0);
      if (hit && hit.length > 0) {
        text = text.slice(0, Math.min(...hit));
        if (onText && text.length > emitted.length) onText(text.slice(emitted.length));
        emitted = text;
        finish = 'stop';
        break;
      }
      if (onText && !text.endsWith('\uFFFD') && text.length > emitted.length && text.startsWith(emitted)) {
        onText(text.slice(emitted.length));
        emitted = text;
      }
      if (out.length >= maxTokens) break;
      logits = step([next]);
    }
    const text = finish === 'stop' && emitted.length > 0 && opts.stopStrings?.length ? emitted : stream.text + stream.flush();
    if (onText && text.length > emitted.length && text.startsWith(emitted)) onText(text.slice(emitted.length));
    return { tokens: out, text, finishReason: finish };
  } finally {
    cache.dispose();
  }
}
