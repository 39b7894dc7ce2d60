/**
 * Reading JSON files written by other tools, and describing their values in error messages. A
 * value from a broken file can be 20,000 levels deep (JSON.stringify then overflows the stack) or
 * megabytes long, so messages show a bounded preview instead of the value itself.
 */
import { readFileSync } from 'node:fs';
import { AdaptkitError } from '../tensor/index.js';

export type JsonObject = Record<string, unknown>;

/** A JSON object (not null, not an array). */
export function isObject(v: unknown): v is JsonObject {
  return v !== null && typeof v === 'object' && !Array.isArray(v);
}

/** The parsed contents of a JSON file; unreadable or malformed files are errors naming the file. */
export function readJsonFile(path: string): unknown {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    throw new AdaptkitError(`${path}: cannot read (${(e as Error).message})`);
  }
  try {
    // V8's JSON.parse is iterative: any nesting depth parses without overflowing the stack
    return JSON.parse(text) as unknown;
  } catch (e) {
    throw new AdaptkitError(`${path}: not valid JSON (${(e as Error).message})`);
  }
}

/** A JSON file whose top level must be an object. */
export function readJsonObject(path: string): JsonObject {
  const v = readJsonFile(path);
  if (!isObject(v)) throw new AdaptkitError(`${path}: must hold a JSON object, got ${preview(v)}`);
  return v;
}

/** A short, bounded description of any value, safe at any nesting depth and size. */
export function preview(v: unknown, max = 80): string {
  const out = previewAt(v, 2, max);
  // strings are already clipped, with their length said
  return typeof v !== 'string' && out.length > max ? `${out.slice(0, max)}…` : out;
}

function previewAt(v: unknown, depth: number, max: number): string {
  if (v === undefined) return 'nothing';
  if (v === null || typeof v === 'boolean') return String(v);
  if (typeof v === 'number') return Number.isFinite(v) ? String(v) : `${v}`;
  if (typeof v === 'bigint') return `${v}`;
  if (typeof v === 'string') return JSON.stringify(v.length > max ? `${v.slice(0, max)}…` : v) + (v.length > max ? ` (${v.length} characters)` : '');
  if (Array.isArray(v)) {
    if (v.length === 0) return '[]';
    if (depth === 0) return `[${v.length} item${v.length === 1 ? '' : 's'}]`;
    const items: string[] = [];
    let len = 0;
    for (const x of v) {
      const s = previewAt(x, depth - 1, max);
      items.push(s);
      len += s.length + 1;
      if (len > max || items.length >= 8) break;
    }
    const more = v.length - items.length;
    return `[${items.join(',')}${more > 0 ? `,… ${v.length} items` : ''}]`;
  }
  if (typeof v === 'object') {
    const keys = Object.keys(v);
    if (keys.length === 0) return '{}';
    if (depth === 0) return `{${keys.length} key${keys.length === 1 ? '' : 's'}}`;
    const items: string[] = [];
    let len = 0;
    for (const k of keys) {
      const s = `${JSON.stringify(k.length > 40 ? `${k.slice(0, 40)}…` : k)}:${previewAt((v as JsonObject)[k], depth - 1, max)}`;
      items.push(s);
      len += s.length + 1;
      if (len > max || items.length >= 8) break;
    }
    const more = keys.length - items.length;
    return `{${items.join(',')}${more > 0 ? `,… ${keys.length} keys` : ''}}`;
  }
  return typeof v;
}

/** A JSON path segment: `.key`, `["odd key"]` or `[3]`. */
export function jsonPath(base: string, key: string | number): string {
  if (typeof key === 'number') return `${base}[${key}]`;
  const k = key.length > 40 ? `${key.slice(0, 40)}…` : key;
  return /^[A-Za-z_]\w*$/.test(key) ? (base ? `${base}.${key}` : key) : `${base}[${JSON.stringify(k)}]`;
}
