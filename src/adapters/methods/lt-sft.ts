/**
 * LT-SFT (Lottery-Ticket Sparse Fine-Tuning, "Composable Sparse Fine-Tuning for Cross-Lingual
 * Transfer"): fine-tune the targeted weights fully, keep the K entries that moved most, rewind to
 * θ0 and fine-tune only those K entries. The artefact is a sparse difference (sparse-diff.ts) with
 * exactly K entries; differences compose by addition.
 *
 * One registered method, two phases, chosen by the config:
 *   phase "full"    every entry of every target trains (a zero-initialized difference the size of
 *                   the weight); saved as a sparse difference holding every entry.
 *   phase "sparse"  reads the phase-1 difference named by `mask_from`, keeps the K entries of
 *                   largest |θ − θ0| over all its weights together (one global threshold; ties go
 *                   to the earlier weight path and lower index), and trains a zero-initialized
 *                   value per kept entry: the rewind to θ0 is the fresh adapter, and no other entry
 *                   can move because none other exists (K trainable values, so no optimizer state
 *                   for the rest, and weight decay pulls toward θ0, not toward 0).
 * `trainLtSft` runs both phases with a training function (runTraining), each with a fresh
 * optimizer and schedule, as the authors do.
 *
 * Config (peft_type "LT_SFT"): phase ("full" | "sparse", default "full"); num_params (K, integer
 * >= 1) or density (K as a fraction of the phase-1 entries, default 0.01; the authors'
 * ft_params_num / ft_params_proportion); mask_from (folder of the phase-1 difference; required in
 * the sparse phase); l1_reg (λ >= 0, default 0: adds λ·Σ|θ − θ0| / N to the loss, N the base
 * model's parameter count, as the authors divide by all parameters). target_modules default to
 * every attention and MLP projection (the authors mask every body weight; norms and embeddings
 * stay frozen here); in the sparse phase they are the phase-1 difference's weights.
 * Not implemented: n_ft_iterations > 1 (several rounds of growing masks).
 */
import { join } from 'node:path';
import { AdaptkitError, type Tensor, abs, add, fromBuffer, mul, parameter, sum, zeros } from '../../tensor/index.js';
import { Linear } from '../../nn/index.js';
import { AdapterConfigError, fail, optInt, optNumber, optString, parseBase } from '../config.js';
import { registerMethod } from '../registry.js';
import { roleTargets } from '../targets.js';
import { TARGETS, num, targetsOption } from '../options.js';
import { peftKey } from '../files.js';
import type { AdapterInstance, AdapterMethod, BaseAdapterConfig, MethodOption, MethodPreset, RawAdapterConfig, TargetInfo } from '../types.js';
import {
  INDICES, type SparseDiffFile, SparseDiffDelta, type SparseTensorInfo, VALUES, checkBase, checkIndices, checkValues, readSparseDiff,
  sparseConfigJson, tensorChecksum, weightPath,
} from './sparse-diff.js';

export interface LtSftConfig extends BaseAdapterConfig {
  phase: 'full' | 'sparse';
  num_params: number | null;
  density: number;
  mask_from: string | null;
  l1_reg: number;
  /** Sparse phase: the kept entries by weight path, and the phase-1 difference they came from. */
  mask: Map<string, Int32Array> | null;
  maskFile: SparseDiffFile | null;
}

const ROLES = ['attn.q', 'attn.k', 'attn.v', 'attn.o', 'mlp.gate', 'mlp.up', 'mlp.down'] as const;

/** The K entries of largest magnitude over all weights of a difference, per weight path (ascending). */
export function topK(f: SparseDiffFile, k: number): Map<string, Int32Array> {
  const keys = [...f.tensors.keys()].sort();
  const total = keys.reduce((n, key) => n + f.tensors.get(key)!.values.length, 0);
  if (k > total) throw new AdapterConfigError(`LT_SFT: K is ${k}, but the phase-1 difference holds only ${total} entries`);
  const mag = new Float32Array(total);
  const owner = new Int32Array(total);
  let at = 0;
  keys.forEach((key, ti) => {
    const v = f.tensors.get(key)!.values;
    for (let i = 0; i < v.length; i++, at++) {
      mag[at] = Math.abs(v[i]!);
      owner[at] = ti;
    }
  });
  const order = Uint32Array.from({ length: total }, (_, i) => i);
  // stable by position for equal magnitudes: earlier weight path, then lower index
  order.sort((a, b) => mag[b]! - mag[a]! || a - b);
  const picked = keys.map(() => [] as number[]);
  const starts: number[] = [];
  let s = 0;
  for (const key of keys) {
    starts.push(s);
    s += f.tensors.get(key)!.values.length;
  }
  for (let i = 0; i < k; i++) {
    const g = order[i]!;
    const ti = owner[g]!;
    picked[ti]!.push(f.tensors.get(keys[ti]!)!.indices[g - starts[ti]!]!);
  }
  const out = new Map<string, Int32Array>();
  keys.forEach((key, ti) => {
    if (picked[ti]!.length) out.set(key, Int32Array.from(picked[ti]!).sort());
  });
  return out;
}

export function parseLtSft(raw: RawAdapterConfig, source: string): LtSftConfig {
  const base = parseBase(raw, 'LT_SFT', source);
  const phase = optString(raw, 'phase', 'full', ['full', 'sparse'] as const, source);
  const numParams = raw.num_params === undefined || raw.num_params === null ? null : optInt(raw, 'num_params', 1, source, 1);
  const density = optNumber(raw, 'density', 0.01, source, 0);
  if (density > 1 || (density === 0 && numParams === null)) fail(source, 'density', `must be in (0, 1], got ${density}`);
  const maskFrom = raw.mask_from === undefined || raw.mask_from === null ? null : optString(raw, 'mask_from', '', null, source);
  const c: LtSftConfig = {
    ...base, phase, num_params: numParams, density, mask_from: maskFrom, l1_reg: optNumber(raw, 'l1_reg', 0, source, 0), mask: null, maskFile: null,
  };
  if (phase === 'sparse') {
    if (!maskFrom) fail(source, 'mask_from', 'must name the folder of the phase-1 difference in the sparse phase');
    const f = readSparseDiff(maskFrom);
    const total = [...f.tensors.values()].reduce((n, t) => n + t.values.length, 0);
    const k = numParams ?? Math.max(1, Math.round(density * total));
    c.mask = topK(f, k);
    c.maskFile = f;
    c.target_modules = [...c.mask.keys()].map((k2) => k2.slice(0, -'.weight'.length));
  }
  return c;
}

class LtSftAdapter implements AdapterInstance {
  readonly method = LT_SFT;
  readonly deltas = new Map<string, SparseDiffDelta>();
  readonly checksums = new Map<string, string>();
  objective?: AdapterInstance['objective'];

  constructor(readonly name: string, readonly config: LtSftConfig, modelSize: number) {
    if (config.l1_reg > 0) {
      const w = config.l1_reg / modelSize;
      this.objective = (step) => {
        let l1: Tensor | null = null;
        for (const d of this.deltas.values()) l1 = l1 ? add(l1, sum(abs(d.sft_values))) : sum(abs(d.sft_values));
        return add(step.loss(step.logits()), mul(l1!, w));
      };
    }
  }

  parameters(): Tensor[] {
    return [...this.deltas.values()].map((d) => d.sft_values);
  }

  stateDict(): Map<string, Tensor> {
    const out = new Map<string, Tensor>();
    for (const [path, d] of [...this.deltas].sort(([a], [b]) => (a < b ? -1 : 1))) {
      const idx = d.indices;
      out.set(peftKey(path, `weight.${INDICES}`), fromBuffer(idx.slice(), [idx.length]));
      out.set(peftKey(path, `weight.${VALUES}`), d.sft_values);
    }
    return out;
  }

  /** A checkpoint of this adapter: the same support, any values. */
  loadStateDict(tensors: Map<string, Tensor>, source: string): void {
    const fills: [SparseDiffDelta, Float32Array][] = [];
    for (const [path, d] of this.deltas) {
      const ik = peftKey(path, `weight.${INDICES}`);
      const vk = peftKey(path, `weight.${VALUES}`);
      const want = d.indices;
      const idx = checkIndices(tensors.get(ik), ik, d.base.weight.size, want.length, source);
      if (idx.some((v, i) => v !== want[i])) throw new AdaptkitError(`${source}: "${ik}" holds other entries than this LT-SFT mask`);
      fills.push([d, checkValues(tensors.get(vk), vk, idx.length, source)]);
    }
    if (tensors.size !== 2 * this.deltas.size) throw new AdaptkitError(`${source}: holds tensors this LT-SFT adapter does not have`);
    for (const [d, v] of fills) (d.sft_values.storage.data as Float32Array).set(v, d.sft_values.offset);
  }

  configJson(): RawAdapterConfig {
    const tensors: Record<string, SparseTensorInfo> = {};
    for (const [path, d] of this.deltas) tensors[weightPath(path)] = { shape: [...d.base.weight.shape], nnz: d.sft_values.size, base_sha256: this.checksums.get(path)! };
    return sparseConfigJson(this.config, tensors, 'LT_SFT');
  }
}

function weightSize(t: TargetInfo): number {
  if (!(t.module instanceof Linear)) throw new AdaptkitError(`LT_SFT: "${t.path}" is not a linear layer`);
  return t.module.weight.size;
}

export const NUM_PARAMS: MethodOption = { name: 'sparse-params', type: 'int', min: 1, description: 'LT-SFT: entries K the sparse difference keeps (default: --sparse-density of the targeted weights)' };
export const DENSITY: MethodOption = { name: 'sparse-density', type: 'number', min: 0, max: 1, description: 'LT-SFT: K as a fraction of the targeted weights\' entries (default 0.01)' };
export const L1: MethodOption = { name: 'l1-reg', type: 'number', min: 0, description: 'LT-SFT: L1 toward the base weights, λ·Σ|θ−θ0| / parameter count (default 0)' };

/** What `trainLtSft` needs of a run's options and result (runTraining's RunOptions / RunResult). */
export interface LtRunOptions {
  method: string;
  outDir: string;
  adapterConfig?: Record<string, unknown>;
}

export interface LtSftSettings {
  /** K; default density·(entries of the targeted weights). */
  numParams?: number;
  density?: number;
  l1Reg?: number;
  targetModules?: string[] | string;
}

/**
 * Both LT-SFT phases, each a run of `run` (runTraining): a full fine-tune into <outDir>/full,
 * then the masked fine-tune from θ0 into <outDir>/sparse, whose adapter is the K-entry
 * difference. The options' own adapterConfig / method are replaced.
 */
export function trainLtSft<O extends LtRunOptions, R extends { adapterDir: string }>(
  options: O & { ltSft?: LtSftSettings }, run: (o: O) => R,
): { full: R; sparse: R; adapterDir: string } {
  const s = options.ltSft ?? {};
  const common = {
    ...(s.targetModules !== undefined ? { target_modules: s.targetModules } : {}),
    ...(s.l1Reg !== undefined ? { l1_reg: s.l1Reg } : {}),
  };
  const { ltSft: _drop, ...rest } = options;
  const base = rest as unknown as O;
  const full = run({ ...base, method: 'lt-sft', outDir: join(options.outDir, 'full'), adapterConfig: { peft_type: 'LT_SFT', phase: 'full', ...common } });
  const sparse = run({
    ...base, method: 'lt-sft', outDir: join(options.outDir, 'sparse'),
    adapterConfig: {
      peft_type: 'LT_SFT', phase: 'sparse', mask_from: full.adapterDir, ...common,
      ...(s.numParams !== undefined ? { num_params: s.numParams } : {}), ...(s.density !== undefined ? { density: s.density } : {}),
    },
  });
  return { full, sparse, adapterDir: sparse.adapterDir };
}

/** The `lt-sft` preset: its config is phase 1; `train` runs both phases (for a CLI that calls it). */
const PRESET: MethodPreset & { train<O extends LtRunOptions, R extends { adapterDir: string }>(o: O & { ltSft?: LtSftSettings }, run: (o: O) => R, opts: Record<string, unknown>): R } = {
  name: 'lt-sft',
  description: 'LT-SFT: full fine-tune of every attention/MLP projection, keep the top-K moved entries (--sparse-params or --sparse-density, default 1%), rewind, train only those',
  config: (o) => ({ peft_type: 'LT_SFT', phase: 'full', l1_reg: num(o, 'l1-reg', 0), ...targetsOption(o, undefined) }),
  train(o, run, opts) {
    const t = opts.targets;
    return trainLtSft({
      ...o,
      ltSft: {
        numParams: typeof opts['sparse-params'] === 'number' ? opts['sparse-params'] : undefined,
        density: typeof opts['sparse-density'] === 'number' ? opts['sparse-density'] : undefined,
        l1Reg: typeof opts['l1-reg'] === 'number' ? opts['l1-reg'] : undefined,
        targetModules: t === undefined ? undefined : (targetsOption({ targets: t as string[] }, undefined).target_modules),
      },
    }, run).sparse;
  },
};

export const LT_SFT: AdapterMethod = {
  peftType: 'LT_SFT',
  description: 'LT-SFT: lottery-ticket sparse fine-tuning (full fine-tune, top-K mask, rewind, masked fine-tune), saved as a sparse difference',
  kind: 'tuner',
  parseConfig: (raw, source) => parseLtSft(raw, source),
  defaultTargets: (d, cfg) => {
    const c = cfg as LtSftConfig;
    return c.phase === 'sparse' ? c.target_modules : roleTargets(d, ROLES);
  },
  create(name, cfg, targets, ctx) {
    const c = cfg as LtSftConfig;
    const inst = new LtSftAdapter(name, c, Math.max(1, ctx.model.numParameters()));
    for (const t of targets) {
      const key = weightPath(t.path);
      let base: Linear;
      let idx: Int32Array;
      if (c.phase === 'sparse') {
        const m = c.mask!.get(key);
        if (!m) continue;
        const info = c.maskFile!.config.sparse_tensors[key]!;
        base = checkBase(t, info, { source: join(c.mask_from!, 'adapter_config.json'), base_model_name_or_path: c.maskFile!.config.base_model_name_or_path });
        idx = m;
      } else {
        weightSize(t);
        base = t.module as Linear;
        idx = Int32Array.from({ length: base.weight.size }, (_, i) => i);
      }
      inst.deltas.set(t.path, new SparseDiffDelta(name, parameter(zeros([idx.length]), `${t.path}.weight.${VALUES}`), idx, base));
      inst.checksums.set(t.path, tensorChecksum(base.weight));
    }
    if (c.phase === 'sparse') {
      const missing = [...c.mask!.keys()].filter((k) => !inst.deltas.has(k.slice(0, -'.weight'.length)));
      if (missing.length) throw new AdapterConfigError(`${join(c.mask_from!, 'adapter_config.json')}: "sparse_tensors" names ${missing.slice(0, 4).join(', ')}, which the model lacks`);
    }
    return inst;
  },
  countParameters: (cfg, targets) => {
    const c = cfg as LtSftConfig;
    if (c.phase === 'sparse') return [...c.mask!.values()].reduce((n, m) => n + m.length, 0);
    return targets.reduce((n, t) => n + weightSize(t), 0);
  },
  presets: [PRESET],
  options: [NUM_PARAMS, DENSITY, L1, TARGETS],
  mergeable: true,
  summary: (cfg) => {
    const c = cfg as LtSftConfig;
    return { phase: c.phase, num_params: c.num_params, density: c.density, mask_from: c.mask_from, l1_reg: c.l1_reg };
  },
};

registerMethod(LT_SFT);
