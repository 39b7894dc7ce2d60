/** Ops built from primitives: they get their gradients from the primitives' VJP rules. */
import { isTraining } from './mode.js';
import { rand } from './create.js';
import { opError } from './errors.js';
import { type Rng, defaultRng } from './random.js';
import {
  binary, compare, indexSelect, narrow, permute, reshape, sum, unary,
} from './ops.js';
import { normAxis } from './shape.js';
import type { Tensor } from './tensor.js';

type Operand = Tensor | number;

export const add = (a: Operand, b: Operand): Tensor => binary('add', a, b);
export const sub = (a: Operand, b: Operand): Tensor => binary('sub', a, b);
export const mul = (a: Operand, b: Operand): Tensor => binary('mul', a, b);
export const div = (a: Operand, b: Operand): Tensor => binary('div', a, b);
export const maximum = (a: Operand, b: Operand): Tensor => binary('max', a, b);
export const minimum = (a: Operand, b: Operand): Tensor => binary('min', a, b);
export const neg = (x: Tensor): Tensor => unary('neg', x);
export const exp = (x: Tensor): Tensor => unary('exp', x);
export const log = (x: Tensor): Tensor => unary('log', x);
export const sqrt = (x: Tensor): Tensor => unary('sqrt', x);
export const tanh = (x: Tensor): Tensor => unary('tanh', x);
export const sigmoid = (x: Tensor): Tensor => unary('sigmoid', x);
export const relu = (x: Tensor): Tensor => unary('relu', x);
/** Exact GELU (erf form), as BERT uses. */
export const gelu = (x: Tensor): Tensor => unary('gelu', x);
/** Tanh-approximated GELU, as GPT-2 uses ("gelu_new"). */
export const geluTanh = (x: Tensor): Tensor => unary('gelu_tanh', x);
export const silu = (x: Tensor): Tensor => unary('silu', x);
export const abs = (x: Tensor): Tensor => unary('abs', x);
export const square = (x: Tensor): Tensor => binary('mul', x, x);

export function mean(x: Tensor, axes?: number | readonly number[], keepdim = false): Tensor {
  const s = sum(x, axes, keepdim);
  const count = x.size / Math.max(s.size, 1);
  return binary('mul', s, count === 0 ? NaN : 1 / count);
}

export function transpose(x: Tensor, d0 = -2, d1 = -1): Tensor {
  const a = normAxis('transpose', d0, x.ndim);
  const b = normAxis('transpose', d1, x.ndim);
  const dims = x.shape.map((_, i) => i);
  dims[a] = b;
  dims[b] = a;
  return permute(x, dims);
}

export function unsqueeze(x: Tensor, dim: number): Tensor {
  const d = dim < 0 ? dim + x.ndim + 1 : dim;
  if (d < 0 || d > x.ndim) throw opError('unsqueeze', `dim ${dim} out of range`, { x: x.shape });
  const shape = x.shape.slice();
  shape.splice(d, 0, 1);
  return reshape(x, shape);
}

export function squeeze(x: Tensor, dim: number): Tensor {
  const d = normAxis('squeeze', dim, x.ndim);
  if (x.shape[d] !== 1) throw opError('squeeze', `dim ${d} has size ${x.shape[d]}, not 1`, { x: x.shape });
  return reshape(x, x.shape.filter((_, i) => i !== d));
}

export function flatten(x: Tensor): Tensor {
  return reshape(x, [x.size]);
}

/** Rows of an embedding table [V, D] for i32 ids of any shape. */
export function embedding(w: Tensor, ids: Tensor): Tensor {
  return indexSelect(w, 0, ids);
}

/**
 * Inverted dropout: zero each element with probability p and scale the rest by 1/(1-p); only
 * inside a `training()` scope unless `training` says otherwise.
 */
export function dropout(x: Tensor, p: number, opts: { training?: boolean; rng?: Rng } = {}): Tensor {
  if (!(p >= 0 && p < 1)) throw opError('dropout', `p must be in [0, 1), got ${p}`);
  if (p === 0 || !(opts.training ?? isTraining())) return x;
  const keep = compare('ge', rand(x.shape, { rng: opts.rng ?? defaultRng }), p);
  const y = binary('mul', x, binary('mul', keep, 1 / (1 - p)));
  keep.dispose();
  return y;
}

export function split(x: Tensor, sizes: readonly number[], dim = 0): Tensor[] {
  const d = normAxis('split', dim, x.ndim);
  const total = sizes.reduce((p, q) => p + q, 0);
  if (total !== x.shape[d]) throw opError('split', `sizes ${JSON.stringify(sizes)} do not add up to ${x.shape[d]}`, { x: x.shape });
  let at = 0;
  return sizes.map((n) => {
    const part = narrow(x, d, at, n);
    at += n;
    return part;
  });
}

export function mseLoss(a: Tensor, b: Tensor): Tensor {
  return mean(square(sub(a, b)));
}

