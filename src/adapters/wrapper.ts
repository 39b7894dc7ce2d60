/**
 * The module that replaces a targeted layer: the original layer plus the deltas of the adapters
 * that are active on it. Activating or deactivating adapters swaps this object (or its delta list)
 * rather than setting flags that forward would test.
 */
import type { Tensor } from '../tensor/index.js';
import { Module, type LinearLike } from '../nn/index.js';
import type { LayerDelta } from './types.js';

export class AdaptedLayer extends Module {
  constructor(public base_layer: LinearLike, public deltas: (LayerDelta & Module)[]) {
    super();
  }

  forward(x: Tensor): Tensor {
    let xin = x;
    for (const d of this.deltas) if (d.transformInput) xin = d.transformInput(xin);
    let y = this.base_layer.forward(xin);
    for (const d of this.deltas) y = d.apply(xin, y);
    return y;
  }
}
