/**
 * The serving engine: continuous batching over a paged KV cache, with every sequence on its own
 * LoRA adapter (or none). Each step admits waiting requests (prefilling their prompts) and then
 * decodes one token for every running sequence in one batched forward, base GEMMs shared, adapter
 * updates gathered per row. When the cache runs out of blocks, the newest sequence is preempted
 * and recomputed later. Finished sequences leave the batch at once and new ones join.
 */
import { Rng, type Tensor, bufferPool, narrow, noGrad, tensor, tidy } from '../tensor/index.js';
import type { Module } from '../nn/index.js';
import type { Tokenizer } from '../models/tokenizer.js';
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
  seed?: number;
  stop?: string[];
}

export interface TokenEvent {
  id: string;
  text: string;
}

export interface DoneEvent {
  id: string;
  text: string;
  finishReason: 'stop' | 'length';
  promptTokens: number;
  completionTokens: number;
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

  constructor(readonly model: ServedModel, readonly tokenizer: Tokenizer, readonly opts: EngineOptions) {
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
      rng: new Rng(req.seed ?? 0), pending: req.promptIds.slice(), onToken, onDone, onError, admitted: 0,
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
    }, s.rng);
    s.pending = [next];
    if (next === this.tokenizer.eosId) return this.finish(s, 'stop');
    s.generated.push(next);
    this.generated++;
    this.rate.tokens++;
    s.stream.push(next);
    let text = s.stream.text;
    const hit = r.stop?.map((st) => text.indexOf(st, Math.max(0, s.emitted.length - st.length))).filter((i) => i >= 0);
    if (hit && hit.length) {
      text = text.slice(0, Math.min(...hit));
      if (text.length > s.emitted.length) s.onToken({ id: r.id, text: text.slice(s.emitted.length) });
      s.emitted = text;
      return this.finish(s, 'stop');
    }
    if (!text.endsWith('\uFFFD') && text.length > s.emitted.length && text.startsWith(s.emitted)) {
      s.onToken({ id: r.id, text: text.slice(s.emitted.length) });
      s.emitted = text;
    }
    if (s.generated.length >= r.maxTokens) this.finish(s, 'length');
  }

  private finish(s: Seq, reason: 'stop' | 'length' | null, err?: Error): void {
    this.running = this.running.filter((x) => x !== s);
    s.kv.free(this.pool);
    if (s.req.adapter !== null) this.store.release(s.req.adapter);
    if (err || reason === null) {
      s.onError(err ?? new Error('generation failed'));
      return;
    }
    const text = reason === 'stop' && s.req.stop?.length ? s.emitted : s.stream.text + s.stream.flush();
    if (text.length > s.emitted.length && text.startsWith(s.emitted)) s.onToken({ id: s.req.id, text: text.slice(s.emitted.length) });
    s.onDone({ id: s.req.id, text, finishReason: reason, promptTokens: s.req.promptIds.length, completionTokens: s.generated.length });
  }
}
