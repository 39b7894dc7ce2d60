import { type AnyArray, type DType } from './dtype.js';
import { AdaptkitError, opError, shapeStr } from './errors.js';
import { type Shape, checkShape, contiguousStrides, numel } from './shape.js';
import { Storage, newStorage, releaseStorage } from './storage.js';
import type { StridedView } from './kernels.js';

/** What produced a tensor: enough to run its VJP rule during backward. */
export interface GradNode {
  op: string;
  inputs: Tensor[];
  /** Tensors and values the VJP rule needs (kept alive until the graph is released). */
  saved: Record<string, unknown>;
}

/**
 * An n-dimensional array over a shared storage. Views (reshape, permute, narrow, expand) share the
 * storage and change only shape/strides/offset. A tensor that requires grad and was made by an op
 * carries a `node`; leaves that require grad collect `.grad` during backward.
 */
export class Tensor {
  readonly shape: readonly number[];
  readonly strides: readonly number[];
  readonly offset: number;
  readonly dtype: DType;
  requiresGrad = false;
  grad: Tensor | null = null;
  /**
   * For a parameter trained sparsely: 1 where the optimizer may change an entry, 0 where it must
   * leave the entry and its optimizer state alone ("no gradient", not "zero gradient"); null: all.
   */
  gradMask: Float32Array | null = null;
  node: GradNode | null = null;
  /** Kept tensors (parameters, optimizer state, gradients of leaves) outlive `tidy` scopes. */
  kept = false;
  name: string | undefined;
  private _storage: Storage | null;

  constructor(storage: Storage, shape: Shape, strides?: readonly number[], offset = 0) {
    this._storage = storage;
    this.dtype = storage.dtype;
    this.shape = shape.slice();
    this.strides = strides ? strides.slice() : contiguousStrides(shape);
    this.offset = offset;
    storage.refs++;
    track(this);
  }

  get storage(): Storage {
    if (!this._storage) {
      throw new AdaptkitError(
        `tensor ${this.name ?? shapeStr(this.shape)} was disposed (was it made inside a tidy() scope that has ended?)`,
      );
    }
    return this._storage;
  }

  get isDisposed(): boolean {
    return this._storage === null;
  }

  get ndim(): number {
    return this.shape.length;
  }

  get size(): number {
    return numel(this.shape);
  }

  isContiguous(): boolean {
    let s = 1;
    for (let i = this.shape.length - 1; i >= 0; i--) {
      const d = this.shape[i]!;
      if (d !== 1 && this.strides[i] !== s) return false;
      s *= d;
    }
    return true;
  }

  /** The storage as a strided window (for kernels). */
  view(): StridedView {
    return { data: this.storage.data, offset: this.offset, strides: this.strides };
  }

  /**
   * The elements of a contiguous tensor as a typed array over its storage (no copy).
   * Throws for non-contiguous tensors; use `toArray()` for a copy of any tensor.
   */
  buffer(): AnyArray {
    if (!this.isContiguous()) throw opError('buffer', 'tensor is not contiguous', { shape: this.shape });
    const data = this.storage.data;
    const n = this.size;
    return this.offset === 0 && data.length === n ? data : data.subarray(this.offset, this.offset + n);
  }

  /** Free the storage now (it returns to the buffer pool when no view uses it). Idempotent. */
  dispose(): void {
    if (!this._storage) return;
    releaseStorage(this._storage);
    this._storage = null;
    this.node = null;
    if (this.grad) {
      this.grad.dispose();
      this.grad = null;
    }
  }

  /** Mark this tensor to survive `tidy` scopes. */
  keep(): this {
    this.kept = true;
    return this;
  }

  toString(): string {
    return `Tensor(${this.dtype} ${shapeStr(this.shape)}${this.requiresGrad ? ', requiresGrad' : ''})`;
  }
}

/** A new tensor sharing `t`'s storage with another shape/strides/offset. */
export function makeView(t: Tensor, shape: Shape, strides: readonly number[], offset: number): Tensor {
  return new Tensor(t.storage, shape, strides, offset);
}

/** A new contiguous tensor with unspecified contents (kernels overwrite it). */
export function empty(shape: Shape, dtype: DType = 'f32'): Tensor {
  checkShape('empty', shape);
  return new Tensor(newStorage(dtype, numel(shape)), shape);
}

// ---- memory scopes ----

const scopes: Tensor[][] = [];

function track(t: Tensor): void {
  const top = scopes[scopes.length - 1];
  if (top) top.push(t);
}

function collect(value: unknown, out: Set<Tensor>, depth = 0): void {
  if (depth > 8 || value === null || typeof value !== 'object') return;
  if (value instanceof Tensor) {
    out.add(value);
    return;
  }
  if (Array.isArray(value)) {
    for (const v of value) collect(v, out, depth + 1);
  } else if (value.constructor === Object) {
    for (const v of Object.values(value)) collect(v, out, depth + 1);
  } else if (value instanceof Map) {
    for (const v of value.values()) collect(v, out, depth + 1);
  }
}

/**
 * Run `fn` and dispose every tensor it created, except kept tensors and the tensors it returns
 * (found in the returned value, arrays, plain objects and Maps). Nested scopes hand their results
 * to the enclosing scope. This is what keeps memory flat across training steps.
 */
export function tidy<T>(fn: () => T): T {
  scopes.push([]);
  let result: T;
  let list: Tensor[];
  try {
    result = fn();
  } finally {
    list = scopes.pop()!;
  }
  if (result instanceof Promise) throw new AdaptkitError('tidy: the function must be synchronous');
  const escaping = new Set<Tensor>();
  collect(result, escaping);
  const parent = scopes[scopes.length - 1];
  for (const t of list) {
    if (escaping.has(t)) {
      parent?.push(t);
    } else if (!t.kept) {
      t.dispose();
    } else if (t.grad) {
      // a kept tensor's grad was made in this scope: it belongs to the tensor now
      t.grad.kept = true;
    }
  }
  return result;
}

/** Dispose every tensor in a value (arrays, plain objects, Maps). */
export function dispose(value: unknown): void {
  const set = new Set<Tensor>();
  collect(value, set);
  for (const t of set) t.dispose();
}
