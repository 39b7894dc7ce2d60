/**
 * bitsandbytes state-dict tensors of a quantized Linear, named as its modules save them:
 *   4-bit: <m>.weight (uint8), <m>.weight.absmax, <m>.weight.quant_map, [<m>.weight.nested_absmax,
 *          <m>.weight.nested_quant_map], <m>.weight.quant_state.bitsandbytes__<nf4|fp4> (uint8:
 *          the UTF-8 of json.dumps of quant_type, blocksize, dtype, shape [, nested_blocksize,
 *          nested_dtype, nested_offset]);
 *   8-bit: <m>.weight (int8 CB), <m>.SCB (f32), <m>.weight_format (uint8 0 = row-major).
 */
import type { Bnb4bitTensor, Int8RowwiseTensor } from './types.js';
import { fail } from './numeric.js';
import { validate4bit } from './bnb.js';
import { validateInt8 } from './int8.js';

export interface StateTensor {
  dtype: 'U8' | 'I8' | 'F32';
  shape: number[];
  data: Uint8Array | Int8Array | Float32Array;
}

export type StateLookup = (key: string) => Uint8Array | Int8Array | Float32Array | undefined;

export interface QuantStateDict {
  quant_type: 'nf4' | 'fp4';
  blocksize: number;
  dtype: string;
  shape: number[];
  nested_blocksize?: number;
  nested_dtype?: string;
  nested_offset?: number;
}

const QUANT_STATE_KEYS = ['quant_type', 'blocksize', 'dtype', 'shape', 'nested_blocksize', 'nested_dtype', 'nested_offset'];

export function quantStateKey(quantType: 'nf4' | 'fp4'): string {
  return `quant_state.bitsandbytes__${quantType}`;
}

/** Significant digits (no leading or trailing zeros) and decimal exponent of a JS number string. */
function decimalDigits(s: string): [string, number] {
  const [m, e] = s.split('e') as [string, string | undefined];
  const [int, frac = ''] = m.split('.') as [string, string | undefined];
  const all = int + frac;
  const lead = all.length - all.replace(/^0+/, '').length;
  const digits = all.slice(lead).replace(/0+$/, '');
  return [digits, int.length - 1 - lead + Number(e ?? 0)];
}

/** Python's repr of a float (what json.dumps writes): shortest round-trip digits, exponent form below 1e-4 and from 1e16. */
export function pythonFloatRepr(x: number): string {
  if (Number.isNaN(x)) return 'NaN';
  if (!Number.isFinite(x)) return x > 0 ? 'Infinity' : '-Infinity';
  if (x === 0) return Object.is(x, -0) ? '-0.0' : '0.0';
  const sign = x < 0 ? '-' : '';
  // String() picks the same shortest digits as Python; only the layout differs
  const [digits, exp] = decimalDigits(String(Math.abs(x)));
  if (exp < -4 || exp >= 16) {
    const m = digits.length > 1 ? `${digits[0]}.${digits.slice(1)}` : digits;
    return `${sign}${m}e${exp < 0 ? '-' : '+'}${String(Math.abs(exp)).padStart(2, '0')}`;
  }
  if (exp < 0) return `${sign}0.${'0'.repeat(-exp - 1)}${digits}`;
  if (digits.length <= exp + 1) return `${sign}${digits}${'0'.repeat(exp + 1 - digits.length)}.0`;
  return `${sign}${digits.slice(0, exp + 1)}.${digits.slice(exp + 1)}`;
}

function pyJson(v: string | number | number[], float: boolean): string {
  if (typeof v === 'string') return JSON.stringify(v).replace(/[\u0080-\uffff]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);
  if (Array.isArray(v)) return `[${v.join(', ')}]`;
  return float ? pythonFloatRepr(v) : String(v);
}

/** The bytes of `weight.quant_state.bitsandbytes__*`, exactly as json.dumps writes them. */
export function packQuantState(q: Bnb4bitTensor): Uint8Array {
  const entries: [string, string | number | number[], boolean][] = [
    ['quant_type', q.format, false], ['blocksize', q.blocksize, false], ['dtype', q.dtype, false], ['shape', [...q.shape], false],
  ];
  if (q.nested) entries.push(['nested_blocksize', q.nested.blocksize, false], ['nested_dtype', q.nested.dtype, false], ['nested_offset', q.nested.offset, true]);
  const text = `{${entries.map(([k, v, float]) => `"${k}": ${pyJson(v, float)}`).join(', ')}}`;
  return new TextEncoder().encode(text);
}

/** Parse and check a packed quant_state; `where` names the tensor in messages. */
export function unpackQuantState(bytes: Uint8Array, where: string, nested: boolean): QuantStateDict {
  let raw: unknown;
  try {
    raw = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(bytes));
  } catch (e) {
    fail(where, 'quant_state', `is not UTF-8 JSON (${(e as Error).message})`);
  }
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) fail(where, 'quant_state', 'must be a JSON object');
  const d = raw as Record<string, unknown>;
  for (const k of Object.keys(d)) if (!QUANT_STATE_KEYS.includes(k)) fail(where, k, `unknown quant_state key (known: ${QUANT_STATE_KEYS.join(', ')})`);
  const need = (k: string): unknown => {
    if (!(k in d)) fail(where, k, 'missing quant_state key');
    return d[k];
  };
  const int = (k: string): number => {
    const v = need(k);
    if (typeof v !== 'number' || !Number.isInteger(v)) fail(where, k, `must be an integer, got ${JSON.stringify(v)}`);
    return v;
  };
  const str = (k: string): string => {
    const v = need(k);
    if (typeof v !== 'string') fail(where, k, `must be a string, got ${JSON.stringify(v)}`);
    return v;
  };
  const quantType = str('quant_type');
  if (quantType !== 'nf4' && quantType !== 'fp4') fail(where, 'quant_type', `must be "nf4" or "fp4", got ${JSON.stringify(quantType)}`);
  const shape = need('shape');
  if (!Array.isArray(shape) || !shape.every((s) => Number.isInteger(s) && s >= 0)) fail(where, 'shape', `must be a list of dimensions, got ${JSON.stringify(shape)}`);
  const out: QuantStateDict = { quant_type: quantType, blocksize: int('blocksize'), dtype: str('dtype'), shape: shape as number[] };
  if (nested) {
    const offset = need('nested_offset');
    if (typeof offset !== 'number') fail(where, 'nested_offset', `must be a number, got ${JSON.stringify(offset)}`);
    Object.assign(out, { nested_blocksize: int('nested_blocksize'), nested_dtype: str('nested_dtype'), nested_offset: offset });
  }
  return out;
}

/** The tensors bitsandbytes saves for a 4-bit Linear whose module path is `module`. */
export function bnb4bitStateDict(q: Bnb4bitTensor, module: string): Record<string, StateTensor> {
  validate4bit(q);
  const w = `${module}.weight`;
  const state = packQuantState(q);
  const out: Record<string, StateTensor> = {
    [w]: { dtype: 'U8', shape: [q.weight.length, 1], data: q.weight },
    [`${w}.absmax`]: { dtype: q.nested ? 'U8' : 'F32', shape: [q.absmax.length], data: q.absmax },
    [`${w}.quant_map`]: { dtype: 'F32', shape: [q.quantMap.length], data: q.quantMap },
  };
  if (q.nested) {
    out[`${w}.nested_absmax`] = { dtype: 'F32', shape: [q.nested.absmax.length], data: q.nested.absmax };
    out[`${w}.nested_quant_map`] = { dtype: 'F32', shape: [q.nested.quantMap.length], data: q.nested.quantMap };
  }
  out[`${w}.${quantStateKey(q.format)}`] = { dtype: 'U8', shape: [state.length], data: state };
  return out;
}

function typed<T extends Uint8Array | Int8Array | Float32Array>(get: StateLookup, key: string, kind: new (n: number) => T, what: string, optional = false): T | undefined {
  const v = get(key);
  if (v === undefined) {
    if (optional) return undefined;
    fail(key, 'tensor', 'missing from the state dict');
  }
  if (!(v instanceof kind)) fail(key, 'dtype', `must be ${what}`);
  return v as T;
}

/** Read a bitsandbytes 4-bit Linear's weight from its state-dict tensors. */
export function bnb4bitFromStateDict(module: string, get: StateLookup): Bnb4bitTensor {
  const w = `${module}.weight`;
  const stateKeys = (['nf4', 'fp4'] as const).filter((t) => get(`${w}.${quantStateKey(t)}`) !== undefined);
  if (stateKeys.length !== 1) fail(w, 'quant_state', `expected exactly one of ${w}.${quantStateKey('nf4')} or ${w}.${quantStateKey('fp4')}, found ${stateKeys.length}`);
  const quantType = stateKeys[0]!;
  const stateName = `${w}.${quantStateKey(quantType)}`;
  const nestedAbsmax = typed(get, `${w}.nested_absmax`, Float32Array, 'float32', true);
  const state = unpackQuantState(typed(get, stateName, Uint8Array, 'uint8 (packed JSON)')!, stateName, nestedAbsmax !== undefined);
  if (state.quant_type !== quantType) fail(stateName, 'quant_type', `says "${state.quant_type}" under a ${quantType} key`);
  const q: Bnb4bitTensor = {
    format: quantType,
    name: w,
    shape: state.shape,
    blocksize: state.blocksize,
    dtype: state.dtype,
    weight: typed(get, w, Uint8Array, 'uint8 (two 4-bit codes per byte)')!,
    absmax: nestedAbsmax ? typed(get, `${w}.absmax`, Uint8Array, 'uint8 codes when nested_absmax is present')! : typed(get, `${w}.absmax`, Float32Array, 'float32')!,
    quantMap: typed(get, `${w}.quant_map`, Float32Array, 'float32')!,
    ...(nestedAbsmax ? {
      nested: {
        absmax: nestedAbsmax,
        quantMap: typed(get, `${w}.nested_quant_map`, Float32Array, 'float32')!,
        blocksize: state.nested_blocksize!,
        dtype: state.nested_dtype!,
        offset: state.nested_offset!,
      },
    } : {}),
  };
  validate4bit(q);
  return q;
}

/** The tensors bitsandbytes saves for an 8-bit Linear whose module path is `module`. */
export function int8StateDict(q: Int8RowwiseTensor, module: string): Record<string, StateTensor> {
  validateInt8(q);
  return {
    [`${module}.weight`]: { dtype: 'I8', shape: [...q.shape], data: q.weight },
    [`${module}.SCB`]: { dtype: 'F32', shape: [q.scb.length], data: q.scb },
    [`${module}.weight_format`]: { dtype: 'U8', shape: [], data: Uint8Array.of(0) },
  };
}

/** Read a bitsandbytes 8-bit Linear's weight; `shape` is [out_features, in_features]. */
export function int8FromStateDict(module: string, get: StateLookup, shape: readonly number[]): Int8RowwiseTensor {
  const format = typed(get, `${module}.weight_format`, Uint8Array, 'uint8', true);
  if (format && (format.length !== 1 || format[0] !== 0)) fail(`${module}.weight_format`, 'value', `only 0 (row-major) is supported, got ${format[0]}`);
  const q: Int8RowwiseTensor = {
    format: 'int8',
    name: `${module}.weight`,
    shape: [...shape],
    weight: typed(get, `${module}.weight`, Int8Array, 'int8')!,
    scb: typed(get, `${module}.SCB`, Float32Array, 'float32')!,
  };
  validateInt8(q);
  return q;
}
