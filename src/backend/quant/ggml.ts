/**
 * GGUF block formats (ggml's block_q8_0, block_q4_0, block_q4_K, block_q6_K), byte for byte as
 * tensor data lies in the file; scales are little-endian IEEE half.
 *   Q8_0  32 values, 34 bytes: d, int8 q[32];                         x = q·d
 *   Q4_0  32 values, 18 bytes: d, qs[16] (low nibbles 0..15, high 16..31); x = (q − 8)·d
 *   Q4_K 256 values, 144 bytes: d, dmin, scales[12] (eight 6-bit scale/min pairs), qs[128];
 *         sub-block j of 32: x = d·sc_j·q − dmin·m_j
 *   Q6_K 256 values, 210 bytes: ql[128], qh[64], int8 scales[16], d; sub-block j of 16: x = d·sc_j·(q − 32)
 * Every dequantized value is an exact f32 product (or one rounded difference for Q4_K), so the
 * order of the multiplications cannot change a bit. Q8_0 and Q4_0 quantize exactly as ggml's
 * reference quantizers; Q4_K and Q6_K use quantizers of our own that keep every value within
 * half a step of its level (their layouts, not their search, are the format).
 */
import { f16ToF32, f32ToF16 } from '../../tensor/half.js';
import type { GgmlFormatName, GgmlTensor, QuantFormat, QuantizeOptions } from './types.js';
import { checkData, checkLength, checkedNumel, f32, fail, roundHalfAway, roundHalfEven, rowLength } from './numeric.js';

interface BlockCodec {
  readonly name: GgmlFormatName;
  readonly block: number;
  readonly bytes: number;
  readonly ggmlType: number;
  readonly note: string;
  /** Block of `block` values at x[xo] into bytes at out[oo] (zero-filled). */
  quantize(x: Float32Array, xo: number, out: Uint8Array, oo: number, name: string | undefined): void;
  /** Block at b[bo] into `block` values at y[yo]. */
  dequantize(b: Uint8Array, bo: number, y: Float32Array, yo: number): void;
}

function half(b: Uint8Array, o: number): number {
  return f16ToF32(b[o]! | (b[o + 1]! << 8));
}

function putHalf(b: Uint8Array, o: number, bits: number): void {
  b[o] = bits & 0xff;
  b[o + 1] = bits >> 8;
}

/** The smallest positive half h with h·factor ≥ x, so a scale rounded to f16 still covers its block. */
function halfCovering(x: number, factor: number, name: string | undefined): number {
  let h = f32ToF16(x / factor);
  while (f16ToF32(h) * factor < x) h++;
  if ((h & 0x7c00) === 0x7c00) fail(name, 'data', `a block scale ${x / factor} exceeds the f16 range`);
  return h;
}

const Q8_0: BlockCodec = {
  name: 'q8_0', block: 32, bytes: 34, ggmlType: 8,
  note: 'blocks of 32: f16 d, then 32 int8 q; x = q·d',
  quantize(x, xo, out, oo) {
    let amax = 0;
    for (let j = 0; j < 32; j++) amax = Math.max(amax, Math.abs(x[xo + j]!));
    const d = f32(amax / 127);
    const id = d ? f32(1 / d) : 0;
    putHalf(out, oo, f32ToF16(d));
    for (let j = 0; j < 32; j++) out[oo + 2 + j] = roundHalfAway(f32(x[xo + j]! * id)) & 0xff;
  },
  dequantize(b, bo, y, yo) {
    const d = half(b, bo);
    for (let j = 0; j < 32; j++) y[yo + j] = ((b[bo + 2 + j]! << 24) >> 24) * d;
  },
};

const Q4_0: BlockCodec = {
  name: 'q4_0', block: 32, bytes: 18, ggmlType: 2,
  note: 'blocks of 32: f16 d, then 16 bytes; byte j holds element j (low nibble) and j+16 (high); x = (q − 8)·d',
  quantize(x, xo, out, oo) {
    // the value of largest magnitude (first one on ties) maps to −8 exactly
    let amax = 0;
    let max = 0;
    for (let j = 0; j < 32; j++) {
      const v = x[xo + j]!;
      if (amax < Math.abs(v)) {
        amax = Math.abs(v);
        max = v;
      }
    }
    const d = f32(max / -8);
    const id = d ? f32(1 / d) : 0;
    putHalf(out, oo, f32ToF16(d));
    // truncation of x·id + 8.5, as the reference does, not round-to-nearest
    const code = (v: number): number => Math.min(15, Math.trunc(f32(f32(v * id) + 8.5)));
    for (let j = 0; j < 16; j++) out[oo + 2 + j] = code(x[xo + j]!) | (code(x[xo + 16 + j]!) << 4);
  },
  dequantize(b, bo, y, yo) {
    const d = half(b, bo);
    for (let j = 0; j < 16; j++) {
      const q = b[bo + 2 + j]!;
      y[yo + j] = ((q & 15) - 8) * d;
      y[yo + j + 16] = ((q >> 4) - 8) * d;
    }
  },
};

/** Q4_K's 6-bit scale and min of sub-block j from the 12 packed bytes at s[so]. */
function scaleMinK4(j: number, s: Uint8Array, so: number): [number, number] {
  if (j < 4) return [s[so + j]! & 63, s[so + j + 4]! & 63];
  return [(s[so + j + 4]! & 15) | ((s[so + j - 4]! >> 6) << 4), (s[so + j + 4]! >> 4) | ((s[so + j]! >> 6) << 4)];
}

const Q4_K: BlockCodec = {
  name: 'q4_K', block: 256, bytes: 144, ggmlType: 12,
  note: 'super-blocks of 256: f16 d, f16 dmin, 12 bytes of 6-bit (scale, min) for 8 sub-blocks of 32, 128 bytes qs; in each 64 values, byte l holds element l (low nibble) and l+32 (high); x = d·sc·q − dmin·m',
  quantize(x, xo, out, oo, name) {
    const lo = new Float64Array(8);
    const hi = new Float64Array(8);
    for (let j = 0; j < 8; j++) {
      let a = Infinity;
      let b = -Infinity;
      for (let l = 0; l < 32; l++) {
        const v = x[xo + 32 * j + l]!;
        a = Math.min(a, v);
        b = Math.max(b, v);
      }
      lo[j] = Math.min(0, a);
      hi[j] = b;
    }
    // offsets first (each m·dmin at least −min), then the steps that reach the max from there
    let maxMin = 0;
    for (let j = 0; j < 8; j++) maxMin = Math.max(maxMin, -lo[j]!);
    const dminBits = maxMin > 0 ? halfCovering(maxMin, 63, name) : 0;
    const dmin = f16ToF32(dminBits);
    const lm = new Uint8Array(8);
    const offset = new Float64Array(8);
    for (let j = 0; j < 8; j++) {
      let m = dmin > 0 ? Math.min(63, Math.ceil(-lo[j]! / dmin)) : 0;
      while (m < 63 && dmin * m < -lo[j]!) m++;
      lm[j] = m;
      offset[j] = dmin * m;
    }
    let maxNeed = 0;
    for (let j = 0; j < 8; j++) maxNeed = Math.max(maxNeed, (hi[j]! + offset[j]!) / 15);
    const dBits = maxNeed > 0 ? halfCovering(maxNeed, 63, name) : 0;
    const d = f16ToF32(dBits);
    const ls = new Uint8Array(8);
    for (let j = 0; j < 8; j++) {
      const need = (hi[j]! + offset[j]!) / 15;
      let s = d > 0 && need > 0 ? Math.min(63, Math.ceil(need / d)) : 0;
      while (s < 63 && d > 0 && f32(d * s * 15 - offset[j]!) < hi[j]!) s++;
      ls[j] = s;
    }
    putHalf(out, oo, dBits);
    putHalf(out, oo + 2, dminBits);
    const sc = oo + 4;
    for (let j = 0; j < 8; j++) {
      if (j < 4) {
        out[sc + j] = ls[j]!;
        out[sc + j + 4] = lm[j]!;
      } else {
        out[sc + j + 4] = (ls[j]! & 15) | ((lm[j]! & 15) << 4);
        out[sc + j - 4]! |= (ls[j]! >> 4) << 6;
        out[sc + j]! |= (lm[j]! >> 4) << 6;
      }
    }
    const qs = oo + 16;
    for (let e = 0; e < 256; e++) {
      const j = e >> 5;
      const step = d * ls[j]!;
      const q = step > 0 ? Math.max(0, Math.min(15, roundHalfEven((x[xo + e]! + offset[j]!) / step))) : 0;
      const byte = qs + ((e >> 6) << 5) + (e & 31);
      out[byte]! |= e & 32 ? q << 4 : q;
    }
  },
  dequantize(b, bo, y, yo) {
    const d = half(b, bo);
    const dmin = half(b, bo + 2);
    for (let c = 0; c < 4; c++) {
      const [s1, m1] = scaleMinK4(2 * c, b, bo + 4);
      const [s2, m2] = scaleMinK4(2 * c + 1, b, bo + 4);
      const d1 = d * s1, o1 = dmin * m1, d2 = d * s2, o2 = dmin * m2;
      const q = bo + 16 + 32 * c;
      for (let l = 0; l < 32; l++) {
        y[yo + 64 * c + l] = f32(d1 * (b[q + l]! & 15) - o1);
        y[yo + 64 * c + 32 + l] = f32(d2 * (b[q + l]! >> 4) - o2);
      }
    }
  },
};

const Q6_K: BlockCodec = {
  name: 'q6_K', block: 256, bytes: 210, ggmlType: 14,
  note: 'super-blocks of 256: ql[128] (low 4 bits), qh[64] (high 2 bits), 16 int8 scales for sub-blocks of 16, f16 d; in each 128 values, ql[l] holds l (low nibble) and l+64 (high), ql[l+32] holds l+32 and l+96, qh[l] bits 2k..2k+1 the high bits of l+32k; x = d·sc·(q − 32)',
  quantize(x, xo, out, oo, name) {
    // the signed step of each sub-block: q runs −32..31, so the sign decides which side gets 32
    const steps = new Float64Array(16);
    let maxStep = 0;
    for (let j = 0; j < 16; j++) {
      let pos = 0;
      let neg = 0;
      for (let l = 0; l < 16; l++) {
        const v = x[xo + 16 * j + l]!;
        pos = Math.max(pos, v);
        neg = Math.max(neg, -v);
      }
      const up = Math.max(pos / 31, neg / 32);
      const down = Math.max(pos / 32, neg / 31);
      steps[j] = down < up ? -down : up;
      maxStep = Math.max(maxStep, Math.abs(steps[j]!));
    }
    const dBits = maxStep > 0 ? halfCovering(maxStep, 127, name) : 0;
    const d = f16ToF32(dBits);
    const sc = new Int8Array(16);
    for (let j = 0; j < 16; j++) {
      const need = Math.abs(steps[j]!);
      let s = d > 0 && need > 0 ? Math.min(127, Math.ceil(need / d)) : 0;
      while (s < 127 && d * s < need) s++;
      sc[j] = steps[j]! < 0 ? -s : s;
    }
    const L = new Uint8Array(256);
    for (let e = 0; e < 256; e++) {
      const step = d * sc[e >> 4]!;
      L[e] = 32 + (step !== 0 ? Math.max(-32, Math.min(31, roundHalfEven(x[xo + e]! / step))) : 0);
    }
    for (let h = 0; h < 2; h++) {
      const ql = oo + 64 * h;
      const qh = oo + 128 + 32 * h;
      const e = 128 * h;
      for (let l = 0; l < 32; l++) {
        const q1 = L[e + l]!, q2 = L[e + l + 32]!, q3 = L[e + l + 64]!, q4 = L[e + l + 96]!;
        out[ql + l] = (q1 & 15) | ((q3 & 15) << 4);
        out[ql + l + 32] = (q2 & 15) | ((q4 & 15) << 4);
        out[qh + l] = (q1 >> 4) | ((q2 >> 4) << 2) | ((q3 >> 4) << 4) | ((q4 >> 4) << 6);
      }
    }
    for (let j = 0; j < 16; j++) out[oo + 192 + j] = sc[j]! & 0xff;
    putHalf(out, oo + 208, dBits);
  },
  dequantize(b, bo, y, yo) {
    const d = half(b, bo + 208);
    for (let h = 0; h < 2; h++) {
      const ql = bo + 64 * h;
      const qh = bo + 128 + 32 * h;
      const sc = bo + 192 + 8 * h;
      const o = yo + 128 * h;
      for (let l = 0; l < 32; l++) {
        const is = l >> 4;
        const hb = b[qh + l]!;
        const s = (k: number): number => d * ((b[sc + is + k]! << 24) >> 24);
        y[o + l] = s(0) * (((b[ql + l]! & 15) | ((hb & 3) << 4)) - 32);
        y[o + l + 32] = s(2) * (((b[ql + l + 32]! & 15) | (((hb >> 2) & 3) << 4)) - 32);
        y[o + l + 64] = s(4) * (((b[ql + l]! >> 4) | (((hb >> 4) & 3) << 4)) - 32);
        y[o + l + 96] = s(6) * (((b[ql + l + 32]! >> 4) | (((hb >> 6) & 3) << 4)) - 32);
      }
    }
  },
};

function ggmlFormat(c: BlockCodec): QuantFormat<GgmlTensor> {
  const scratch = new Float32Array(c.block);
  const validate = (q: GgmlTensor): void => {
    rowLength(q.name, q.shape, c.block, c.name);
    const n = checkedNumel(q.name, q.shape);
    checkLength(q.name, 'data', q.data.length, (n / c.block) * c.bytes, `shape [${q.shape.join(', ')}] as ${n / c.block} ${c.name} blocks of ${c.bytes} bytes`);
  };
  const dequantizeRange = (q: GgmlTensor, start: number, count: number, out: Float32Array): void => {
    const end = start + count;
    for (let b = Math.floor(start / c.block); b * c.block < end; b++) {
      const s = b * c.block;
      if (s >= start && s + c.block <= end) {
        c.dequantize(q.data, b * c.bytes, out, s - start);
      } else {
        c.dequantize(q.data, b * c.bytes, scratch, 0);
        for (let i = Math.max(s, start); i < Math.min(s + c.block, end); i++) out[i - start] = scratch[i - s]!;
      }
    }
  };
  return {
    name: c.name,
    family: 'ggml',
    blockSize: c.block,
    bytesPerBlock: c.bytes,
    layout: 'rows',
    ggmlType: c.ggmlType,
    layoutNote: c.note,
    quantize(data: Float32Array, shape: readonly number[], opts: QuantizeOptions = {}): GgmlTensor {
      const { name } = opts;
      if (opts.blocksize !== undefined || opts.doubleQuant !== undefined) fail(name, 'options', `${c.name} has a fixed layout (blocksize and doubleQuant apply to nf4/fp4)`);
      rowLength(name, shape, c.block, c.name);
      const n = checkData(name, data, shape);
      const blocks = n / c.block;
      const out = new Uint8Array(blocks * c.bytes);
      for (let b = 0; b < blocks; b++) c.quantize(data, b * c.block, out, b * c.bytes, name);
      return { format: c.name, shape: [...shape], data: out, ...(name === undefined ? {} : { name }) };
    },
    dequantize(q: GgmlTensor): Float32Array {
      validate(q);
      const out = new Float32Array(q.data.length / c.bytes * c.block);
      dequantizeRange(q, 0, out.length, out);
      return out;
    },
    dequantizeRange,
    validate,
  };
}

export const Q8_0_FORMAT = ggmlFormat(Q8_0);
export const Q4_0_FORMAT = ggmlFormat(Q4_0);
export const Q4_K_FORMAT = ggmlFormat(Q4_K);
export const Q6_K_FORMAT = ggmlFormat(Q6_K);
