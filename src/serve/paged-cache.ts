/**
 * A paged KV cache: per layer, one pool of fixed-size blocks ([block][kv head][slot][head dim])
 * under a memory budget; each sequence owns a list of blocks. A batch step sees the cache through
 * `StepCache`, which writes the step's new keys/values into the sequences' blocks and hands
 * attention each row's past (padded to the longest) followed by the new positions.
 */
import { AdaptkitError, type Tensor, fromBuffer } from '../tensor/index.js';

export class BlockPool {
  readonly k: Float32Array[];
  readonly v: Float32Array[];
  private free: number[];
  readonly blockFloats: number;

  constructor(
    readonly layers: number, readonly kvHeads: number, readonly headDim: number, readonly blockSize: number, readonly numBlocks: number,
  ) {
    if (numBlocks < 1) throw new AdaptkitError('the KV cache budget is too small for even one block');
    this.blockFloats = kvHeads * blockSize * headDim;
    this.k = Array.from({ length: layers }, () => new Float32Array(numBlocks * this.blockFloats));
    this.v = Array.from({ length: layers }, () => new Float32Array(numBlocks * this.blockFloats));
    this.free = Array.from({ length: numBlocks }, (_, i) => numBlocks - 1 - i);
  }

  /** Blocks that fit a budget in MiB. */
  static blocksFor(mb: number, layers: number, kvHeads: number, headDim: number, blockSize: number): number {
    return Math.floor((mb * 2 ** 20) / (layers * 2 * kvHeads * blockSize * headDim * 4));
  }

  get freeBlocks(): number {
    return this.free.length;
  }

  alloc(): number | null {
    return this.free.pop() ?? null;
  }

  release(blocks: readonly number[]): void {
    for (const b of blocks) this.free.push(b);
  }
}

/** The cached part of one sequence. */
export class SequenceKV {
  blocks: number[] = [];
  length = 0;

  /** Make room for `n` more positions; false when the pool ran out (nothing is taken then). */
  reserve(pool: BlockPool, n: number): boolean {
    const need = Math.ceil((this.length + n) / pool.blockSize) - this.blocks.length;
    if (need <= 0) return true;
    if (pool.freeBlocks < need) return false;
    for (let i = 0; i < need; i++) this.blocks.push(pool.alloc()!);
    return true;
  }

  free(pool: BlockPool): void {
    pool.release(this.blocks);
    this.blocks = [];
    this.length = 0;
  }
}

/** The cache as one forward of a batch sees it (rows = sequences, `fresh[b]` new positions each). */
export class StepCache {
  readonly length: number;
  /** Positions each row gained in this forward (as appended: a prompt adapter may add some). */
  private appended = 0;

  constructor(readonly pool: BlockPool, readonly seqs: readonly SequenceKV[], readonly fresh: readonly number[]) {
    this.length = Math.max(0, ...seqs.map((s) => s.length));
  }

  /** [B, start + T]: 1 for each row's real past and new positions, 0 for padding. */
  mask(T: number): Float32Array {
    const W = this.length + T;
    const m = new Float32Array(this.seqs.length * W);
    this.seqs.forEach((s, b) => {
      m.fill(1, b * W, b * W + s.length);
      m.fill(1, b * W + this.length, b * W + this.length + this.fresh[b]!);
    });
    return m;
  }

  append(layer: number, k: Tensor, v: Tensor): { k: Tensor; v: Tensor } {
    const [B, H, T, D] = k.shape as [number, number, number, number];
    const { pool } = this;
    const bs = pool.blockSize;
    const kc = k.isContiguous() ? k : k.contiguous();
    const vc = v.isContiguous() ? v : v.contiguous();
    const kd = kc.buffer() as Float32Array;
    const vd = vc.buffer() as Float32Array;
    // write the new positions into each sequence's blocks
    this.appended = T;
    this.seqs.forEach((s, b) => {
      for (let t = 0; t < T; t++) {
        const pos = s.length + t;
        const block = s.blocks[Math.floor(pos / bs)]!;
        for (let h = 0; h < H; h++) {
          const dst = block * pool.blockFloats + (h * bs + (pos % bs)) * D;
          const src = ((b * H + h) * T + t) * D;
          pool.k[layer]!.set(kd.subarray(src, src + D), dst);
          pool.v[layer]!.set(vd.subarray(src, src + D), dst);
        }
      }
    });
    if (this.length === 0) return { k, v };
    // one buffer per side: each row's past (from its blocks, zero-padded to the longest), then this step's positions
    const P = this.length;
    const W = P + T;
    const ok = new Float32Array(B * H * W * D);
    const ov = new Float32Array(B * H * W * D);
    this.seqs.forEach((s, b) => {
      for (let h = 0; h < H; h++) {
        const row = (b * H + h) * W * D;
        for (let start = 0; start < s.length; start += bs) {
          const block = s.blocks[start / bs]!;
          const n = Math.min(bs, s.length - start);
          const src = block * pool.blockFloats + h * bs * D;
          ok.set(pool.k[layer]!.subarray(src, src + n * D), row + start * D);
          ov.set(pool.v[layer]!.subarray(src, src + n * D), row + start * D);
        }
        const src = (b * H + h) * T * D;
        ok.set(kd.subarray(src, src + T * D), row + P * D);
        ov.set(vd.subarray(src, src + T * D), row + P * D);
      }
    });
    if (kc !== k) kc.dispose();
    if (vc !== v) vc.dispose();
    return { k: fromBuffer(ok, [B, H, W, D]), v: fromBuffer(ov, [B, H, W, D]) };
  }

  /** After the forward: the sequences now hold their new positions. */
  commit(): void {
    this.seqs.forEach((s) => (s.length += this.appended));
  }
}
