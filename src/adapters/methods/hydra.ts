/**
 * Hydra (Kim et al. 2023): a parallel low-rank branch on the layer input and a sequential one on
 * the layer output, y' = y + s_p·B_p·A_p·x + s_s·B_s·A_s·y. Both are linear, so the layer merges:
 * W' = W + s_p·B_p·A_p + s_s·B_s·A_s·W (and b' = b + s_s·B_s·A_s·b).
 * Keys: <path>.hydra_A.weight [r, in], hydra_B.weight [out, r], hydra_seq_A.weight [r_s, out],
 * hydra_seq_B.weight [out, r_s]. Not a PEFT method: peft_type "HYDRA".
 */
import { AdaptkitError, type Tensor, add, clone, indexSelect, linear, matmul, mul, noGrad, parameter, rand, reshape, transpose, zeros } from '../../tensor/index.js';
import { Linear, Module, isLinearLayer } from '../../nn/index.js';
import { baseJson, optInt, optNumber, parseBase } from '../config.js';
import { registerMethod } from '../registry.js';
import { loadInto } from '../state.js';
import { peftKey } from '../files.js';
import { ALPHA, RANK, TARGETS, num, targetsOption } from '../options.js';
import { type AdapterInstance, type AdapterMethod, type BaseAdapterConfig, type LayerDelta, type RawAdapterConfig, type RowBatchedForm, RowRouting } from '../types.js';

export interface HydraConfig extends BaseAdapterConfig {
  r: number;
  lora_alpha: number;
  seq_r: number;
  seq_alpha: number;
}

function parse(raw: RawAdapterConfig, source: string): HydraConfig {
  const base = parseBase(raw, 'HYDRA', source);
  const r = optInt(raw, 'r', 8, source, 1);
  const alpha = optNumber(raw, 'lora_alpha', r, source);
  return { ...base, r, lora_alpha: alpha, seq_r: optInt(raw, 'seq_r', r, source, 1), seq_alpha: optNumber(raw, 'seq_alpha', alpha, source) };
}

export class HydraDelta extends Module implements LayerDelta {
  constructor(
    readonly adapterName: string,
    public hydra_A: Tensor, public hydra_B: Tensor, readonly scale: number,
    public hydra_seq_A: Tensor, public hydra_seq_B: Tensor, readonly seqScale: number,
    readonly fanInFanOut: boolean,
  ) {
    super();
  }

  apply(x: Tensor, y: Tensor): Tensor {
    const par = mul(linear(linear(x, this.hydra_A), this.hydra_B), this.scale);
    const seq = mul(linear(linear(y, this.hydra_seq_A), this.hydra_seq_B), this.seqScale);
    return add(add(y, par), seq);
  }

  mergeWeight(weight: Tensor): Tensor {
    return noGrad(() => {
      const w = this.fanInFanOut ? transpose(weight) : weight;
      const seq = mul(matmul(this.hydra_seq_B, this.hydra_seq_A), this.seqScale);
      const merged = add(add(w, mul(matmul(this.hydra_B, this.hydra_A), this.scale)), matmul(seq, w));
      return clone(this.fanInFanOut ? transpose(merged) : merged);
    });
  }

  mergeBias(bias: Tensor | null): Tensor | null {
    if (!bias) return null;
    return noGrad(() => {
      const b2 = reshape(bias, [1, -1]);
      return clone(reshape(add(b2, mul(linear(linear(b2, this.hydra_seq_A), this.hydra_seq_B), this.seqScale)), [-1]));
    });
  }
}

class HydraAdapter implements AdapterInstance {
  readonly method = HYDRA;
  readonly deltas = new Map<string, HydraDelta>();
  constructor(readonly name: string, readonly config: HydraConfig) {}
  parameters(): Tensor[] {
    return [...this.deltas.values()].flatMap((d) => d.parameters());
  }
  stateDict(): Map<string, Tensor> {
    const out = new Map<string, Tensor>();
    for (const [p, h] of this.deltas) {
      out.set(peftKey(p, 'hydra_A.weight'), h.hydra_A);
      out.set(peftKey(p, 'hydra_B.weight'), h.hydra_B);
      out.set(peftKey(p, 'hydra_seq_A.weight'), h.hydra_seq_A);
      out.set(peftKey(p, 'hydra_seq_B.weight'), h.hydra_seq_B);
    }
    return out;
  }
  loadStateDict(t: Map<string, Tensor>, source: string): void {
    loadInto(this.stateDict(), t, source);
  }
  configJson(): RawAdapterConfig {
    const c = this.config;
    return { ...baseJson(c), lora_alpha: c.lora_alpha, r: c.r, seq_alpha: c.seq_alpha, seq_r: c.seq_r };
  }
}

/** Both branches stacked: A [slots, R, in], B [slots, out, R], seq_A [slots, Rs, out], seq_B [slots, out, Rs]. */
class RowHydraDelta extends Module implements LayerDelta {
  readonly adapterName = '*rows*';
  constructor(readonly stacks: Record<string, Tensor>, readonly routing: RowRouting) {
    super();
  }

  apply(x: Tensor, y: Tensor): Tensor {
    const rows = this.routing.rows;
    if (!rows) throw new AdaptkitError('a row-batched layer ran without row routing');
    const B = x.shape[0]!;
    const st = this.stacks;
    const g = (t: Tensor) => indexSelect(t, 0, rows);
    const x3 = x.ndim === 3 ? x : reshape(x, [B, 1, -1]);
    const y3 = y.ndim === 3 ? y : reshape(y, [B, 1, -1]);
    const lowRank = (inp: Tensor, a: Tensor, b: Tensor, s: Tensor) => matmul(mul(matmul(inp, transpose(g(a))), reshape(g(s), [B, 1, 1])), transpose(g(b)));
    const d = add(lowRank(x3, st.A!, st.B!, st.scale!), lowRank(y3, st.seqA!, st.seqB!, st.seqScale!));
    return add(y, y.ndim === 3 ? d : reshape(d, y.shape));
  }
}

function padRows(dst: Float32Array, src: Float32Array, rows: number, r: number, R: number): void {
  for (let o = 0; o < rows; o++) dst.set(src.subarray(o * r, (o + 1) * r), o * R);
}

const ROWS: RowBatchedForm = {
  key: () => 'hydra',
  sizes(inst) {
    const ds = [...(inst as HydraAdapter).deltas.values()];
    return { r: Math.max(0, ...ds.map((d) => d.hydra_A.shape[0]!)), seq_r: Math.max(0, ...ds.map((d) => d.hydra_seq_A.shape[0]!)) };
  },
  limits: (_key, maxRank) => ({ r: maxRank, seq_r: maxRank }),
  layout(layer, sizes) {
    const inF = layer.inFeatures;
    const outF = layer.outFeatures;
    return {
      A: { shape: [sizes.r!, inF], identity: 0 }, B: { shape: [outF, sizes.r!], identity: 0 }, scale: { shape: [1], identity: 0 },
      seqA: { shape: [sizes.seq_r!, outF], identity: 0 }, seqB: { shape: [outF, sizes.seq_r!], identity: 0 }, seqScale: { shape: [1], identity: 0 },
    };
  },
  write(inst, path, slot, sizes) {
    const d = (inst as HydraAdapter).deltas.get(path)!;
    const outF = d.hydra_B.shape[0]!;
    slot.A!.set(d.hydra_A.toArray() as Float32Array);
    padRows(slot.B!, d.hydra_B.toArray() as Float32Array, outF, d.hydra_A.shape[0]!, sizes.r!);
    slot.scale![0] = d.scale;
    slot.seqA!.set(d.hydra_seq_A.toArray() as Float32Array);
    padRows(slot.seqB!, d.hydra_seq_B.toArray() as Float32Array, outF, d.hydra_seq_A.shape[0]!, sizes.seq_r!);
    slot.seqScale![0] = d.seqScale;
  },
  delta: (_layer, stacks, routing) => new RowHydraDelta(stacks, routing),
};

export const HYDRA: AdapterMethod = {
  peftType: 'HYDRA',
  description: 'parallel and sequential low-rank branches on each linear layer (Kim et al. 2023)',
  kind: 'tuner',
  parseConfig: parse,
  presets: [{
    name: 'hydra',
    description: 'Hydra on every linear layer (r 8 for both branches, alpha 2r)',
    config: (o) => {
      const r = num(o, 'r', 8);
      return { peft_type: 'HYDRA', r, lora_alpha: num(o, 'alpha', 2 * r), ...targetsOption(o, 'all-linear') };
    },
  }],
  options: [RANK, ALPHA, TARGETS],
  floatKeys: ['lora_alpha'],
  mergeable: true,
  rowBatched: ROWS,
  summary: (cfg) => ({ r: (cfg as HydraConfig).r, seq_r: (cfg as HydraConfig).seq_r, lora_alpha: (cfg as HydraConfig).lora_alpha }),
  create(name, cfg, targets, ctx) {
    const c = cfg as HydraConfig;
    const inst = new HydraAdapter(name, c);
    for (const t of targets) {
      if (!isLinearLayer(t.module)) throw new AdaptkitError(`Hydra targets linear layers; "${t.path}" is a ${t.module.constructor.name}`);
      const inF = t.module.inFeatures;
      const outF = t.module.outFeatures;
      const ka = (r: number, n: number) => rand([r, n], { low: -1 / Math.sqrt(n), high: 1 / Math.sqrt(n), rng: ctx.rng });
      inst.deltas.set(t.path, new HydraDelta(
        name,
        parameter(ka(c.r, inF), `${t.path}.hydra_A`), parameter(zeros([outF, c.r]), `${t.path}.hydra_B`), c.lora_alpha / c.r,
        parameter(ka(c.seq_r, outF), `${t.path}.hydra_seq_A`), parameter(zeros([outF, c.seq_r]), `${t.path}.hydra_seq_B`), c.seq_alpha / c.seq_r,
        t.module.fanInFanOut,
      ));
    }
    return inst;
  },
  countParameters(cfg, targets) {
    const c = cfg as HydraConfig;
    return targets.reduce((n, t) => {
      const m = t.module as Linear;
      return n + c.r * (m.inFeatures + m.outFeatures) + c.seq_r * 2 * m.outFeatures;
    }, 0);
  },
};

registerMethod(HYDRA);
