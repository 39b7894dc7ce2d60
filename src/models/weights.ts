import { AdaptkitError, type Tensor, sameShape, shapeStr } from '../tensor/index.js';

/** Where a model builder gets its weights: by HF name, with the shape it must have. */
export class WeightMap {
  private used = new Set<string>();

  constructor(
    private readonly read: (name: string) => Tensor | undefined,
    private readonly names: readonly string[],
    readonly source: string,
  ) {}

  static fromMap(map: Map<string, Tensor>, source: string): WeightMap {
    return new WeightMap((n) => map.get(n), [...map.keys()], source);
  }

  has(name: string): boolean {
    return this.names.includes(name);
  }

  /** A frozen, kept weight of exactly `shape`. */
  get(name: string, shape: readonly number[]): Tensor {
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

  optional(name: string, shape: readonly number[]): Tensor | null {
    return this.has(name) ? this.get(name, shape) : null;
  }

  /** Names in the checkpoint that no module took. */
  unused(): string[] {
    return this.names.filter((n) => !this.used.has(n));
  }
}
