/**
 * S²FT ("Efficient, Scalable and Generalizable LLM Fine-tuning by Structured Sparsity"): train a
 * few whole rows/columns of the base weights, chosen per layer at random, and fuse them in place.
 *
 * Selection (a pure function of the config and the model, so counting, creating and loading agree):
 * - FFN: per layer, `ffn_channels` (or round(ffn_ratio·d_ff), at least 1) of the intermediate
 *   channels, drawn without replacement. Channel j is column j of down_proj's input and row j of
 *   up_proj / gate_proj's output; `ffn_modules` says which of them train, all on the same channels
 *   (the authors' scripts train down_proj only, d_ratio 0.03, which is the default here). The
 *   authors draw one global sample over all layers (per-layer counts then vary); here every layer
 *   gets the same count, so the parameter count is a plain formula.
 * - Attention (`attn_heads` > 0): per layer, that many query heads; o_proj trains their input
 *   columns (query-head blocks of head_dim), v_proj trains the output rows of the key/value heads
 *   those query heads read (kv head = q head / (q heads / kv heads)). Under grouped-query attention
 *   (stories260K: 8 query, 4 kv heads) the authors' code indexes the kv-shaped v_proj with query
 *   head ids, which trains the wrong rows; here v's rows always belong to the kv head each selected
 *   query head attends with, so a selected head's value path and output path move together. A kv
 *   head is shared by its group, so training its rows also changes the group's other query heads.
 *   A fused q/k/v projection (GPT-2's c_attn) keeps v last: its rows are offset by out − kv·head_dim.
 * Draws: FFN channels from Rng(seed), layer by layer in layer order; heads from Rng(seed + 1).
 *
 * Training: each touched layer gets a dense trainable block s2 (zero-initialized), [k, in] for
 * rows (y[..., rows] += x·s2ᵀ) or [out, k] for columns (y += x[..., cols]·s2ᵀ); the base weight is
 * never written, so untouched rows/columns stay bit-identical and weight decay pulls toward θ0.
 * Merging adds the block into its rows/columns of the weight.
 * Saving writes a sparse difference (sparse-diff.ts, peft_type "SPARSE_DIFF") holding every
 * entry of the trained rows/columns, which loads, merges and composes without this method.
 *
 * Config (peft_type "S2FT"): ffn_ratio (0..1) or ffn_channels (integer >= 1; wins over the ratio),
 * default ratio 0.03; ffn_modules, a list of "down", "up", "gate" (default ["down"]); attn_heads,
 * integer >= 0 (default 0); seed, integer (default 0). target_modules default to the roles those
 * imply; an explicitly given target must have one of them.
 */
import { AdaptkitError, Rng, type Tensor, add, clone, fromBuffer, indexAdd, indexSelect, linear, noGrad, parameter, transpose, zeros } from '../../tensor/index.js';
import { type AdapterDescriptor, Linear, Module, type TargetRole } from '../../nn/index.js';
import { AdapterConfigError, fail, optInt, optNumber, parseBase, showValue } from '../config.js';
import { registerMethod } from '../registry.js';
import { matches, roleTargets } from '../targets.js';
import { num } from '../options.js';
import { peftKey } from '../files.js';
import type { AdapterInstance, AdapterMethod, BaseAdapterConfig, LayerDelta, MethodOption, RawAdapterConfig, TargetInfo } from '../types.js';
import { INDICES, type SparseTensorInfo, VALUES, checkIndices, checkValues, sparseConfigJson, tensorChecksum, weightPath } from './sparse-diff.js';

export type FfnModule = 'down' | 'up' | 'gate';

export interface S2ftConfig extends BaseAdapterConfig {
  ffn_ratio: number;
  ffn_channels: number | null;
  ffn_modules: FfnModule[];
  attn_heads: number;
  seed: number;
}

const FFN_ROLE: Record<FfnModule, TargetRole> = { down: 'mlp.down', up: 'mlp.up', gate: 'mlp.gate' };

export function parseS2ft(raw: RawAdapterConfig, source: string): S2ftConfig {
  const base = parseBase(raw, 'S2FT', source);
  const ratio = optNumber(raw, 'ffn_ratio', 0.03, source, 0);
  if (ratio > 1) fail(source, 'ffn_ratio', `must be at most 1, got ${ratio}`);
  const channels = raw.ffn_channels === undefined || raw.ffn_channels === null ? null : optInt(raw, 'ffn_channels', 1, source, 1);
  const mods = raw.ffn_modules ?? ['down'];
  if (!Array.isArray(mods) || !mods.every((m) => m === 'down' || m === 'up' || m === 'gate') || new Set(mods).size !== mods.length) {
    fail(source, 'ffn_modules', `must be a list of distinct "down", "up", "gate", got ${showValue(mods)}`);
  }
  const c: S2ftConfig = {
    ...base, ffn_ratio: ratio, ffn_channels: channels, ffn_modules: mods as FfnModule[],
    attn_heads: optInt(raw, 'attn_heads', 0, source, 0), seed: optInt(raw, 'seed', 0, source, 0),
  };
  if (!ffnOn(c) && c.attn_heads === 0) fail(source, 'attn_heads', 'is 0 and no FFN channel is selected (ffn_ratio 0 or ffn_modules empty): S²FT would train nothing');
  return c;
}

function ffnOn(c: S2ftConfig): boolean {
  return c.ffn_modules.length > 0 && (c.ffn_channels !== null || c.ffn_ratio > 0);
}

function rolesOf(c: S2ftConfig): TargetRole[] {
  return [...(ffnOn(c) ? c.ffn_modules.map((m) => FFN_ROLE[m]) : []), ...(c.attn_heads > 0 ? (['attn.o', 'attn.v'] as const) : [])];
}

/** The S²FT role of a target among those the config trains (first match in this order). */
function roleOf(d: AdapterDescriptor, c: S2ftConfig, path: string): TargetRole {
  for (const r of rolesOf(c)) {
    const spec = d.roles[r];
    if (spec !== undefined && matches(spec, path) !== null) return r;
  }
  throw new AdapterConfigError(`S2FT: target "${path}" is none of the layers this config trains (${rolesOf(c).join(', ')})`);
}

/** Rows or columns of one weight (in the [out, in] sense) that train. */
export interface S2Selection {
  axis: 'row' | 'col';
  index: Int32Array;
  /** Query heads (o_proj) or kv heads (v_proj) behind a head selection. */
  heads?: Int32Array;
}

function sample(n: number, k: number, rng: Rng): Int32Array {
  const order = Array.from({ length: n }, (_, i) => i);
  for (let i = 0; i < k; i++) {
    const j = i + rng.int(n - i);
    [order[i], order[j]] = [order[j]!, order[i]!];
  }
  return Int32Array.from(order.slice(0, k)).sort();
}

function blocks(ids: Int32Array, size: number, offset = 0): Int32Array {
  return Int32Array.from(Array.from(ids).flatMap((h) => Array.from({ length: size }, (_, i) => offset + h * size + i)));
}

function lin(t: TargetInfo): Linear {
  if (!(t.module instanceof Linear)) throw new AdaptkitError(`S2FT: "${t.path}" is not a linear layer`);
  return t.module;
}

/** Channels per layer of an FFN with d_ff channels. */
export function channelsPerLayer(c: S2ftConfig, dff: number): number {
  const k = c.ffn_channels ?? Math.max(1, Math.round(c.ffn_ratio * dff));
  if (k > dff) throw new AdapterConfigError(`S2FT: "ffn_channels" is ${k}, but the feed-forward layers have only ${dff} channels`);
  return k;
}

/** The query head → key/value head map of grouped-query attention. */
export function kvHeadOf(q: number, qHeads: number, kvHeads: number): number {
  return Math.floor(q / (qHeads / kvHeads));
}

/** What trains at every target. */
export function s2ftSelection(c: S2ftConfig, targets: readonly TargetInfo[], d: AdapterDescriptor): Map<string, S2Selection> {
  const byLayer = new Map<number, { t: TargetInfo; role: TargetRole }[]>();
  for (const t of targets) {
    if (t.layerIndex === null) throw new AdapterConfigError(`S2FT: target "${t.path}" is in no numbered layer`);
    const role = roleOf(d, c, t.path);
    byLayer.set(t.layerIndex, [...(byLayer.get(t.layerIndex) ?? []), { t, role }]);
  }
  const out = new Map<string, S2Selection>();
  const ffnRng = new Rng(c.seed);
  const headRng = new Rng(c.seed + 1);
  for (const layer of [...byLayer.keys()].sort((a, b) => a - b)) {
    const here = byLayer.get(layer)!;
    const ffn = here.filter((x) => x.role.startsWith('mlp.'));
    if (ffn.length) {
      const widths = ffn.map(({ t, role }) => (role === 'mlp.down' ? lin(t).inFeatures : lin(t).outFeatures));
      if (new Set(widths).size !== 1) throw new AdaptkitError(`S2FT: layer ${layer}'s feed-forward layers disagree on the channel count (${widths.join(', ')})`);
      const ch = sample(widths[0]!, channelsPerLayer(c, widths[0]!), ffnRng);
      for (const { t, role } of ffn) out.set(t.path, { axis: role === 'mlp.down' ? 'col' : 'row', index: ch });
    }
    const attn = here.filter((x) => x.role.startsWith('attn.'));
    if (attn.length) {
      if (!d.attention) throw new AdaptkitError('S2FT: attention heads were asked for, but the model describes no attention');
      const { kvHeads, headDim } = d.attention;
      const o = attn.find((x) => x.role === 'attn.o');
      if (!o) throw new AdapterConfigError(`S2FT: head selection in layer ${layer} needs its attention output projection among the targets`);
      const qHeads = lin(o.t).inFeatures / headDim;
      if (!Number.isInteger(qHeads) || qHeads % kvHeads !== 0) throw new AdaptkitError(`S2FT: ${lin(o.t).inFeatures} attention inputs are not query heads of ${headDim} in groups over ${kvHeads} kv heads`);
      if (c.attn_heads > qHeads) throw new AdapterConfigError(`S2FT: "attn_heads" is ${c.attn_heads}, but the model has ${qHeads} query heads per layer`);
      const q = sample(qHeads, c.attn_heads, headRng);
      const kv = Int32Array.from(new Set(Array.from(q, (h) => kvHeadOf(h, qHeads, kvHeads)))).sort();
      out.set(o.t.path, { axis: 'col', index: blocks(q, headDim), heads: q });
      for (const v of attn.filter((x) => x.role === 'attn.v')) {
        const offset = lin(v.t).outFeatures - kvHeads * headDim;
        if (offset < 0) throw new AdaptkitError(`S2FT: "${v.t.path}" has ${lin(v.t).outFeatures} outputs, fewer than ${kvHeads} kv heads of ${headDim}`);
        out.set(v.t.path, { axis: 'row', index: blocks(kv, headDim, offset), heads: kv });
      }
    }
  }
  return out;
}

function blockShape(s: S2Selection, base: Linear): [number, number] {
  return s.axis === 'row' ? [s.index.length, base.inFeatures] : [base.outFeatures, s.index.length];
}

/** A trained block of rows or columns of one weight. */
export class S2Delta extends Module implements LayerDelta {
  readonly #index: Tensor;
  /** Flat indices of the block's entries in the stored weight, ascending, and which s2 entry each is. */
  readonly support: Int32Array;
  readonly slot: Int32Array;

  constructor(readonly adapterName: string, public s2: Tensor, readonly selection: S2Selection, readonly base: Linear) {
    super();
    this.#index = fromBuffer(selection.index.slice(), [selection.index.length]).keep();
    const [rows, cols] = blockShape(selection, base);
    const out = base.outFeatures;
    const inF = base.inFeatures;
    const pairs: [number, number][] = [];
    for (let i = 0; i < rows; i++) {
      for (let j = 0; j < cols; j++) {
        const r = selection.axis === 'row' ? selection.index[i]! : i;
        const cc = selection.axis === 'row' ? j : selection.index[j]!;
        pairs.push([base.fanInFanOut ? cc * out + r : r * inF + cc, i * cols + j]);
      }
    }
    pairs.sort((a, b) => a[0] - b[0]);
    this.support = Int32Array.from(pairs, (p) => p[0]);
    this.slot = Int32Array.from(pairs, (p) => p[1]);
  }

  /** ΔW in the stored layout of the base weight. */
  deltaWeight(): Tensor {
    const full = indexAdd(zeros([this.base.outFeatures, this.base.inFeatures]), this.selection.axis === 'row' ? 0 : 1, this.#index, this.s2);
    return this.base.fanInFanOut ? transpose(full) : full;
  }

  apply(x: Tensor, y: Tensor): Tensor {
    if (this.selection.axis === 'row') return indexAdd(y, -1, this.#index, linear(x, this.s2));
    return add(y, linear(indexSelect(x, -1, this.#index), this.s2));
  }

  mergeWeight(weight: Tensor): Tensor {
    return noGrad(() => clone(add(weight, this.deltaWeight())));
  }

  mergeBias(bias: Tensor | null): Tensor | null {
    return bias;
  }

  /** The block's entries at `support`, in that order. */
  values(): Float32Array {
    const s = noGrad(() => this.s2.toArray()) as Float32Array;
    return Float32Array.from(this.slot, (k) => s[k]!);
  }
}

class S2ftAdapter implements AdapterInstance {
  readonly method = S2FT;
  readonly deltas = new Map<string, S2Delta>();
  /** Base weight checksums by target path, taken when the adapter was created. */
  readonly checksums = new Map<string, string>();
  constructor(readonly name: string, readonly config: S2ftConfig) {}

  parameters(): Tensor[] {
    return [...this.deltas.values()].map((d) => d.s2);
  }

  private sorted(): [string, S2Delta][] {
    return [...this.deltas].sort(([a], [b]) => (a < b ? -1 : 1));
  }

  stateDict(): Map<string, Tensor> {
    const out = new Map<string, Tensor>();
    for (const [path, d] of this.sorted()) {
      out.set(peftKey(path, `weight.${INDICES}`), fromBuffer(d.support.slice(), [d.support.length]));
      out.set(peftKey(path, `weight.${VALUES}`), fromBuffer(d.values(), [d.support.length]));
    }
    return out;
  }

  /** A sparse difference of exactly this selection (a checkpoint of this adapter). */
  loadStateDict(tensors: Map<string, Tensor>, source: string): void {
    const fills: [S2Delta, Float32Array][] = [];
    for (const [path, d] of this.deltas) {
      const ik = peftKey(path, `weight.${INDICES}`);
      const vk = peftKey(path, `weight.${VALUES}`);
      const idx = checkIndices(tensors.get(ik), ik, d.base.weight.size, d.support.length, source);
      if (idx.some((v, i) => v !== d.support[i])) throw new AdaptkitError(`${source}: "${ik}" holds other rows/columns than this S²FT config selects (another seed, ratio or head count)`);
      fills.push([d, checkValues(tensors.get(vk), vk, idx.length, source)]);
    }
    const known = new Set([...this.deltas.keys()].flatMap((p) => [peftKey(p, `weight.${INDICES}`), peftKey(p, `weight.${VALUES}`)]));
    const extra = [...tensors.keys()].filter((k) => !known.has(k));
    if (extra.length) throw new AdaptkitError(`${source}: unexpected tensors ${extra.slice(0, 6).join(', ')}`);
    for (const [d, v] of fills) {
      const s = d.s2.storage.data as Float32Array;
      d.slot.forEach((k, i) => (s[d.s2.offset + k] = v[i]!));
    }
  }

  configJson(): RawAdapterConfig {
    const tensors: Record<string, SparseTensorInfo> = {};
    for (const [path, d] of this.deltas) tensors[weightPath(path)] = { shape: [...d.base.weight.shape], nnz: d.support.length, base_sha256: this.checksums.get(path)! };
    return sparseConfigJson(this.config, tensors, 'S2FT');
  }
}

export const CHANNEL_RATIO: MethodOption = { name: 'channel-ratio', type: 'number', min: 0, max: 1, description: 'S²FT: fraction of each layer\'s FFN channels trained (default 0.03)' };
export const CHANNELS: MethodOption = { name: 'channels', type: 'int', min: 1, description: 'S²FT: FFN channels trained per layer (instead of --channel-ratio)' };
export const HEADS: MethodOption = { name: 'heads', type: 'int', min: 0, description: 'S²FT: attention query heads trained per layer (v rows of their kv heads, o columns; default 0)' };

function count(c: S2ftConfig, targets: readonly TargetInfo[], d: AdapterDescriptor): number {
  const sel = s2ftSelection(c, targets, d);
  return targets.reduce((n, t) => {
    const [r, k] = blockShape(sel.get(t.path)!, lin(t));
    return n + r * k;
  }, 0);
}

export const S2FT: AdapterMethod = {
  peftType: 'S2FT',
  description: 'S²FT: train random whole FFN channels (and attention heads) per layer, saved as a sparse difference',
  kind: 'tuner',
  parseConfig: (raw, source) => parseS2ft(raw, source),
  defaultTargets: (d, cfg) => roleTargets(d, rolesOf(cfg as S2ftConfig)),
  create(name, cfg, targets, ctx) {
    const c = cfg as S2ftConfig;
    const inst = new S2ftAdapter(name, c);
    const sel = s2ftSelection(c, targets, ctx.descriptor);
    for (const t of targets) {
      const base = lin(t);
      const s = sel.get(t.path)!;
      inst.deltas.set(t.path, new S2Delta(name, parameter(zeros(blockShape(s, base)), `${t.path}.s2`), s, base));
      inst.checksums.set(t.path, tensorChecksum(base.weight));
    }
    return inst;
  },
  countParameters: (cfg, targets, d) => count(cfg as S2ftConfig, targets, d),
  presets: [{
    name: 's2ft',
    description: 'S²FT: 3% of each layer\'s FFN channels as down_proj input columns (--channel-ratio, --channels), optionally --heads query heads per layer',
    config: (o) => ({
      peft_type: 'S2FT',
      ...(typeof o.channels === 'number' ? { ffn_channels: o.channels } : { ffn_ratio: num(o, 'channel-ratio', 0.03) }),
      attn_heads: num(o, 'heads', 0),
    }),
  }],
  options: [CHANNEL_RATIO, CHANNELS, HEADS],
  mergeable: true,
  summary: (cfg) => {
    const c = cfg as S2ftConfig;
    return { ffn_ratio: c.ffn_ratio, ffn_channels: c.ffn_channels, ffn_modules: c.ffn_modules, attn_heads: c.attn_heads, seed: c.seed };
  },
};

registerMethod(S2FT);
