import { type DType } from './dtype.js';
import { opError } from './errors.js';
import { type Rng, defaultRng } from './random.js';
import { type Shape, checkShape, numel } from './shape.js';
import { Storage, newStorage } from './storage.js';
import { Tensor, empty } from './tensor.js';

export interface CreateOptions {
  dtype?: DType;
  requiresGrad?: boolean;
}

function finish(t: Tensor, opts?: CreateOptions): Tensor {
  if (opts?.requiresGrad) t.requiresGrad = true;
  return t;
}

/** A tensor from values (a flat array or typed array) and a shape (default: 1-D). */
export function tensor(values: ArrayLike<number>, shape?: Shape, opts?: CreateOptions): Tensor {
  const dtype: DType = opts?.dtype ?? (values instanceof Int32Array ? 'i32' : 'f32');
  const s = shape ?? [values.length];
  checkShape('tensor', s);
  if (numel(s) !== values.length) {
    throw opError('tensor', `${values.length} values do not fill the shape`, { shape: s });
  }
  const st = newStorage(dtype, values.length);
  st.data.set(values);
  return finish(new Tensor(st, s), opts);
}

/** Wrap an existing typed array without copying (the tensor then owns it). */
export function fromBuffer(data: Float32Array | Int32Array, shape: Shape): Tensor {
  checkShape('fromBuffer', shape);
  if (numel(shape) !== data.length) throw opError('fromBuffer', `${data.length} values do not fill the shape`, { shape });
  return new Tensor(new Storage(data instanceof Float32Array ? 'f32' : 'i32', data), shape);
}

export function scalar(value: number, dtype: DType = 'f32'): Tensor {
  const t = empty([], dtype);
  t.storage.data[0] = value;
  return t;
}

export function full(shape: Shape, value: number, opts?: CreateOptions): Tensor {
  const t = empty(shape, opts?.dtype ?? 'f32');
  t.storage.data.fill(value);
  return finish(t, opts);
}

export function zeros(shape: Shape, opts?: CreateOptions): Tensor {
  return full(shape, 0, opts);
}

export function ones(shape: Shape, opts?: CreateOptions): Tensor {
  return full(shape, 1, opts);
}

export function zerosLike(t: Tensor): Tensor {
  return full(t.shape, 0, { dtype: t.dtype });
}

export function onesLike(t: Tensor): Tensor {
  return full(t.shape, 1, { dtype: t.dtype });
}

export function arange(n: number, opts?: CreateOptions): Tensor {
  const t = empty([n], opts?.dtype ?? 'f32');
  const d = t.storage.data;
  for (let i = 0; i < n; i++) d[i] = i;
  return finish(t, opts);
}

export interface RandomOptions extends CreateOptions {
  rng?: Rng;
}

/** Normal(mean, std) samples. */
export function randn(shape: Shape, opts?: RandomOptions & { mean?: number; std?: number }): Tensor {
  const rng = opts?.rng ?? defaultRng;
  const mean = opts?.mean ?? 0;
  const std = opts?.std ?? 1;
  const t = empty(shape);
  const d = t.storage.data;
  for (let i = 0; i < d.length; i++) d[i] = mean + std * rng.normal();
  return finish(t, opts);
}

/** Uniform samples in [low, high). */
export function rand(shape: Shape, opts?: RandomOptions & { low?: number; high?: number }): Tensor {
  const rng = opts?.rng ?? defaultRng;
  const low = opts?.low ?? 0;
  const high = opts?.high ?? 1;
  const t = empty(shape);
  const d = t.storage.data;
  for (let i = 0; i < d.length; i++) d[i] = low + (high - low) * rng.uniform();
  return finish(t, opts);
}

/** A trainable leaf: requires grad and survives `tidy` scopes. */
export function parameter(t: Tensor, name?: string): Tensor {
  if (t.dtype !== 'f32') throw opError('parameter', `parameters must be f32, got ${t.dtype}`, { shape: t.shape });
  t.requiresGrad = true;
  t.kept = true;
  t.node = null;
  if (name !== undefined) t.name = name;
  return t;
}
