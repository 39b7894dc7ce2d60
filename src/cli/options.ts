/** One parser for every numeric command-line option: the message names the option and its range. */
import { AdaptkitError } from '../tensor/index.js';
import { type Range, describeRange, inRange } from '../models/sampling-rules.js';

export function numberOption(name: string, v: string | number, r: Range): number {
  const n = typeof v === 'number' ? v : String(v).trim() === '' ? NaN : Number(v);
  if (!inRange(n, r)) throw new AdaptkitError(`--${name} must be ${describeRange(r)}, got "${v}"`);
  return n;
}

export function intOption(name: string, v: string | number, min: number, max = Number.MAX_SAFE_INTEGER): number {
  return numberOption(name, v, { min, max, integer: true });
}

/** An option that may be absent. */
export function optionalNumber(name: string, v: string | number | undefined, r: Range): number | undefined {
  return v === undefined ? undefined : numberOption(name, v, r);
}
