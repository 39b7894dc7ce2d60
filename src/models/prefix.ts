import { type Tensor, concat, ones } from '../tensor/index.js';
import type { KVPrefixHook, KVPrefixStep } from '../nn/index.js';

/**
 * Put a hook's prefix keys/values before an attention layer's keys/values (after any cache),
 * with the step's key mask grown to cover them. Prefix positions carry no position of their own,
 * so the real tokens keep theirs.
 */
export function withKVPrefix(hook: KVPrefixHook, layer: number, k: Tensor, v: Tensor, step: KVPrefixStep): { k: Tensor; v: Tensor; keyMask: Tensor | null } {
  const B = k.shape[0]!;
  const p = hook.prefix(layer, B, step);
  const P = p.k.shape[2]!;
  let mask = step.keyMask;
  if (mask || p.mask) mask = concat([p.mask ?? ones([B, P]), mask ?? ones([B, k.shape[2]!])], 1);
  return { k: concat([p.k, k], 2), v: concat([p.v, v], 2), keyMask: mask };
}
