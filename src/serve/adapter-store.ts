/**
 * The adapters a server can use: PEFT folders of any registered method, found in a directory or
 * registered at run time, loaded on first use and evicted least-recently-used beyond
 * `maxLoaded` (never while a running request uses them). Methods with the row-batched capability
 * are written into fixed slots of per-layer stacks (the S-LoRA/Punica layout: a batch step
 * gathers each row's slot, no per-request merging); adapters of other methods stay attached to
 * the store's adapter model, and their rows run as sub-batches with the adapter active.
 */
import { existsSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { AdaptkitError, type Tensor } from '../tensor/index.js';
import type { Module } from '../nn/index.js';
import { AdapterModel, RowStacks, isRowBatched, readAdapterConfig, stackedDeltas, type AdapterInstance } from '../adapters/index.js';

/** A client error: the HTTP layer answers it with 4xx and the message. */
export class RequestError extends AdaptkitError {
  constructor(message: string, readonly status = 400) {
    super(message);
  }
}

/** How one sequence's adapter runs: in a slot of a stack (row-batched), or as its own group. */
export interface AdapterRoute {
  /** Requests with the same group run in one forward ('' for row-batched and base-model rows). */
  group: string;
  stack: string | null;
  slot: number;
  /** A mixture: weighted slots (of one or several stacks) whose updates add up. */
  parts?: { stack: string; slot: number; weight: number }[];
  /** Positions the adapter puts before the sequence (prompt tuning). */
  addedPositions: number;
}

export const BASE_ROUTE: AdapterRoute = { group: '', stack: null, slot: 0, addedPositions: 0 };

interface Loaded {
  route: AdapterRoute;
  pins: number;
  lastUsed: number;
}

export interface StoreStats {
  hits: number;
  misses: number;
  evictions: number;
  loaded: number;
}

export class AdapterStore {
  readonly am: AdapterModel;
  private paths = new Map<string, string>();
  private loaded = new Map<string, Loaded>();
  private stacks = new Map<string, { stacks: RowStacks; free: number[] }>();
  private clock = 0;
  readonly stats: StoreStats = { hits: 0, misses: 0, evictions: 0, loaded: 0 };

  constructor(readonly model: Module, readonly maxLoaded: number, readonly maxRank: number, dir?: string) {
    this.am = new AdapterModel(model);
    if (dir) this.scan(dir);
  }

  /** Register every subfolder of dir holding an adapter_config.json, by folder name. */
  scan(dir: string): void {
    if (!existsSync(dir)) throw new AdaptkitError(`adapter directory ${dir} does not exist`);
    for (const name of readdirSync(dir)) {
      const p = join(dir, name);
      if (statSync(p).isDirectory() && existsSync(join(p, 'adapter_config.json'))) this.paths.set(name, p);
    }
  }

  names(): string[] {
    return [...this.paths.keys()].sort();
  }

  /** Whether a request's adapter exists: a name, or a mixture `a:0.7,b:0.3` of known names. */
  has(spec: string): boolean {
    const m = parseMixture(spec);
    return m === null ? this.paths.has(spec) : m.every((p) => this.paths.has(p.name));
  }

  /** Register (and validate by loading) an adapter at run time. */
  register(name: string, path: string): void {
    if (!/^[\w.-]{1,64}$/.test(name)) throw new RequestError(`invalid adapter name "${name}" (letters, digits, _ . -, at most 64)`);
    if (this.paths.has(name)) throw new RequestError(`an adapter named "${name}" is already registered`);
    const inst = this.read(name, path);
    this.fit(inst);
    this.am.delete(name); // the weights load again on first use
    this.paths.set(name, path);
  }

  unregister(name: string): void {
    if (!this.paths.has(name)) throw new RequestError(`no adapter named "${name}"`, 404);
    const l = this.loaded.get(name);
    if (l && l.pins > 0) throw new RequestError(`adapter "${name}" is serving requests; unload it when they finish`, 409);
    if (l) this.evict(name);
    this.paths.delete(name);
  }

  /** Load an adapter folder into the store's adapter model, with every error a 400 naming the problem. */
  private read(name: string, path: string): AdapterInstance {
    try {
      readAdapterConfig(path); // folder and config checks first, with their own messages
      const inst = this.am.load(path, name);
      // loading activates a first adapter; here an adapter is active only for its own rows' forward
      this.am.setActive([]);
      return inst;
    } catch (e) {
      throw e instanceof RequestError ? e : new RequestError(`adapter "${name}": ${(e as Error).message}`);
    }
  }

  /** The stack an adapter goes into (created on first use), after checking it fits the slots. */
  private fit(inst: AdapterInstance): string | null {
    const form = inst.method.rowBatched;
    if (!form || !isRowBatched(inst)) return null;
    const key = form.key(inst);
    const id = `${inst.method.peftType}:${key}`;
    const limits = form.limits(key, this.maxRank);
    for (const [k, v] of Object.entries(form.sizes(inst))) {
      if (v > (limits[k] ?? 0)) throw new RequestError(`adapter "${inst.name}": "${k}" is ${v}, above the server's --max-rank ${this.maxRank}`);
    }
    if (!this.stacks.has(id)) {
      this.stacks.set(id, {
        stacks: new RowStacks(form, key, this.model, this.maxLoaded, limits),
        free: Array.from({ length: this.maxLoaded }, (_, i) => this.maxLoaded - i),
      });
    }
    return id;
  }

  /**
   * The route of a request's adapter: one adapter, or a mixture `a:0.7,b:0.3` of row-batched,
   * mixable adapters (each pinned) applied as the weighted sum of their updates.
   */
  acquire(spec: string): AdapterRoute {
    const mix = parseMixture(spec);
    if (mix === null) return this.acquireOne(spec);
    const parts: { stack: string; slot: number; weight: number }[] = [];
    const taken: string[] = [];
    try {
      for (const { name, weight } of mix) {
        const r = this.acquireOne(name);
        taken.push(name);
        const form = r.stack ? this.stacks.get(r.stack)!.stacks : null;
        if (!r.stack || !form?.form.mixable?.(form.key)) throw new RequestError(`adapter "${name}" cannot be part of a mixture: only plain LoRA adapters add up row by row`);
        parts.push({ stack: r.stack, slot: r.slot, weight });
      }
    } catch (e) {
      for (const n of taken) this.release(n);
      throw e;
    }
    return { group: '', stack: null, slot: 0, parts, addedPositions: 0 };
  }

  private acquireOne(name: string): AdapterRoute {
    const path = this.paths.get(name);
    if (!path) throw new RequestError(`the model "${name}" does not exist`, 404);
    let l = this.loaded.get(name);
    if (l) {
      this.stats.hits++;
    } else {
      if (this.loaded.size >= this.maxLoaded) this.evictOne();
      const inst = this.read(name, path);
      let stack: string | null;
      try {
        stack = this.fit(inst);
      } catch (e) {
        this.am.delete(name);
        throw e;
      }
      this.stats.misses++;
      let route: AdapterRoute;
      if (stack) {
        const s = this.stacks.get(stack)!;
        if (s.free.length === 0) {
          this.evictOne(stack);
        }
        const slot = s.free.pop()!;
        s.stacks.write(slot, inst);
        this.am.delete(name); // its values live in the slot now
        route = { group: '', stack, slot, addedPositions: 0 };
      } else {
        route = { group: name, stack: null, slot: 0, addedPositions: inst.addedPositions ?? 0 };
      }
      l = { route, pins: 0, lastUsed: 0 };
      this.loaded.set(name, l);
      this.stats.loaded = this.loaded.size;
    }
    l.pins++;
    l.lastUsed = ++this.clock;
    return l.route;
  }

  release(spec: string): void {
    for (const name of parseMixture(spec)?.map((p) => p.name) ?? [spec]) {
      const l = this.loaded.get(name);
      if (l && l.pins > 0) l.pins--;
    }
  }

  /** Evict the least recently used adapter nobody is using (of one stack, when given). */
  private evictOne(stack?: string): void {
    const victim = [...this.loaded.entries()]
      .filter(([, x]) => x.pins === 0 && (stack === undefined || x.route.stack === stack))
      .sort((a, b) => a[1].lastUsed - b[1].lastUsed)[0];
    if (!victim) throw new RequestError('every adapter slot is in use; try again shortly', 429);
    this.evict(victim[0]);
    this.stats.evictions++;
  }

  private evict(name: string): void {
    const l = this.loaded.get(name)!;
    if (l.route.stack) {
      const s = this.stacks.get(l.route.stack)!;
      s.stacks.clear(l.route.slot);
      s.free.push(l.route.slot);
    } else {
      this.am.delete(name);
    }
    this.loaded.delete(name);
    this.stats.loaded = this.loaded.size;
  }

  /**
   * Run fn (one forward) for rows on these routes, which must share one group: row-batched rows
   * gather their slots, a group of another method runs with its adapter active.
   */
  run<T>(routes: readonly AdapterRoute[], fn: () => T): T {
    const group = routes[0]?.group ?? '';
    if (routes.some((r) => r.group !== group)) throw new AdaptkitError('one forward mixes adapter groups');
    if (group !== '') return this.am.withActive([group], fn);
    const partsOf = (r: AdapterRoute) => r.parts ?? (r.stack !== null ? [{ stack: r.stack, slot: r.slot, weight: 1 }] : []);
    const used = new Set(routes.flatMap((r) => partsOf(r).map((p) => p.stack)));
    if (used.size === 0) return fn();
    const active = [...used].map((id) => ({ id, stacks: this.stacks.get(id)!.stacks }));
    for (const { id, stacks } of active) stacks.routeMixed(routes.map((r) => partsOf(r).filter((p) => p.stack === id)));
    return this.am.withDeltas(stackedDeltas(active.map((a) => a.stacks)), fn);
  }

  /** Put the model's original layers back and free the stacks (the store is unusable afterwards). */
  detach(): void {
    for (const n of [...this.am.adapters.keys()]) this.am.delete(n);
    for (const { stacks } of this.stacks.values()) stacks.dispose();
    this.stacks.clear();
    this.loaded.clear();
  }

  /** Bytes of adapter weights held in the stacks and the attached adapters. */
  stackBytes(): number {
    let n = 0;
    for (const { stacks } of this.stacks.values()) n += stacks.bytes();
    for (const inst of this.am.adapters.values()) n += inst.parameters().reduce((s: number, t: Tensor) => s + t.size * 4, 0);
    return n;
  }
}

/**
 * A request's mixture of adapters, `a:0.7,b:0.3` (the weights of a weighted sum of their updates),
 * or null for a plain adapter name. Weights must be finite numbers; names must not repeat.
 */
export function parseMixture(spec: string): { name: string; weight: number }[] | null {
  if (!spec.includes(':') && !spec.includes(',')) return null;
  const parts = spec.split(',').map((item) => {
    const at = item.lastIndexOf(':');
    const name = (at >= 0 ? item.slice(0, at) : item).trim();
    const w = at >= 0 ? item.slice(at + 1).trim() : '1';
    const weight = w === '' ? NaN : Number(w);
    if (!/^[\w.-]{1,64}$/.test(name)) throw new RequestError(`"model": "${item.trim().slice(0, 80)}" is not an adapter name with a weight (write a:0.7,b:0.3)`);
    if (!Number.isFinite(weight)) throw new RequestError(`"model": the weight of "${name}" must be a finite number, got "${w.slice(0, 20)}"`);
    return { name, weight };
  });
  const names = parts.map((p) => p.name);
  const twice = names.find((n, i) => names.indexOf(n) !== i);
  if (twice) throw new RequestError(`"model": "${twice}" appears twice in the mixture`);
  return parts;
}
