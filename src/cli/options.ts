/** One parser for every numeric command-line option: the message names the option and its range. */
import { AdaptkitError } from '../tensor/index.js';
import { type Range, describeRange, inRange } from '../models/sampling-rules.js';

/**
 * A range whose ends may be open: `min`/`max` may be infinite (no bound on that side), and
 * `minExclusive`/`maxExclusive` leave the end itself out (a learning rate above 0, a momentum below 1).
 */
export interface OptionRange extends Range {
  minExclusive?: boolean;
  maxExclusive?: boolean;
}

/** An integer from `min` up, with no upper bound. */
export function atLeast(min: number): OptionRange {
  return { min, max: Infinity, integer: true };
}

export function describeOptionRange(r: OptionRange): string {
  const what = r.integer ? 'an integer' : 'a number';
  const lo = Number.isFinite(r.min);
  const hi = Number.isFinite(r.max);
  if (lo && hi) return r.minExclusive || r.maxExclusive ? `${what} in ${r.minExclusive ? '(' : '['}${r.min}, ${r.max}${r.maxExclusive ? ')' : ']'}` : describeRange(r);
  if (lo) return `${what} ${r.minExclusive ? '>' : '>='} ${r.min}`;
  if (hi) return `${what} ${r.maxExclusive ? '<' : '<='} ${r.max}`;
  return what;
}

function inOptionRange(n: number, r: OptionRange): boolean {
  return inRange(n, r) && !(r.minExclusive && n === r.min) && !(r.maxExclusive && n === r.max);
}

export function numberOption(name: string, v: string | number, r: OptionRange): number {
  const n = typeof v === 'number' ? v : String(v).trim() === '' ? NaN : Number(v);
  if (!inOptionRange(n, r)) throw new AdaptkitError(`--${name} must be ${describeOptionRange(r)}, got "${v}"`);
  return n;
}

export function intOption(name: string, v: string | number, min: number, max = Number.MAX_SAFE_INTEGER): number {
  return numberOption(name, v, { min, max, integer: true });
}

/** An option that may be absent. */
export function optionalNumber(name: string, v: string | number | undefined, r: OptionRange): number | undefined {
  return v === undefined ? undefined : numberOption(name, v, r);
}
