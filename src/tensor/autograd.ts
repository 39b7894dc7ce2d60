import { AdaptkitError, shapeStr } from './errors.js';
import { sameShape } from './shape.js';
import { type GradNode, Tensor, makeView } from './tensor.js';
import { VJP } from './vjp.js';
import { addInto, binary, contiguousCopy, onesLike } from './ops.js';
import { tidy } from './tensor.js';
import { defaultRng } from './random.js';

let gradEnabled = true;

export function isGradEnabled(): boolean {
  return gradEnabled;
}

/** Run `fn` without recording anything for autodiff (inference, optimizer updates). */
export function noGrad<T>(fn: () => T): T {
  const prev = gradEnabled;
  gradEnabled = false;
  try {
    return fn();
  } finally {
    gradEnabled = prev;
  }
}

/** Run `fn` with recording on (inside backward, to recompute a checkpointed block). */
export function withGrad<T>(fn: () => T): T {
  const prev = gradEnabled;
  gradEnabled = true;
  try {
    return fn();
  } finally {
    gradEnabled = prev;
  }
}

/** Whether an op on these inputs must be recorded: only if some input needs a gradient. */
export function needsRecord(inputs: readonly Tensor[]): boolean {
  if (!gradEnabled) return false;
  for (const t of inputs) if (t.requiresGrad) return true;
  return false;
}

/** Attach the node that made `out`, when any input requires grad. Returns `out`. */
export function record(out: Tensor, op: string, inputs: Tensor[], saved: Record<string, unknown> = {}): Tensor {
  if (!needsRecord(inputs)) return out;
  if (!(op in VJP)) throw new AdaptkitError(`${op}: no VJP rule`);
  out.requiresGrad = true;
  out.node = { op, inputs, saved };
  return out;
}

/**
 * Gradient checkpointing: run fn without keeping its intermediates, and recompute them during
 * backward. Parameters fn closes over get their gradients from the recomputation. The default RNG
 * is replayed so dropout inside fn draws the same masks both times.
 */
export function checkpoint(fn: (...xs: Tensor[]) => Tensor, inputs: Tensor[]): Tensor {
  if (!gradEnabled) return fn(...inputs);
  const rngState = defaultRng.getState();
  const out = tidy(() => noGrad(() => fn(...inputs)));
  out.requiresGrad = true;
  out.node = { op: 'checkpoint', inputs, saved: { fn, rngState } };
  return out;
}

/** Post-order list of the nodes reachable from `root` (iterative: deep graphs do not overflow). */
function topoOrder(root: Tensor): Tensor[] {
  const order: Tensor[] = [];
  const visited = new Set<Tensor>();
  const stack: [Tensor, number][] = [[root, 0]];
  visited.add(root);
  while (stack.length > 0) {
    const top = stack[stack.length - 1]!;
    const [t, i] = top;
    const inputs = t.node ? t.node.inputs : [];
    if (i < inputs.length) {
      top[1]++;
      const child = inputs[i]!;
      if (child.requiresGrad && child.node && !visited.has(child)) {
        visited.add(child);
        stack.push([child, 0]);
      }
    } else {
      stack.pop();
      order.push(t);
    }
  }
  return order;
}

/**
 * Reverse-mode autodiff from `root` (a scalar unless `gradOutput` is given). Gradients of leaves
 * that require grad accumulate into `.grad`; intermediate gradients are freed as soon as they are
 * used. Inputs that do not require grad get no gradient computed at all.
 */
export function backward(root: Tensor, gradOutput?: Tensor): void {
  if (!root.requiresGrad) throw new AdaptkitError('backward: the tensor does not require grad (nothing trainable led to it)');
  if (!gradOutput && root.size !== 1) {
    throw new AdaptkitError(`backward: a gradient is needed for a non-scalar tensor of shape ${shapeStr(root.shape)}`);
  }
  if (gradOutput && !sameShape(gradOutput.shape, root.shape)) {
    throw new AdaptkitError(`backward: gradient shape ${shapeStr(gradOutput.shape)} does not match ${shapeStr(root.shape)}`);
  }
  const prev = gradEnabled;
  gradEnabled = false;
  try {
    const grads = new Map<Tensor, Tensor>();
    const seed = gradOutput ? makeView(gradOutput, gradOutput.shape, gradOutput.strides, gradOutput.offset) : onesLike(root);
    if (!root.node) {
      accumulateLeaf(root, seed);
      return;
    }
    grads.set(root, seed);
    const order = topoOrder(root);
    for (let n = order.length - 1; n >= 0; n--) {
      const t = order[n]!;
      const g = grads.get(t);
      const node = t.node;
      if (!g || !node) continue;
      grads.delete(t);
      const needs = node.inputs.map((x) => x.requiresGrad);
      const inGrads = runRule(node, g, needs);
      const seen = new Set<Tensor>();
      for (let i = 0; i < node.inputs.length; i++) {
        let gi = inGrads[i];
        if (!needs[i] || !gi) continue;
        const x = node.inputs[i]!;
        if (!sameShape(gi.shape, x.shape)) {
          throw new AdaptkitError(
            `${node.op}: VJP produced a gradient of shape ${shapeStr(gi.shape)} for an input of shape ${shapeStr(x.shape)}`,
          );
        }
        // a rule may hand back `g` itself or one tensor for two inputs: give each owner its own view
        if (gi === g || seen.has(gi)) gi = makeView(gi, gi.shape, gi.strides, gi.offset);
        seen.add(gi);
        if (x.node) {
          const prevG = grads.get(x);
          grads.set(x, prevG ? accumulate(prevG, gi) : gi);
        } else {
          accumulateLeaf(x, gi);
        }
      }
      g.dispose();
    }
  } finally {
    gradEnabled = prev;
  }
}

function runRule(node: GradNode, g: Tensor, needs: boolean[]): (Tensor | null)[] {
  return VJP[node.op]!(g, node, needs);
}

/** prev + gi, in place when prev owns its contiguous buffer alone. */
function accumulate(prev: Tensor, gi: Tensor): Tensor {
  if (ownsBuffer(prev)) {
    addInto(prev, gi);
    gi.dispose();
    return prev;
  }
  const sum = binary('add', prev, gi);
  prev.dispose();
  gi.dispose();
  return sum;
}

function ownsBuffer(t: Tensor): boolean {
  return t.isContiguous() && t.offset === 0 && t.storage.data.length === t.size && t.storage.refs === 1;
}

function accumulateLeaf(x: Tensor, gi: Tensor): void {
  if (x.grad) {
    x.grad = accumulate(x.grad, gi);
    x.grad.kept = true;
    return;
  }
  let owned = gi;
  if (!ownsBuffer(gi)) {
    owned = contiguousCopy(gi);
    gi.dispose();
  }
  owned.kept = true;
  x.grad = owned;
}

