export function sum(x: Float32Array, outer: number, n: number, inner: number, out: Float32Array): void {
  for (let o = 0; o < outer; o++) {
    const base = o * n * inner;
    const ob = o * inner;
    if (inner === 1) {
      let s = 0;
      for (let j = 0; j < n; j++) s += x[base + j]!;
      out[ob] = s;
      continue;
    }
    for (let i = 0; i < inner; i++) out[ob + i] = 0;
    for (let j = 0; j < n; j++) {
      const row = base + j * inner;
      for (let i = 0; i < inner; i++) out[ob + i]! += x[row + i]!;
    }
  }
}

export function max(x: Float32Array, outer: number, n: number, inner: number, out: Float32Array): void {
  for (let o = 0; o < outer; o++) {
    const base = o * n * inner;
    const ob = o * inner;
    for (let i = 0; i < inner; i++) out[ob + i] = x[base + i]!;
    for (let j = 1; j < n; j++) {
      const row = base + j * inner;
      for (let i = 0; i < inner; i++) {
        const v = x[row + i]!;
        if (v > out[ob + i]! || Number.isNaN(v)) out[ob + i] = v;
      }
    }
  }
}

export function softmax(x: Float32Array, rows: number, cols: number, out: Float32Array, log: boolean): void {
  for (let r = 0; r < rows; r++) {
    const b = r * cols;
    let m = -Infinity;
    for (let j = 0; j < cols; j++) if (x[b + j]! > m) m = x[b + j]!;
    let s = 0;
    for (let j = 0; j < cols; j++) s += Math.exp(x[b + j]! - m);
    if (log) {
      const lse = m + Math.log(s);
      for (let j = 0; j < cols; j++) out[b + j] = x[b + j]! - lse;
    } else {
      const inv = 1 / s;
      for (let j = 0; j < cols; j++) out[b + j] = Math.exp(x[b + j]! - m) * inv;
    }
  }
}

export function softmaxBackward(y: Float32Array, g: Float32Array, rows: number, cols: number, out: Float32Array, log: boolean): void {
  for (let r = 0; r < rows; r++) {
    const b = r * cols;
    if (log) {
      let s = 0;
      for (let j = 0; j < cols; j++) s += g[b + j]!;
      for (let j = 0; j < cols; j++) out[b + j] = g[b + j]! - Math.exp(y[b + j]!) * s;
    } else {
      let s = 0;
      for (let j = 0; j < cols; j++) s += g[b + j]! * y[b + j]!;
      for (let j = 0; j < cols; j++) out[b + j] = y[b + j]! * (g[b + j]! - s);
    }
  }
}
