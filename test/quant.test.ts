/**
 * Quantized weight formats against independent references: packed bytes and dequantized values
 * bit for bit against scripts/gen_quant_fixtures.py (bitsandbytes' torch algorithms, ggml's block
 * layouts and reference quantizers, written out in torch/numpy), round-trip error bounds computed
 * here from each block's own scale, and products on the packed form against plain loops over the
 * dequantized weight.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { AdaptkitError } from '../src/tensor/index.js';
import { f16ToF32 } from '../src/tensor/half.js';
import {
  DYNAMIC_MAP, NF4_CODE, FP4_CODE, QUANT_FORMAT_NAMES, blockMatmul, bnb4bitFromStateDict, bnb4bitStateDict, dequantize,
  ggmlTypeFormat, int8FromStateDict, int8Matmul, int8QuantizeActivations, int8StateDict, packQuantState,
  pythonFloatRepr, quantFormat, quantMatmul, quantize, quantStateKey,
  type Bnb4bitTensor, type GgmlTensor, type HalfTensor, type Int8RowwiseTensor, type QuantizedTensor,
} from '../src/backend/quant/index.js';

// ---- fixture reading (raw bytes, independent of the library's own safetensors reader)

interface Raw { dtype: string; shape: number[]; bytes: Uint8Array }
const DIR = new URL('./fixtures/quant/', import.meta.url);
const FIX = (() => {
  const buf = readFileSync(new URL('quant.safetensors', DIR));
  const len = Number(buf.readBigUInt64LE(0));
  const header = JSON.parse(buf.toString('utf8', 8, 8 + len)) as Record<string, { dtype: string; shape: number[]; data_offsets: [number, number] }>;
  const out = new Map<string, Raw>();
  for (const [k, v] of Object.entries(header)) {
    if (k === '__metadata__') continue;
    const [a, b] = v.data_offsets;
    out.set(k, { dtype: v.dtype, shape: v.shape, bytes: new Uint8Array(buf.subarray(8 + len + a, 8 + len + b)) });
  }
  return out;
})();
const CASES = JSON.parse(readFileSync(new URL('cases.json', DIR), 'utf8')) as Record<string, Record<string, unknown>>;

function raw(name: string): Raw {
  const t = FIX.get(name);
  assert.ok(t, `fixture tensor ${name}`);
  return t;
}
function asF32(name: string): Float32Array { const b = raw(name).bytes; return new Float32Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.length)); }
function asU8(name: string): Uint8Array { return Uint8Array.from(raw(name).bytes); }
function asI8(name: string): Int8Array { return new Int8Array(asU8(name).buffer); }
function bytesOf(a: Uint8Array | Int8Array | Float32Array | Uint16Array): Uint8Array { return new Uint8Array(a.buffer, a.byteOffset, a.byteLength); }

function sameBytes(got: Uint8Array | Int8Array | Float32Array | Uint16Array, want: Uint8Array | Int8Array | Float32Array | Uint16Array, what: string): void {
  const a = bytesOf(got);
  const b = bytesOf(want);
  assert.equal(a.length, b.length, `${what}: byte length`);
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) assert.fail(`${what}: first differing byte ${i} (${a[i]} vs ${b[i]})`);
}

// ---- deterministic data

function lcg(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
}
function gaussian(n: number, seed: number, scale = 1): Float32Array {
  const r = lcg(seed);
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = Math.sqrt(-2 * Math.log(r() + 1e-12)) * Math.cos(2 * Math.PI * r()) * scale;
  return out;
}

/** y = x·Wᵀ by plain loops in f64. */
function refMatmul(x: Float32Array, m: number, w: Float32Array, n: number, k: number): Float64Array {
  const y = new Float64Array(m * n);
  for (let i = 0; i < m; i++) for (let r = 0; r < n; r++) {
    let s = 0;
    for (let c = 0; c < k; c++) s += x[i * k + c]! * w[r * k + c]!;
    y[i * n + r] = s;
  }
  return y;
}

function assertClose(got: Float32Array, want: ArrayLike<number>, tol: number, what: string): void {
  assert.equal(got.length, want.length, `${what}: length`);
  let rms = 0;
  for (let i = 0; i < want.length; i++) rms += want[i]! ** 2;
  rms = Math.sqrt(rms / want.length);
  for (let i = 0; i < want.length; i++) {
    const err = Math.abs(got[i]! - want[i]!);
    if (!(err <= tol * (Math.abs(want[i]!) + rms))) assert.fail(`${what}: element ${i}: ${got[i]} vs ${want[i]}`);
  }
}

// ---- bitsandbytes 4-bit

const BNB4 = Object.entries(CASES).filter(([, c]) => c.kind === 'bnb4bit');

describe('bitsandbytes NF4 / FP4 against the torch reference', () => {
  it('the 8-bit dynamic map matches create_dynamic_map bit for bit', () => {
    sameBytes(DYNAMIC_MAP, asF32('dynamic_map'), 'dynamic map');
  });

  for (const [name, c] of BNB4) {
    it(`${name}: ${c.note}`, () => {
      const shape = c.shape as number[];
      const source = asF32(`${name}.source`);
      const q = quantize(c.quant_type as string, source, shape, { blocksize: c.blocksize as number, doubleQuant: c.double_quant as boolean, name: `${name}.weight` }) as Bnb4bitTensor;
      const sd = bnb4bitStateDict(q, name);
      const fixtureKeys = [...FIX.keys()].filter((k) => k.startsWith(`${name}.weight`)).sort();
      assert.deepEqual(Object.keys(sd).sort(), fixtureKeys);
      for (const [k, t] of Object.entries(sd)) {
        const f = raw(k);
        assert.equal(t.dtype, f.dtype, `${k} dtype`);
        assert.deepEqual(t.shape, f.shape, `${k} shape`);
        sameBytes(t.data, f.bytes, k);
      }
      const want = asF32(`${name}.dequant`);
      sameBytes(dequantize(q), want, `${name} dequantized`);
      // the loading path on the file's own tensors, not on our quantizer's output
      const get = (k: string) => {
        const f = FIX.get(k);
        if (!f) return undefined;
        return f.dtype === 'F32' ? asF32(k) : asU8(k);
      };
      const loaded = bnb4bitFromStateDict(name, get);
      assert.deepEqual([...loaded.shape], shape);
      sameBytes(dequantize(loaded), want, `${name} dequantized from the state dict`);
    });
  }

  it('the fixtures exercise exact midpoint ties and a partial last block', () => {
    for (const [name, code, ams] of [['nf4_ties', NF4_CODE, [1]], ['fp4_ties', FP4_CODE, [1, 4]]] as const) {
      const sorted = [...code].sort((a, b) => a - b);
      const ties = new Set<number>();
      for (const am of ams) for (let i = 0; i + 1 < sorted.length; i++) ties.add(Math.fround(Math.fround(Math.fround(sorted[i]! + sorted[i + 1]!) / 2) * am));
      ties.delete(0);
      const src = asF32(`${name}.source`);
      const hits = src.filter((v) => ties.has(v)).length;
      assert.ok(hits >= 14, `${name}: ${hits} tie values`);
      const n = src.length;
      assert.ok(n % 64 !== 0 && n % 2 === 1, 'partial block and padding nibble');
    }
  });
});

// ---- int8

describe('LLM.int8() against the torch reference', () => {
  const c = CASES.int8_w!;
  const shape = c.shape as number[];
  const w = quantize('int8', asF32('int8_w.source'), shape, { name: 'int8_w.weight' }) as Int8RowwiseTensor;
  const x = asF32('int8_w.x');
  const [m] = c.x_shape as number[];

  it('CB and SCB bit for bit, ties to even, and the state dict Linear8bitLt saves', () => {
    const src = asF32('int8_w.source');
    assert.equal(w.scb[0], 127);
    assert.ok([0.5, 1.5, 2.5, -2.5].every((v) => src.slice(0, 8).includes(v)), 'row 0 holds .5 ties at scale 1');
    const sd = int8StateDict(w, 'int8_w');
    for (const [k, t] of Object.entries(sd)) {
      const f = raw(k);
      assert.equal(t.dtype, f.dtype, k);
      assert.deepEqual(t.shape, f.shape, k);
      sameBytes(t.data, f.bytes, k);
    }
    sameBytes(dequantize(w), asF32('int8_w.dequant'), 'dequantized');
    const loaded = int8FromStateDict('int8_w', (k) => (k.endsWith('.weight') ? asI8(k) : k.endsWith('SCB') ? asF32(k) : FIX.has(k) ? asU8(k) : undefined), shape);
    sameBytes(dequantize(loaded), asF32('int8_w.dequant'), 'dequantized from the state dict');
  });

  for (const tag of ['t6', 't0']) {
    const p = (c.products as Record<string, { threshold: number; outlier_cols: number[] }>)[tag]!;
    it(`threshold ${p.threshold}: activation codes bit for bit and the mixed product within 1e-5`, () => {
      const a = int8QuantizeActivations(x, m!, shape[1]!, p.threshold);
      assert.deepEqual(a.outlierCols, p.outlier_cols);
      sameBytes(a.ca, asI8(`int8_w.${tag}.CA`), 'CA');
      sameBytes(a.sca, asF32(`int8_w.${tag}.SCA`), 'SCA');
      const y = int8Matmul(x, m!, w, { threshold: p.threshold });
      assertClose(y, asF32(`int8_w.${tag}.y`), 1e-5, 'y');
      assertClose(quantMatmul(x, m!, w, { threshold: p.threshold }), asF32(`int8_w.${tag}.y`), 1e-5, 'quantMatmul');
    });
  }

  it('the outlier decomposition changes the product (6.0 is an outlier, 5.999 is not)', () => {
    const p = (c.products as Record<string, { outlier_cols: number[] }>).t6!;
    assert.ok(p.outlier_cols.includes(25) && !p.outlier_cols.includes(30));
    const y6 = asF32('int8_w.t6.y');
    const y0 = asF32('int8_w.t0.y');
    let diff = 0;
    for (let i = 0; i < y6.length; i++) diff = Math.max(diff, Math.abs(y6[i]! - y0[i]!));
    assert.ok(diff > 1e-3, `max difference ${diff}`);
  });
});

// ---- GGUF blocks and half storage

describe('GGUF blocks against ggml layouts and reference quantizers', () => {
  for (const fmt of ['q8_0', 'q4_0']) {
    it(`${fmt}: quantized bytes and dequantized values bit for bit (${CASES[fmt]!.note})`, () => {
      const shape = CASES[fmt]!.shape as number[];
      const q = quantize(fmt, asF32(`${fmt}.source`), shape) as GgmlTensor;
      sameBytes(q.data, asU8(`${fmt}.data`), `${fmt} bytes`);
      sameBytes(dequantize(q), asF32(`${fmt}.dequant`), `${fmt} dequantized`);
    });
  }
  for (const fmt of ['q4_K', 'q6_K']) {
    it(`${fmt}: dequantization of ${CASES[fmt]!.note} bit for bit`, () => {
      const q: GgmlTensor = { format: fmt as GgmlTensor['format'], shape: CASES[fmt]!.shape as number[], data: asU8(`${fmt}.data`) };
      sameBytes(dequantize(q), asF32(`${fmt}.dequant`), `${fmt} dequantized`);
    });
  }
  it('GGUF type ids name the formats', () => {
    assert.deepEqual([2, 8, 12, 14, 1, 30].map((t) => ggmlTypeFormat(t)?.name), ['q4_0', 'q8_0', 'q4_K', 'q6_K', 'f16', 'bf16']);
    assert.equal(ggmlTypeFormat(3), undefined);
  });
  it('bf16 and f16 bits match torch', () => {
    const src = asF32('half.source');
    const bf = quantize('bf16', src, [src.length]) as HalfTensor;
    const h = quantize('f16', src, [src.length]) as HalfTensor;
    sameBytes(bf.data, asU8('half.bf16'), 'bf16');
    sameBytes(h.data, asU8('half.f16'), 'f16');
  });
});

describe('quant_state JSON as json.dumps writes it', () => {
  it('Python float repr of each fixture value', () => {
    for (const [v, r] of (CASES.float_repr!.values as [number, string][])) assert.equal(pythonFloatRepr(v), r, `repr(${v})`);
  });
});

// ---- round-trip error bounds, each computed from the block's own scale

/** Nearest-level bound for a code table: half the gap around s in the sorted levels. */
function halfGap(levels: number[], s: number): number {
  for (let i = 0; i + 1 < levels.length; i++) if (s >= levels[i]! && s <= levels[i + 1]!) return (levels[i + 1]! - levels[i]!) / 2;
  return 0;
}

const EPS = 2 ** -20;

describe('dequantize(quantize(W)) stays within half a quantization step', () => {
  for (const [fmt, blocksize, dq] of [['nf4', 64, false], ['nf4', 128, true], ['fp4', 32, false], ['fp4', 64, true]] as const) {
    it(`${fmt} blocksize ${blocksize}${dq ? ' double-quantized' : ''}`, () => {
      const n = 19 * 301;
      const src = gaussian(n, 11 + blocksize, 0.7);
      const q = quantize(fmt, src, [19, 301], { blocksize, doubleQuant: dq }) as Bnb4bitTensor;
      const out = dequantize(q);
      const levels = [...(fmt === 'nf4' ? NF4_CODE : FP4_CODE)].sort((a, b) => a - b);
      for (let b = 0; b * blocksize < n; b++) {
        const s0 = b * blocksize;
        const s1 = Math.min(n, s0 + blocksize);
        let am = 0;
        for (let i = s0; i < s1; i++) am = Math.max(am, Math.abs(src[i]!));
        // with double quantization the block's decoded absmax differs from the true one
        let used = am;
        if (q.nested) used = Math.fround(q.nested.quantMap[q.absmax[b]!]! * q.nested.absmax[Math.floor(b / q.nested.blocksize)]!) + q.nested.offset;
        for (let i = s0; i < s1; i++) {
          const bound = halfGap(levels, src[i]! / am) * am + Math.abs(used - am) + EPS * am;
          const err = Math.abs(out[i]! - src[i]!);
          if (!(err <= bound)) assert.fail(`${fmt}: element ${i} error ${err} > ${bound}`);
        }
      }
    });
  }

  it('int8: half of SCB/127 per row', () => {
    const src = gaussian(9 * 77, 5, 2);
    const out = dequantize(quantize('int8', src, [9, 77]));
    for (let r = 0; r < 9; r++) {
      let am = 0;
      for (let c = 0; c < 77; c++) am = Math.max(am, Math.abs(src[r * 77 + c]!));
      for (let c = 0; c < 77; c++) assert.ok(Math.abs(out[r * 77 + c]! - src[r * 77 + c]!) <= (am / 127) * (0.5 + EPS), `row ${r} col ${c}`);
    }
  });

  it('q8_0: half of amax/127 per block, plus the f16 rounding of the scale', () => {
    const src = gaussian(6 * 96, 6, 0.3);
    const q = quantize('q8_0', src, [6, 96]) as GgmlTensor;
    const out = dequantize(q);
    for (let b = 0; b < src.length / 32; b++) {
      let am = 0;
      for (let i = 0; i < 32; i++) am = Math.max(am, Math.abs(src[32 * b + i]!));
      const d = am / 127;
      const d16 = f16ToF32(q.data[34 * b]! | (q.data[34 * b + 1]! << 8));
      for (let i = 0; i < 32; i++) assert.ok(Math.abs(out[32 * b + i]! - src[32 * b + i]!) <= d / 2 + 127 * Math.abs(d - d16) + EPS * am, `block ${b}`);
    }
  });

  it('q4_0: the nearest of the 16 levels (x = (q − 8)·d, d = max/−8), plus the f16 rounding of d', () => {
    const src = gaussian(6 * 64, 7, 0.3);
    const q = quantize('q4_0', src, [6, 64]) as GgmlTensor;
    const out = dequantize(q);
    for (let b = 0; b < src.length / 32; b++) {
      let mx = 0;
      for (let i = 0; i < 32; i++) if (Math.abs(src[32 * b + i]!) > Math.abs(mx)) mx = src[32 * b + i]!;
      const d = mx / -8;
      const d16 = f16ToF32(q.data[18 * b]! | (q.data[18 * b + 1]! << 8));
      for (let i = 0; i < 32; i++) {
        const x = src[32 * b + i]!;
        let nearest = Infinity;
        for (let l = -8; l <= 7; l++) nearest = Math.min(nearest, Math.abs(x - l * d));
        assert.ok(Math.abs(out[32 * b + i]! - x) <= nearest + 8 * Math.abs(d - d16) + EPS * Math.abs(mx), `block ${b} element ${i}`);
      }
    }
  });

  it('q4_K: half of each sub-block step d·sc, with a step no larger than (range + dmin)/15 plus one d', () => {
    const src = gaussian(3 * 512, 8, 0.5);
    for (let i = 0; i < 32; i++) src[i] = Math.abs(src[i]!) + 0.2; // an all-positive sub-block
    for (let i = 32; i < 64; i++) src[i] = -Math.abs(src[i]!) - 0.1; // an all-negative one
    const q = quantize('q4_K', src, [3, 512]) as GgmlTensor;
    const out = dequantize(q);
    const b = q.data;
    for (let sb = 0; sb < src.length / 256; sb++) {
      const o = 144 * sb;
      const d = f16ToF32(b[o]! | (b[o + 1]! << 8));
      const dmin = f16ToF32(b[o + 2]! | (b[o + 3]! << 8));
      const s = b.subarray(o + 4, o + 16);
      for (let j = 0; j < 8; j++) {
        const sc = j < 4 ? s[j]! & 63 : (s[j + 4]! & 15) | ((s[j - 4]! >> 6) << 4);
        const step = d * sc;
        let lo = 0;
        let hi = -Infinity;
        for (let l = 0; l < 32; l++) {
          const i = 256 * sb + 32 * j + l;
          lo = Math.min(lo, src[i]!);
          hi = Math.max(hi, src[i]!);
          assert.ok(Math.abs(out[i]! - src[i]!) <= step / 2 + EPS * step + 1e-7, `super-block ${sb} sub-block ${j} element ${l}: ${out[i]} vs ${src[i]}`);
        }
        assert.ok(step <= (hi - lo + dmin) / 15 + d + 1e-7, `sub-block ${j} step ${step}`);
      }
    }
  });

  it('q6_K: half of each sub-block step |d·sc|, with a step no larger than absmax/31 plus one d', () => {
    const src = gaussian(2 * 768, 9, 0.5);
    for (let i = 16; i < 32; i++) src[i] = 0; // an all-zero sub-block
    const q = quantize('q6_K', src, [2, 768]) as GgmlTensor;
    const out = dequantize(q);
    const b = q.data;
    for (let sb = 0; sb < src.length / 256; sb++) {
      const o = 210 * sb;
      const d = f16ToF32(b[o + 208]! | (b[o + 209]! << 8));
      for (let j = 0; j < 16; j++) {
        const step = Math.abs(d * ((b[o + 192 + j]! << 24) >> 24));
        let am = 0;
        for (let l = 0; l < 16; l++) {
          const i = 256 * sb + 16 * j + l;
          am = Math.max(am, Math.abs(src[i]!));
          assert.ok(Math.abs(out[i]! - src[i]!) <= step / 2 + EPS * step, `super-block ${sb} sub-block ${j} element ${l}`);
        }
        assert.ok(step <= am / 31 + d + 1e-9, `sub-block ${j} step ${step}`);
      }
    }
  });

  it('bf16 and f16: half an ulp of the value', () => {
    const src = gaussian(500, 10, 3);
    for (const [fmt, mant] of [['bf16', 7], ['f16', 10]] as const) {
      const out = dequantize(quantize(fmt, src, [500]));
      for (let i = 0; i < src.length; i++) {
        const ulp = 2 ** (Math.floor(Math.log2(Math.abs(src[i]!))) - mant);
        assert.ok(Math.abs(out[i]! - src[i]!) <= ulp / 2 + (fmt === 'f16' ? 2 ** -25 : 0), `${fmt} ${src[i]}`);
      }
    }
  });
});

// ---- products on the packed form

describe('products on packed weights equal products on the dequantized weights', () => {
  const cases: [string, number, number, Record<string, unknown>][] = [
    ['nf4', 13, 77, { blocksize: 64 }], ['nf4', 13, 77, { blocksize: 32, doubleQuant: true }], ['fp4', 11, 50, { blocksize: 128 }],
    ['q8_0', 7, 96, {}], ['q4_0', 7, 96, {}], ['q4_K', 5, 512, {}], ['q6_K', 4, 768, {}], ['bf16', 6, 33, {}], ['f16', 6, 33, {}], ['int8', 9, 40, {}],
  ];
  for (const [fmt, n, k, opts] of cases) {
    it(`${fmt} [${n}, ${k}] ${JSON.stringify(opts)}`, () => {
      const w = quantize(fmt, gaussian(n * k, n * 31 + k, 0.4), [n, k], opts);
      const m = 3;
      const x = gaussian(m * k, 77 + k);
      const want = refMatmul(x, m, dequantize(w), n, k);
      const got = fmt === 'int8' ? blockMatmul(x, m, w) : quantMatmul(x, m, w);
      assertClose(got, want, 1e-5, fmt);
      const out = new Float32Array(m * n).fill(123);
      assert.equal(blockMatmul(x, m, w, { out }), out);
      assertClose(out, want, 1e-5, `${fmt} into out`);
    });
  }

  it('int8 with an outlier column equals the LLM.int8() formula computed here', () => {
    const rte = (v: number): number => {
      const f = Math.floor(v);
      return v - f > 0.5 || (v - f === 0.5 && f % 2 !== 0) ? f + 1 : f;
    };
    const [n, k, m] = [5, 24, 4];
    const src = gaussian(n * k, 3);
    const x = gaussian(m * k, 4, 1.5);
    x[5] = 7; // an outlier column: column 5
    assert.deepEqual([...x.keys()].filter((i) => Math.abs(x[i]!) >= 6), [5]);
    const w = quantize('int8', src, [n, k]) as Int8RowwiseTensor;
    const y = int8Matmul(x, m, w, { threshold: 6 });
    const want = new Float64Array(m * n);
    for (let i = 0; i < m; i++) {
      let am = 0;
      for (let c = 0; c < k; c++) if (Math.abs(x[i * k + c]!) < 6) am = Math.max(am, Math.abs(x[i * k + c]!));
      for (let r = 0; r < n; r++) {
        let acc = 0;
        let fp = 0;
        for (let c = 0; c < k; c++) {
          const v = x[i * k + c]!;
          if (c === 5) fp += v * w.weight[r * k + c]! * w.scb[r]! / 127;
          else acc += rte(Math.fround(v * Math.fround(Math.fround(1 / am) * 127))) * w.weight[r * k + c]!;
        }
        want[i * n + r] = acc * am * w.scb[r]! / 127 ** 2 + fp;
      }
    }
    assertClose(y, want, 1e-5, 'y');
  });
});

// ---- errors

describe('bad input is an AdaptkitError naming the tensor and the field', () => {
  const err = (re: RegExp) => (e: unknown) => e instanceof AdaptkitError && re.test(e.message);

  it('unknown format names list the known ones', () => {
    assert.throws(() => quantFormat('q5_9'), err(/unknown quantized format "q5_9".*nf4/));
    assert.throws(() => quantize('int4', new Float32Array(4), [4]), err(/unknown quantized format "int4"/));
    assert.ok(QUANT_FORMAT_NAMES.includes('nf4') && QUANT_FORMAT_NAMES.includes('q6_K'));
  });

  it('data that does not match its shape or block count', () => {
    assert.throws(() => quantize('nf4', new Float32Array(10), [3, 4], { name: 'w' }), err(/^w: data: has 10 values, shape \[3, 4\] needs 12/));
    assert.throws(() => quantize('q4_0', new Float32Array(40), [2, 20], { name: 'w' }), err(/^w: shape: last dimension 20 is not a multiple of the q4_0 block size 32/));
    assert.throws(() => quantize('nf4', new Float32Array(64), [64], { blocksize: 50 }), err(/blocksize: must be one of 32, 64/));
    assert.throws(() => quantize('q8_0', new Float32Array(32), [32], { blocksize: 64 }), err(/options: q8_0 has a fixed layout/));
    assert.throws(() => quantize('int8', new Float32Array(8), [8]), err(/shape: int8 row-wise quantization needs \[rows, cols\]/));
    const q = quantize('nf4', gaussian(130, 1), [10, 13], { name: 'layer.weight' }) as Bnb4bitTensor;
    assert.throws(() => dequantize({ ...q, absmax: (q.absmax as Float32Array).slice(1) }), err(/^layer\.weight: absmax: has 2 entries, shape \[10, 13\] in blocks of 64 needs 3/));
    assert.throws(() => dequantize({ ...q, weight: q.weight.slice(1) }), err(/^layer\.weight: weight: has 64 entries/));
    const dq = quantize('nf4', gaussian(130, 1), [10, 13], { doubleQuant: true, name: 'd' }) as Bnb4bitTensor;
    assert.throws(() => dequantize({ ...dq, nested: { ...dq.nested!, absmax: new Float32Array(2) } }), err(/^d: nested_absmax: has 2 entries/));
    const g = quantize('q6_K', gaussian(256, 2), [1, 256], { name: 'blk.0.ffn_down.weight' }) as GgmlTensor;
    assert.throws(() => dequantize({ ...g, data: g.data.subarray(1) }), err(/^blk\.0\.ffn_down\.weight: data: has 209 entries, .*1 q6_K blocks of 210 bytes needs 210/));
    const i8 = quantize('int8', gaussian(12, 3), [3, 4], { name: 'fc' }) as Int8RowwiseTensor;
    assert.throws(() => dequantize({ ...i8, scb: new Float32Array(2) }), err(/^fc: SCB: has 2 entries, 3 rows needs 3/));
    assert.throws(() => quantMatmul(new Float32Array(5), 2, i8), err(/^fc: x: has 5 values, \[2, 4\] needed/));
    assert.throws(() => quantMatmul(new Float32Array(8), 2, i8, { threshold: -1 }), err(/^fc: threshold: must be a number ≥ 0/));
    const h: HalfTensor = { format: 'f16', name: 'h', shape: [3], data: new Uint16Array(2) };
    assert.throws(() => dequantize(h as QuantizedTensor), err(/^h: data: has 2 entries, shape \[3\] needs 3/));
  });

  it('a quant_state with a missing key, an unknown key, or missing tensors', () => {
    const q = quantize('nf4', gaussian(200, 4), [10, 20], { doubleQuant: true }) as Bnb4bitTensor;
    const sd = bnb4bitStateDict(q, 'mlp.down_proj');
    const key = `mlp.down_proj.weight.${quantStateKey('nf4')}`;
    const withState = (state: Record<string, unknown> | undefined, drop?: string) => (k: string) => {
      if (k === drop) return undefined;
      if (k === key && state) return new TextEncoder().encode(JSON.stringify(state));
      return sd[k]?.data;
    };
    const state = JSON.parse(new TextDecoder().decode(packQuantState(q))) as Record<string, unknown>;
    assert.equal(dequantize(bnb4bitFromStateDict('mlp.down_proj', withState(state))).length, 200);
    for (const missing of ['blocksize', 'shape', 'nested_offset', 'quant_type']) {
      const { [missing]: _, ...rest } = state;
      assert.throws(() => bnb4bitFromStateDict('mlp.down_proj', withState(rest)), err(new RegExp(`^mlp\\.down_proj\\.weight\\.quant_state\\.bitsandbytes__nf4: ${missing}: missing quant_state key`)), missing);
    }
    assert.throws(() => bnb4bitFromStateDict('mlp.down_proj', withState({ ...state, colour: 1 })), err(/colour: unknown quant_state key/));
    assert.throws(() => bnb4bitFromStateDict('mlp.down_proj', withState({ ...state, blocksize: '64' })), err(/blocksize: must be an integer/));
    assert.throws(() => bnb4bitFromStateDict('mlp.down_proj', withState(state, 'mlp.down_proj.weight.nested_quant_map')), err(/^mlp\.down_proj\.weight\.nested_quant_map: tensor: missing from the state dict/));
    assert.throws(() => bnb4bitFromStateDict('mlp.down_proj', withState(state, key)), err(/quant_state: expected exactly one of/));
    assert.throws(() => bnb4bitFromStateDict('mlp.down_proj', (k) => (k.endsWith('.absmax') ? new Float32Array(q.absmax.length) : withState(state)(k))), err(/^mlp\.down_proj\.weight\.absmax: dtype: must be uint8 codes/));
    const i8 = quantize('int8', gaussian(12, 3), [3, 4]) as Int8RowwiseTensor;
    const isd = int8StateDict(i8, 'fc');
    assert.throws(() => int8FromStateDict('fc', (k) => (k === 'fc.weight_format' ? Uint8Array.of(1) : isd[k]?.data), [3, 4]), err(/^fc\.weight_format: value: only 0 \(row-major\)/));
    assert.throws(() => int8FromStateDict('fc', (k) => (k === 'fc.SCB' ? undefined : isd[k]?.data), [3, 4]), err(/^fc\.SCB: tensor: missing/));
  });
});
