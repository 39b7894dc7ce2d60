/**
 * Binary / low-bit adapters (Jie et al., "Revisiting the Parameter Efficiency of Adapters from the
 * Perspective of Precision Redundancy", ICCV 2023: Bi-AdaptFormer and Bi-LoRA). Every adapter
 * weight tensor is quantized in every forward, training and inference alike:
 *   z = (w - mean(w)) / (std(w) + 1e-5)          whole-tensor statistics, std unbiased as torch's
 *   Ŵ = (sg(q(z)) + z - sg(z)) · std(w) + mean(w) straight-through; mean and std stay differentiable
 * where q maps z to the nearest of 2^b codes: the bin medians of N(0, 1), i.e. the fixed point of
 * "thresholds = midpoints of the codes, codes = Φ⁻¹ of the midpoints of the CDF mass between
 * thresholds" (1 bit: ±0.674490; 2 bits: ±0.377754, ±1.265720). A value exactly on a threshold
 * takes the upper code (the authors' sign(0) = 0 would give the midpoint, which is not a code).
 *
 * Config, peft_type "LOWBIT":
 *   form            "bottleneck" (default) | "lora"
 *   bits            1 (default) | 2 | 4 | 8
 *   bottleneck_size width of the bottleneck form (default 32, the authors' dim)
 *   r               width of the lora form (default 32)
 *   scale           output multiplier s (default 1, the authors' default; their per-dataset
 *                   configs use e.g. 0.1 on CIFAR)
 *   dropout         training only; bottleneck form: on the hidden units after ReLU (default 0.1,
 *                   AdaptFormer's), lora form: on the input (default 0)
 *   target_modules  default: the feed-forward block (bottleneck) or the attention q and v
 *                   projections (lora; on a fused qkv layer such as GPT-2's c_attn, all of it)
 * Presets: `lowbit` (1-bit bottleneck form, the paper's Bi-AdaptFormer) and `lowbit-lora` (Bi-LoRA),
 * reading --r (the width), --bits, --targets and --dropout.
 * Bottleneck form: y' = y + s·Up(dropout(ReLU(Down x))) beside the feed-forward block on its input
 * (BOTTLENECK's "parallel" placement: the input of the model's MLP module, which in pre-LN models is
 * the normalized stream, not AdaptFormer's un-normalized one), no biases. Lora form: y' = y + s·x Âᵀ B̂ᵀ.
 * Down / A start Kaiming-uniform (bound 1/sqrt(fan_in)); Up / B start trunc_normal(std 1e-3,
 * ±2e-3), not zero (a constant tensor has std 0), so a new adapter is close to but not exactly the
 * identity.
 *
 * Saving writes what inference uses, the dequantized weights, as an ordinary float adapter of the
 * form's method (lora: peft_type "LORA", lora_alpha = s·r; bottleneck: "BOTTLENECK", adapter_type
 * "parallel", non_linearity "relu", scaling s, zero biases), so any LoRA / bottleneck loader runs
 * it, plus the packed codes in adapter_model.lowbit. Layout, little-endian:
 *   header   8 bytes magic "AKLOWBIT", u32 version (1), u32 bits, u32 tensor count,
 *            2^bits f32 code values (ascending; code index k dequantizes to code[k]·std + mean)
 *   tensor   u32 name length L, L bytes UTF-8 name (its key in adapter_model.safetensors),
 *            u32 ndim, ndim × u32 dims, f32 mean, f32 std,
 *            ceil(n·bits/8) bytes of code indices (n = product of dims): element i sits in byte
 *            floor(i / (8/bits)) at bit offset (i mod (8/bits))·bits, least significant bits first;
 *            unused high bits of the last byte are zero
 * Size = 20 + 4·2^bits + Σ_tensors (16 + L + 4·ndim + ceil(n·bits/8)) bytes: the codes plus
 * 8 bytes of statistics per tensor plus names and shapes. Dequantizing is fround(fround(code·std) + mean),
 * the same float32 operations the forward does, so the unpacked floats equal the saved ones bit
 * for bit. Training checkpoints keep the latent float weights (checkpointState), since
 * re-quantizing dequantized weights is not the identity.
 */
import { entryHeaderBytes, writeEntryHeader } from '../packed-file.js';
import { readFileSync } from 'node:fs';
import {
  AdaptkitError, type Tensor, add, addmm, clone, detach, div, dropout, fromBuffer, linear, matmul, mean, mul, noGrad,
  parameter, rand, relu, sqrt, sub, sum, transpose, zeros,
} from '../../tensor/index.js';
import { Linear, Module, type AdapterDescriptor, type TargetSpec, isLinearLayer } from '../../nn/index.js';
import { baseJson, fail, optInt, optNumber, optString, parseBase, showValue } from '../config.js';
import { registerMethod } from '../registry.js';
import { loadInto } from '../state.js';
import { peftKey } from '../files.js';
import { DROPOUT, RANK, TARGETS, num, targetsOption } from '../options.js';
import { roleTargets } from '../targets.js';
import { BOTTLENECK, targetWidth } from './bottleneck.js';
import { LORA } from './lora.js';
import type {
  AdapterInstance, AdapterMethod, BaseAdapterConfig, CreateContext, LayerDelta, MethodOption, MethodPreset, PresetOptions,
  RawAdapterConfig, TargetInfo,
} from '../types.js';

export type LowbitBits = 1 | 2 | 4 | 8;
export type LowbitForm = 'bottleneck' | 'lora';
export const LOWBIT_BITS: readonly LowbitBits[] = [1, 2, 4, 8];
/** The packed form's file name next to adapter_model.safetensors. */
export const LOWBIT_FILE = 'adapter_model.lowbit';
const MAGIC = 'AKLOWBIT';
const VERSION = 1;
const STD_EPS = 1e-5;
const UP_STD = 1e-3;

// ---------- the N(0, 1) bin-median codebook ----------

const LOG_SQRT_2PI = 0.5 * Math.log(2 * Math.PI);

function normPdf(x: number): number {
  return Math.exp(-0.5 * x * x - LOG_SQRT_2PI);
}

/** Φ by Marsaglia's series Φ(x) = 1/2 + φ(x)·Σ x^(2k+1)/(2k+1)!!, accurate to ~1e-15 absolute. */
function normCdf(x: number): number {
  if (x < -10) return 0;
  if (x > 10) return 1;
  const q = x * x;
  let term = x;
  let s = x;
  for (let i = 3; ; i += 2) {
    term *= q / i;
    const next = s + term;
    if (next === s) break;
    s = next;
  }
  return 0.5 + s * normPdf(x);
}

/** Φ⁻¹ by bisection (only the starting point of the codebook solve needs it). */
function normQuantile(p: number): number {
  let lo = -10;
  let hi = 10;
  for (let i = 0; i < 200 && hi - lo > 1e-15; i++) {
    const mid = 0.5 * (lo + hi);
    if (normCdf(mid) < p) lo = mid;
    else hi = mid;
  }
  return 0.5 * (lo + hi);
}

/**
 * The residual of the bin-median fixed point, F_k = Φ(c_k) - (Φ(t_{k-1}) + Φ(t_k))/2 with t the
 * midpoints of c and Φ(t_{-1}) = 0, Φ(t_{K-1}) = 1: zero exactly when every code is the median of its bin.
 */
function medianResidual(c: Float64Array): Float64Array {
  const K = c.length;
  const F = new Float64Array(K);
  for (let k = 0; k < K; k++) {
    const lo = k > 0 ? normCdf(0.5 * (c[k - 1]! + c[k]!)) : 0;
    const hi = k < K - 1 ? normCdf(0.5 * (c[k]! + c[k + 1]!)) : 1;
    F[k] = normCdf(c[k]!) - 0.5 * (lo + hi);
  }
  return F;
}

/**
 * Solves the fixed point with Newton's method on its tridiagonal system, from the plain quantiles.
 * Plain iteration gets there too for 1-4 bits (the authors run 500 steps from all zeros), but at
 * 8 bits it moves so slowly that 500 steps leave the outer codes near ±2.81 instead of ±3.79.
 */
function solveCodebook(bits: LowbitBits): Float64Array {
  const K = 1 << bits;
  const c = new Float64Array(K);
  for (let k = 0; k < K; k++) c[k] = normQuantile((k + 0.5) / K);
  const lower = new Float64Array(K);
  const diag = new Float64Array(K);
  const sup = new Float64Array(K);
  for (let iter = 0; iter < 100; iter++) {
    const F = medianResidual(c);
    for (let k = 0; k < K; k++) {
      const pl = k > 0 ? normPdf(0.5 * (c[k - 1]! + c[k]!)) : 0;
      const pr = k < K - 1 ? normPdf(0.5 * (c[k]! + c[k + 1]!)) : 0;
      diag[k] = normPdf(c[k]!) - 0.25 * (pl + pr);
      lower[k] = -0.25 * pl;
      sup[k] = -0.25 * pr;
    }
    // Thomas algorithm for the tridiagonal solve J·d = F
    const cp = new Float64Array(K);
    const dp = new Float64Array(K);
    cp[0] = sup[0]! / diag[0]!;
    dp[0] = F[0]! / diag[0]!;
    for (let k = 1; k < K; k++) {
      const m = diag[k]! - lower[k]! * cp[k - 1]!;
      cp[k] = sup[k]! / m;
      dp[k] = (F[k]! - lower[k]! * dp[k - 1]!) / m;
    }
    let step = 0;
    for (let k = K - 1; k >= 0; k--) {
      const d = dp[k]! - (k < K - 1 ? cp[k]! * dp[k + 1]! : 0);
      dp[k] = d;
      c[k] = c[k]! - d;
      step = Math.max(step, Math.abs(d));
    }
    if (step < 1e-13) break;
  }
  // the fixed point is symmetric; rounding in Φ is not quite, and the middle threshold must be exactly 0
  for (let k = 0; k < K / 2; k++) {
    const v = 0.5 * (c[K - 1 - k]! - c[k]!);
    c[k] = -v;
    c[K - 1 - k] = v;
  }
  const worst = medianResidual(c).reduce((m, v) => Math.max(m, Math.abs(v)), 0);
  if (!(worst < 1e-12)) throw new AdaptkitError(`the ${bits}-bit codebook did not converge (residual ${worst})`);
  return c;
}

const codebooks = new Map<LowbitBits, { codes: Float64Array; codes32: Float32Array; thresholds: Float64Array }>();

function book(bits: LowbitBits): { codes: Float64Array; codes32: Float32Array; thresholds: Float64Array } {
  let b = codebooks.get(bits);
  if (!b) {
    const codes = solveCodebook(bits);
    const thresholds = new Float64Array(codes.length - 1);
    for (let k = 0; k < thresholds.length; k++) thresholds[k] = 0.5 * (codes[k]! + codes[k + 1]!);
    b = { codes, codes32: Float32Array.from(codes), thresholds };
    codebooks.set(bits, b);
  }
  return b;
}

function checkBits(bits: number, where: string): LowbitBits {
  if (!LOWBIT_BITS.includes(bits as LowbitBits)) throw new AdaptkitError(`${where}: "bits" must be 1, 2, 4 or 8, got ${showValue(bits)}`);
  return bits as LowbitBits;
}

/** The 2^bits codes (bin medians of N(0, 1)), ascending, in double precision. */
export function lowbitCodebook(bits: number): Float64Array {
  return book(checkBits(bits, 'lowbitCodebook')).codes.slice();
}

/** The code index of each standardized value: how many thresholds are at or below it. */
export function codeIndices(z: ArrayLike<number>, bits: number): Uint8Array {
  const t = book(checkBits(bits, 'codeIndices')).thresholds;
  const out = new Uint8Array(z.length);
  for (let i = 0; i < z.length; i++) {
    const v = z[i]!;
    let lo = 0;
    let hi = t.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (t[mid]! <= v) lo = mid + 1;
      else hi = mid;
    }
    out[i] = lo;
  }
  return out;
}

// ---------- quantization with a straight-through estimator ----------

/** Forward value q, backward the identity to x. */
export function straightThrough(x: Tensor, q: Tensor): Tensor {
  return add(detach(q), sub(x, detach(x)));
}

export interface QuantizedWeight {
  /** The dequantized weight, with the straight-through graph back to the latent weight. */
  weight: Tensor;
  /** Code index of every element, row-major. */
  indices: Uint8Array;
  /** The float32 statistics the forward used. */
  mean: number;
  std: number;
}

/** One adapter weight tensor as the forward uses it. */
export function quantizeWeight(w: Tensor, bits: number): QuantizedWeight {
  const b = checkBits(bits, 'quantizeWeight');
  const n = w.size;
  const m = mean(w);
  const centered = sub(w, m);
  const s = sqrt(mul(sum(mul(centered, centered)), 1 / Math.max(n - 1, 1)));
  const z = div(centered, add(s, STD_EPS));
  const indices = codeIndices(detach(z).toArray(), b);
  const codes = book(b).codes32;
  const q = new Float32Array(n);
  for (let i = 0; i < n; i++) q[i] = codes[indices[i]!]!;
  const weight = add(mul(straightThrough(z, fromBuffer(q, w.shape)), s), m);
  return { weight, indices, mean: m.item(), std: s.item() };
}

// ---------- the packed file ----------

export interface PackedTensor {
  name: string;
  shape: readonly number[];
  mean: number;
  std: number;
  indices: Uint8Array;
}

function packedBytes(n: number, bits: number): number {
  return Math.ceil((n * bits) / 8);
}

/** The packed file's bytes for these tensors (layout in the header comment). */
export function packLowbit(bits: number, tensors: readonly PackedTensor[]): Uint8Array {
  const b = checkBits(bits, 'packLowbit');
  const codes = book(b).codes32;
  const names = tensors.map((t) => Buffer.from(t.name, 'utf8'));
  let size = 20 + 4 * codes.length;
  tensors.forEach((t, i) => (size += entryHeaderBytes(names[i]!, t.shape) + 8 + packedBytes(t.indices.length, b)));
  const out = new Uint8Array(size);
  const dv = new DataView(out.buffer);
  out.set(Buffer.from(MAGIC, 'ascii'), 0);
  dv.setUint32(8, VERSION, true);
  dv.setUint32(12, b, true);
  dv.setUint32(16, tensors.length, true);
  let o = 20;
  for (const c of codes) {
    dv.setFloat32(o, c, true);
    o += 4;
  }
  const perByte = 8 / b;
  tensors.forEach((t, ti) => {
    const n = t.shape.reduce((p, d) => p * d, 1);
    if (n !== t.indices.length) throw new AdaptkitError(`packLowbit: "${t.name}" has shape [${t.shape.join(', ')}] but ${t.indices.length} codes`);
    o = writeEntryHeader(out, dv, o, names[ti]!, t.shape);
    dv.setFloat32(o, t.mean, true);
    dv.setFloat32(o + 4, t.std, true);
    o += 8;
    for (let i = 0; i < n; i++) out[o + Math.floor(i / perByte)] |= t.indices[i]! << ((i % perByte) * b);
    o += packedBytes(n, b);
  });
  return out;
}

export interface UnpackedLowbit {
  bits: LowbitBits;
  /** The code values as stored. */
  codes: Float32Array;
  /** The dequantized float tensors by name. */
  tensors: Map<string, Tensor>;
  /** Per tensor: statistics and code indices. */
  packed: Map<string, PackedTensor>;
}

const MAX_NAME_BYTES = 4096;
const MAX_NDIM = 8;

/** Decode a packed file's bytes; errors name `source` and the field at fault. */
export function unpackLowbit(bytes: Uint8Array, source: string): UnpackedLowbit {
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const need = (at: number, n: number, what: string) => {
    if (at + n > bytes.length) throw new AdaptkitError(`${source}: truncated: ${what} needs bytes ${at}..${at + n - 1}, the file has ${bytes.length} bytes`);
  };
  need(0, 20, 'the header');
  const magic = Buffer.from(bytes.subarray(0, 8)).toString('latin1');
  if (magic !== MAGIC) throw new AdaptkitError(`${source}: bad magic ${JSON.stringify(magic)} (a low-bit adapter file starts with "${MAGIC}")`);
  const version = dv.getUint32(8, true);
  if (version !== VERSION) throw new AdaptkitError(`${source}: "version" is ${version}; this reader knows version ${VERSION}`);
  const bits = dv.getUint32(12, true);
  if (!LOWBIT_BITS.includes(bits as LowbitBits)) throw new AdaptkitError(`${source}: "bits" is ${bits}; must be 1, 2, 4 or 8`);
  const b = bits as LowbitBits;
  const count = dv.getUint32(16, true);
  const K = 1 << b;
  need(20, 4 * K, `the ${K}-entry codebook`);
  const codes = new Float32Array(K);
  for (let k = 0; k < K; k++) {
    codes[k] = dv.getFloat32(20 + 4 * k, true);
    if (!Number.isFinite(codes[k]!) || (k > 0 && !(codes[k]! > codes[k - 1]!))) throw new AdaptkitError(`${source}: "codebook" entry ${k} (${codes[k]}) is not finite and ascending`);
  }
  let o = 20 + 4 * K;
  const tensors = new Map<string, Tensor>();
  const packed = new Map<string, PackedTensor>();
  const perByte = 8 / b;
  const mask = K - 1;
  for (let ti = 0; ti < count; ti++) {
    const label = `tensor ${ti} of ${count}`;
    need(o, 4, `${label} (name length)`);
    const L = dv.getUint32(o, true);
    if (L === 0 || L > MAX_NAME_BYTES) throw new AdaptkitError(`${source}: ${label}: "name length" is ${L}; must be 1..${MAX_NAME_BYTES}`);
    need(o + 4, L, `${label} (name)`);
    const name = Buffer.from(bytes.subarray(o + 4, o + 4 + L)).toString('utf8');
    o += 4 + L;
    const where = `${source}: tensor "${name.slice(0, 200)}"`;
    if (tensors.has(name)) throw new AdaptkitError(`${where}: the name appears twice`);
    need(o, 4, `tensor "${name}" (ndim)`);
    const ndim = dv.getUint32(o, true);
    if (ndim > MAX_NDIM) throw new AdaptkitError(`${where}: "ndim" is ${ndim}; at most ${MAX_NDIM}`);
    need(o + 4, 4 * ndim + 8, `tensor "${name}" (shape, mean, std)`);
    const shape: number[] = [];
    for (let d = 0; d < ndim; d++) shape.push(dv.getUint32(o + 4 + 4 * d, true));
    o += 4 + 4 * ndim;
    const mean = dv.getFloat32(o, true);
    const std = dv.getFloat32(o + 4, true);
    if (!Number.isFinite(mean) || !Number.isFinite(std)) throw new AdaptkitError(`${where}: "mean" ${mean} / "std" ${std} must be finite`);
    o += 8;
    const n = shape.reduce((p, d) => p * d, 1);
    const nb = packedBytes(n, b);
    if (o + nb > bytes.length) {
      throw new AdaptkitError(`${where}: shape [${shape.join(', ')}] holds ${n} values, ${nb} packed bytes at ${bits} bits, but only ${bytes.length - o} bytes remain (truncated, or the shape disagrees with the data)`);
    }
    const indices = new Uint8Array(n);
    const data = new Float32Array(n);
    for (let i = 0; i < n; i++) {
      const k = (bytes[o + Math.floor(i / perByte)]! >> ((i % perByte) * b)) & mask;
      indices[i] = k;
      data[i] = Math.fround(Math.fround(codes[k]! * std) + mean);
    }
    const used = n % perByte;
    if (used !== 0 && bytes[o + nb - 1]! >> (used * b) !== 0) {
      throw new AdaptkitError(`${where}: the unused bits of the last code byte are not zero: the data holds more than the ${n} values of shape [${shape.join(', ')}]`);
    }
    o += nb;
    tensors.set(name, fromBuffer(data, shape));
    packed.set(name, { name, shape, mean, std, indices });
  }
  if (o !== bytes.length) throw new AdaptkitError(`${source}: ${bytes.length - o} bytes after the last of ${count} tensors: the sizes disagree with the shapes (or "tensor count" is wrong)`);
  return { bits: b, codes, tensors, packed };
}

/** Read a packed low-bit adapter file (adapter_model.lowbit) as float tensors by name. */
export function readLowbitFile(path: string): UnpackedLowbit {
  let bytes: Buffer;
  try {
    bytes = readFileSync(path);
  } catch (e) {
    throw new AdaptkitError(`${path}: cannot read the low-bit adapter file (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
  }
  return unpackLowbit(bytes, path);
}

// ---------- config ----------

export interface LowbitConfig extends BaseAdapterConfig {
  form: LowbitForm;
  bits: LowbitBits;
  /** Width: bottleneck_size (bottleneck form) or r (lora form). */
  width: number;
  scale: number;
  dropout: number;
}

const DEFAULT_WIDTH = 32;

export function parseLowbitConfig(raw: RawAdapterConfig, source: string): LowbitConfig {
  const base = parseBase(raw, 'LOWBIT', source);
  const form = optString(raw, 'form', 'bottleneck', ['bottleneck', 'lora'] as const, source);
  const bitsRaw = raw.bits ?? 1;
  if (!LOWBIT_BITS.includes(bitsRaw as LowbitBits)) fail(source, 'bits', `must be one of 1, 2, 4, 8, got ${showValue(bitsRaw)}`);
  const widthKey = form === 'lora' ? 'r' : 'bottleneck_size';
  const otherKey = form === 'lora' ? 'bottleneck_size' : 'r';
  if (raw[otherKey] !== undefined && raw[otherKey] !== null) fail(source, otherKey, `does not apply to form "${form}"; its width is "${widthKey}"`);
  const dropoutP = optNumber(raw, 'dropout', form === 'bottleneck' ? 0.1 : 0, source, 0);
  if (dropoutP >= 1) fail(source, 'dropout', `must be below 1, got ${dropoutP}`);
  return {
    ...base,
    form,
    bits: bitsRaw as LowbitBits,
    width: optInt(raw, widthKey, DEFAULT_WIDTH, source, 1),
    scale: optNumber(raw, 'scale', 1, source),
    dropout: dropoutP,
  };
}

function defaultTargets(model: AdapterDescriptor, c: LowbitConfig): TargetSpec | null {
  return c.form === 'lora' ? roleTargets(model, ['attn.q', 'attn.v']) : roleTargets(model, ['block.ffn']);
}

// ---------- deltas ----------

/** Bi-LoRA on one linear layer: y + s·x Âᵀ B̂ᵀ. */
export class LowbitLoraDelta extends Module implements LayerDelta {
  constructor(
    readonly adapterName: string,
    public lora_A: Tensor,
    public lora_B: Tensor,
    readonly bits: LowbitBits,
    readonly scale: number,
    readonly dropoutP: number,
    readonly fanInFanOut: boolean,
  ) {
    super();
  }

  quantized(): { A: QuantizedWeight; B: QuantizedWeight } {
    return { A: quantizeWeight(this.lora_A, this.bits), B: quantizeWeight(this.lora_B, this.bits) };
  }

  apply(x: Tensor, y: Tensor): Tensor {
    const { A, B } = this.quantized();
    const xd = this.dropoutP > 0 ? dropout(x, this.dropoutP) : x;
    return addmm(y, mul(linear(xd, A.weight), this.scale), transpose(B.weight));
  }

  mergeWeight(weight: Tensor): Tensor {
    return noGrad(() => {
      const { A, B } = this.quantized();
      const w = this.fanInFanOut ? transpose(weight) : weight;
      const merged = add(w, mul(matmul(B.weight, A.weight), this.scale));
      return clone(this.fanInFanOut ? transpose(merged) : merged);
    });
  }

  mergeBias(bias: Tensor | null): Tensor | null {
    return bias;
  }
}

/** Bi-AdaptFormer beside one block: y + s·Up(dropout(ReLU(Down x))), no biases. */
export class LowbitBottleneckDelta extends Module implements LayerDelta {
  constructor(
    readonly adapterName: string,
    public adapter_down: Tensor,
    public adapter_up: Tensor,
    readonly bits: LowbitBits,
    readonly scale: number,
    readonly dropoutP: number,
  ) {
    super();
  }

  quantized(): { down: QuantizedWeight; up: QuantizedWeight } {
    return { down: quantizeWeight(this.adapter_down, this.bits), up: quantizeWeight(this.adapter_up, this.bits) };
  }

  apply(x: Tensor, y: Tensor): Tensor {
    const { down, up } = this.quantized();
    let h = relu(linear(x, down.weight));
    if (this.dropoutP > 0) h = dropout(h, this.dropoutP);
    const out = linear(h, up.weight);
    return add(y, this.scale === 1 ? out : mul(out, this.scale));
  }
}

type LowbitDelta = LowbitLoraDelta | LowbitBottleneckDelta;

/** The latent weights of a delta under the saved float form's keys. */
function latentKeys(path: string, d: LowbitDelta): [string, Tensor][] {
  return d instanceof LowbitLoraDelta
    ? [[peftKey(path, 'lora_A.weight'), d.lora_A], [peftKey(path, 'lora_B.weight'), d.lora_B]]
    : [[peftKey(path, 'adapter_down.weight'), d.adapter_down], [peftKey(path, 'adapter_up.weight'), d.adapter_up]];
}

// ---------- the adapter ----------

export class LowbitAdapter implements AdapterInstance {
  readonly method = LOWBIT;
  readonly deltas = new Map<string, LowbitDelta>();

  constructor(
    readonly name: string,
    readonly config: LowbitConfig,
    /** What the saved float form's config is resolved against: its targets and weight layout. */
    private readonly saved: { ctx: CreateContext; targets: TargetSpec | null; fanInFanOut: boolean },
  ) {}

  parameters(): Tensor[] {
    return [...this.deltas.values()].flatMap((d) => d.parameters());
  }

  /** Every quantized weight under its saved key (computed without autodiff). */
  private quantizedWeights(): [string, QuantizedWeight][] {
    return noGrad(() => {
      const out: [string, QuantizedWeight][] = [];
      for (const [path, d] of this.deltas) for (const [k, w] of latentKeys(path, d)) out.push([k, quantizeWeight(w, this.config.bits)]);
      return out;
    });
  }

  /** The dequantized weights in the float form's keys (a bottleneck form adds its zero biases). */
  stateDict(): Map<string, Tensor> {
    const out = new Map<string, Tensor>(this.quantizedWeights().map(([k, q]) => [k, q.weight]));
    if (this.config.form === 'bottleneck') {
      for (const [path, d] of this.deltas as Map<string, LowbitBottleneckDelta>) {
        out.set(peftKey(path, 'adapter_down.bias'), zeros([d.adapter_down.shape[0]!]));
        out.set(peftKey(path, 'adapter_up.bias'), zeros([d.adapter_up.shape[0]!]));
      }
    }
    return out;
  }

  /**
   * A saved float form as the latent weights (training continues from the dequantized weights;
   * a checkpoint's training state restores the exact latent ones instead).
   */
  loadStateDict(tensors: Map<string, Tensor>, source: string): void {
    const params = new Map<string, Tensor>();
    for (const [path, d] of this.deltas) for (const [k, w] of latentKeys(path, d)) params.set(k, w);
    const biases: Tensor[] = [];
    if (this.config.form === 'bottleneck') {
      for (const [path, d] of this.deltas as Map<string, LowbitBottleneckDelta>) {
        for (const [k, n] of [['adapter_down.bias', d.adapter_down.shape[0]!], ['adapter_up.bias', d.adapter_up.shape[0]!]] as const) {
          const t = zeros([n]);
          biases.push(t);
          params.set(peftKey(path, k), t);
        }
      }
    }
    loadInto(params, tensors, source);
    for (const [k, t] of params) {
      if (biases.includes(t) && (t.toArray() as Float32Array).some((v) => v !== 0)) {
        throw new AdaptkitError(`${source}: "${k}" is not zero, but a low-bit bottleneck adapter has no biases`);
      }
    }
  }

  configJson(): RawAdapterConfig {
    const c = this.config;
    const shared = { ...baseJson(c), target_modules: c.target_modules ?? this.saved.targets };
    const raw: RawAdapterConfig = c.form === 'lora'
      ? { ...shared, peft_type: 'LORA', r: c.width, lora_alpha: c.scale * c.width, lora_dropout: c.dropout, bias: 'none', fan_in_fan_out: this.saved.fanInFanOut }
      : { ...shared, peft_type: 'BOTTLENECK', adapter_type: 'parallel', bottleneck_size: c.width, non_linearity: 'relu', residual: true, layer_norm: 'none', scaling: c.scale };
    // written exactly as that method writes its own config: an instance of it with no targets
    const m = c.form === 'lora' ? LORA : BOTTLENECK;
    return m.create(this.name, m.parseConfig(raw, `adapter "${this.name}" saved form`), [], this.saved.ctx).configJson();
  }

  extraFiles(): Map<string, Uint8Array> {
    const tensors = this.quantizedWeights().map(([name, q]) => ({ name, shape: q.weight.shape, mean: q.mean, std: q.std, indices: q.indices }));
    return new Map([[LOWBIT_FILE, packLowbit(this.config.bits, tensors)]]);
  }

  checkpointState(): Map<string, Tensor> {
    const out = new Map<string, Tensor>();
    for (const [path, d] of this.deltas) for (const [k, w] of latentKeys(path, d)) out.set(k, w);
    return out;
  }

  loadCheckpointState(tensors: Map<string, Tensor>, source: string): void {
    loadInto(this.checkpointState(), tensors, source);
  }
}

function kaimingUniform(rows: number, fanIn: number, ctx: CreateContext): Tensor {
  const bound = 1 / Math.sqrt(fanIn);
  return rand([rows, fanIn], { low: -bound, high: bound, rng: ctx.rng });
}

/** Normal(0, std) redrawn outside ±2 std. */
function truncNormal(shape: [number, number], std: number, ctx: CreateContext): Tensor {
  const n = shape[0] * shape[1];
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    let v = ctx.rng.normal();
    while (Math.abs(v) > 2) v = ctx.rng.normal();
    out[i] = v * std;
  }
  return fromBuffer(out, shape);
}

function create(name: string, cfg: BaseAdapterConfig, targets: TargetInfo[], ctx: CreateContext): AdapterInstance {
  const c = cfg as LowbitConfig;
  const layouts = new Set<boolean>();
  const deltas: [string, LowbitDelta][] = [];
  for (const t of targets) {
    if (c.form === 'lora') {
      if (!isLinearLayer(t.module)) throw new AdaptkitError(`the lora form of LOWBIT targets linear layers; "${t.path}" is a ${t.module.constructor.name}`);
      const base = t.module;
      layouts.add(base.fanInFanOut);
      // the scale as LoRA computes it from the saved lora_alpha, so the saved adapter gives the same outputs
      const scale = (c.scale * c.width) / c.width;
      const A = parameter(kaimingUniform(c.width, base.inFeatures, ctx), `${t.path}.lora_A`);
      const B = parameter(truncNormal([base.outFeatures, c.width], UP_STD, ctx), `${t.path}.lora_B`);
      deltas.push([t.path, new LowbitLoraDelta(name, A, B, c.bits, scale, c.dropout, base.fanInFanOut)]);
    } else {
      if (isLinearLayer(t.module) && t.module.inFeatures !== t.module.outFeatures) {
        throw new AdaptkitError(`the bottleneck form of LOWBIT runs beside a layer whose input and output widths agree; "${t.path}" maps ${t.module.inFeatures} to ${t.module.outFeatures}`);
      }
      const d = targetWidth(t);
      const down = parameter(kaimingUniform(c.width, d, ctx), `${t.path}.adapter_down.weight`);
      const up = parameter(truncNormal([d, c.width], UP_STD, ctx), `${t.path}.adapter_up.weight`);
      deltas.push([t.path, new LowbitBottleneckDelta(name, down, up, c.bits, c.scale, c.dropout)]);
    }
  }
  if (layouts.size > 1) throw new AdaptkitError('the lora form of LOWBIT saves as one LoRA: its targets must all store their weights the same way ([out, in] or Conv1D [in, out])');
  const inst = new LowbitAdapter(name, c, { ctx, targets: defaultTargets(ctx.descriptor, c), fanInFanOut: layouts.has(true) });
  for (const [p, d] of deltas) inst.deltas.set(p, d);
  return inst;
}

const BITS: MethodOption = { name: 'bits', type: 'int', min: 1, max: 8, description: 'bits per weight of low-bit adapters: 1, 2, 4 or 8 (default 1)' };

function preset(name: string, description: string, form: LowbitForm): MethodPreset {
  return {
    name,
    description,
    config: (o: PresetOptions) => {
      const width = num(o, 'r', DEFAULT_WIDTH);
      const dropoutP = o.dropout;
      return {
        peft_type: 'LOWBIT', form, bits: num(o, 'bits', 1), [form === 'lora' ? 'r' : 'bottleneck_size']: width,
        ...(typeof dropoutP === 'number' ? { dropout: dropoutP } : {}), ...targetsOption(o, undefined),
      };
    },
  };
}

export const LOWBIT: AdapterMethod = {
  peftType: 'LOWBIT',
  description: 'binary / low-bit adapters (Bi-AdaptFormer, Bi-LoRA): 1-8-bit N(0,1)-median codes per weight, straight-through training, packed storage',
  kind: 'tuner',
  parseConfig: parseLowbitConfig,
  defaultTargets: (model, cfg) => defaultTargets(model, cfg as LowbitConfig),
  create,
  countParameters(cfg, targets) {
    const c = cfg as LowbitConfig;
    return targets.reduce((n, t) => {
      if (c.form === 'lora') {
        const m = t.module as Linear;
        return n + c.width * (m.inFeatures + m.outFeatures);
      }
      return n + 2 * c.width * targetWidth(t);
    }, 0);
  },
  presets: [
    preset('lowbit', 'Bi-AdaptFormer: a 1-bit parallel bottleneck adapter beside every feed-forward block (width --r, default 32; --bits 1/2/4/8)', 'bottleneck'),
    preset('lowbit-lora', 'Bi-LoRA: 1-bit LoRA on the attention q and v projections (--r, default 32; --bits 1/2/4/8)', 'lora'),
  ],
  options: [RANK, TARGETS, DROPOUT, BITS],
  // the keys its saved forms write as floats (LoRA's and the bottleneck's)
  floatKeys: ['lora_alpha', 'lora_dropout', 'scaling'],
  startsAsIdentity: false,
  straightThrough: true,
  mergeable: (inst) => (inst.config as LowbitConfig).form === 'lora',
  summary(cfg) {
    const c = cfg as LowbitConfig;
    return { form: c.form, bits: c.bits, [c.form === 'lora' ? 'r' : 'bottleneck_size']: c.width, scale: c.scale, dropout: c.dropout };
  },
};

registerMethod(LOWBIT);
