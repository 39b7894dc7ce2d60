/**
 * Mixed-adapter batches: one forward where every row uses its own LoRA adapter (or none). The base
 * GEMMs are shared by the whole batch; each row's low-rank update is applied by gathering that
 * row's A and B (zero-padded to the largest rank) and running two batched products — the
 * S-LoRA/Punica scheme.
 */
import {
  AdaptkitError, type Tensor, add, concat, contiguous, indexSelect, matmul, mul, noGrad, reshape, tensor, transpose, zeros,
} from '../tensor/index.js';
import { Module } from '../nn/index.js';
import type { AdapterInstance, LayerDelta } from './types.js';
import { LoraDelta } from './methods/lora.js';

/** Which stacked adapter each row uses; shared by all mixed layers of one forward. */
export class RowRouting {
  rows: Tensor | null = null;
}

export class MixedLoraDelta extends Module implements LayerDelta {
  readonly adapterName = '*mixed*';

  constructor(
    /** [N + 1, rmax, in], slot 0 all zeros (rows without an adapter). */
    readonly stackA: Tensor,
    /** [N + 1, out, rmax] */
    readonly stackB: Tensor,
    /** [N + 1] */
    readonly scales: Tensor,
    readonly routing: RowRouting,
  ) {
    super();
  }

  apply(x: Tensor, y: Tensor): Tensor {
    const rows = this.routing.rows;
    if (!rows) throw new AdaptkitError('mixed-adapter layer used without row routing');
    const B = x.shape[0]!;
    if (rows.shape[0] !== B) throw new AdaptkitError(`row routing has ${rows.shape[0]} rows, the batch has ${B}`);
    const x3 = x.ndim === 3 ? x : reshape(x, [B, 1, -1]);
    const a = indexSelect(this.stackA, 0, rows);
    const b = indexSelect(this.stackB, 0, rows);
    const s = reshape(indexSelect(this.scales, 0, rows), [B, 1, 1]);
    const z = mul(matmul(x3, transpose(a)), s);
    const d = matmul(z, transpose(b));
    return add(y, x.ndim === 3 ? d : reshape(d, y.shape));
  }
}

/**
 * Build the mixed deltas for the adapters used in one batch: for every target path of any of
 * them, stack their (A, B, scale) behind a zero slot. Returns the deltas by path.
 */
export function buildMixedDeltas(adapters: readonly AdapterInstance[], routing: RowRouting): Map<string, MixedLoraDelta> {
  const paths = new Set<string>();
  for (const a of adapters) {
    if (a.method.peftType !== 'LORA') throw new AdaptkitError(`mixed batches support LoRA adapters; "${a.name}" is ${a.method.peftType}`);
    for (const [p, d] of a.deltas) {
      const ld = d as unknown as LoraDelta;
      if (ld.lora_magnitude_vector || ld.bias || ld.dropoutP > 0 || a.residualBase?.size) {
        throw new AdaptkitError(`mixed batches support plain LoRA (no DoRA, bias, dropout or PiSSA/CorDA residuals); "${a.name}" at ${p} is not`);
      }
      paths.add(p);
    }
  }
  const out = new Map<string, MixedLoraDelta>();
  noGrad(() => {
    for (const p of paths) {
      const ds = adapters.map((a) => a.deltas.get(p) as unknown as LoraDelta | undefined);
      const any = ds.find((d) => d)!;
      const inF = any.lora_A.shape[1]!;
      const outF = any.lora_B.shape[0]!;
      const rmax = Math.max(...ds.map((d) => (d ? d.lora_A.shape[0]! : 0)));
      const As: Tensor[] = [zeros([1, rmax, inF])];
      const Bs: Tensor[] = [zeros([1, outF, rmax])];
      const sc: number[] = [0];
      for (const d of ds) {
        if (!d) {
          As.push(zeros([1, rmax, inF]));
          Bs.push(zeros([1, outF, rmax]));
          sc.push(0);
          continue;
        }
        const r = d.lora_A.shape[0]!;
        const pa = r === rmax ? d.lora_A : concat([d.lora_A, zeros([rmax - r, inF])], 0);
        const pb = r === rmax ? d.lora_B : concat([d.lora_B, zeros([outF, rmax - r])], 1);
        As.push(reshape(contiguous(pa), [1, rmax, inF]));
        Bs.push(reshape(contiguous(pb), [1, outF, rmax]));
        sc.push(d.scale);
      }
      out.set(p, new MixedLoraDelta(concat(As, 0).keep(), concat(Bs, 0).keep(), tensor(sc).keep(), routing));
    }
  });
  return out;
}

