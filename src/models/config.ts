/** Typed reads of Hugging Face config.json fields: unknown keys are ignored, missing required keys are errors. */
import { existsSync } from 'node:fs';
import { AdaptkitError } from '../tensor/index.js';
import { isObject, preview, readJsonObject } from '../io/json.js';

export type RawConfig = Record<string, unknown>;

/**
 * A config.json file: it must exist, parse, hold an object, and give `model_type` (when it has
 * one) as a name such as "llama" or "gpt_neox": loaders look families up by it and print it.
 */
export function readConfigFile(path: string): RawConfig {
  if (!existsSync(path)) throw new AdaptkitError(`${path}: not found`);
  const raw = readJsonObject(path);
  const t = raw.model_type;
  if (t !== undefined && t !== null && !(typeof t === 'string' && /^[\w.-]{0,64}$/.test(t))) {
    throw new AdaptkitError(`${path}: "model_type" must be a model type name (up to 64 letters, digits, _ . -), got ${preview(t)}`);
  }
  return raw;
}

export class ConfigReader {
  readonly raw: RawConfig;

  /** @param prefix names a nested object's fields `outer.inner` in messages */
  constructor(raw: unknown, readonly source: string, readonly prefix = '') {
    if (!isObject(raw)) throw new AdaptkitError(`${source}: must hold a JSON object, got ${preview(raw)}`);
    this.raw = raw;
  }

  fail(key: string, msg: string): never {
    throw new AdaptkitError(`${this.source}: "${this.prefix}${key}" ${msg}`);
  }

  int(key: string, fallback?: number): number {
    const v = this.raw[key];
    if (v === undefined || v === null) {
      if (fallback === undefined) this.fail(key, 'is required');
      return fallback;
    }
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) this.fail(key, `must be a non-negative integer, got ${preview(v)}`);
    return v;
  }

  /** A size: an integer of at least 1. */
  positive(key: string, fallback?: number): number {
    const v = this.int(key, fallback);
    if (v < 1) this.fail(key, `must be at least 1, got ${v}`);
    return v;
  }

  num(key: string, fallback?: number): number {
    const v = this.raw[key];
    if (v === undefined || v === null) {
      if (fallback === undefined) this.fail(key, 'is required');
      return fallback;
    }
    if (typeof v !== 'number' || !Number.isFinite(v)) this.fail(key, `must be a number, got ${preview(v)}`);
    return v;
  }

  bool(key: string, fallback: boolean): boolean {
    const v = this.raw[key];
    if (v === undefined || v === null) return fallback;
    if (typeof v !== 'boolean') this.fail(key, `must be true or false, got ${preview(v)}`);
    return v;
  }

  str(key: string, fallback?: string): string {
    const v = this.raw[key];
    if (v === undefined || v === null) {
      if (fallback === undefined) this.fail(key, 'is required');
      return fallback;
    }
    if (typeof v !== 'string') this.fail(key, `must be a string, got ${preview(v)}`);
    return v;
  }

  /** A string from a fixed set. */
  oneOf(key: string, allowed: readonly string[], fallback: string): string {
    const v = this.str(key, fallback);
    if (!allowed.includes(v)) this.fail(key, `${preview(v)} is not supported (${allowed.join(', ')})`);
    return v;
  }

  /** An int or a list of ints (e.g. eos_token_id), as a list. */
  ints(key: string): number[] {
    const v = this.raw[key];
    if (v === undefined || v === null) return [];
    if (typeof v === 'number' && Number.isSafeInteger(v)) return [v];
    if (Array.isArray(v) && v.every((x) => Number.isSafeInteger(x))) return v as number[];
    this.fail(key, `must be an integer or a list of integers, got ${preview(v)}`);
  }

  object(key: string): RawConfig | null {
    const v = this.raw[key];
    if (v === undefined || v === null) return null;
    if (!isObject(v)) this.fail(key, `must be an object, got ${preview(v)}`);
    return v;
  }

  /** A nested object's fields, read with the same checks. */
  nested(key: string): ConfigReader | null {
    const o = this.object(key);
    return o === null ? null : new ConfigReader(o, this.source, `${this.prefix}${key}.`);
  }
}
