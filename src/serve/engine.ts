/**
 * The serving engine: continuous batching over a paged KV cache, with every sequence on its own
 * LoRA adapter (or none). Each step admits waiting requests (prefilling their prompts) and then
 * decodes one token for every running sequence in one batched forward, base GEMMs shared, adapter
 * updates gathered per row. When the cache runs out of blocks, the newest sequence is preempted
 * and recomputed later. Finished sequences leave the batch at once and new ones join.
 */
import { Rng, type Tensor, bufferPool, narrow, noGrad, tensor, tidy } from '../tensor/index.js';
import type { Module } from '../nn/index.js';
import { type Tokenizer, stopTokensOf } from '../models/tokenizer.js';
import { sampleToken } from '../models/generate.js';
import { TextStream } from '../models/detokenize.js';
import { type AdapterRoute, AdapterStore, BASE_ROUTE, RequestError } from './adapter-store.js';
import { BlockPool, SequenceKV, StepCache } from './paged-cache.js';

export interface ServedModel extends Module {
  forward(ids: Tensor, opts?: { cache?: StepCache | null; attentionMask?: Tensor | null; positions?: Tensor | null }): Tensor;
  readonly config: { vocabSize: number; numLayers: number };
  /** Attention modules expose their cached key/value shape. */
}

export interface GenerationRequest {
  id: string;
  promptIds: number[];
  adapter: string | null;
  maxTokens: number;
  temperature: number;
  topP?: number;
  topK?: number;
  repetitionPenalty?: number;
  /** OpenAI's penalties over the generated tokens (see `sampleToken`). */
  presencePenalty?: number;
  frequencyPenalty?: number;
  /** [token id, bias] pairs added to the logits before sampling. */
  logitBias?: [number, number][];
  seed?: number;
  /** Strings that end generation; the returned text stops before the first one. */
  stop?: string[];
  /**
   * Report each generated token's log-probability and this many most likely alternatives (0 for
   * none). Absent: no log-probabilities are computed.
   */
  logprobs?: number;
}

/** A token and its log-probability under the model (the log-softmax of its raw logits). */
export interface TokenAlternative {
  token: string;
  /** The token's UTF-8 bytes; null when the tokenizer cannot say what they are. */
  bytes: number[] | null;
  logprob: number;
}

export interface TokenLogprob extends TokenAlternative {
  /** The most likely tokens at this position, most likely first. */
  top: TokenAlternative[];
  /** Where the token's text starts in the generated text, in code points. */
  offset: number;
}

export interface TokenEvent {
  id: string;
  text: string;
  /** The log-probabilities of the tokens this text (and any held back before it) came from. */
  logprobs?: TokenLogprob[];
}

export interface DoneEvent {
  id: string;
  text: string;
  finishReason: 'stop' | 'length';
  promptTokens: number;
  completionTokens: number;
  /** Every returned token's log-probability, when the request asked for them. */
  logprobs?: TokenLogprob[];
}

export interface EngineOptions {
  maxBatch: number;
  kvCacheMb: number;
  blockSize: number;
  maxLoadedAdapters: number;
  maxRank: number;
  maxQueue: number;
  contextLength: number;
  adapterDir?: string;
}

interface Seq {
  req: GenerationRequest;
  kv: SequenceKV;
  route: AdapterRoute;
  /** Whether the adapter is pinned for this sequence (from first admission until it ends). */
  acquired: boolean;
  generated: number[];
  emitted: string;
  stream: TextStream;
  rng: Rng;
  /** Tokens to feed next (the prompt, or after preemption the prompt plus what was generated). */
  pending: number[];
  /** The text generation ends with once a stop string is found (the text before it). */
  cut: string | null;
  /** Log-probabilities of the generated tokens, and how many of them were reported so far. */
  lp: (TokenLogprob & { at: number })[];
  lpSent: number;
  /** Code points in the stream's text, for the offsets OpenAI reports. */
  codePoints: number;
  onToken: (e: TokenEvent) => void;
  onDone: (e: DoneEvent) => void;
  onError: (e: Error) => void;
  admitted: number;
}

export interface EngineMetrics {
  queue: number;
  running: number;
  generatedTokens: number;
  tokensPerSecond: number;
  preemptions: number;
  freeBlocks: number;
  totalBlocks: number;
  adapterHits: number;
  adapterMisses: number;
  adapterEvictions: number;
  loadedAdapters: number;
  adapterBytes: number;
  kvCacheBytes: number;
  cancelled: number;
  /** Idle buffers in this thread's tensor pool, and the pool's cap. */
  bufferPoolBytes: number;
  bufferPoolLimitBytes: number;
}

function kvShape(model: Module): { layers: number; kvHeads: number; headDim: number } {
  const atts = model.namedModules().map(([, m]) => m).filter((m) => typeof (m as unknown as { kvShape?: unknown }).kvShape === 'function');
  if (atts.length === 0) throw new Error('the served model has no cached attention');
  const s = (atts[0] as unknown as { kvShape(): { kvHeads: number; headDim: number } }).kvShape();
  return { layers: atts.length, ...s };
}

/** Tokens before a candidate that its text is decoded after (a leading space depends on them). */
const CONTEXT_TOKENS = 6;
const utf8 = new TextEncoder();
const strictUtf8 = new TextDecoder('utf-8', { fatal: true });

/**
 * The length of the longest end of `text` (after `from`) that a stop string starts with: what may
 * yet turn into a stop string and must not be sent before the following tokens decide.
 */
function stopPrefixLength(text: string, from: number, stops: readonly string[]): number {
  let best = 0;
  for (const st of stops) {
    for (let n = Math.min(st.length - 1, text.length - from); n > best; n--) {
      if (text.endsWith(st.slice(0, n))) {
        best = n;
        break;
      }
    }
  }
  return best;
}

/**
 * A token's text and bytes as it reads after `context`. A tokenizer that knows each token's bytes
 * (llama2.c's) says them exactly, byte-fallback pieces of a character included; otherwise the text
 * is what decoding adds, and its bytes are unknown when that is not whole characters. Text that is
 * not valid UTF-8 is written as OpenAI writes it: `bytes:` and the bytes escaped.
 */
function tokenPiece(tok: Tokenizer, context: readonly number[], id: number): { token: string; bytes: number[] | null } {
  let bytes: number[] | null = null;
  const named = tok as Tokenizer & { tokenBytes?: (id: number, prev?: number) => Uint8Array; idToToken?: (id: number) => string | undefined };
  if (id === tok.bosId || id === tok.eosId) {
    // decoding drops special tokens; they are reported by name, as OpenAI reports <|endoftext|>
    const name = named.idToToken?.(id) ?? (named.tokenBytes ? new TextDecoder().decode(named.tokenBytes(id)).trim() : `<${id}>`);
    return { token: name, bytes: Array.from(utf8.encode(name)) };
  }
  if (typeof named.tokenBytes === 'function') {
    bytes = Array.from(named.tokenBytes(id, context.length ? context[context.length - 1] : -1));
  } else {
    const before = tok.decode(context);
    const after = tok.decode([...context, id]);
    const text = after.startsWith(before) ? after.slice(before.length) : tok.decode([id]);
    if (!text.includes('\uFFFD')) bytes = Array.from(utf8.encode(text));
    else return { token: text, bytes: null };
  }
  try {
    return { token: strictUtf8.decode(Uint8Array.from(bytes)), bytes };
  } catch {
    return { token: `bytes:${bytes.map((b) => `\\x${b.toString(16).padStart(2, '0')}`).join('')}`, bytes };
  }
}

export class Engine {
  readonly store: AdapterStore;
  readonly pool: BlockPool;
  private waiting: Seq[] = [];
  private running: Seq[] = [];
  private admitCounter = 0;
  private generated = 0;
  private preemptions = 0;
  private cancelled = 0;
  private rate = { tokens: 0, since: Date.now(), value: 0 };

  /** Tokens that end a sequence: EOS and the model's end of text. */
  private readonly stopTokens: ReadonlySet<number>;

  constructor(readonly model: ServedModel, readonly tokenizer: Tokenizer, readonly opts: EngineOptions) {
    this.stopTokens = new Set(stopTokensOf(tokenizer));
    this.store = new AdapterStore(model, opts.maxLoadedAdapters, opts.maxRank, opts.adapterDir);
    const s = kvShape(model);
    this.pool = new BlockPool(s.layers, s.kvHeads, s.headDim, opts.blockSize, BlockPool.blocksFor(opts.kvCacheMb, s.layers, s.kvHeads, s.headDim, opts.blockSize));
  }

  get idle(): boolean {
    return this.waiting.length === 0 && this.running.length === 0;
  }

  /** Queue a request; throws RequestError (429) when the queue is full. */
  submit(req: GenerationRequest, onToken: (e: TokenEvent) => void, onDone: (e: DoneEvent) => void, onError: (e: Error) => void): void {
    if (this.waiting.length >= this.opts.maxQueue) throw new RequestError('the server is busy: the request queue is full', 429);
    if (req.adapter !== null && !this.store.has(req.adapter)) throw new RequestError(`the model "${req.adapter}" does not exist`, 404);
    if (req.promptIds.length + req.maxTokens > this.opts.contextLength) {
      throw new RequestError(`prompt (${req.promptIds.length} tokens) plus max_tokens (${req.maxTokens}) exceeds the context of ${this.opts.contextLength}`);
    }
    const needBlocks = Math.ceil((req.promptIds.length + req.maxTokens) / this.pool.blockSize);
    if (needBlocks > this.pool.numBlocks) throw new RequestError(`the request needs ${needBlocks} KV blocks, more than the server's ${this.pool.numBlocks}`);
    this.waiting.push({
      req, kv: new SequenceKV(), route: BASE_ROUTE, acquired: false, generated: [], emitted: '', stream: new TextStream(this.tokenizer, req.promptIds),
      rng: new Rng(req.seed ?? 0), pending: req.promptIds.slice(), cut: null, lp: [], lpSent: 0, codePoints: 0, onToken, onDone, onError, admitted: 0,
    });
  }

  metrics(): EngineMetrics {
    const st = this.store.stats;
    return {
      queue: this.waiting.length, running: this.running.length, generatedTokens: this.generated, tokensPerSecond: this.rate.value,
      preemptions: this.preemptions, freeBlocks: this.pool.freeBlocks, totalBlocks: this.pool.numBlocks,
      adapterHits: st.hits, adapterMisses: st.misses, adapterEvictions: st.evictions, loadedAdapters: st.loaded,
      adapterBytes: this.store.stackBytes(), kvCacheBytes: this.pool.numBlocks * this.pool.blockFloats * this.pool.layers * 2 * 4,
      cancelled: this.cancelled, bufferPoolBytes: bufferPool.pooledBytes, bufferPoolLimitBytes: bufferPool.limitBytes,
    };
  }

  /**
   * Drop a request whose client has gone, waiting or running, giving its KV blocks and its adapter
   * pin back at once; nothing more is reported for it. False when it is not here (already done).
   */
  cancel(id: string): boolean {
    for (const list of [this.waiting, this.running]) {
      const i = list.findIndex((s) => s.req.id === id);
      if (i < 0) continue;
      const s = list.splice(i, 1)[0]!;
      s.kv.free(this.pool);
      // the pin is taken on first admission and kept through preemption
      if (s.acquired) this.store.release(s.req.adapter!);
      this.cancelled++;
      return true;
    }
    return false;
  }

  /** One scheduling step: admit and prefill, then decode every running sequence once. */
  step(): void {
    this.admit();
    if (this.running.length > 0) this.decode();
    const now = Date.now();
    if (now - this.rate.since >= 1000) {
      this.rate.value = (this.rate.tokens * 1000) / (now - this.rate.since);
      this.rate = { tokens: 0, since: now, value: this.rate.value };
    }
  }

  private admit(): void {
    while (this.waiting.length > 0 && this.running.length < this.opts.maxBatch) {
      const s = this.waiting[0]!;
      try {
        if (s.req.adapter !== null && !s.acquired) {
          s.route = this.store.acquire(s.req.adapter);
          s.acquired = true;
          const need = s.req.promptIds.length + s.req.maxTokens + s.route.addedPositions;
          if (need > this.opts.contextLength) {
            throw new RequestError(`prompt (${s.req.promptIds.length} tokens), the adapter's ${s.route.addedPositions} virtual tokens and max_tokens (${s.req.maxTokens}) exceed the context of ${this.opts.contextLength}`);
          }
        }
      } catch (e) {
        if (e instanceof RequestError && e.status === 429) break;
        this.waiting.shift();
        if (s.acquired) this.store.release(s.req.adapter!);
        s.onError(e as Error);
        continue;
      }
      // the first forward also writes the positions a prompt adapter puts before the sequence
      const added = s.kv.length === 0 ? s.route.addedPositions : 0;
      if (!s.kv.reserve(this.pool, s.pending.length + 1 + added)) break; // wait for blocks to free up
      this.waiting.shift();
      s.admitted = ++this.admitCounter;
      this.running.push(s);
      try {
        this.forward([s], s.pending);
      } catch (e) {
        this.finish(s, null, e as Error);
      }
    }
  }

  private decode(): void {
    // every running sequence needs room for one more position; preempt the newest when out of blocks
    for (;;) {
      const short = this.running.find((s) => !s.kv.reserve(this.pool, 1));
      if (!short) break;
      const victim = this.running.reduce((a, b) => (a.admitted > b.admitted ? a : b));
      this.preempt(victim);
      if (this.running.length === 0) return;
    }
    // rows of row-batched adapters (and of none) decode together; each other adapter as a group
    const groups = new Map<string, Seq[]>();
    for (const s of this.running) {
      const g = groups.get(s.route.group);
      if (g) g.push(s);
      else groups.set(s.route.group, [s]);
    }
    for (const batch of groups.values()) {
      try {
        this.forward(batch, batch.map((s) => s.pending[0]!));
      } catch (e) {
        for (const s of batch) this.finish(s, null, e as Error);
      }
    }
  }

  private preempt(s: Seq): void {
    this.running = this.running.filter((x) => x !== s);
    s.kv.free(this.pool);
    // recompute later: the prompt and everything generated so far
    s.pending = [...s.req.promptIds, ...s.generated];
    this.waiting.unshift(s);
    this.preemptions++;
  }

  /**
   * Run the model on `seqs` (one row each). A single sequence feeds all its pending tokens
   * (prefill); a batch feeds one token per row (decode).
   */
  private forward(seqs: Seq[], tokens: number[]): void {
    const prefill = seqs.length === 1 && seqs[0]!.pending.length > 1;
    const T = prefill ? tokens.length : 1;
    const B = seqs.length;
    const cache = new StepCache(this.pool, seqs.map((s) => s.kv), seqs.map(() => T));
    const logits = tidy(() => noGrad(() => this.store.run(seqs.map((s) => s.route), () => {
      const ids = tensor(tokens, [B, T], { dtype: 'i32' });
      // a prefill starts at position 0 of one sequence: no padding, and the model counts any
      // positions a prompt adapter puts first; a decode batch has rows at different positions
      if (prefill) {
        const out = this.model.forward(ids, { cache });
        return narrow(out, 1, out.shape[1]! - 1, 1).toArray() as Float32Array;
      }
      const positions = new Int32Array(B * T);
      seqs.forEach((s, b) => {
        for (let t = 0; t < T; t++) positions[b * T + t] = s.kv.length + t;
      });
      const mask = tensor(cache.mask(T), [B, cache.length + T]);
      const out = this.model.forward(ids, { cache, attentionMask: mask, positions: tensor(positions, [B, T], { dtype: 'i32' }) });
      return narrow(out, 1, T - 1, 1).toArray() as Float32Array;
    })));
    cache.commit();
    const V = logits.length / B;
    seqs.forEach((s, b) => this.emit(s, logits.subarray(b * V, (b + 1) * V)));
  }

  private emit(s: Seq, row: Float32Array): void {
    const r = s.req;
    const history = (r.repetitionPenalty ?? 1) !== 1 ? [...r.promptIds, ...s.generated] : [];
    const next = sampleToken(row, history, {
      temperature: r.temperature, topK: r.topK, topP: r.topP, repetitionPenalty: r.repetitionPenalty,
      presencePenalty: r.presencePenalty, frequencyPenalty: r.frequencyPenalty, generated: s.generated, logitBias: r.logitBias,
    }, s.rng);
    s.pending = [next];
    if (this.stopTokens.has(next)) return this.finish(s, 'stop');
    // computed before the token joins the sequence: the context its text is decoded in is what came before
    const lp = r.logprobs === undefined ? null : this.logprobOf(s, row, next);
    s.generated.push(next);
    this.generated++;
    this.rate.tokens++;
    const at = s.stream.text.length;
    const offset = s.codePoints;
    const piece = s.stream.push(next);
    s.codePoints += [...piece].length;
    if (lp) s.lp.push({ ...lp, offset, at });
    let text = s.stream.text;
    const hit = r.stop?.map((st) => text.indexOf(st, Math.max(0, s.emitted.length - st.length))).filter((i) => i >= 0);
    if (hit && hit.length) {
      s.cut = text.slice(0, Math.min(...hit));
      return this.finish(s, 'stop');
    }
    if (!text.endsWith('\uFFFD') && text.startsWith(s.emitted)) {
      // text that may be the start of a stop string waits until the next tokens settle it, so a
      // stream never sends what the finished text leaves out
      if (r.stop?.length) text = text.slice(0, text.length - stopPrefixLength(text, s.emitted.length, r.stop));
      if (text.length > s.emitted.length) this.send(s, text);
    }
    if (s.generated.length >= r.maxTokens) this.finish(s, 'length');
  }

  /** Report the text up to `text` and the log-probabilities of the tokens it begins. */
  private send(s: Seq, text: string, final = false): void {
    let n = s.lpSent;
    while (n < s.lp.length && (final || s.lp[n]!.at < text.length)) n++;
    const logprobs = s.req.logprobs === undefined ? undefined : s.lp.slice(s.lpSent, n).map(({ at: _, ...t }) => t);
    s.lpSent = n;
    if (text.length > s.emitted.length || logprobs?.length) s.onToken({ id: s.req.id, text: text.slice(s.emitted.length), logprobs });
    s.emitted = text;
  }

  /**
   * The chosen token's and the most likely tokens' log-probabilities under the model: the log-softmax
   * of the raw logits, before bias, penalties, temperature and truncation change what is sampled.
   */
  private logprobOf(s: Seq, row: Float32Array, chosen: number): TokenAlternative & { top: TokenAlternative[] } {
    let max = -Infinity;
    for (let i = 0; i < row.length; i++) if (row[i]! > max) max = row[i]!;
    let sum = 0;
    for (let i = 0; i < row.length; i++) sum += Math.exp(row[i]! - max);
    const logZ = max + Math.log(sum);
    const k = Math.min(s.req.logprobs ?? 0, row.length);
    // a partial selection: the k best so far, kept sorted, for k far below the vocabulary size
    const top: number[] = [];
    for (let i = 0; i < row.length && k > 0; i++) {
      if (top.length === k && row[i]! <= row[top[k - 1]!]!) continue;
      let j = top.length === k ? k - 1 : top.length;
      while (j > 0 && row[top[j - 1]!]! < row[i]!) {
        top[j] = top[j - 1]!;
        j--;
      }
      top[j] = i;
    }
    const context = [...s.req.promptIds.slice(-CONTEXT_TOKENS), ...s.generated].slice(-CONTEXT_TOKENS);
    const alt = (id: number): TokenAlternative => ({ ...tokenPiece(this.tokenizer, context, id), logprob: row[id]! - logZ });
    return { ...alt(chosen), top: top.map(alt) };
  }

  private finish(s: Seq, reason: 'stop' | 'length' | null, err?: Error): void {
    this.running = this.running.filter((x) => x !== s);
    s.kv.free(this.pool);
    if (s.req.adapter !== null) this.store.release(s.req.adapter);
    if (err || reason === null) {
      s.onError(err ?? new Error('generation failed'));
      return;
    }
    // after a stop string, the tokens whose text starts in it are not part of the answer
    if (s.cut !== null) s.lp = s.lp.filter((t) => t.at < s.cut!.length);
    const text = s.cut ?? s.stream.text + s.stream.flush();
    if (text.startsWith(s.emitted)) this.send(s, text, true);
    const logprobs = s.req.logprobs === undefined ? undefined : s.lp.map(({ at: _, ...t }) => t);
    s.onDone({ id: s.req.id, text, finishReason: reason, promptTokens: s.req.promptIds.length, completionTokens: s.generated.length, logprobs });
  }
}
