import { AdaptkitError, type Tensor, noGrad } from '../tensor/index.js';

/**
 * Copy saved tensors into an adapter's parameters, in place. Every parameter must be present with
 * its exact shape and every saved tensor must be used; otherwise the error lists what is wrong.
 */
export function loadInto(params: Map<string, Tensor>, tensors: Map<string, Tensor>, source: string): void {
  const missing = [...params.keys()].filter((k) => !tensors.has(k));
  const unexpected = [...tensors.keys()].filter((k) => !params.has(k));
  if (missing.length || unexpected.length) {
    const show = (l: string[]) => (l.length > 8 ? `${l.slice(0, 8).join(', ')} and ${l.length - 8} more` : l.join(', '));
    throw new AdaptkitError(
      `${source}: adapter weights do not match the model` +
      (missing.length ? `; missing: ${show(missing)}` : '') + (unexpected.length ? `; unexpected: ${show(unexpected)}` : ''),
    );
  }
  for (const [k, p] of params) {
    const t = tensors.get(k)!;
    if (t.shape.length !== p.shape.length || t.shape.some((d, i) => d !== p.shape[i])) {
      throw new AdaptkitError(`${source}: "${k}" has shape [${t.shape.join(', ')}], the model needs [${p.shape.join(', ')}]`);
    }
    noGrad(() => (p.storage.data as Float32Array).set(t.toArray() as Float32Array, p.offset));
  }
}
