/**
 * llama-architecture GGUF files and the Llama family: loading a GGUF model (its packed linear
 * weights stay packed, as QuantLinear layers), exporting a model as llama.cpp's
 * convert_hf_to_gguf.py writes it, and exporting a LoRA adapter as convert_lora_to_gguf.py does.
 *
 * llama.cpp's llama architecture applies RoPE to interleaved pairs (2j, 2j+1) of each head, while
 * HF's Llama rotates halves (j, j + hd/2); the converter therefore permutes the rows of q and k
 * (and their biases, and a LoRA's lora_b) per head. Loading undoes that permutation, exporting
 * applies it. Rows of a packed tensor are whole blocks, so the permutation moves packed rows
 * without decoding them.
 */
import { existsSync, readFileSync, statSync } from 'node:fs';
import { basename, join } from 'node:path';
import { AdaptkitError, type Tensor, fromBuffer, noGrad } from '../tensor/index.js';
import { Embedding, Linear, type Module, QuantLinear, RMSNorm } from '../nn/index.js';
import { LLM_INT8_THRESHOLD, type QuantizedTensor, dequantize, quantize } from '../backend/quant/index.js';
import { type GgufHeader, GgufReader, type GgufValue, GGML_F32, isGgufFile, readGgufHeader } from '../io/gguf.js';
import {
  type GgufContents, type GgufTensorOut, type GgufTyped, gguf, retype, spmVocabFromLlama2c, spmVocabFromTokenizerJson,
  spmVocabKeys, writeGguf,
} from '../io/gguf-write.js';
import { preview, readJsonObject } from '../io/json.js';
import { Llama2cTokenizer } from '../io/tokenizer-llama2c.js';
import type { RawConfig } from './config.js';
import { type LlamaConfig, parseLlamaConfig } from './llama/config.js';
import { buildLlama } from './llama/load.js';
import { LlamaForCausalLM } from './llama/model.js';
import { WeightMap } from './weights.js';
import { installPacked } from './bnb.js';

export { isGgufFile };

const GGML_TYPE = { f32: 0, f16: 1, q8_0: 8 } as const;
export type GgufExportType = keyof typeof GGML_TYPE;
export const GGUF_EXPORT_TYPES = Object.keys(GGML_TYPE) as GgufExportType[];
/** llama.cpp's general.file_type (LLAMA_FTYPE_ALL_F32, MOSTLY_F16, MOSTLY_Q8_0). */
const FILE_TYPE: Record<GgufExportType, number> = { f32: 0, f16: 1, q8_0: 7 };

/** HF module names inside a decoder layer and their GGUF tensor names. */
const LAYER_NAMES: Readonly<Record<string, string>> = {
  input_layernorm: 'attn_norm',
  post_attention_layernorm: 'ffn_norm',
  'self_attn.q_proj': 'attn_q',
  'self_attn.k_proj': 'attn_k',
  'self_attn.v_proj': 'attn_v',
  'self_attn.o_proj': 'attn_output',
  'mlp.gate_proj': 'ffn_gate',
  'mlp.up_proj': 'ffn_up',
  'mlp.down_proj': 'ffn_down',
};
const TOP_NAMES: Readonly<Record<string, string>> = { 'model.embed_tokens': 'token_embd', 'model.norm': 'output_norm', lm_head: 'output' };
const LINEAR_GGUF = new Set(['attn_q', 'attn_k', 'attn_v', 'attn_output', 'ffn_gate', 'ffn_up', 'ffn_down', 'output']);

/** The GGUF name of an HF module path ("model.layers.3.self_attn.q_proj" → "blk.3.attn_q"), or null. */
export function ggufModuleName(path: string): string | null {
  if (TOP_NAMES[path]) return TOP_NAMES[path]!;
  const m = /^model\.layers\.(\d+)\.(.+)$/.exec(path);
  const inner = m ? LAYER_NAMES[m[2]!] : undefined;
  return m && inner ? `blk.${m[1]}.${inner}` : null;
}

/** The HF module path of a GGUF tensor base name ("blk.3.attn_q" → "model.layers.3.self_attn.q_proj"), or null. */
export function hfModuleName(name: string): string | null {
  for (const [hf, g] of Object.entries(TOP_NAMES)) if (g === name) return hf;
  const m = /^blk\.(\d+)\.(\w+)$/.exec(name);
  if (!m) return null;
  const inner = Object.entries(LAYER_NAMES).find(([, g]) => g === m[2]);
  return inner ? `model.layers.${m[1]}.${inner[0]}` : null;
}

/**
 * Source row of each destination row for the q/k permutation of `rows` rows in `nHeads` heads.
 * toGguf: HF's halves (h, half, j) become llama.cpp's pairs (h, j, half), as the converter's
 * `permute` (reshape(n_head, 2, hd/2, ...).swapaxes(1, 2)) does; otherwise the inverse.
 */
export function ropeRowOrder(rows: number, nHeads: number, toGguf: boolean): Int32Array {
  const hd = rows / nHeads;
  if (!Number.isInteger(hd) || hd % 2 !== 0) throw new AdaptkitError(`${rows} rows do not split into ${nHeads} heads of an even size`);
  const src = new Int32Array(rows);
  for (let h = 0; h < nHeads; h++) {
    for (let j = 0; j < hd / 2; j++) {
      for (let half = 0; half < 2; half++) {
        const hfRow = h * hd + half * (hd / 2) + j;
        const ggufRow = h * hd + 2 * j + half;
        if (toGguf) src[ggufRow] = hfRow;
        else src[hfRow] = ggufRow;
      }
    }
  }
  return src;
}

/** Rows of a row-major array (rowLen elements each) reordered by `src` (see ropeRowOrder). */
function permuteRows<T extends Float32Array | Uint8Array | Uint16Array>(data: T, src: Int32Array, rowLen: number): T {
  const out = new (data.constructor as new (n: number) => T)(data.length);
  for (let r = 0; r < src.length; r++) out.set(data.subarray(src[r]! * rowLen, (src[r]! + 1) * rowLen), r * rowLen);
  return out;
}

/** q/k rows of f32 data [rows, cols] (cols 1 for a bias). */
export function permuteRopeF32(data: Float32Array, nHeads: number, rows: number, toGguf: boolean): Float32Array {
  return permuteRows(data, ropeRowOrder(rows, nHeads, toGguf), data.length / rows);
}

/** q/k rows of a packed [rows, cols] tensor, moved as whole packed rows. */
export function permuteRopePacked(q: QuantizedTensor, nHeads: number, toGguf: boolean): QuantizedTensor {
  const rows = q.shape[0]!;
  if (q.format === 'int8' || q.format === 'nf4' || q.format === 'fp4') {
    throw new AdaptkitError(`${q.name ?? 'tensor'}: ${q.format} rows cannot be permuted in packed form`);
  }
  const data = (q as { data: Uint8Array | Uint16Array }).data;
  return { ...q, data: permuteRows(data, ropeRowOrder(rows, nHeads, toGguf), data.length / rows) } as QuantizedTensor;
}

// ---------------------------------------------------------------------------------------------
// loading

export interface GgufLoadOptions {
  /** Where the one notice line about dequantized tensors goes (default: stderr). */
  notice?: (line: string) => void;
}

export interface GgufLoadedModel {
  model: LlamaForCausalLM;
  /** The equivalent HF config.json contents. */
  config: RawConfig;
  /** GGUF tensors no module used. */
  unused: string[];
}

/** Typed reads of a GGUF file's keys, each error naming the file and the key. */
class GgufKeys {
  constructor(readonly md: Map<string, GgufValue>, readonly path: string) {}

  fail(key: string, msg: string): never {
    throw new AdaptkitError(`${this.path}: ${key} ${msg}`);
  }

  num(key: string, fallback?: number): number {
    const v = this.md.get(key);
    if (v === undefined) {
      if (fallback === undefined) this.fail(key, 'is missing (a required key of the llama architecture)');
      return fallback;
    }
    const n = typeof v === 'bigint' && v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v;
    if (typeof n !== 'number' || !Number.isFinite(n)) this.fail(key, `must be a number, got ${preview(v)}`);
    return n;
  }

  positiveInt(key: string, fallback?: number): number {
    const n = this.num(key, fallback);
    if (!Number.isInteger(n) || n < 1) this.fail(key, `must be a positive integer, got ${n}`);
    return n;
  }

  str(key: string): string | undefined {
    const v = this.md.get(key);
    if (v !== undefined && typeof v !== 'string') this.fail(key, `must be a string, got ${preview(v)}`);
    return v;
  }
}

/** The architecture, checked: only llama files are read. */
function checkArchitecture(k: GgufKeys): void {
  const arch = k.md.get('general.architecture');
  if (arch === undefined) k.fail('general.architecture', 'is missing');
  if (arch !== 'llama') k.fail('general.architecture', `${preview(arch)} is not supported (llama)`);
}

/** A llama-architecture GGUF's hyper-parameters as the equivalent HF LlamaConfig (config.json). */
export function ggufLlamaConfig(h: GgufHeader): RawConfig {
  const k = new GgufKeys(h.metadata, h.path);
  checkArchitecture(k);
  if (Array.isArray(h.metadata.get('llama.attention.head_count_kv'))) k.fail('llama.attention.head_count_kv', 'varies per layer, which is not supported');
  if (k.num('llama.expert_count', 0) > 0) k.fail('llama.expert_count', `is ${k.num('llama.expert_count')}: mixture-of-experts models are not supported`);
  const hidden = k.positiveInt('llama.embedding_length');
  const heads = k.positiveInt('llama.attention.head_count');
  const kvHeads = k.positiveInt('llama.attention.head_count_kv', heads);
  const headDim = k.positiveInt('llama.attention.key_length', Math.floor(hidden / heads));
  if (k.positiveInt('llama.attention.value_length', headDim) !== headDim) k.fail('llama.attention.value_length', `(${k.num('llama.attention.value_length')}) differs from the key length ${headDim}, which is not supported`);
  const ropeDim = k.positiveInt('llama.rope.dimension_count', headDim);
  if (ropeDim !== headDim) k.fail('llama.rope.dimension_count', `is ${ropeDim}, the head size is ${headDim}: partial rotary embeddings are not supported`);
  const embd = h.tensors.get('token_embd.weight');
  const tokens = h.metadata.get('tokenizer.ggml.tokens');
  const vocab = k.positiveInt('llama.vocab_size', Array.isArray(tokens) ? tokens.length : embd?.shape[0] ?? 0);
  const scaling = k.str('llama.rope.scaling.type');
  let ropeScaling: RawConfig | null = null;
  if (scaling === 'linear') ropeScaling = { type: 'linear', factor: k.num('llama.rope.scaling.factor') };
  else if (scaling !== undefined && scaling !== 'none') k.fail('llama.rope.scaling.type', `${preview(scaling)} is not supported (none, linear)`);
  const raw: RawConfig = {
    architectures: ['LlamaForCausalLM'],
    model_type: 'llama',
    hidden_size: hidden,
    intermediate_size: k.positiveInt('llama.feed_forward_length'),
    num_hidden_layers: k.positiveInt('llama.block_count'),
    num_attention_heads: heads,
    num_key_value_heads: kvHeads,
    vocab_size: vocab,
    max_position_embeddings: k.positiveInt('llama.context_length'),
    rms_norm_eps: k.num('llama.attention.layer_norm_rms_epsilon'),
    rope_theta: k.num('llama.rope.freq_base', 10000),
    hidden_act: 'silu',
    tie_word_embeddings: !h.tensors.has('output.weight'),
    attention_bias: h.tensors.has('blk.0.attn_q.bias'),
    torch_dtype: 'float32',
  };
  if (headDim !== Math.floor(hidden / heads)) raw.head_dim = headDim;
  if (ropeScaling) raw.rope_scaling = ropeScaling;
  const bos = h.metadata.get('tokenizer.ggml.bos_token_id');
  const eos = h.metadata.get('tokenizer.ggml.eos_token_id');
  if (typeof bos === 'number') raw.bos_token_id = bos;
  if (typeof eos === 'number') raw.eos_token_id = eos;
  return raw;
}

/** Tensors a llama GGUF may hold that change the model in ways this loader does not implement. */
const REFUSED_TENSORS: Readonly<Record<string, string>> = {
  'rope_freqs.weight': 'per-frequency RoPE factors (Llama 3.1 rope scaling) are not supported',
};

function defaultNotice(line: string): void {
  process.stderr.write(`adaptkit: ${line}\n`);
}

/**
 * A llama-architecture GGUF model. F32 tensors load as they are; packed linear weights (F16, BF16,
 * Q8_0, Q4_0, Q4_K, Q6_K) become QuantLinear layers that compute on the packed form; a packed
 * tensor that is not a linear weight (the token embedding, a norm) is dequantized, and one notice
 * line names every such tensor.
 */
export function loadGgufModel(path: string, opts: GgufLoadOptions = {}): GgufLoadedModel {
  const r = GgufReader.open(path);
  try {
    const raw = ggufLlamaConfig(r.header);
    const c = parseLlamaConfig(raw, path);
    for (const [name, why] of Object.entries(REFUSED_TENSORS)) if (r.has(name)) throw new AdaptkitError(`${path}: tensor ${JSON.stringify(name)}: ${why}`);
    const required = ['token_embd', 'output_norm', ...Array.from({ length: c.numLayers }, (_, l) => Object.values(LAYER_NAMES).map((g) => `blk.${l}.${g}`)).flat()];
    for (const n of required) {
      if (!r.has(`${n}.weight`)) throw new AdaptkitError(`${path}: missing tensor "${n}.weight" (a llama model of ${c.numLayers} blocks, llama.block_count, needs it)`);
    }
    const tensors = new Map<string, Tensor>();
    // packed linear weights by HF weight name: the model gets QuantLinear layers for them
    const packed = new Map<string, QuantizedTensor>();
    const dequantized: string[] = [];
    const unused: string[] = [];
    for (const name of r.names()) {
      const m = /^(.+)\.(weight|bias)$/.exec(name);
      const mod = m ? hfModuleName(m[1]!) : null;
      if (!m || !mod) {
        unused.push(name);
        continue;
      }
      const hf = `${mod}.${m[2]}`;
      const info = r.info(name);
      const base = m[1]!.replace(/^blk\.\d+\./, '');
      const ropeHeads = base === 'attn_q' ? c.numHeads : base === 'attn_k' ? c.numKvHeads : 0;
      const rows = info.shape[0]!;
      if (ropeHeads && rows !== ropeHeads * c.headDim) {
        throw new AdaptkitError(`${path}: tensor ${JSON.stringify(name)} has ${rows} rows, expected ${ropeHeads} heads × ${c.headDim} (shape [${info.shape.join(', ')}])`);
      }
      const want = expectedShape(c, base, m[2] as 'weight' | 'bias');
      if (want.length !== info.shape.length || want.some((d, i) => d !== info.shape[i])) {
        const ne = (s: readonly number[]) => [...s].reverse().join(', ');
        throw new AdaptkitError(`${path}: tensor ${JSON.stringify(name)} has shape [${info.shape.join(', ')}] (ne [${info.ne.join(', ')}]), expected [${want.join(', ')}] (ne [${ne(want)}])`);
      }
      if (info.type !== GGML_F32 && LINEAR_GGUF.has(base) && m[2] === 'weight') {
        const q = r.tensor(name) as QuantizedTensor;
        packed.set(hf, ropeHeads ? permuteRopePacked(q, ropeHeads, false) : q);
        continue;
      }
      let data = r.float32(name);
      if (info.type !== GGML_F32) dequantized.push(`${name} (${info.typeName})`);
      if (ropeHeads) data = permuteRopeF32(data, ropeHeads, rows, false);
      tensors.set(hf, fromBuffer(data, info.shape));
    }
    const w = new WeightMap((n) => tensors.get(n), [...tensors.keys()], path, packed);
    const model = buildLlama(c, w);
    installPacked(model, w, LLM_INT8_THRESHOLD);
    if (dequantized.length) (opts.notice ?? defaultNotice)(`${path}: dequantized to f32 (not linear layers, so no packed form): ${dequantized.join(', ')}`);
    const ggufName = (hf: string) => hf.replace(/^(.+)\.(weight|bias)$/, (_, mod: string, p: string) => `${ggufModuleName(mod)}.${p}`);
    return { model, config: raw, unused: [...unused, ...w.unused().map(ggufName)] };
  } finally {
    r.close();
  }
}

// ---------------------------------------------------------------------------------------------
// export: the model

/** A weight as the model holds it: f32 values, or a packed tensor (a QuantLinear's). */
type HeldWeight = { f32: Float32Array; shape: number[] } | { packed: QuantizedTensor; shape: number[] };

function heldWeight(m: Module | undefined, path: string): HeldWeight {
  if (m instanceof QuantLinear) return { packed: m.weight, shape: [...m.weight.shape] };
  if (m instanceof Linear) {
    if (m.fanInFanOut) throw new AdaptkitError(`${path}: a Conv1D-layout layer cannot be written to a llama GGUF`);
    return { f32: noGrad(() => m.weight.toArray()) as Float32Array, shape: [...m.weight.shape] };
  }
  if (m instanceof Embedding || m instanceof RMSNorm) return { f32: noGrad(() => m.weight.toArray()) as Float32Array, shape: [...m.weight.shape] };
  throw new AdaptkitError(`${path}: ${m ? `a ${m.constructor.name}` : 'missing'}, not a base model layer (merge or remove adapters before exporting a model)`);
}

function bytesOf(a: Float32Array | Uint16Array | Uint8Array): Uint8Array {
  return new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
}

function packedBytesOf(q: QuantizedTensor): Uint8Array {
  return bytesOf((q as { data: Uint8Array | Uint16Array }).data);
}

export interface GgufExportOptions {
  type: GgufExportType;
  /** The tokenizer.ggml.* keys (see ggufVocabKeys). */
  vocab: readonly (readonly [string, GgufTyped])[];
  /** general.name. */
  name?: string;
  /** Where notices go (a Q8_0 fallback to F16). */
  notice?: (line: string) => void;
}

export interface GgufExportReport {
  tensors: number;
  /** Tensors written as F16 because Q8_0 blocks do not divide their rows. */
  fallbacks: string[];
  /** Tensors copied in their packed form (already of the requested type). */
  copied: string[];
}

function checkExportable(c: LlamaConfig): void {
  const scaling = c.ropeScaling ? String(c.ropeScaling.rope_type ?? c.ropeScaling.type ?? 'default') : 'default';
  if (scaling !== 'default' && scaling !== 'linear') throw new AdaptkitError(`rope_scaling type "${scaling}" cannot be written to a llama GGUF (default, linear)`);
  if (c.mlpBias) throw new AdaptkitError('mlp_bias: MLP biases cannot be written to a llama GGUF');
}

/** The tensors and keys of a model's llama GGUF (see exportGgufModel). */
export function ggufModelContents(model: LlamaForCausalLM, opts: GgufExportOptions): { contents: GgufContents; report: GgufExportReport } {
  if (!(model instanceof LlamaForCausalLM)) throw new AdaptkitError('only Llama-family causal models can be written as llama GGUF files');
  const c = model.config;
  checkExportable(c);
  const modules = new Map(model.namedModules());
  const report: GgufExportReport = { tensors: 0, fallbacks: [], copied: [] };
  const tensors: GgufTensorOut[] = [];
  const want = opts.type;
  const put = (gname: string, w: HeldWeight, ropeHeads: number) => {
    const rows = w.shape[0]!;
    if (w.shape.length === 1) {
      let f = 'f32' in w ? w.f32 : dequantize(w.packed);
      if (ropeHeads) f = permuteRopeF32(f, ropeHeads, rows, true);
      tensors.push({ name: gname, type: GGML_TYPE.f32, shape: w.shape, data: bytesOf(f) });
      return;
    }
    let type: GgufExportType = want;
    if (type === 'q8_0' && w.shape[1]! % 32 !== 0) {
      type = 'f16';
      report.fallbacks.push(gname);
    }
    if ('packed' in w && w.packed.format === type) {
      const q = ropeHeads ? permuteRopePacked(w.packed, ropeHeads, true) : w.packed;
      tensors.push({ name: gname, type: GGML_TYPE[type], shape: w.shape, data: packedBytesOf(q) });
      report.copied.push(gname);
      return;
    }
    let f = 'f32' in w ? w.f32 : dequantize(w.packed);
    if (ropeHeads) f = permuteRopeF32(f, ropeHeads, rows, true);
    const data = type === 'f32' ? bytesOf(f) : packedBytesOf(quantize(type, f, w.shape, { name: gname }));
    tensors.push({ name: gname, type: GGML_TYPE[type], shape: w.shape, data });
  };
  const weightOf = (path: string) => heldWeight(modules.get(path), path);
  const biasOf = (path: string): Tensor | null => (modules.get(path) as { bias?: Tensor | null } | undefined)?.bias ?? null;
  put('token_embd.weight', weightOf('model.embed_tokens'), 0);
  for (let l = 0; l < c.numLayers; l++) {
    for (const [inner, g] of Object.entries(LAYER_NAMES)) {
      const path = `model.layers.${l}.${inner}`;
      const heads = g === 'attn_q' ? c.numHeads : g === 'attn_k' ? c.numKvHeads : 0;
      put(`blk.${l}.${g}.weight`, weightOf(path), heads);
      const b = LINEAR_GGUF.has(g) ? biasOf(path) : null;
      if (b) put(`blk.${l}.${g}.bias`, { f32: noGrad(() => b.toArray()) as Float32Array, shape: [...b.shape] }, heads);
    }
  }
  put('output_norm.weight', weightOf('model.norm'), 0);
  if (model.lm_head) put('output.weight', weightOf('lm_head'), 0);
  report.tensors = tensors.length;
  if (report.fallbacks.length) (opts.notice ?? defaultNotice)(`the rows of ${report.fallbacks.join(', ')} are no whole number of Q8_0 blocks (32 values): written as F16, as llama.cpp's converter does`);
  const fileType: GgufExportType = want;
  const metadata: (readonly [string, GgufTyped])[] = [
    ['general.architecture', gguf.str('llama')],
    ['general.type', gguf.str('model')],
    ['general.name', gguf.str(opts.name ?? 'adaptkit export')],
    ['general.file_type', gguf.u32(FILE_TYPE[fileType])],
    ['general.quantization_version', gguf.u32(2)],
    ['llama.vocab_size', gguf.u32(c.vocabSize)],
    ['llama.context_length', gguf.u32(c.maxPositions)],
    ['llama.embedding_length', gguf.u32(c.hiddenSize)],
    ['llama.block_count', gguf.u32(c.numLayers)],
    ['llama.feed_forward_length', gguf.u32(c.intermediateSize)],
    ['llama.rope.dimension_count', gguf.u32(c.headDim)],
    ['llama.attention.head_count', gguf.u32(c.numHeads)],
    ['llama.attention.head_count_kv', gguf.u32(c.numKvHeads)],
    ['llama.attention.layer_norm_rms_epsilon', gguf.f32(c.rmsNormEps)],
    ['llama.rope.freq_base', gguf.f32(c.ropeTheta)],
  ];
  if (c.headDim !== Math.floor(c.hiddenSize / c.numHeads)) {
    metadata.push(['llama.attention.key_length', gguf.u32(c.headDim)], ['llama.attention.value_length', gguf.u32(c.headDim)]);
  }
  if (c.ropeScaling && String(c.ropeScaling.rope_type ?? c.ropeScaling.type) === 'linear') {
    metadata.push(['llama.rope.scaling.type', gguf.str('linear')], ['llama.rope.scaling.factor', gguf.f32(Number(c.ropeScaling.factor))]);
  }
  const tokens = opts.vocab.find(([k]) => k === 'tokenizer.ggml.tokens')?.[1];
  if (!tokens || tokens.type !== 'array') throw new AdaptkitError('the GGUF vocabulary has no tokenizer.ggml.tokens');
  if (tokens.value.length !== c.vocabSize) {
    throw new AdaptkitError(`the tokenizer has ${tokens.value.length} tokens, the model's vocab_size is ${c.vocabSize}: llama.cpp needs exactly one token per embedding row`);
  }
  metadata.push(...opts.vocab);
  return { contents: { metadata, tensors }, report };
}

/** Write a Llama-family model as a llama-architecture GGUF file of `opts.type` (norms stay F32). */
export function exportGgufModel(model: LlamaForCausalLM, out: string, opts: GgufExportOptions): GgufExportReport {
  const { contents, report } = ggufModelContents(model, opts);
  writeGguf(out, contents);
  return report;
}

/**
 * The tokenizer.ggml.* keys for a model: copied from a GGUF file (the model itself, or
 * `tokenizerPath`), or made from a llama2.c tokenizer.bin or a SentencePiece-BPE tokenizer.json
 * (in `tokenizerPath` or the model folder).
 */
export function ggufVocabKeys(modelPath: string, tokenizerPath: string | undefined, vocabSize: number): [string, GgufTyped][] {
  const src = tokenizerPath ?? modelPath;
  if (!existsSync(src)) throw new AdaptkitError(`tokenizer not found: ${src}`);
  if (statSync(src).isFile()) {
    if (isGgufFile(src)) {
      const h = readGgufHeader(src);
      const keys = [...h.metadata.keys()].filter((k) => k.startsWith('tokenizer.'));
      if (!keys.includes('tokenizer.ggml.tokens')) throw new AdaptkitError(`${src}: no tokenizer.ggml.tokens to copy`);
      return keys.map((k) => [k, retype(h.metadata.get(k)!, k, h.types.get(k)!)]);
    }
    if (tokenizerPath) return spmVocabKeys(spmVocabFromLlama2c(Llama2cTokenizer.fromFile(src, vocabSize)), vocabSize);
    throw new AdaptkitError(`${modelPath}: a llama2.c checkpoint has no tokenizer: pass --tokenizer (its tokenizer.bin)`);
  }
  const json = join(src, 'tokenizer.json');
  if (existsSync(json)) {
    const cfgPath = join(src, 'tokenizer_config.json');
    const cfg = existsSync(cfgPath) ? readJsonObject(cfgPath) : {};
    return spmVocabKeys(spmVocabFromTokenizerJson(JSON.parse(readFileSync(json, 'utf8')) as Record<string, unknown>, cfg, json), vocabSize);
  }
  if (existsSync(join(src, 'tokenizer.bin'))) return spmVocabKeys(spmVocabFromLlama2c(Llama2cTokenizer.fromFile(join(src, 'tokenizer.bin'), vocabSize)), vocabSize);
  throw new AdaptkitError(`no tokenizer found for ${modelPath}: pass --tokenizer (a llama2.c tokenizer.bin, an HF folder with tokenizer.json, or a GGUF file)`);
}

/** general.name for an export: the source's file or folder name. */
export function ggufNameFor(path: string): string {
  return basename(path).replace(/\.(gguf|bin)$/, '') || 'model';
}

// ---------------------------------------------------------------------------------------------
// export: LoRA adapters

/** One LoRA-adapted linear layer: PEFT's A [r, in] and B [out, r], and the scale the adapter applies (s·BA). */
export interface LoraFactors {
  /** HF module path, e.g. "model.layers.0.self_attn.q_proj". */
  module: string;
  a: Float32Array;
  b: Float32Array;
  r: number;
  scale: number;
}

/** [out, in] of a llama linear tensor by its GGUF base name, from the config (the layer may be wrapped by adapters). */
function linearShape(c: LlamaConfig, base: string): [number, number] {
  const q = c.numHeads * c.headDim;
  const kv = c.numKvHeads * c.headDim;
  const H = c.hiddenSize;
  const shapes: Record<string, [number, number]> = {
    attn_q: [q, H], attn_k: [kv, H], attn_v: [kv, H], attn_output: [H, q],
    ffn_gate: [c.intermediateSize, H], ffn_up: [c.intermediateSize, H], ffn_down: [H, c.intermediateSize], output: [c.vocabSize, H],
  };
  return shapes[base]!;
}

/** The row-major shape a llama tensor must have, by its GGUF base name. */
function expectedShape(c: LlamaConfig, base: string, kind: 'weight' | 'bias'): number[] {
  if (base === 'token_embd') return [c.vocabSize, c.hiddenSize];
  if (base === 'attn_norm' || base === 'ffn_norm' || base === 'output_norm') return [c.hiddenSize];
  const [out, inF] = linearShape(c, base);
  return kind === 'bias' ? [out] : [out, inF];
}

/**
 * The GGUF LoRA of `factors` over `model`, as convert_lora_to_gguf.py writes it: general.type
 * "adapter", adapter.type "lora", adapter.lora.alpha, and per layer `<tensor>.weight.lora_a`
 * (PEFT's A, [r, in]) and `.lora_b` (B, [out, r]; q/k rows permuted like the base weight).
 * llama.cpp scales each layer by alpha / r with r its lora_a's row count; a layer whose scale
 * differs (rsLoRA, rank or alpha patterns) has the ratio folded into its lora_b, so every layer's
 * product is exactly s·BA.
 */
export function ggufLoraContents(model: LlamaForCausalLM, factors: readonly LoraFactors[], alpha: number, opts: { type: 'f32' | 'f16'; name?: string }): GgufContents {
  if (!(model instanceof LlamaForCausalLM)) throw new AdaptkitError('GGUF LoRA adapters are written for Llama-family base models');
  const c = model.config;
  if (!Number.isFinite(alpha)) throw new AdaptkitError(`lora_alpha must be a finite number, got ${alpha}`);
  const tensors: GgufTensorOut[] = [];
  for (const f of factors) {
    const g = ggufModuleName(f.module);
    const base = g?.replace(/^blk\.\d+\./, '');
    if (!g || !LINEAR_GGUF.has(base!)) throw new AdaptkitError(`the adapter adapts ${f.module}, which has no linear GGUF tensor (llama.cpp applies LoRA to ${[...LINEAR_GGUF].join(', ')})`);
    const [outF, inF] = linearShape(c, base!);
    if (f.a.length !== f.r * inF) throw new AdaptkitError(`${f.module}.lora_A: ${f.a.length} values, expected [${f.r}, ${inF}]`);
    if (f.b.length !== outF * f.r) throw new AdaptkitError(`${f.module}.lora_B: ${f.b.length} values, expected [${outF}, ${f.r}]`);
    // llama.cpp applies alpha / r (or 1 when alpha is 0): fold what differs into B
    const applied = alpha ? alpha / f.r : 1;
    const ratio = f.scale / applied;
    let b = ratio === 1 ? f.b : f.b.map((x) => x * ratio);
    const heads = base === 'attn_q' ? c.numHeads : base === 'attn_k' ? c.numKvHeads : 0;
    if (heads) b = permuteRopeF32(b, heads, outF, true);
    const enc = (x: Float32Array, shape: number[]) => (opts.type === 'f32'
      ? { type: GGML_TYPE.f32, data: bytesOf(x) }
      : { type: GGML_TYPE.f16, data: packedBytesOf(quantize('f16', x, shape)) });
    tensors.push({ name: `${g}.weight.lora_a`, shape: [f.r, inF], ...enc(f.a, [f.r, inF]) });
    tensors.push({ name: `${g}.weight.lora_b`, shape: [outF, f.r], ...enc(b, [outF, f.r]) });
  }
  if (tensors.length === 0) throw new AdaptkitError('the adapter adapts no layer: nothing to write');
  return {
    metadata: [
      ['general.architecture', gguf.str('llama')],
      ['general.type', gguf.str('adapter')],
      ['general.name', gguf.str(opts.name ?? 'adaptkit LoRA')],
      ['adapter.type', gguf.str('lora')],
      ['adapter.lora.alpha', gguf.f32(alpha)],
    ],
    tensors,
  };
}

export function exportGgufLora(model: LlamaForCausalLM, factors: readonly LoraFactors[], alpha: number, out: string, opts: { type: 'f32' | 'f16'; name?: string }): number {
  const contents = ggufLoraContents(model, factors, alpha, opts);
  writeGguf(out, contents);
  return contents.tensors.length;
}

/** A GGUF LoRA adapter's factors, read back in PEFT's orientation and HF's row order (for checks and tests). */
export function readGgufLora(path: string, model: LlamaForCausalLM): { alpha: number; factors: LoraFactors[] } {
  const r = GgufReader.open(path);
  try {
    const k = new GgufKeys(r.metadata, path);
    if (r.metadata.get('general.type') !== 'adapter') k.fail('general.type', `is ${preview(r.metadata.get('general.type'))}, not "adapter"`);
    if (r.metadata.get('adapter.type') !== 'lora') k.fail('adapter.type', `is ${preview(r.metadata.get('adapter.type'))}, not "lora"`);
    checkArchitecture(k);
    const alpha = k.num('adapter.lora.alpha', 0);
    const c = model.config;
    const factors: LoraFactors[] = [];
    for (const name of r.names()) {
      const m = /^(.+)\.weight\.lora_a$/.exec(name);
      if (!m) continue;
      const mod = hfModuleName(m[1]!);
      if (!mod) throw new AdaptkitError(`${path}: tensor ${JSON.stringify(name)} names no layer of a llama model`);
      const bName = `${m[1]}.weight.lora_b`;
      if (!r.has(bName)) throw new AdaptkitError(`${path}: tensor ${JSON.stringify(name)} has no ${bName}`);
      const rank = r.info(name).shape[0]!;
      const outF = r.info(bName).shape[0]!;
      const base = m[1]!.replace(/^blk\.\d+\./, '');
      const heads = base === 'attn_q' ? c.numHeads : base === 'attn_k' ? c.numKvHeads : 0;
      let b = r.float32(bName);
      if (heads) b = permuteRopeF32(b, heads, outF, false);
      factors.push({ module: mod, a: r.float32(name), b, r: rank, scale: alpha ? alpha / rank : 1 });
    }
    return { alpha, factors };
  } finally {
    r.close();
  }
}
