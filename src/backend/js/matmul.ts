import type { MatmulArgs } from '../../tensor/index.js';

const KB = 256;
const JB = 512;

/**
 * Reference SGEMM in plain TypeScript. Transposed A is first copied row-major; then either a
 * blocked i-k-j loop over four rows at a time (B row-major) or 4-wide dot products (B transposed).
 */
export function matmul(p: MatmulArgs): void {
  const { m, n, k } = p;
  for (let bi = 0; bi < p.batch; bi++) {
    const c = p.out.subarray(bi * m * n, (bi + 1) * m * n);
    if (!p.accumulate) c.fill(0);
    let a = p.a.subarray(bi * p.strideA);
    let lda = p.lda;
    if (p.transA) {
      const t = new Float32Array(m * k);
      for (let pp = 0; pp < k; pp++) for (let i = 0; i < m; i++) t[i * k + pp] = a[pp * lda + i]!;
      a = t;
      lda = k;
    }
    const b = p.b.subarray(bi * p.strideB);
    if (p.transB) gemmNT(m, n, k, a, lda, b, p.ldb, c);
    else gemmNN(m, n, k, a, lda, b, p.ldb, c);
  }
}

function gemmNN(m: number, n: number, k: number, a: Float32Array, lda: number, b: Float32Array, ldb: number, c: Float32Array): void {
  for (let j0 = 0; j0 < n; j0 += JB) {
    const j1 = Math.min(n, j0 + JB);
    for (let p0 = 0; p0 < k; p0 += KB) {
      const p1 = Math.min(k, p0 + KB);
      let i = 0;
      for (; i + 4 <= m; i += 4) {
        const c0 = i * n, c1 = c0 + n, c2 = c1 + n, c3 = c2 + n;
        for (let pp = p0; pp < p1; pp++) {
          const a0 = a[i * lda + pp]!, a1 = a[(i + 1) * lda + pp]!, a2 = a[(i + 2) * lda + pp]!, a3 = a[(i + 3) * lda + pp]!;
          const bo = pp * ldb;
          for (let j = j0; j < j1; j++) {
            const bv = b[bo + j]!;
            c[c0 + j]! += a0 * bv;
            c[c1 + j]! += a1 * bv;
            c[c2 + j]! += a2 * bv;
            c[c3 + j]! += a3 * bv;
          }
        }
      }
      for (; i < m; i++) {
        const c0 = i * n;
        for (let pp = p0; pp < p1; pp++) {
          const a0 = a[i * lda + pp]!;
          const bo = pp * ldb;
          for (let j = j0; j < j1; j++) c[c0 + j]! += a0 * b[bo + j]!;
        }
      }
    }
  }
}

function gemmNT(m: number, n: number, k: number, a: Float32Array, lda: number, b: Float32Array, ldb: number, c: Float32Array): void {
  for (let i = 0; i < m; i++) {
    const ao = i * lda;
    let j = 0;
    for (; j + 4 <= n; j += 4) {
      const b0 = j * ldb, b1 = b0 + ldb, b2 = b1 + ldb, b3 = b2 + ldb;
      let s0 = 0, s1 = 0, s2 = 0, s3 = 0;
      for (let pp = 0; pp < k; pp++) {
        const av = a[ao + pp]!;
        s0 += av * b[b0 + pp]!;
        s1 += av * b[b1 + pp]!;
        s2 += av * b[b2 + pp]!;
        s3 += av * b[b3 + pp]!;
      }
      c[i * n + j]! += s0;
      c[i * n + j + 1]! += s1;
      c[i * n + j + 2]! += s2;
      c[i * n + j + 3]! += s3;
    }
    for (; j < n; j++) {
      let s = 0;
      const bo = j * ldb;
      for (let pp = 0; pp < k; pp++) s += a[ao + pp]! * b[bo + pp]!;
      c[i * n + j]! += s;
    }
  }
}
