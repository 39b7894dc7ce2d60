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
    if (pk && pk !== nk) pk.dispose();
    if (pv && pv !== nv) pv.dispose();
    this.k[layer] = nk;
    this.v[layer] = nv;
    return { k: nk, v: nv };
  }

  dispose(): void {
    dispose([this.k, this.v]);
    this.k.fill(null);
    this.v.fill(null);
    this.length = 0;
  }
}
