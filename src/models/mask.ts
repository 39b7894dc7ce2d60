import { AdaptkitError, type Tensor, concat, ones, shapeStr } from '../tensor/index.js';

/**
 * The key mask attention needs ([B, start + T]) from a user attention mask over the real tokens,
 * when the embedding put `extra` virtual tokens (always visible) in front of them.
 */
export function keyMaskFor(mask: Tensor | null | undefined, batch: number, start: number, tIds: number, extra: number): Tensor | null {
  if (!mask) return null;
  if (mask.dtype !== 'f32') throw new AdaptkitError('attentionMask must be f32 (1 = token, 0 = padding)');
  const ok = mask.ndim === 2 && mask.shape[0] === batch && (mask.shape[1] === tIds && start === 0 || mask.shape[1] === start + tIds);
  if (!ok) {
    throw new AdaptkitError(`attentionMask ${shapeStr(mask.shape)} must be [${batch}, ${tIds}]${start > 0 ? ` covering the ${start} cached positions too ([${batch}, ${start + tIds}])` : ''}`);
  }
  if (extra === 0) return mask;
  const past = mask.shape[1]! - tIds;
  const parts = [ones([batch, extra])];
  const tail = mask.narrow(1, past, tIds);
  return past > 0 ? concat([mask.narrow(1, 0, past), ...parts, tail], 1) : concat([...parts, tail], 1);
}
