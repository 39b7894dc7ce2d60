import { AdaptkitError, type Tensor, expand, noGrad, sameShape, scalar, shapeStr } from '../tensor/index.js';
import type { QuantizedTensor } from '../backend/quant/index.js';

/** Where a model builder gets its weights: by HF name, with the shape it must have. */
export class WeightMap {
  private used = new Set<string>();
  /**
   * Stand-ins handed to builders for weights that stay packed: a zero-stride view of the shape
   * the builder asks for, holding no memory, swapped for a QuantLinear once the model is built.
   */
  readonly placeholders = new Map<Tensor, QuantizedTensor>();

  constructor(
    private readonly read: (name: string) => Tensor | undefined,
    private readonly names: readonly string[],
    readonly source: string,
    /** Weights kept in their packed form (a bitsandbytes checkpoint), by weight name. */
    private readonly packed: ReadonlyMap<string, QuantizedTensor> = new Map(),
  ) {}

  static fromMap(map: Map<string, Tensor>, source: string): WeightMap {
    return new WeightMap((n) => map.get(n), [...map.keys()], source);
  }

  has(name: string): boolean {
    return this.names.includes(name) || this.packed.has(name);
  }

  /** A frozen, kept weight of exactly `shape`. */
  get(name: string, shape: readonly number[]): Tensor {
    const q = this.packed.get(name);
    if (q) return this.placeholder(name, q, shape);
    const t = this.read(name);
    if (!t) throw new AdaptkitError(`${this.source}: missing weight "${name}" (expected ${shapeStr(shape)})`);
    if (!sameShape(t.shape, shape)) {
      throw new AdaptkitError(`${this.source}: weight "${name}" has shape ${shapeStr(t.shape)}, expected ${shapeStr(shape)}`);
    }
    if (t.dtype !== 'f32') throw new AdaptkitError(`${this.source}: weight "${name}" is ${t.dtype}, expected floating point`);
    this.used.add(name);
    t.requiresGrad = false;
    t.kept = true;
    t.name = name;
    return t;
  }

  private placeholder(name: string, q: QuantizedTensor, shape: readonly number[]): Tensor {
    // a Conv1D layout asks for [in, out] of a weight quantized as [out, in]
    const fits = sameShape(q.shape, shape) || (shape.length === 2 && sameShape(q.shape, [shape[1]!, shape[0]!]));
    if (!fits) throw new AdaptkitError(`${this.source}: quantized weight "${name}" has shape ${shapeStr(q.shape)}, expected ${shapeStr(shape)}`);
    const t = noGrad(() => expand(scalar(0), shape)).keep();
    t.name = name;
    this.used.add(name);
    this.placeholders.set(t, q);
    return t;
  }

  optional(name: string, shape: readonly number[]): Tensor | null {
    return this.has(name) ? this.get(name, shape) : null;
  }

  /** Count names as used that no builder asks for (the quantization state of packed weights). */
  markUsed(names: Iterable<string>): void {
    for (const n of names) this.used.add(n);
  }

  /** Names in the checkpoint that no module took. */
  unused(): string[] {
    return this.names.filter((n) => !this.used.has(n));
  }
}
