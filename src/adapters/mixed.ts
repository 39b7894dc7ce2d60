/**
 * Mixed-adapter batches: one forward where every row uses its own adapter (or none). Methods
 * with the row-batched capability stack their adapters' tensors at each target into slots (the
 * S-LoRA/Punica layout): the base GEMMs are shared by the whole batch and each row gathers its
 * slot. Rows of other methods run as sub-batches, one per adapter, and are put back in order.
 */
import { AdaptkitError, type Tensor, concat, indexSelect, tensor, zeros } from '../tensor/index.js';
import { type Linear, type Module, isLinearLayer } from '../nn/index.js';
import { AdaptedLayer } from './wrapper.js';
import { RowRouting, type AdapterInstance, type LayerDelta, type RowBatchedForm, type SlotTensor } from './types.js';
import type { AdapterModel } from './adapter-model.js';

interface LayerStack {
  layer: Linear;
  layout: Record<string, SlotTensor>;
  stacks: Record<string, Tensor>;
  delta: LayerDelta & Module;
}

/**
 * The stacks of one row-batched form on every layer its adapters touch: `capacity` slots after
 * the identity slot 0, each sized for `sizes` (the largest rank etc. a slot may hold).
 */
export class RowStacks {
  readonly routing = new RowRouting();
  private layers = new Map<string, LayerStack>();
  private paths = new Map<number, string[]>();

  constructor(readonly form: RowBatchedForm, readonly key: string, readonly model: Module, readonly capacity: number, readonly sizes: Record<string, number>) {}

  /** Whether an adapter fits these slots; otherwise the error names the size field. */
  check(inst: AdapterInstance): void {
    const need = this.form.sizes(inst);
    for (const [k, v] of Object.entries(need)) {
      const cap = this.sizes[k];
      if (cap === undefined || v > cap) throw new AdaptkitError(`adapter "${inst.name}": "${k}" is ${v}, above the ${cap ?? 0} the slots hold`);
    }
  }

  private layerAt(path: string): LayerStack {
    let st = this.layers.get(path);
    if (st) return st;
    const m = this.model.get(path);
    const base = m instanceof AdaptedLayer ? m.base_layer : m;
    if (!isLinearLayer(base)) throw new AdaptkitError(`"${path}" is not a linear layer, so adapters cannot be stacked on it`);
    // the forms read only the layer's sizes and bias, which a quantized layer has as well
    const layer = base as Linear;
    const layout = this.form.layout(layer, this.sizes, this.key);
    const stacks: Record<string, Tensor> = {};
    for (const [k, s] of Object.entries(layout)) {
      const t = zeros([this.capacity + 1, ...s.shape]).keep();
      if (s.identity !== 0) (t.storage.data as Float32Array).fill(s.identity, t.offset, t.offset + t.size);
      stacks[k] = t;
    }
    st = { layer, layout, stacks, delta: this.form.delta(layer, stacks, this.routing, this.key) };
    this.layers.set(path, st);
    return st;
  }

  private views(st: LayerStack, slot: number): Record<string, Float32Array> {
    const out: Record<string, Float32Array> = {};
    for (const [k, s] of Object.entries(st.layout)) {
      const n = s.shape.reduce((a, b) => a * b, 1);
      const t = st.stacks[k]!;
      out[k] = (t.storage.data as Float32Array).subarray(t.offset + slot * n, t.offset + (slot + 1) * n);
    }
    return out;
  }

  /** Put an adapter into a slot (1..capacity). */
  write(slot: number, inst: AdapterInstance): void {
    if (!(slot >= 1 && slot <= this.capacity)) throw new AdaptkitError(`slot ${slot} is outside 1..${this.capacity}`);
    this.check(inst);
    this.clear(slot);
    const paths = [...inst.deltas.keys()];
    for (const p of paths) {
      const st = this.layerAt(p);
      this.form.write(inst, p, this.views(st, slot), this.sizes);
    }
    this.paths.set(slot, paths);
  }

  /** Return a slot to the identity. */
  clear(slot: number): void {
    for (const p of this.paths.get(slot) ?? []) {
      const st = this.layers.get(p)!;
      const v = this.views(st, slot);
      for (const [k, s] of Object.entries(st.layout)) v[k]!.fill(s.identity);
    }
    this.paths.delete(slot);
  }

  /** Route the rows of the next forward to these slots (0: the identity). */
  route(slots: readonly number[]): void {
    this.routeMixed(slots.map((slot) => [{ slot, weight: 1 }]));
  }

  /** Route each row to a weighted sum of slots (mixable forms only when a row has several, or a weight is not 1). */
  routeMixed(rows: readonly (readonly { slot: number; weight: number }[])[]): void {
    const r = this.routing;
    r.rows?.dispose();
    r.weights?.dispose();
    for (const m of r.more) {
      m.rows.dispose();
      m.weights.dispose();
    }
    const K = Math.max(1, ...rows.map((x) => x.length));
    const plain = K === 1 && rows.every((x) => (x[0]?.weight ?? 1) === 1);
    if (!plain && !this.form.mixable?.(this.key)) throw new AdaptkitError('these adapters cannot be mixed row by row (their delta is not linear in their weights)');
    const slots = (k: number) => tensor(rows.map((x) => x[k]?.slot ?? 0), [rows.length], { dtype: 'i32' }).keep();
    const weights = (k: number) => tensor(rows.map((x) => x[k]?.weight ?? 0), [rows.length]).keep();
    r.rows = slots(0);
    // the common case, one adapter per row at weight 1, builds nothing more on the decode path
    r.weights = plain ? null : weights(0);
    r.more = plain ? [] : Array.from({ length: K - 1 }, (_, k) => ({ rows: slots(k + 1), weights: weights(k + 1) }));
  }

  deltas(): Map<string, LayerDelta & Module> {
    return new Map([...this.layers].map(([p, s]) => [p, s.delta]));
  }

  bytes(): number {
    let n = 0;
    for (const st of this.layers.values()) for (const t of Object.values(st.stacks)) n += t.size * 4;
    return n;
  }

  dispose(): void {
    for (const st of this.layers.values()) for (const t of Object.values(st.stacks)) t.dispose();
    this.layers.clear();
    this.paths.clear();
    this.routing.rows?.dispose();
    this.routing.weights?.dispose();
    for (const m of this.routing.more) {
      m.rows.dispose();
      m.weights.dispose();
    }
    this.routing.rows = null;
    this.routing.weights = null;
    this.routing.more = [];
  }
}

/** Stacks for several sets of stacks, merged into the delta lists each layer runs. */
export function stackedDeltas(all: Iterable<RowStacks>): Map<string, (LayerDelta & Module)[]> {
  const out = new Map<string, (LayerDelta & Module)[]>();
  for (const s of all) {
    for (const [p, d] of s.deltas()) {
      if (!out.has(p)) out.set(p, []);
      out.get(p)!.push(d);
    }
  }
  return out;
}

function instances(am: AdapterModel, names: readonly (string | null)[]): Map<string, AdapterInstance> {
  const out = new Map<string, AdapterInstance>();
  for (const n of names) {
    if (n === null || out.has(n)) continue;
    const a = am.adapters.get(n);
    if (!a) throw new AdaptkitError(`no adapter named "${n}"`);
    out.set(n, a);
  }
  return out;
}

/** Whether an adapter can share a batch with others row by row. */
export function isRowBatched(inst: AdapterInstance): boolean {
  return !!inst.method.rowBatched && !inst.residualBase?.size && !inst.hooks?.size && !inst.addedPositions;
}

/** Run fn with row i of the batch on adapter rowAdapters[i] (null: none); every adapter must be row-batched. */
export function withRowAdapters<T>(am: AdapterModel, rowAdapters: readonly (string | null)[], fn: () => T): T {
  const insts = instances(am, rowAdapters);
  const groups = new Map<string, { form: RowBatchedForm; key: string; members: AdapterInstance[] }>();
  for (const inst of insts.values()) {
    const form = inst.method.rowBatched;
    if (!form || !isRowBatched(inst)) throw new AdaptkitError(`adapter "${inst.name}" (${inst.method.peftType}) cannot be applied row by row in a mixed batch`);
    const key = form.key(inst);
    const id = `${inst.method.peftType}:${key}`;
    if (!groups.has(id)) groups.set(id, { form, key, members: [] });
    groups.get(id)!.members.push(inst);
  }
  const stacks: RowStacks[] = [];
  try {
    for (const { form, key, members } of groups.values()) {
      const sizes: Record<string, number> = {};
      for (const m of members) for (const [k, v] of Object.entries(form.sizes(m))) sizes[k] = Math.max(sizes[k] ?? 0, v);
      const s = new RowStacks(form, key, am.model, members.length, sizes);
      members.forEach((m, i) => s.write(i + 1, m));
      s.route(rowAdapters.map((a) => (a === null ? 0 : members.findIndex((m) => m.name === a) + 1)));
      stacks.push(s);
    }
    return am.withDeltas(stackedDeltas(stacks), fn);
  } finally {
    for (const s of stacks) s.dispose();
  }
}

export function forwardMixed(am: AdapterModel, ids: Tensor, rowAdapters: readonly (string | null)[], opts: { attentionMask?: Tensor | null } = {}): Tensor {
  if (rowAdapters.length !== ids.shape[0]) throw new AdaptkitError(`${rowAdapters.length} row adapters for a batch of ${ids.shape[0]} rows`);
  const insts = instances(am, rowAdapters);
  const forward = (x: Tensor, mask: Tensor | null) => am.forward(x, { attentionMask: mask });
  // a sub-batch sees the task ids and prompt lengths of its own rows
  const ofRows = (v: Int32Array | null, rows: readonly number[]) => (v === null || v.length === 1 ? v : Int32Array.from(rows, (r) => v[r]!));
  const forwardRows = (x: Tensor, mask: Tensor | null, rows: readonly number[]) =>
    am.forward(x, { attentionMask: mask, taskIds: ofRows(am.tasks.ids, rows), promptLengths: ofRows(am.prompts.lengths, rows) });
  const batched = (a: string | null) => a === null || isRowBatched(insts.get(a)!);
  if (rowAdapters.every(batched)) return withRowAdapters(am, rowAdapters, () => forward(ids, opts.attentionMask ?? null));
  // rows of row-batched adapters (and of none) run together; every other adapter's rows as a group
  const groups = new Map<string, number[]>();
  rowAdapters.forEach((a, i) => {
    const key = batched(a) ? '\0rows' : a!;
    groups.set(key, [...(groups.get(key) ?? []), i]);
  });
  const parts: Tensor[] = [];
  const order: number[] = [];
  for (const [key, rows] of groups) {
    const idx = tensor(rows, [rows.length], { dtype: 'i32' });
    const mask = opts.attentionMask ? indexSelect(opts.attentionMask, 0, idx) : null;
    const sub = indexSelect(ids, 0, idx);
    parts.push(key === '\0rows'
      ? withRowAdapters(am, rows.map((r) => rowAdapters[r]!), () => forwardRows(sub, mask, rows))
      : am.withActive([key], () => forwardRows(sub, mask, rows)));
    order.push(...rows);
  }
  const shape = parts[0]!.shape.slice(1);
  for (const p of parts) {
    if (p.shape.slice(1).some((d, i) => d !== shape[i])) {
      throw new AdaptkitError('rows of this mixed batch produce outputs of different lengths (prompt-learning adapters add positions); batch them separately');
    }
  }
  const inverse = new Array<number>(order.length);
  order.forEach((row, at) => (inverse[row] = at));
  return indexSelect(concat(parts, 0), 0, tensor(inverse, [inverse.length], { dtype: 'i32' }));
}
