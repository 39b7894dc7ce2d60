/** Parsing helpers shared by method configs (PEFT field names, PEFT defaults). */
import { AdaptkitError } from '../tensor/index.js';
import type { BaseAdapterConfig, RawAdapterConfig } from './types.js';
import { compilePattern, fullMatch } from './patterns.js';

export class AdapterConfigError extends AdaptkitError {}

/** A value for an error message: short, whatever the value (configs are untrusted input). */
export function showValue(v: unknown): string {
  if (Array.isArray(v)) return v.length <= 4 && v.every((x) => typeof x !== 'object' || x === null) ? JSON.stringify(v) : `a list of ${v.length}`;
  if (v !== null && typeof v === 'object') return `an object with ${Object.keys(v).length} keys`;
  if (typeof v === 'string') return JSON.stringify(v.length > 60 ? `${v.slice(0, 60)}...` : v);
  return String(v);
}

export function fail(source: string, key: string, msg: string): never {
  throw new AdapterConfigError(`${source}: "${key}" ${msg}`);
}

export function optNumber(raw: RawAdapterConfig, key: string, fallback: number, source: string, min = -Infinity): number {
  const v = raw[key];
  if (v === undefined || v === null) return fallback;
  if (typeof v !== 'number' || !Number.isFinite(v) || v < min) fail(source, key, `must be a number >= ${min}, got ${showValue(v)}`);
  return v;
}

export function optInt(raw: RawAdapterConfig, key: string, fallback: number, source: string, min = 0): number {
  const v = optNumber(raw, key, fallback, source, min);
  if (!Number.isInteger(v)) fail(source, key, `must be an integer, got ${v}`);
  return v;
}

export function optBool(raw: RawAdapterConfig, key: string, fallback: boolean, source: string): boolean {
  const v = raw[key];
  if (v === undefined || v === null) return fallback;
  if (typeof v !== 'boolean') fail(source, key, `must be true or false, got ${showValue(v)}`);
  return v;
}

export function optString<T extends string>(raw: RawAdapterConfig, key: string, fallback: T, allowed: readonly T[] | null, source: string): T {
  const v = raw[key];
  if (v === undefined || v === null) return fallback;
  if (typeof v !== 'string' || (allowed && !allowed.includes(v as T))) {
    fail(source, key, allowed ? `must be one of ${allowed.map((a) => JSON.stringify(a)).join(', ')}, got ${showValue(v)}` : `must be a string, got ${showValue(v)}`);
  }
  return v as T;
}

export function numberMap(raw: RawAdapterConfig, key: string, source: string, min = -Infinity): Record<string, number> {
  const v = raw[key];
  if (v === undefined || v === null) return {};
  if (typeof v !== 'object' || Array.isArray(v) || Object.values(v).some((x) => typeof x !== 'number' || !Number.isFinite(x) || x < min)) {
    fail(source, key, `must map module-name patterns to numbers${min > -Infinity ? ` >= ${min}` : ''}`);
  }
  for (const pat of Object.keys(v)) {
    try {
      compilePattern(`(.*\\.)?(${pat})`, key);
    } catch (e) {
      fail(source, key, (e as Error).message.replace(/^"[^"]*": /, ''));
    }
  }
  return v as Record<string, number>;
}

function stringsOrString(raw: RawAdapterConfig, key: string, source: string): string[] | string | null {
  const v = raw[key];
  if (v === undefined || v === null) return null;
  if (typeof v === 'string') {
    try {
      compilePattern(v, key);
    } catch (e) {
      fail(source, key, (e as Error).message.replace(/^"[^"]*": /, ''));
    }
    return v;
  }
  if (Array.isArray(v) && v.every((x) => typeof x === 'string')) return v as string[];
  fail(source, key, `must be a string or a list of strings, got ${showValue(v)}`);
}

/** The fields every PEFT config shares. */
export function parseBase(raw: RawAdapterConfig, peftType: string, source: string): BaseAdapterConfig {
  if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) throw new AdapterConfigError(`${source}: must be a JSON object, got ${raw === null ? 'null' : Array.isArray(raw) ? 'a list' : typeof raw}`);
  if (raw.peft_type !== undefined && raw.peft_type !== peftType) fail(source, 'peft_type', `is ${showValue(raw.peft_type)}, expected "${peftType}"`);
  const ltt = raw.layers_to_transform;
  if (ltt !== undefined && ltt !== null && !(Number.isInteger(ltt) || (Array.isArray(ltt) && ltt.every((x) => Number.isInteger(x))))) {
    fail(source, 'layers_to_transform', 'must be an integer or a list of integers');
  }
  const mts = raw.modules_to_save;
  if (mts !== undefined && mts !== null && !(Array.isArray(mts) && mts.every((x) => typeof x === 'string'))) {
    fail(source, 'modules_to_save', 'must be a list of module names');
  }
  return {
    peft_type: peftType,
    task_type: typeof raw.task_type === 'string' ? raw.task_type : null,
    base_model_name_or_path: typeof raw.base_model_name_or_path === 'string' ? raw.base_model_name_or_path : null,
    revision: typeof raw.revision === 'string' ? raw.revision : null,
    inference_mode: optBool(raw, 'inference_mode', false, source),
    target_modules: stringsOrString(raw, 'target_modules', source),
    exclude_modules: stringsOrString(raw, 'exclude_modules', source),
    layers_to_transform: (ltt as number[] | number | null | undefined) ?? null,
    layers_pattern: stringsOrString(raw, 'layers_pattern', source),
    modules_to_save: (mts as string[] | null | undefined) ?? null,
    raw,
  };
}

/** The shared fields as PEFT writes them. */
export function baseJson(c: BaseAdapterConfig): RawAdapterConfig {
  return {
    base_model_name_or_path: c.base_model_name_or_path,
    exclude_modules: c.exclude_modules,
    inference_mode: c.inference_mode,
    layers_pattern: c.layers_pattern,
    layers_to_transform: c.layers_to_transform,
    modules_to_save: c.modules_to_save,
    peft_type: c.peft_type,
    revision: c.revision,
    target_modules: c.target_modules,
    task_type: c.task_type,
  };
}

/** The entry of a pattern map (rank_pattern / alpha_pattern) that matches a module path. */
export function patternValue(map: Record<string, number>, path: string): number | undefined {
  for (const [pat, v] of Object.entries(map)) {
    if (path === pat || path.endsWith(`.${pat}`)) return v;
    if (fullMatch(`(.*\\.)?(${pat})`, path, 'rank_pattern / alpha_pattern')) return v;
  }
  return undefined;
}
