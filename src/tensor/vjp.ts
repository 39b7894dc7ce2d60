/**
 * Every VJP rule of every primitive, in one table. A rule gets the output gradient g, the node
 * (inputs and saved values) and which inputs need a gradient, and returns one gradient per input
 * (null where not needed). Rules run with recording off.
 */
import { full, zeros } from './create.js';
import { type UnaryOp, UNARY_OPS, kernels } from './kernels.js';
import {
  binary, compare, contiguous, detach, expand, indexAdd, indexSelect, matmul, narrow, padNarrow,
  permute, quantLinearBackward, reshape, rope, sum, where,
} from './ops.js';
import type { PackedWeight } from './kernels.js';
import { type Shape, numel, sameShape } from './shape.js';
import { type GradNode, Tensor, empty, tidy } from './tensor.js';
import { defaultRng } from './random.js';
import { backward, withGrad } from './autograd.js';

export type VjpRule = (g: Tensor, node: GradNode, needs: readonly boolean[]) => (Tensor | null)[];


/** Sum g over the dims that broadcasting added, back to `shape`. */
export function sumTo(g: Tensor, shape: Shape): Tensor {
  if (sameShape(g.shape, shape)) return g;
  const lead = g.ndim - shape.length;
  const axes: number[] = [];
  for (let i = 0; i < g.ndim; i++) {
    if (i < lead || (shape[i - lead] === 1 && g.shape[i] !== 1)) axes.push(i);
  }
  const s = sum(g, axes, true);
  return sameShape(s.shape, shape) ? s : reshape(s, shape);
}

function T(x: Tensor): Tensor {
  const nd = x.ndim;
  const dims = x.shape.map((_, i) => i);
  dims[nd - 1] = nd - 2;
  dims[nd - 2] = nd - 1;
  return permute(x, dims);
}

function buf(t: Tensor): Float32Array {
  return t.buffer() as Float32Array;
}

function s<V>(node: GradNode, key: string): V {
  return node.saved[key] as V;
}

const unaryRule: VjpRule = (g, node) => {
  const x = s<Tensor>(node, 'x');
  const y = s<Tensor>(node, 'y');
  const gc = contiguous(g);
  const out = empty(x.shape);
  kernels().unaryBackward(node.op as UnaryOp, buf(x), buf(y), buf(gc), buf(out));
  if (gc !== g) gc.dispose();
  return [out];
};

function pair(node: GradNode, needs: readonly boolean[], fa: () => Tensor, fb: () => Tensor): (Tensor | null)[] {
  return [needs[0] ? sumTo(fa(), node.inputs[0]!.shape) : null, needs[1] ? sumTo(fb(), node.inputs[1]!.shape) : null];
}

export const VJP: Record<string, VjpRule> = {
  ...Object.fromEntries(UNARY_OPS.map((op) => [op, unaryRule])),

  add: (g, node, needs) => pair(node, needs, () => g, () => g),
  sub: (g, node, needs) => pair(node, needs, () => g, () => binary('mul', g, -1)),
  mul: (g, node, needs) => pair(node, needs, () => binary('mul', g, s(node, 'b')), () => binary('mul', g, s(node, 'a'))),
  div: (g, node, needs) => {
    const a = s<Tensor>(node, 'a');
    const b = s<Tensor>(node, 'b');
    return pair(node, needs, () => binary('div', g, b), () => {
      const q = binary('div', binary('mul', g, a), binary('mul', b, b));
      return binary('mul', q, -1);
    });
  },
  max: binaryMinMax('ge'),
  min: binaryMinMax('le'),
  where: (g, node, needs) => {
    const cond = s<Tensor>(node, 'cond');
    return pair(node, needs, () => where(cond, g, 0), () => where(cond, 0, g));
  },

  sum: (g, node) => {
    const x = node.inputs[0]!;
    const axes = s<number[]>(node, 'axes');
    const kept = x.shape.map((d, i) => (axes.includes(i) ? 1 : d));
    const gk = s<boolean>(node, 'keepdim') ? g : reshape(g, kept);
    return [expand(gk, x.shape)];
  },
  reduceMax: (g, node) => {
    const x = s<Tensor>(node, 'x');
    const axis = s<number>(node, 'axis');
    const kept = x.shape.map((d, i) => (i === axis ? 1 : d));
    const gk = s<boolean>(node, 'keepdim') ? g : reshape(g, kept);
    const m = reduceMaxKeep(x, axis);
    return [binary('mul', compare('eq', x, m), gk)];
  },

  matmul: (g, node, needs) => {
    const a = s<Tensor>(node, 'a');
    const b = s<Tensor>(node, 'b');
    const ga = needs[0] ? sumTo(matmul(g, T(b)), a.shape) : null;
    let gb: Tensor | null = null;
    if (needs[1]) {
      if (b.ndim === 2 && a.ndim > 2) {
        // fold the batch into one GEMM: gb = a2ᵀ · g2
        const k = a.shape[a.ndim - 1]!;
        const a2 = reshape(a, [-1, k]);
        const g2 = reshape(g, [-1, g.shape[g.ndim - 1]!]);
        gb = matmul(T(a2), g2);
      } else {
        gb = sumTo(matmul(T(a), g), b.shape);
      }
    }
    return [ga, gb];
  },

  linear: (g, node, needs) => {
    const x = s<Tensor>(node, 'x');
    const w = s<Tensor>(node, 'w');
    const gx = needs[0] ? matmul(g, w) : null;
    const gw = needs[1] ? matmul(T(reshape(g, [-1, w.shape[0]!])), reshape(x, [-1, w.shape[1]!])) : null;
    const gb = node.inputs[2] && needs[2] ? sumTo(g, [w.shape[0]!]) : null;
    return [gx && x.ndim === 1 ? reshape(gx, x.shape) : gx, gw, gb];
  },
  quantLinear: (g, node, needs) => {
    const w = s<PackedWeight>(node, 'w');
    const gx = needs[0] ? quantLinearBackward(g, w) : null;
    const gb = node.inputs[1] && needs[1] ? sumTo(g, [w.shape[0]!]) : null;
    return [gx, gb];
  },
  addmm: (g, node, needs) => {
    const a = s<Tensor>(node, 'a');
    const b = s<Tensor>(node, 'b');
    const ga = needs[1] ? matmul(g, T(b)) : null;
    const gb = needs[2] ? matmul(T(reshape(a, [-1, b.shape[0]!])), reshape(g, [-1, b.shape[1]!])) : null;
    return [needs[0] ? g : null, ga, gb];
  },

  indexSelect: (g, node) => {
    const shape = s<Shape>(node, 'shape');
    return [indexAdd(zeros(shape), s(node, 'dim'), s(node, 'idx'), g)];
  },
  indexAdd: (g, node, needs) => [needs[0] ? g : null, needs[1] ? indexSelect(g, s(node, 'dim'), s(node, 'idx')) : null],

  concat: (g, node, needs) => {
    const dim = s<number>(node, 'dim');
    const sizes = s<number[]>(node, 'sizes');
    let at = 0;
    return sizes.map((n, i) => {
      const out = needs[i] ? narrow(g, dim, at, n) : null;
      at += n;
      return out;
    });
  },
  reshape: (g, node) => [reshape(g, s(node, 'shape'))],
  permute: (g, node) => {
    const dims = s<number[]>(node, 'dims');
    const inv = new Array<number>(dims.length);
    dims.forEach((d, i) => (inv[d] = i));
    return [permute(g, inv)];
  },
  narrow: (g, node) => [padNarrow(g, s(node, 'shape'), s(node, 'dim'), s(node, 'start'))],
  padNarrow: (g, node) => {
    const dim = s<number>(node, 'dim');
    return [narrow(g, dim, s(node, 'start'), node.inputs[0]!.shape[dim]!)];
  },
  expand: (g, node) => [sumTo(g, s(node, 'shape'))],
  copy: (g) => [g],

  softmax: softmaxRule(false),
  logSoftmax: softmaxRule(true),

  rmsNorm: (g, node, needs) => {
    const x = s<Tensor>(node, 'x');
    const w = s<Tensor>(node, 'w');
    const rstd = s<Tensor>(node, 'rstd');
    const c = w.size;
    const gc = contiguous(g);
    const dx = needs[0] ? empty(x.shape) : null;
    const dw = needs[1] ? empty([c]) : null;
    kernels().rmsnormBackward(buf(x), buf(w), buf(rstd), buf(gc), x.size / c, c, dx && buf(dx), dw && buf(dw));
    if (gc !== g) gc.dispose();
    return [dx, dw];
  },
  layerNorm: (g, node, needs) => {
    const x = s<Tensor>(node, 'x');
    const w = s<Tensor>(node, 'w');
    const c = w.size;
    const gc = contiguous(g);
    const dx = needs[0] ? empty(x.shape) : null;
    const dw = needs[1] ? empty([c]) : null;
    const db = needs[2] ? empty([c]) : null;
    kernels().layernormBackward(
      buf(x), buf(w), buf(s(node, 'mean')), buf(s(node, 'rstd')), buf(gc), x.size / c, c,
      dx && buf(dx), dw && buf(dw), db && buf(db),
    );
    if (gc !== g) gc.dispose();
    return [dx, dw, db];
  },
  crossEntropy: (g, node) => {
    const logits = s<Tensor>(node, 'logits');
    const targets = s<Tensor>(node, 'targets');
    const v = logits.shape[logits.ndim - 1]!;
    const rows = logits.size / v;
    const reduction = s<string>(node, 'reduction');
    let scale: Tensor;
    if (reduction === 'none') {
      scale = contiguous(reshape(g, [rows]));
      if (scale === g) scale = reshape(g, [rows]);
    } else {
      const counted = s<number>(node, 'counted');
      const gv = (g.buffer() as Float32Array)[0]!;
      scale = full([rows], reduction === 'mean' ? (counted > 0 ? gv / counted : 0) : gv);
    }
    const out = empty(logits.shape);
    kernels().crossEntropyBackward(
      buf(logits), targets.buffer() as Int32Array, buf(s(node, 'lse')), rows, v, s(node, 'ignoreIndex'), buf(scale), buf(out),
    );
    scale.dispose();
    return [out];
  },
  attention: (g, node) => {
    const q = s<Tensor>(node, 'q');
    const k = s<Tensor>(node, 'k');
    const v = s<Tensor>(node, 'v');
    const mask = s<Tensor | null>(node, 'mask');
    const gc = contiguous(g);
    const dq = empty(q.shape);
    const dk = empty(k.shape);
    const dv = empty(v.shape);
    const [B, H, Tq, D] = q.shape as number[];
    kernels().attentionBackward({
      q: buf(q), k: buf(k), v: buf(v), batch: B!, heads: H!, kvHeads: k.shape[1]!, tq: Tq!, tk: k.shape[2]!, dim: D!,
      scale: s(node, 'scale'), causal: s(node, 'causal'), keyMask: mask ? buf(mask) : null,
      out: buf(s(node, 'out')), lse: buf(s(node, 'lse')), gradOut: buf(gc), dq: buf(dq), dk: buf(dk), dv: buf(dv),
    });
    if (gc !== g) gc.dispose();
    return [dq, dk, dv];
  },
  rope: (g, node) => [rope(g, s(node, 'cos'), s(node, 'sin'), !s<boolean>(node, 'inverse'))],
  checkpoint: (g, node, needs) => {
    const fn = s<(...xs: Tensor[]) => Tensor>(node, 'fn');
    const after = defaultRng.getState();
    defaultRng.setState(s<number[]>(node, 'rngState'));
    const xs = node.inputs.map((x, i) => {
      const d = detach(x);
      d.requiresGrad = needs[i]!;
      return d;
    });
    const grads = tidy(() => {
      const out = withGrad(() => fn(...xs));
      backward(out, g);
      return xs.map((x) => x.grad);
    });
    defaultRng.setState(after);
    for (const gr of grads) if (gr) gr.kept = false;
    return grads;
  },
};

function binaryMinMax(cmp: 'ge' | 'le'): VjpRule {
  return (g, node, needs) => {
    const mask = compare(cmp, s<Tensor>(node, 'a'), s<Tensor>(node, 'b'));
    return pair(node, needs, () => binary('mul', g, mask), () => binary('mul', g, binary('sub', 1, mask)));
  };
}

function softmaxRule(log: boolean): VjpRule {
  return (g, node) => {
    const y = s<Tensor>(node, 'y');
    const gc = contiguous(g);
    const out = empty(y.shape);
    const c = y.ndim === 0 ? 1 : y.shape[y.ndim - 1]!;
    kernels().softmaxBackward(buf(y), buf(gc), numel(y.shape) / c, c, buf(out), log);
    if (gc !== g) gc.dispose();
    return [out];
  };
}

function reduceMaxKeep(x: Tensor, axis: number): Tensor {
  const outer = numel(x.shape.slice(0, axis));
  const n = x.shape[axis]!;
  const inner = numel(x.shape.slice(axis + 1));
  const out = empty(x.shape.map((d, i) => (i === axis ? 1 : d)));
  kernels().max(buf(x), outer, n, inner, buf(out));
  return out;
}
