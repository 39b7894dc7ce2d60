import { type Tensor, concat, dispose } from '../tensor/index.js';

/** Keys and values of past positions, per layer ([B, Hkv, T, D] each). */
export class KVCache {
  private k: (Tensor | null)[];
  private v: (Tensor | null)[];
  length = 0;

  constructor(readonly layers: number) {
    this.k = new Array<Tensor | null>(layers).fill(null);
    this.v = new Array<Tensor | null>(layers).fill(null);
  }

  /** Append this step's k/v for a layer; returns the full k/v to attend over. */
  append(layer: number, k: Tensor, v: Tensor): { k: Tensor; v: Tensor } {
    const pk = this.k[layer];
    const pv = this.v[layer];
    const nk = pk ? concat([pk, k], 2) : k.keep();
    const nv = pv ? concat([pv, v], 2) : v.keep();
    nk.keep();
    nv.keep();
    // older entries still in an autodiff graph go to the enclosing tidy() scope instead
    for (const old of [pk, pv]) {
      if (!old || old === nk || old === nv) continue;
      if (old.requiresGrad) old.kept = false;
      else old.dispose();
    }
    this.k[layer] = nk;
    this.v[layer] = nv;
    return { k: nk, v: nv };
  }

  /**
   * Drop the cache but leave its tensors to the enclosing tidy() scope: a training step's backward
   * pass may still need them.
   */
  release(): void {
    for (const t of [...this.k, ...this.v]) if (t) t.kept = false;
    this.k.fill(null);
    this.v.fill(null);
    this.length = 0;
  }

  dispose(): void {
    dispose([this.k, this.v]);
    this.k.fill(null);
    this.v.fill(null);
    this.length = 0;
  }
}
