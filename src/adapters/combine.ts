/**
 * Weighted combination of adapters into a new one (PEFT's add_weighted_adapter), for methods
 * with the combine capability; the arithmetic belongs to each method.
 */
import { AdaptkitError } from '../tensor/index.js';
import type { AdapterModel } from './adapter-model.js';
import type { AdapterInstance, CombineOptions } from './types.js';

export type { CombineOptions } from './types.js';

export function addWeightedAdapter(
  am: AdapterModel, names: readonly string[], weights: readonly number[], newName: string, o: CombineOptions,
): AdapterInstance {
  if (names.length === 0 || names.length !== weights.length) throw new AdaptkitError('addWeightedAdapter: give one weight per adapter');
  if (weights.some((w) => !Number.isFinite(w))) throw new AdaptkitError(`combination weights must be finite numbers, got ${weights.join(', ')}`);
  if (o.density !== undefined && !(o.density > 0 && o.density <= 1)) throw new AdaptkitError(`density must be in (0, 1], got ${o.density}`);
  const insts = names.map((n) => {
    const a = am.adapters.get(n);
    if (!a) throw new AdaptkitError(`no adapter named "${n}"`);
    return a;
  });
  const method = insts[0]!.method;
  const other = insts.find((a) => a.method !== method);
  if (other) throw new AdaptkitError(`adapters "${insts[0]!.name}" (${method.peftType}) and "${other.name}" (${other.method.peftType}) are of different methods and cannot be combined`);
  if (!method.combine) throw new AdaptkitError(`${method.peftType} adapters cannot be combined (the method has no combination rule)`);
  return method.combine(am, names, weights, newName, o);
}
