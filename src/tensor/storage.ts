import { type AnyArray, type DType, allocArray } from './dtype.js';

/**
 * A flat buffer shared by a tensor and its views. Reference-counted by the tensors that use it;
 * when the last one is disposed the buffer goes back to the pool, so a training loop that runs
 * the same shapes every step stops allocating after its first step.
 */
export class Storage {
  refs = 0;
  constructor(
    readonly dtype: DType,
    public data: AnyArray,
  ) {}
}

/** Buffers are pooled by exact length: loops reuse the same shapes, so exact matching suffices. */
class BufferPool {
  private free = new Map<string, AnyArray[]>();
  private bytes = 0;
  private limit = 2 ** 30;
  hits = 0;
  misses = 0;

  acquire(dtype: DType, n: number): AnyArray {
    const list = this.free.get(dtype + n);
    const buf = list?.pop();
    if (buf) {
      this.bytes -= buf.byteLength;
      this.hits++;
      return buf;
    }
    this.misses++;
    return allocArray(dtype, n);
  }

  /** Pooled bytes beyond this are left to the garbage collector. */
  get limitBytes(): number {
    return this.limit;
  }

  /**
   * Cap the pool, dropping pooled buffers beyond the new cap at once: a process that knows its
   * working set (a server with fixed budgets) need not hold the default 1 GiB of idle buffers.
   */
  setLimit(bytes: number): void {
    if (!Number.isFinite(bytes) || bytes < 0) throw new RangeError(`the buffer pool limit must be a non-negative number of bytes, got ${bytes}`);
    this.limit = bytes;
    for (const [key, list] of this.free) {
      if (this.bytes <= bytes) break;
      while (list.length > 0 && this.bytes > bytes) this.bytes -= list.pop()!.byteLength;
      if (list.length === 0) this.free.delete(key);
    }
  }

  release(dtype: DType, buf: AnyArray): void {
    if (buf.length === 0 || this.bytes + buf.byteLength > this.limit) return;
    const key = dtype + buf.length;
    let list = this.free.get(key);
    if (!list) {
      list = [];
      this.free.set(key, list);
    }
    list.push(buf);
    this.bytes += buf.byteLength;
  }

  clear(): void {
    this.free.clear();
    this.bytes = 0;
  }

  get pooledBytes(): number {
    return this.bytes;
  }
}

export const bufferPool = new BufferPool();

/** A new storage; its contents are unspecified unless `zero` is set. */
export function newStorage(dtype: DType, n: number, zero = false): Storage {
  const data = bufferPool.acquire(dtype, n);
  if (zero) data.fill(0);
  return new Storage(dtype, data);
}

export function releaseStorage(s: Storage): void {
  if (--s.refs === 0) {
    bufferPool.release(s.dtype, s.data);
  }
}
