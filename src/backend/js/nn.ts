import type { AnyArray, AttentionArgs, AttentionBackwardArgs } from '../../tensor/index.js';

export function indexSelect(x: AnyArray, outer: number, rows: number, inner: number, idx: Int32Array, out: AnyArray): void {
  const n = idx.length;
  for (let o = 0; o < outer; o++) {
    for (let j = 0; j < n; j++) {
      const src = (o * rows + idx[j]!) * inner;
      out.set(x.subarray(src, src + inner), (o * n + j) * inner);
    }
  }
}

export function indexAdd(src: Float32Array, outer: number, rows: number, inner: number, idx: Int32Array, out: Float32Array): void {
  const n = idx.length;
  for (let o = 0; o < outer; o++) {
    for (let j = 0; j < n; j++) {
      const s = (o * n + j) * inner;
      const d = (o * rows + idx[j]!) * inner;
      for (let i = 0; i < inner; i++) out[d + i]! += src[s + i]!;
    }
  }
}

export function rmsnorm(x: Float32Array, w: Float32Array, rows: number, cols: number, eps: number, out: Float32Array, rstd: Float32Array): void {
  for (let r = 0; r < rows; r++) {
    const b = r * cols;
    let ss = 0;
    for (let j = 0; j < cols; j++) ss += x[b + j]! * x[b + j]!;
    const rs = 1 / Math.sqrt(ss / cols + eps);
    rstd[r] = rs;
    for (let j = 0; j < cols; j++) out[b + j] = x[b + j]! * rs * w[j]!;
  }
}

export function rmsnormBackward(
  x: Float32Array, w: Float32Array, rstd: Float32Array, g: Float32Array, rows: number, cols: number,
  dx: Float32Array | null, dw: Float32Array | null,
): void {
  if (dw) dw.fill(0);
  for (let r = 0; r < rows; r++) {
    const b = r * cols;
    const rs = rstd[r]!;
    let dot = 0;
    for (let j = 0; j < cols; j++) {
      const xh = x[b + j]! * rs;
      dot += g[b + j]! * w[j]! * xh;
      if (dw) dw[j]! += g[b + j]! * xh;
    }
    if (!dx) continue;
    const mdot = dot / cols;
    for (let j = 0; j < cols; j++) dx[b + j] = rs * (g[b + j]! * w[j]! - x[b + j]! * rs * mdot);
  }
}

export function layernorm(
  x: Float32Array, w: Float32Array, bias: Float32Array, rows: number, cols: number, eps: number,
  out: Float32Array, mean: Float32Array, rstd: Float32Array,
): void {
  for (let r = 0; r < rows; r++) {
    const b = r * cols;
    let s = 0;
    for (let j = 0; j < cols; j++) s += x[b + j]!;
    const mu = s / cols;
    let v = 0;
    for (let j = 0; j < cols; j++) v += (x[b + j]! - mu) ** 2;
    const rs = 1 / Math.sqrt(v / cols + eps);
    mean[r] = mu;
    rstd[r] = rs;
    for (let j = 0; j < cols; j++) out[b + j] = (x[b + j]! - mu) * rs * w[j]! + bias[j]!;
  }
}

export function layernormBackward(
  x: Float32Array, w: Float32Array, mean: Float32Array, rstd: Float32Array, g: Float32Array, rows: number, cols: number,
  dx: Float32Array | null, dw: Float32Array | null, db: Float32Array | null,
): void {
  if (dw) dw.fill(0);
  if (db) db.fill(0);
  for (let r = 0; r < rows; r++) {
    const b = r * cols;
    const mu = mean[r]!;
    const rs = rstd[r]!;
    let sg = 0;
    let sgx = 0;
    for (let j = 0; j < cols; j++) {
      const xh = (x[b + j]! - mu) * rs;
      const gw = g[b + j]! * w[j]!;
      sg += gw;
      sgx += gw * xh;
      if (dw) dw[j]! += g[b + j]! * xh;
      if (db) db[j]! += g[b + j]!;
    }
    if (!dx) continue;
    sg /= cols;
    sgx /= cols;
    for (let j = 0; j < cols; j++) {
      const xh = (x[b + j]! - mu) * rs;
      dx[b + j] = rs * (g[b + j]! * w[j]! - sg - xh * sgx);
    }
  }
}

export function crossEntropy(
  logits: Float32Array, targets: Int32Array, rows: number, cols: number, ignoreIndex: number, loss: Float32Array, lse: Float32Array,
): void {
  for (let r = 0; r < rows; r++) {
    const b = r * cols;
    let m = -Infinity;
    for (let j = 0; j < cols; j++) if (logits[b + j]! > m) m = logits[b + j]!;
    let s = 0;
    for (let j = 0; j < cols; j++) s += Math.exp(logits[b + j]! - m);
    const l = m + Math.log(s);
    lse[r] = l;
    const t = targets[r]!;
    loss[r] = t === ignoreIndex ? 0 : l - logits[b + t]!;
  }
}

export function crossEntropyBackward(
  logits: Float32Array, targets: Int32Array, lse: Float32Array, rows: number, cols: number, ignoreIndex: number,
  scale: Float32Array, dlogits: Float32Array,
): void {
  for (let r = 0; r < rows; r++) {
    const b = r * cols;
    const t = targets[r]!;
    if (t === ignoreIndex) {
      dlogits.fill(0, b, b + cols);
      continue;
    }
    const sc = scale[r]!;
    const l = lse[r]!;
    for (let j = 0; j < cols; j++) dlogits[b + j] = sc * Math.exp(logits[b + j]! - l);
    dlogits[b + t]! -= sc;
  }
}

/** Index of the last key query row t may see (inclusive), or -1 for none. */
function lastKey(a: AttentionArgs, t: number): number {
  return a.causal ? t + a.tk - a.tq : a.tk - 1;
}

export function attention(a: AttentionArgs): void {
  const { batch, heads, kvHeads, tq, tk, dim: D, scale } = a;
  const group = heads / kvHeads;
  const s = new Float64Array(tk);
  for (let b = 0; b < batch; b++) {
    for (let h = 0; h < heads; h++) {
      const kvh = Math.floor(h / group);
      const qb = (b * heads + h) * tq * D;
      const kb = (b * kvHeads + kvh) * tk * D;
      for (let t = 0; t < tq; t++) {
        const qo = qb + t * D;
        const last = lastKey(a, t);
        let m = -Infinity;
        for (let j = 0; j <= last; j++) {
          if (a.keyMask && a.keyMask[b * tk + j] === 0) {
            s[j] = -Infinity;
            continue;
          }
          let dot = 0;
          const ko = kb + j * D;
          for (let d = 0; d < D; d++) dot += a.q[qo + d]! * a.k[ko + d]!;
          s[j] = dot * scale;
          if (s[j]! > m) m = s[j]!;
        }
        const oo = qo;
        a.out.fill(0, oo, oo + D);
        if (m === -Infinity) {
          a.lse[(b * heads + h) * tq + t] = -Infinity;
          continue;
        }
        let l = 0;
        for (let j = 0; j <= last; j++) {
          if (s[j] === -Infinity) continue;
          const p = Math.exp(s[j]! - m);
          l += p;
          const vo = kb + j * D;
          for (let d = 0; d < D; d++) a.out[oo + d]! += p * a.v[vo + d]!;
        }
        for (let d = 0; d < D; d++) a.out[oo + d]! /= l;
        a.lse[(b * heads + h) * tq + t] = m + Math.log(l);
      }
    }
  }
}

export function attentionBackward(a: AttentionBackwardArgs): void {
  const { batch, heads, kvHeads, tq, tk, dim: D, scale } = a;
  const group = heads / kvHeads;
  a.dk.fill(0);
  a.dv.fill(0);
  for (let b = 0; b < batch; b++) {
    for (let h = 0; h < heads; h++) {
      const kvh = Math.floor(h / group);
      const qb = (b * heads + h) * tq * D;
      const kb = (b * kvHeads + kvh) * tk * D;
      for (let t = 0; t < tq; t++) {
        const qo = qb + t * D;
        a.dq.fill(0, qo, qo + D);
        const lse = a.lse[(b * heads + h) * tq + t]!;
        if (lse === -Infinity) continue;
        let dsum = 0;
        for (let d = 0; d < D; d++) dsum += a.gradOut[qo + d]! * a.out[qo + d]!;
        const last = lastKey(a, t);
        for (let j = 0; j <= last; j++) {
          if (a.keyMask && a.keyMask[b * tk + j] === 0) continue;
          const ko = kb + j * D;
          let dot = 0;
          let dp = 0;
          for (let d = 0; d < D; d++) {
            dot += a.q[qo + d]! * a.k[ko + d]!;
            dp += a.gradOut[qo + d]! * a.v[ko + d]!;
          }
          const p = Math.exp(dot * scale - lse);
          const ds = p * (dp - dsum) * scale;
          for (let d = 0; d < D; d++) {
            a.dq[qo + d]! += ds * a.k[ko + d]!;
            a.dk[ko + d]! += ds * a.q[qo + d]!;
            a.dv[ko + d]! += p * a.gradOut[qo + d]!;
          }
        }
      }
    }
  }
}

export function rope(
  x: Float32Array, cos: Float32Array, sin: Float32Array, outer: number, t: number, d: number, out: Float32Array, inverse: boolean,
): void {
  const half = d / 2;
  const sign = inverse ? -1 : 1;
  for (let o = 0; o < outer; o++) {
    for (let p = 0; p < t; p++) {
      const base = (o * t + p) * d;
      const tb = p * half;
      for (let i = 0; i < half; i++) {
        const c = cos[tb + i]!;
        const s = sign * sin[tb + i]!;
        const x1 = x[base + i]!;
        const x2 = x[base + i + half]!;
        out[base + i] = x1 * c - x2 * s;
        out[base + i + half] = x2 * c + x1 * s;
      }
    }
  }
}
