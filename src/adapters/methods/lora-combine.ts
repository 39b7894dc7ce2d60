/**
 * Weighted combinations of LoRA adapters into a new one (PEFT's add_weighted_adapter family):
 * "linear" and the task-arithmetic variants "ties", "dare_linear", "dare_ties", "magnitude_prune"
 * work on A and B separately with weights sqrt(w·scaling) (all ranks equal); "cat" concatenates
 * A's and B's, which is exactly Σ w·s·BA; "svd" truncates the SVD of Σ w·s·BA to a chosen rank.
 * The new adapter has lora_alpha = r (scaling 1).
 */
import { AdaptkitError, Rng, type Tensor, svd } from '../../tensor/index.js';
import type { LoraDelta } from './lora.js';
import type { AdapterInstance, CombineOptions, CombineTarget } from '../types.js';

export const LORA_COMBINATIONS: readonly string[] = ['linear', 'cat', 'svd', 'ties', 'dare_linear', 'dare_ties', 'magnitude_prune'];

function magnitudeMask(x: Float64Array, density: number): Float64Array {
  const k = Math.floor(density * x.length);
  const out = new Float64Array(x.length);
  if (k <= 0) return out;
  const order = Array.from(x.keys()).sort((a, b) => Math.abs(x[b]!) - Math.abs(x[a]!));
  for (let i = 0; i < k; i++) out[order[i]!] = x[order[i]!]!;
  return out;
}

function randomPrune(x: Float64Array, density: number, rng: Rng): Float64Array {
  const out = new Float64Array(x.length);
  for (let i = 0; i < x.length; i++) if (rng.uniform() < density) out[i] = x[i]! / density;
  return out;
}

/** Sign consensus and disjoint mean of already weighted task tensors. */
function tiesMerge(ts: Float64Array[], method: 'total' | 'frequency'): Float64Array {
  const n = ts[0]!.length;
  const out = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    let agg = 0;
    for (const t of ts) agg += method === 'total' ? t[i]! : Math.sign(t[i]!);
    const sign = agg >= 0 ? 1 : -1;
    let s = 0;
    let cnt = 0;
    for (const t of ts) {
      if (Math.sign(t[i]!) === sign) {
        s += t[i]!;
        cnt++;
      }
    }
    out[i] = s / Math.max(cnt, 1);
  }
  return out;
}

export function taskArithmetic(ts: Float64Array[], weights: number[], o: CombineOptions, rng: Rng): Float64Array {
  const density = o.density ?? 1;
  const c = o.combination;
  const pruned = ts.map((t) =>
    c === 'ties' || c === 'magnitude_prune' ? magnitudeMask(t, density) : c === 'dare_linear' || c === 'dare_ties' ? randomPrune(t, density, rng) : t,
  );
  const weighted = pruned.map((t, j) => t.map((v) => v * weights[j]!));
  if (c === 'ties' || c === 'dare_ties') return tiesMerge(weighted, o.majoritySignMethod ?? 'total');
  const out = new Float64Array(ts[0]!.length);
  for (const t of weighted) for (let i = 0; i < out.length; i++) out[i]! += t[i]!;
  return out;
}

function f64(t: Tensor): Float64Array {
  return Float64Array.from(t.toArray());
}

export function combineLora(
  am: CombineTarget, names: readonly string[], weights: readonly number[], newName: string, o: CombineOptions,
): AdapterInstance {
  if (!LORA_COMBINATIONS.includes(o.combination)) throw new AdaptkitError(`unknown combination "${o.combination}" (${LORA_COMBINATIONS.join(', ')})`);
  const insts = names.map((n) => {
    const a = am.adapters.get(n)!;
    for (const d of a.deltas.values()) {
      const ld = d as unknown as LoraDelta;
      if (ld.lora_magnitude_vector || ld.bias) throw new AdaptkitError(`adapter "${n}" uses DoRA or a trained bias, which PEFT's combinations do not cover`);
    }
    return a;
  });
  const paths = [...new Set(insts.flatMap((a) => [...a.deltas.keys()]))].sort();
  const ranks = new Set(insts.flatMap((a) => [...a.deltas.values()].map((d) => (d as unknown as LoraDelta).lora_A.shape[0]!)));
  const c = o.combination;
  if (c !== 'cat' && c !== 'svd' && ranks.size > 1) throw new AdaptkitError(`combination "${c}" needs adapters of one rank (got ${[...ranks].join(', ')}); use "cat" or "svd"`);
  const maxRank = Math.max(...ranks);
  const rng = new Rng(o.seed ?? 0);
  // the new rank per path
  const rankFor = (p: string) =>
    c === 'cat' ? insts.reduce((s, a) => s + ((a.deltas.get(p) as unknown as LoraDelta | undefined)?.lora_A.shape[0] ?? 0), 0) :
    c === 'svd' ? (o.svdRank ?? maxRank) : maxRank;
  const rankPattern: Record<string, number> = {};
  const alphaPattern: Record<string, number> = {};
  const baseRank = rankFor(paths[0]!);
  for (const p of paths) {
    const r = rankFor(p);
    if (r !== baseRank) {
      rankPattern[p] = r;
      alphaPattern[p] = r;
    }
  }
  const inst = am.add(newName, {
    peft_type: 'LORA', r: baseRank, lora_alpha: baseRank, target_modules: paths, init_lora_weights: false,
    rank_pattern: rankPattern, alpha_pattern: alphaPattern,
  });
  for (const p of paths) {
    const target = inst.deltas.get(p) as unknown as LoraDelta;
    const [r, inF] = target.lora_A.shape as [number, number];
    const outF = target.lora_B.shape[0]!;
    const parts = insts.map((a, j) => ({ d: a.deltas.get(p) as unknown as LoraDelta | undefined, w: weights[j]! })).filter((x) => x.d);
    let A: Float64Array;
    let B: Float64Array;
    if (c === 'cat') {
      A = new Float64Array(r * inF);
      B = new Float64Array(outF * r);
      let at = 0;
      for (const { d, w } of parts) {
        const ri = d!.lora_A.shape[0]!;
        const a = f64(d!.lora_A);
        const b = f64(d!.lora_B);
        for (let i = 0; i < ri * inF; i++) A[at * inF + i] = a[i]! * w * d!.scale;
        for (let o2 = 0; o2 < outF; o2++) for (let i = 0; i < ri; i++) B[o2 * r + at + i] = b[o2 * ri + i]!;
        at += ri;
      }
    } else if (c === 'svd') {
      const delta = new Float64Array(outF * inF);
      for (const { d, w } of parts) {
        const ri = d!.lora_A.shape[0]!;
        const a = f64(d!.lora_A);
        const b = f64(d!.lora_B);
        for (let o2 = 0; o2 < outF; o2++) {
          for (let k = 0; k < ri; k++) {
            const bv = b[o2 * ri + k]! * w * d!.scale;
            for (let i = 0; i < inF; i++) delta[o2 * inF + i]! += bv * a[k * inF + i]!;
          }
        }
      }
      const s = svd(delta, outF, inF);
      if (r > s.k) throw new AdaptkitError(`svd rank ${r} exceeds min(out, in) = ${s.k} at ${p}`);
      A = new Float64Array(r * inF);
      B = new Float64Array(outF * r);
      for (let k = 0; k < r; k++) {
        for (let i = 0; i < inF; i++) A[k * inF + i] = s.v[i * s.k + k]!;
        for (let o2 = 0; o2 < outF; o2++) B[o2 * r + k] = s.u[o2 * s.k + k]! * s.s[k]!;
      }
    } else {
      const ws = parts.map(({ d, w }) => Math.sqrt(w * d!.scale));
      A = taskArithmetic(parts.map(({ d }) => f64(d!.lora_A)), ws, o, rng);
      B = taskArithmetic(parts.map(({ d }) => f64(d!.lora_B)), ws, o, rng);
    }
    (target.lora_A.storage.data as Float32Array).set(Float32Array.from(A), target.lora_A.offset);
    (target.lora_B.storage.data as Float32Array).set(Float32Array.from(B), target.lora_B.offset);
  }
  return inst;
}

