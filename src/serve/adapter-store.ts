/**
 * The adapters a server can use: PEFT LoRA folders found in a directory or registered at run
 * time, loaded into fixed slots on first use and evicted least-recently-used when the slots are
 * full (never while a running request uses them). Every target layer holds one stack of all
 * loaded adapters' A and B matrices (zero-padded to the largest rank), so a batch step gathers each
 * row's adapter by slot index: the S-LoRA/Punica layout, with no per-request merging.
 */
import { existsSync, readFileSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { AdaptkitError, type Tensor, tensor, zeros } from '../tensor/index.js';
import { Linear, type Module } from '../nn/index.js';
import { SafetensorsFile } from '../io/safetensors.js';
import { readAdapterConfig } from '../adapters/files.js';
import { AdaptedLayer, MixedLoraDelta, RowRouting, getMethod, rankAndScale, type LoraConfig } from '../adapters/index.js';

/** A client error: the HTTP layer answers it with 4xx and the message. */
export class RequestError extends AdaptkitError {
  constructor(message: string, readonly status = 400) {
    super(message);
  }
}

interface Stack {
  delta: MixedLoraDelta;
  inF: number;
  outF: number;
}

interface Loaded {
  slot: number;
  pins: number;
  lastUsed: number;
  bytes: number;
}

export interface StoreStats {
  hits: number;
  misses: number;
  evictions: number;
  loaded: number;
}

export class AdapterStore {
  private paths = new Map<string, string>();
  private loaded = new Map<string, Loaded>();
  private stacks = new Map<string, Stack>();
  private freeSlots: number[];
  private clock = 0;
  readonly routing = new RowRouting();
  readonly stats: StoreStats = { hits: 0, misses: 0, evictions: 0, loaded: 0 };

  constructor(readonly model: Module, readonly maxLoaded: number, readonly maxRank: number, dir?: string) {
    this.freeSlots = Array.from({ length: maxLoaded }, (_, i) => maxLoaded - i);
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

  has(name: string): boolean {
    return this.paths.has(name);
  }

  /** Register (and validate by loading) an adapter at run time. */
  register(name: string, path: string): void {
    if (!/^[\w.\-/]+$/.test(name)) throw new RequestError(`invalid adapter name "${name}"`);
    if (this.paths.has(name)) throw new RequestError(`an adapter named "${name}" is already registered`);
    this.readAdapter(name, path); // validates; the weights load on first use
    this.paths.set(name, path);
  }

  unregister(name: string): void {
    if (!this.paths.has(name)) throw new RequestError(`no adapter named "${name}"`, 404);
    const l = this.loaded.get(name);
    if (l && l.pins > 0) throw new RequestError(`adapter "${name}" is serving requests; unload it when they finish`, 409);
    if (l) this.evict(name);
    this.paths.delete(name);
  }

  /** The slot of an adapter for a request, loading it (and evicting the LRU one) when needed. */
  acquire(name: string): number {
    const path = this.paths.get(name);
    if (!path) throw new RequestError(`the model "${name}" does not exist`, 404);
    let l = this.loaded.get(name);
    if (l) {
      this.stats.hits++;
    } else {
      if (this.freeSlots.length === 0) {
        const victim = [...this.loaded.entries()].filter(([, x]) => x.pins === 0).sort((a, b) => a[1].lastUsed - b[1].lastUsed)[0];
        if (!victim) throw new RequestError('every adapter slot is in use; try again shortly', 429);
        this.evict(victim[0]);
        this.stats.evictions++;
      }
      const weights = this.readAdapter(name, path);
      this.stats.misses++;
      const slot = this.freeSlots.pop()!;
      for (const [p, w] of weights) this.write(p, slot, w);
      l = { slot, pins: 0, lastUsed: 0, bytes: 0 };
      this.loaded.set(name, l);
      this.stats.loaded = this.loaded.size;
    }
    l.pins++;
    l.lastUsed = ++this.clock;
    return l.slot;
  }

  release(name: string): void {
    const l = this.loaded.get(name);
    if (l && l.pins > 0) l.pins--;
  }

  private evict(name: string): void {
    const l = this.loaded.get(name)!;
    for (const p of this.stacks.keys()) this.write(p, l.slot, null);
    this.freeSlots.push(l.slot);
    this.loaded.delete(name);
    this.stats.loaded = this.loaded.size;
  }

  /** Read and validate an adapter against the base model: LoRA only, known layers, right shapes. */
  private readAdapter(name: string, path: string): Map<string, { A: Float32Array; B: Float32Array; r: number; scale: number }> {
    const cfgPath = join(path, 'adapter_config.json');
    let raw: Record<string, unknown>;
    try {
      raw = readAdapterConfig(path);
    } catch (e) {
      throw new RequestError((e as Error).message);
    }
    if (raw.peft_type !== 'LORA') throw new RequestError(`adapter "${name}" is ${JSON.stringify(raw.peft_type)}; the server batches LoRA adapters`);
    let cfg: LoraConfig;
    try {
      cfg = getMethod('LORA').parseConfig(raw, cfgPath) as LoraConfig;
    } catch (e) {
      throw new RequestError((e as Error).message);
    }
    if (cfg.use_dora || cfg.bias !== 'none') throw new RequestError(`adapter "${name}" uses DoRA or a trained bias, which the server does not batch`);
    const file = join(path, 'adapter_model.safetensors');
    if (!existsSync(file)) throw new RequestError(`${path}: no adapter_model.safetensors`);
    let f: SafetensorsFile;
    try {
      f = new SafetensorsFile(file);
    } catch (e) {
      throw new RequestError((e as Error).message);
    }
    const out = new Map<string, { A: Float32Array; B: Float32Array; r: number; scale: number }>();
    try {
      const keys = f.keys();
      const mods = new Set<string>();
      for (const k of keys) {
        const m = /^base_model\.model\.(.+)\.lora_([AB])\.weight$/.exec(k);
        if (!m) throw new RequestError(`adapter "${name}": unexpected tensor "${k}"`);
        mods.add(m[1]!);
      }
      for (const p of mods) {
        let layer: Module;
        try {
          layer = this.model.get(p);
        } catch {
          throw new RequestError(`adapter "${name}" targets "${p}", which the served model does not have (an adapter for another base model?)`);
        }
        const lin = layer instanceof AdaptedLayer ? layer.base_layer : layer;
        if (!(lin instanceof Linear)) throw new RequestError(`adapter "${name}": "${p}" is not a linear layer`);
        const ka = `base_model.model.${p}.lora_A.weight`;
        const kb = `base_model.model.${p}.lora_B.weight`;
        if (!f.has(ka) || !f.has(kb)) throw new RequestError(`adapter "${name}": "${p}" lacks lora_A or lora_B`);
        const [r, inF] = f.info(ka).shape as [number, number];
        const [outF, r2] = f.info(kb).shape as [number, number];
        if (inF !== lin.inFeatures || outF !== lin.outFeatures || r !== r2) {
          throw new RequestError(`adapter "${name}": "${p}" has lora_A [${r}, ${inF}] and lora_B [${outF}, ${r2}], but the layer is ${lin.outFeatures}x${lin.inFeatures} (wrong base model?)`);
        }
        if (r > this.maxRank) throw new RequestError(`adapter "${name}" has rank ${r} at "${p}", above the server's maximum ${this.maxRank}`);
        const { scale } = rankAndScale(cfg, p);
        out.set(p, { A: f.read(ka).toArray() as Float32Array, B: f.read(kb).toArray() as Float32Array, r, scale });
      }
    } finally {
      f.close();
    }
    return out;
  }

  /** Write (or clear) one slot of a layer's stack, creating the stack and its wrapper on first use. */
  private write(path: string, slot: number, w: { A: Float32Array; B: Float32Array; r: number; scale: number } | null): void {
    let st = this.stacks.get(path);
    if (!st) {
      if (!w) return;
      const lin = this.model.get(path) as Linear;
      const inF = lin.inFeatures;
      const outF = lin.outFeatures;
      const n = this.maxLoaded + 1;
      const delta = new MixedLoraDelta(zeros([n, this.maxRank, inF]).keep(), zeros([n, outF, this.maxRank]).keep(), zeros([n]).keep(), this.routing);
      this.model.replace(path, new AdaptedLayer(lin, [delta]));
      st = { delta, inF, outF };
      this.stacks.set(path, st);
    }
    const R = this.maxRank;
    const a = st.delta.stackA.storage.data as Float32Array;
    const b = st.delta.stackB.storage.data as Float32Array;
    const s = st.delta.scales.storage.data as Float32Array;
    const aOff = slot * R * st.inF;
    const bOff = slot * st.outF * R;
    a.fill(0, aOff, aOff + R * st.inF);
    b.fill(0, bOff, bOff + st.outF * R);
    s[slot] = 0;
    if (!w) return;
    a.set(w.A, aOff); // rows 0..r-1 of [R, in]
    for (let o = 0; o < st.outF; o++) b.set(w.B.subarray(o * w.r, (o + 1) * w.r), bOff + o * R);
    s[slot] = w.scale;
  }

  /** Route the rows of the next forward to these slots (0: no adapter). */
  route(slots: readonly number[]): void {
    this.routing.rows?.dispose();
    this.routing.rows = tensor(slots, [slots.length], { dtype: 'i32' }).keep();
  }

  /** Put the model's original layers back and free the stacks (the store is unusable afterwards). */
  detach(): void {
    for (const [p, st] of this.stacks) {
      const w = this.model.get(p) as AdaptedLayer;
      this.model.replace(p, w.base_layer as unknown as Module);
      st.delta.stackA.dispose();
      st.delta.stackB.dispose();
      st.delta.scales.dispose();
    }
    this.stacks.clear();
    this.loaded.clear();
  }

  /** Bytes of adapter weights held in the stacks. */
  stackBytes(): number {
    let n = 0;
    for (const s of this.stacks.values()) n += (s.delta.stackA.size + s.delta.stackB.size) * 4;
    return n;
  }
}

