import { AdaptkitError } from '../tensor/index.js';
import type { AdapterMethod } from './types.js';

const methods = new Map<string, AdapterMethod>();

/** Make a method available by its peft_type. Each method file calls this once. */
export function registerMethod(m: AdapterMethod): void {
  methods.set(m.peftType, m);
}

export function getMethod(peftType: unknown): AdapterMethod {
  const m = typeof peftType === 'string' ? methods.get(peftType) : undefined;
  if (!m) {
    throw new AdaptkitError(`unknown peft_type ${JSON.stringify(peftType)} (known: ${[...methods.keys()].sort().join(', ')})`);
  }
  return m;
}

export function methodNames(): string[] {
  return [...methods.keys()].sort();
}
