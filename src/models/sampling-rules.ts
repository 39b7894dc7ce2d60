/**
 * The accepted range of every sampling setting, in one place: the CLI (`generate`) and the HTTP
 * API check against the same rules. Keys are the OpenAI API's field names.
 */
export interface Range {
  min: number;
  max: number;
  integer?: boolean;
}

export const SAMPLING_RANGES = {
  temperature: { min: 0, max: 2 },
  top_p: { min: 0, max: 1 },
  top_k: { min: 1, max: 1 << 20, integer: true },
  repetition_penalty: { min: 0.01, max: 10 },
  presence_penalty: { min: -2, max: 2 },
  frequency_penalty: { min: -2, max: 2 },
  seed: { min: 0, max: 2 ** 31 - 1, integer: true },
} as const satisfies Record<string, Range>;

export function inRange(v: number, r: Range): boolean {
  return Number.isFinite(v) && v >= r.min && v <= r.max && (!r.integer || Number.isInteger(v));
}

export function describeRange(r: Range): string {
  return `${r.integer ? 'an integer' : 'a number'} in [${r.min}, ${r.max}]`;
}
