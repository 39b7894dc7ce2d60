/**
 * Small dense linear algebra on host float64 arrays (row-major): SVD by one-sided Jacobi,
 * inverse by Gauss-Jordan. Used to initialize and merge adapters, not in training loops.
 */
import { AdaptkitError } from './errors.js';

export interface SVD {
  /** [m, k] left singular vectors (columns), k = min(m, n). */
  u: Float64Array;
  /** [k] singular values, descending. */
  s: Float64Array;
  /** [n, k] right singular vectors (columns): A = U diag(S) Vᵀ. */
  v: Float64Array;
  m: number;
  n: number;
  k: number;
}

/** Thin SVD of A [m, n]. */
export function svd(a: ArrayLike<number>, m: number, n: number): SVD {
  if (a.length !== m * n) throw new AdaptkitError(`svd: ${a.length} values for a ${m}x${n} matrix`);
  if (m < n) {
    // work on Aᵀ and swap the factors
    const t = new Float64Array(n * m);
    for (let i = 0; i < m; i++) for (let j = 0; j < n; j++) t[j * m + i] = a[i * n + j]!;
    const r = svd(t, n, m);
    return { u: r.v, s: r.s, v: r.u, m, n, k: r.k };
  }
  // one-sided Jacobi on the columns of U = A (m >= n), accumulating V
  const u = Float64Array.from(a as ArrayLike<number>);
  const v = new Float64Array(n * n);
  for (let i = 0; i < n; i++) v[i * n + i] = 1;
  for (let sweep = 0; sweep < 60; sweep++) {
    let off = 0;
    for (let p = 0; p < n - 1; p++) {
      for (let q = p + 1; q < n; q++) {
        let alpha = 0, beta = 0, gamma = 0;
        for (let i = 0; i < m; i++) {
          const up = u[i * n + p]!, uq = u[i * n + q]!;
          alpha += up * up;
          beta += uq * uq;
          gamma += up * uq;
        }
        if (Math.abs(gamma) <= 1e-15 * Math.sqrt(alpha * beta) || gamma === 0) continue;
        off = Math.max(off, Math.abs(gamma) / Math.sqrt(alpha * beta));
        const zeta = (beta - alpha) / (2 * gamma);
        const t = Math.sign(zeta || 1) / (Math.abs(zeta) + Math.sqrt(1 + zeta * zeta));
        const c = 1 / Math.sqrt(1 + t * t);
        const s = c * t;
        for (let i = 0; i < m; i++) {
          const up = u[i * n + p]!, uq = u[i * n + q]!;
          u[i * n + p] = c * up - s * uq;
          u[i * n + q] = s * up + c * uq;
        }
        for (let i = 0; i < n; i++) {
          const vp = v[i * n + p]!, vq = v[i * n + q]!;
          v[i * n + p] = c * vp - s * vq;
          v[i * n + q] = s * vp + c * vq;
        }
      }
    }
    if (off < 1e-13) break;
  }
  const sv = new Float64Array(n);
  for (let j = 0; j < n; j++) {
    let norm = 0;
    for (let i = 0; i < m; i++) norm += u[i * n + j]! ** 2;
    norm = Math.sqrt(norm);
    sv[j] = norm;
    if (norm > 0) for (let i = 0; i < m; i++) u[i * n + j]! /= norm;
  }
  // sort descending
  const order = Array.from(sv.keys()).sort((x, y) => sv[y]! - sv[x]!);
  const U = new Float64Array(m * n);
  const V = new Float64Array(n * n);
  const S = new Float64Array(n);
  order.forEach((src, dst) => {
    S[dst] = sv[src]!;
    for (let i = 0; i < m; i++) U[i * n + dst] = u[i * n + src]!;
    for (let i = 0; i < n; i++) V[i * n + dst] = v[i * n + src]!;
  });
  return { u: U, s: S, v: V, m, n, k: n };
}

/** Inverse of a square matrix [n, n] (Gauss-Jordan with partial pivoting). */
export function inverse(a: ArrayLike<number>, n: number): Float64Array {
  const w = 2 * n;
  const m = new Float64Array(n * w);
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < n; j++) m[i * w + j] = a[i * n + j]!;
    m[i * w + n + i] = 1;
  }
  for (let c = 0; c < n; c++) {
    let piv = c;
    for (let r = c + 1; r < n; r++) if (Math.abs(m[r * w + c]!) > Math.abs(m[piv * w + c]!)) piv = r;
    if (Math.abs(m[piv * w + c]!) < 1e-300) throw new AdaptkitError('inverse: the matrix is singular');
    if (piv !== c) for (let j = 0; j < w; j++) [m[c * w + j], m[piv * w + j]] = [m[piv * w + j]!, m[c * w + j]!];
    const d = m[c * w + c]!;
    for (let j = 0; j < w; j++) m[c * w + j]! /= d;
    for (let r = 0; r < n; r++) {
      if (r === c) continue;
      const f = m[r * w + c]!;
      if (f !== 0) for (let j = 0; j < w; j++) m[r * w + j]! -= f * m[c * w + j]!;
    }
  }
  const out = new Float64Array(n * n);
  for (let i = 0; i < n; i++) for (let j = 0; j < n; j++) out[i * n + j] = m[i * w + n + j]!;
  return out;
}

/** C [m, n] = A [m, k] · B [k, n] in float64. */
export function matmul64(a: ArrayLike<number>, b: ArrayLike<number>, m: number, k: number, n: number): Float64Array {
  const c = new Float64Array(m * n);
  for (let i = 0; i < m; i++) {
    for (let p = 0; p < k; p++) {
      const av = a[i * k + p]!;
      if (av === 0) continue;
      for (let j = 0; j < n; j++) c[i * n + j]! += av * b[p * n + j]!;
    }
  }
  return c;
}
