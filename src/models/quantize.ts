/**
 * Quantizing a loaded model: every float linear layer becomes a QuantLinear holding its weight in
 * a packed format. As bitsandbytes' llm_int8_skip_modules and QLoRA do, the output heads stay in
 * float (and embeddings are no linear layers); `skip` leaves more modules out.
 */
import { AdaptkitError } from '../tensor/index.js';
import { type HalfTensor, QUANT_FORMAT_NAMES, type QuantizeOptions, formatOf } from '../backend/quant/index.js';
import { Linear, type Module, QuantLinear, describeModel, packedBytes } from '../nn/index.js';
import type { RawTensor } from '../io/safetensors.js';
import { BNB_FORMATS, bnbCheckpoint } from './bnb.js';
import type { RawConfig } from './config.js';

export interface QuantizeModelOptions {
  /** Module paths or name suffixes (PEFT list semantics) to keep in float, besides the heads. */
  skip?: readonly string[];
  /** nf4/fp4: values per absmax block (default 64). */
  blocksize?: number;
  /** nf4/fp4: quantize the absmax values too (QLoRA's double quantization; default true). */
  doubleQuant?: boolean;
  /** int8: the LLM.int8() outlier threshold (default 6, transformers' llm_int8_threshold). */
  threshold?: number;
}

export interface QuantizeReport {
  format: string;
  /** Paths of the layers now quantized. */
  layers: string[];
  /** Linear layers left in float (the heads and `skip`). */
  kept: string[];
  /** Bytes of the quantized layers' weights and biases before and after. */
  layerBytesBefore: number;
  layerBytesAfter: number;
  /** Bytes of all the model's weights (parameters and packed weights) after. */
  modelBytes: number;
}

/** The formats `--quantize` accepts. */
export const QUANTIZE_FORMATS: readonly string[] = QUANT_FORMAT_NAMES;

/** A --quantize value checked against the format table (its message lists the known ones). */
export function checkQuantizeFormat(v: string): string {
  if (!QUANTIZE_FORMATS.includes(v)) throw new AdaptkitError(`--quantize must be one of ${QUANTIZE_FORMATS.join(', ')}, got "${v}"`);
  return v;
}

function listed(spec: readonly string[], path: string): boolean {
  return spec.some((t) => path === t || path.endsWith(`.${t}`));
}

/** Bytes of a model's weights: its f32 parameters and the packed weights of its quantized layers. */
export function modelBytes(model: Module): number {
  let n = 0;
  for (const p of model.parameters()) n += p.size * 4;
  for (const [, m] of model.namedModules()) if (m instanceof QuantLinear) n += packedBytes(m.weight);
  return n;
}

/** Whether any layer of the model is quantized. */
export function isQuantized(model: Module): boolean {
  return model.namedModules().some(([, m]) => m instanceof QuantLinear);
}

/**
 * Replace the model's float linear layers (all but the heads and `skip`) by QuantLinear layers in
 * `format`. Every layer is quantized before any is replaced, so a layer the format cannot take
 * (an in-features count the block size does not divide) fails with the model unchanged.
 */
export function quantizeModel(model: Module, format: string, opts: QuantizeModelOptions = {}): QuantizeReport {
  checkQuantizeFormat(format);
  if (isQuantized(model)) throw new AdaptkitError(`the model is already quantized (${quantizedFormats(model).join(', ')}); quantize a float model`);
  const d = describeModel(model);
  const keep = [...d.heads, ...(opts.skip ?? [])];
  const bnb4 = format === 'nf4' || format === 'fp4';
  const qopts: QuantizeOptions = bnb4 ? { blocksize: opts.blocksize ?? 64, doubleQuant: opts.doubleQuant ?? true } : {};
  if (!bnb4 && (opts.blocksize !== undefined || opts.doubleQuant !== undefined)) {
    throw new AdaptkitError(`${format}: a block size and double quantization apply to nf4 and fp4`);
  }
  const planned: [string, QuantLinear, number][] = [];
  const kept: string[] = [];
  for (const [path, m] of model.namedModules()) {
    if (!(m instanceof Linear) || path === '') continue;
    if (listed(keep, path)) {
      kept.push(path);
      continue;
    }
    const q = QuantLinear.fromLinear(m, format, { ...qopts, name: `${path}.weight` });
    if (opts.threshold !== undefined) q.threshold = opts.threshold;
    planned.push([path, q, (m.weight.size + (m.bias?.size ?? 0)) * 4]);
  }
  if (planned.length === 0) throw new AdaptkitError(`no linear layer to quantize (kept in float: ${kept.join(', ') || 'none'})`);
  let before = 0;
  let after = 0;
  for (const [path, q, bytes] of planned) {
    const old = model.replace(path, q) as Linear;
    old.weight.dispose();
    before += bytes;
    after += q.bytes();
  }
  return { format, layers: planned.map(([p]) => p), kept, layerBytesBefore: before, layerBytesAfter: after, modelBytes: modelBytes(model) };
}

/** The formats of a model's quantized layers. */
export function quantizedFormats(model: Module): string[] {
  return [...new Set(model.namedModules().flatMap(([, m]) => (m instanceof QuantLinear ? [m.format] : [])))];
}

function mib(n: number): string {
  return `${(n / 2 ** 20).toFixed(n < 2 ** 20 ? 3 : 1)} MiB`;
}

/** One line for stderr: what was quantized and the memory it takes. */
export function describeQuantization(r: QuantizeReport): string {
  return `quantized ${r.layers.length} linear layers to ${r.format}: ${mib(r.layerBytesBefore)} -> ${mib(r.layerBytesAfter)}` +
    ` (${(r.layerBytesBefore / Math.max(r.layerBytesAfter, 1)).toFixed(1)}x); the model's weights take ${mib(r.modelBytes)}` +
    `${r.kept.length ? `; kept in float: ${r.kept.join(', ')}` : ''}`;
}

/** The [out, in] bits of a 16-bit weight as [in, out], for a model whose checkpoint stores linear weights so (Conv1D). */
function transposeBits(q: HalfTensor): Uint16Array {
  const [n, k] = q.shape as [number, number];
  const out = new Uint16Array(n * k);
  for (let r = 0; r < n; r++) for (let c = 0; c < k; c++) out[c * n + r] = q.data[r * k + c]!;
  return out;
}

/**
 * What a checkpoint of a quantized model holds besides its float parameters: bf16/f16 weights as
 * BF16/F16 tensors (a plain Hugging Face checkpoint), int8/nf4/fp4 weights in the bitsandbytes
 * layout with its quantization_config; null for a float model. GGUF block formats have no
 * safetensors layout (their export is GGUF).
 */
export function packedCheckpoint(model: Module): { tensors: Record<string, RawTensor>; quantizationConfig: RawConfig | null } | null {
  const layers = model.namedModules().filter((e): e is [string, QuantLinear] => e[1] instanceof QuantLinear);
  if (layers.length === 0) return null;
  const transposed = describeModel(model).fanInFanOut;
  const tensors: Record<string, RawTensor> = {};
  const bnb: [string, QuantLinear][] = [];
  for (const [path, m] of layers) {
    if (formatOf(m.weight).family === 'half') {
      const q = m.weight as HalfTensor;
      const shape = transposed ? [q.shape[1]!, q.shape[0]!] : [...q.shape];
      tensors[`${path}.weight`] = { dtype: q.format === 'bf16' ? 'BF16' : 'F16', shape, data: transposed ? transposeBits(q) : q.data };
    } else if (BNB_FORMATS.includes(m.format)) {
      bnb.push([path, m]);
    } else {
      throw new AdaptkitError(`${path} is quantized to ${m.format}, which has no safetensors layout (adaptkit export --format gguf writes GGUF block formats)`);
    }
  }
  if (bnb.length === 0) return { tensors, quantizationConfig: null };
  if (bnb.length < layers.length) throw new AdaptkitError('a checkpoint cannot mix bitsandbytes layers with bf16/f16 ones');
  const c = bnbCheckpoint(bnb);
  return { tensors: { ...tensors, ...c.tensors }, quantizationConfig: c.quantizationConfig };
}
