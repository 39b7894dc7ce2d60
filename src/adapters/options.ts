/** CLI options that several methods' presets read, defined once so `--help` lists each once. */
import type { MethodOption, PresetOptions } from './types.js';

export const RANK: MethodOption = { name: 'r', type: 'int', min: 1, description: 'rank (LoRA, Hydra and other low-rank methods; default 8)' };
export const ALPHA: MethodOption = { name: 'alpha', type: 'number', description: 'scaling numerator alpha (default 2r)' };
export const DROPOUT: MethodOption = { name: 'dropout', type: 'number', min: 0, max: 0.99, description: 'dropout on the adapter input, active only in training (default 0)' };
export const TARGETS: MethodOption = { name: 'targets', type: 'list', description: 'target modules: comma-separated names, a regex, or all-linear' };
export const VIRTUAL_TOKENS: MethodOption = { name: 'virtual-tokens', type: 'int', min: 1, description: 'virtual tokens of prompt / prefix methods (default 20)' };
export const REDUCTION_FACTOR: MethodOption = { name: 'reduction-factor', type: 'number', min: 1, description: 'bottleneck width = hidden size / this (default 4)' };

/** `--targets` as a config value: a list, or one regex / all-linear. */
export function targetsOption(o: PresetOptions, fallback: string[] | string | undefined): { target_modules?: string[] | string } {
  const t = o.targets;
  if (t === undefined) return fallback === undefined ? {} : { target_modules: fallback };
  if (Array.isArray(t)) return { target_modules: t.length === 1 && (t[0] === 'all-linear' || /[\\*()|[\]^$?+]/.test(t[0]!)) ? t[0]! : t };
  return { target_modules: String(t) };
}

export function num(o: PresetOptions, name: string, fallback: number): number {
  const v = o[name];
  return typeof v === 'number' ? v : fallback;
}
