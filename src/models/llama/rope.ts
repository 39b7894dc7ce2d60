/**
 * Rotary-embedding frequency tables with the rope_scaling types of HF transformers: default,
 * linear, dynamic (NTK), llama3 and yarn.
 */
import { AdaptkitError, type Tensor, fromBuffer } from '../../tensor/index.js';
import type { RawConfig } from '../config.js';

export interface RopeSpec {
  dim: number;
  theta: number;
  maxPositions: number;
  scaling: RawConfig | null;
}

export interface RopeTables {
  invFreq: Float64Array;
  /** Multiplies cos and sin (yarn's attention factor; 1 otherwise). */
  mscale: number;
  /** Positions are divided by this (linear scaling). */
  positionScale: number;
}

function baseInvFreq(dim: number, theta: number): Float64Array {
  const out = new Float64Array(dim / 2);
  for (let i = 0; i < dim / 2; i++) out[i] = 1 / theta ** ((2 * i) / dim);
  return out;
}

export function ropeTables(spec: RopeSpec, seqLen = 0): RopeTables {
  const s = spec.scaling;
  const type = (s?.rope_type ?? s?.type ?? 'default') as string;
  const factor = Number(s?.factor ?? 1);
  switch (type) {
    case 'default':
      return { invFreq: baseInvFreq(spec.dim, spec.theta), mscale: 1, positionScale: 1 };
    case 'linear':
      return { invFreq: baseInvFreq(spec.dim, spec.theta), mscale: 1, positionScale: factor };
    case 'dynamic': {
      const max = spec.maxPositions;
      let theta = spec.theta;
      if (seqLen > max) theta = spec.theta * ((factor * seqLen) / max - (factor - 1)) ** (spec.dim / (spec.dim - 2));
      return { invFreq: baseInvFreq(spec.dim, theta), mscale: 1, positionScale: 1 };
    }
    case 'llama3': {
      const inv = baseInvFreq(spec.dim, spec.theta);
      const low = Number(s?.low_freq_factor ?? 1);
      const high = Number(s?.high_freq_factor ?? 4);
      const orig = Number(s?.original_max_position_embeddings ?? 8192);
      const lowWave = orig / low;
      const highWave = orig / high;
      for (let i = 0; i < inv.length; i++) {
        const wave = (2 * Math.PI) / inv[i]!;
        if (wave > lowWave) inv[i] = inv[i]! / factor;
        else if (wave >= highWave) {
          const smooth = (orig / wave - low) / (high - low);
          inv[i] = (1 - smooth) * (inv[i]! / factor) + smooth * inv[i]!;
        }
      }
      return { invFreq: inv, mscale: 1, positionScale: 1 };
    }
    case 'yarn': {
      const orig = Number(s?.original_max_position_embeddings ?? spec.maxPositions);
      const betaFast = Number(s?.beta_fast ?? 32);
      const betaSlow = Number(s?.beta_slow ?? 1);
      const d = spec.dim;
      const corr = (rot: number) => (d * Math.log(orig / (rot * 2 * Math.PI))) / (2 * Math.log(spec.theta));
      const lo = Math.max(Math.floor(corr(betaFast)), 0);
      const hi = Math.min(Math.ceil(corr(betaSlow)), d - 1);
      const extra = baseInvFreq(d, spec.theta);
      const inv = new Float64Array(d / 2);
      for (let i = 0; i < d / 2; i++) {
        const ramp = Math.min(Math.max((i - lo) / (hi === lo ? hi - lo + 0.001 : hi - lo), 0), 1);
        const extrapolation = 1 - ramp;
        inv[i] = (extra[i]! / factor) * (1 - extrapolation) + extra[i]! * extrapolation;
      }
      const attn = s?.attention_factor !== undefined ? Number(s.attention_factor) : factor <= 1 ? 1 : 0.1 * Math.log(factor) + 1;
      return { invFreq: inv, mscale: attn, positionScale: 1 };
    }
    default:
      throw new AdaptkitError(`rope_scaling type "${type}" is not supported (default, linear, dynamic, llama3, yarn)`);
  }
}

/** cos/sin tables [T, dim/2] for positions start..start+T-1. */
export function ropeCosSin(t: RopeTables, start: number, count: number): { cos: Tensor; sin: Tensor } {
  const half = t.invFreq.length;
  const cos = new Float32Array(count * half);
  const sin = new Float32Array(count * half);
  for (let p = 0; p < count; p++) {
    const pos = (start + p) / t.positionScale;
    for (let i = 0; i < half; i++) {
      const a = pos * t.invFreq[i]!;
      cos[p * half + i] = Math.cos(a) * t.mscale;
      sin[p * half + i] = Math.sin(a) * t.mscale;
    }
  }
  return { cos: fromBuffer(cos, [count, half]), sin: fromBuffer(sin, [count, half]) };
}

/** Per-row tables [B, T, dim/2] for explicit positions [B, T]. */
export function ropeCosSinAt(t: RopeTables, positions: Int32Array, batch: number, count: number): { cos: Tensor; sin: Tensor } {
  const half = t.invFreq.length;
  const cos = new Float32Array(batch * count * half);
  const sin = new Float32Array(batch * count * half);
  for (let r = 0; r < batch * count; r++) {
    const pos = positions[r]! / t.positionScale;
    for (let i = 0; i < half; i++) {
      const a = pos * t.invFreq[i]!;
      cos[r * half + i] = Math.cos(a) * t.mscale;
      sin[r * half + i] = Math.sin(a) * t.mscale;
    }
  }
  return { cos: fromBuffer(cos, [batch, count, half]), sin: fromBuffer(sin, [batch, count, half]) };
}
