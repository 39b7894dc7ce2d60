/** Typed reads of Hugging Face config.json fields: unknown keys are ignored, missing required keys are errors. */
import { AdaptkitError } from '../tensor/index.js';

export type RawConfig = Record<string, unknown>;

export class ConfigReader {
  constructor(readonly raw: RawConfig, readonly source: string) {}

  private fail(key: string, msg: string): never {
    throw new AdaptkitError(`${this.source}: "${key}" ${msg}`);
  }

  int(key: string, fallback?: number): number {
    const v = this.raw[key];
    if (v === undefined || v === null) {
      if (fallback === undefined) this.fail(key, 'is required');
      return fallback;
    }
    if (typeof v !== 'number' || !Number.isInteger(v) || v < 0) this.fail(key, `must be a non-negative integer, got ${JSON.stringify(v)}`);
    return v;
  }

  num(key: string, fallback?: number): number {
    const v = this.raw[key];
    if (v === undefined || v === null) {
      if (fallback === undefined) this.fail(key, 'is required');
      return fallback;
    }
    if (typeof v !== 'number' || !Number.isFinite(v)) this.fail(key, `must be a number, got ${JSON.stringify(v)}`);
    return v;
  }

  bool(key: string, fallback: boolean): boolean {
    const v = this.raw[key];
    if (v === undefined || v === null) return fallback;
    if (typeof v !== 'boolean') this.fail(key, `must be true or false, got ${JSON.stringify(v)}`);
    return v;
  }

  str(key: string, fallback?: string): string {
    const v = this.raw[key];
    if (v === undefined || v === null) {
      if (fallback === undefined) this.fail(key, 'is required');
      return fallback;
    }
    if (typeof v !== 'string') this.fail(key, `must be a string, got ${JSON.stringify(v)}`);
    return v;
  }

  /** An int or a list of ints (e.g. eos_token_id), as a list. */
  ints(key: string): number[] {
    const v = this.raw[key];
    if (v === undefined || v === null) return [];
    if (typeof v === 'number') return [v];
    if (Array.isArray(v) && v.every((x) => Number.isInteger(x))) return v as number[];
    this.fail(key, `must be an integer or a list of integers, got ${JSON.stringify(v)}`);
  }

  object(key: string): RawConfig | null {
    const v = this.raw[key];
    if (v === undefined || v === null) return null;
    if (typeof v !== 'object' || Array.isArray(v)) this.fail(key, `must be an object, got ${JSON.stringify(v)}`);
    return v as RawConfig;
  }
}
