/**
 * llama2.c checkpoints (Karpathy's run.c format): the legacy header of seven int32
 * (dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len; a negative vocab_size
 * means an unshared classifier) followed by float32 weights, or the version-1 "ak42" format
 * (256-byte header with a shared-classifier flag; norms first; no freq_cis tables).
 * Weights are returned under Hugging Face Llama names, with q/k rows permuted from llama2.c's
 * interleaved RoPE pairs to the rotate-half layout, exactly as HF's Llama conversion does.
 */
import { closeSync, fstatSync, openSync, readSync } from 'node:fs';
import { AdaptkitError, type Tensor, fromBuffer } from '../tensor/index.js';

export interface Llama2cConfig {
  dim: number;
  hiddenDim: number;
  nLayers: number;
  nHeads: number;
  nKvHeads: number;
  vocabSize: number;
  seqLen: number;
  sharedClassifier: boolean;
}

export interface Llama2cCheckpoint {
  config: Llama2cConfig;
  /** HF-named weights (model.embed_tokens.weight, model.layers.0.self_attn.q_proj.weight, ...). */
  weights: Map<string, Tensor>;
}

const HEADER_FIELDS = ['dim', 'hidden_dim', 'n_layers', 'n_heads', 'n_kv_heads', 'vocab_size', 'seq_len'];

function fail(path: string, msg: string): never {
  throw new AdaptkitError(`${path}: not a valid llama2.c checkpoint: ${msg}`);
}

/** Rows of a [nHeads*hd, in] q/k weight from interleaved pairs (2j, 2j+1) to halves (j, j+hd/2). */
export function permuteRopeRows(w: Float32Array, nHeads: number, rows: number, cols: number): Float32Array {
  const hd = rows / nHeads;
  const out = new Float32Array(w.length);
  for (let h = 0; h < nHeads; h++) {
    for (let j = 0; j < hd / 2; j++) {
      for (let half = 0; half < 2; half++) {
        const src = (h * hd + 2 * j + half) * cols;
        const dst = (h * hd + half * (hd / 2) + j) * cols;
        out.set(w.subarray(src, src + cols), dst);
      }
    }
  }
  return out;
}

export function readLlama2c(path: string): Llama2cCheckpoint {
  let fd: number;
  try {
    fd = openSync(path, 'r');
  } catch (e) {
    throw new AdaptkitError(`${path}: cannot open (${(e as Error).message})`);
  }
  try {
    const size = fstatSync(fd).size;
    const head = Buffer.alloc(Math.min(256, size));
    readSync(fd, head, 0, head.length, 0);
    let offset = 0;
    let ints: number[];
    const v1 = head.length >= 4 && head.readUInt32LE(0) === 0x616b3432;
    if (v1) {
      if (size < 256) fail(path, `file has ${size} bytes, shorter than the 256-byte version-1 header`);
      const version = head.readInt32LE(4);
      if (version !== 1) fail(path, `version ${version} is not supported (only legacy and version 1 fp32)`);
      ints = Array.from({ length: 7 }, (_, i) => head.readInt32LE(8 + 4 * i));
      const shared = head.readUInt8(8 + 28);
      if (shared > 1) fail(path, `shared_classifier flag is ${shared}, not 0 or 1`);
      ints[5] = shared ? Math.abs(ints[5]!) : -Math.abs(ints[5]!);
      offset = 256;
    } else {
      if (size < 28) fail(path, `file has ${size} bytes, shorter than the 28-byte header`);
      ints = Array.from({ length: 7 }, (_, i) => head.readInt32LE(4 * i));
      offset = 28;
    }
    const [dim, hiddenDim, nLayers, nHeads, nKvHeads, vocabRaw, seqLen] = ints as [number, number, number, number, number, number, number];
    const vocabSize = Math.abs(vocabRaw);
    const bad = [dim, hiddenDim, nLayers, nHeads, nKvHeads, vocabSize, seqLen].some((v) => !(v > 0 && v < 1 << 24));
    const header = `header ${JSON.stringify(Object.fromEntries(HEADER_FIELDS.map((f, i) => [f, ints[i]])))}`;
    if (bad) fail(path, `implausible ${header}`);
    if (dim % nHeads !== 0 || nHeads % nKvHeads !== 0) fail(path, `${header}: dim must be a multiple of n_heads, and n_heads of n_kv_heads`);
    // RoPE rotates pairs of features: each head needs an even size
    if ((dim / nHeads) % 2 !== 0) fail(path, `${header}: head size ${dim / nHeads} (dim / n_heads) must be even`);
    const config: Llama2cConfig = { dim, hiddenDim, nLayers, nHeads, nKvHeads, vocabSize, seqLen, sharedClassifier: vocabRaw > 0 };
    const hd = dim / nHeads;
    const kvDim = nKvHeads * hd;
    const L = nLayers;
    // [name, shape] in file order. Legacy files follow the model's parameter order and keep the
    // freq_cis tables (skipped); version 1 puts the norms first and drops freq_cis.
    const shapes: Record<string, number[]> = {
      tok: [vocabSize, dim], rms_att: [L, dim], wq: [L, dim, dim], wk: [L, kvDim, dim], wv: [L, kvDim, dim], wo: [L, dim, dim],
      rms_ffn: [L, dim], w1: [L, hiddenDim, dim], w2: [L, dim, hiddenDim], w3: [L, hiddenDim, dim], rms_final: [dim],
      freq: [seqLen, hd], wcls: [vocabSize, dim],
    };
    const order = v1
      ? ['rms_att', 'rms_ffn', 'rms_final', 'tok', 'wq', 'wk', 'wv', 'wo', 'w1', 'w2', 'w3']
      : ['tok', 'rms_att', 'wq', 'wk', 'wv', 'wo', 'rms_ffn', 'w1', 'w2', 'w3', 'rms_final', 'freq'];
    if (!config.sharedClassifier) order.push('wcls');
    const plan = order.map((name) => [name, shapes[name]!] as const);
    const total = plan.reduce((n, [, s]) => n + s.reduce((p, q) => p * q, 1), 0);
    const expected = offset + total * 4;
    if (size < expected) fail(path, `truncated: ${size} bytes, ${expected} needed for the ${header}`);
    const raw: Record<string, Float32Array> = {};
    let pos = offset;
    for (const [name, shape] of plan) {
      const n = shape.reduce((p, q) => p * q, 1);
      const buf = new Float32Array(n);
      const bytes = new Uint8Array(buf.buffer);
      let got = 0;
      while (got < bytes.length) {
        const k = readSync(fd, bytes, got, bytes.length - got, pos + got);
        if (k === 0) fail(path, `unexpected end of file reading ${name} at byte ${pos + got}`);
        got += k;
      }
      pos += n * 4;
      raw[name] = buf;
    }
    const weights = new Map<string, Tensor>();
    const put = (name: string, data: Float32Array, shape: number[]) => weights.set(name, fromBuffer(data, shape));
    const layer = (name: string, l: number, rows: number, cols: number) => raw[name]!.slice(l * rows * cols, (l + 1) * rows * cols);
    put('model.embed_tokens.weight', raw.tok!, [vocabSize, dim]);
    for (let l = 0; l < L; l++) {
      const p = `model.layers.${l}`;
      put(`${p}.input_layernorm.weight`, layer('rms_att', l, 1, dim), [dim]);
      put(`${p}.self_attn.q_proj.weight`, permuteRopeRows(layer('wq', l, dim, dim), nHeads, dim, dim), [dim, dim]);
      put(`${p}.self_attn.k_proj.weight`, permuteRopeRows(layer('wk', l, kvDim, dim), nKvHeads, kvDim, dim), [kvDim, dim]);
      put(`${p}.self_attn.v_proj.weight`, layer('wv', l, kvDim, dim), [kvDim, dim]);
      put(`${p}.self_attn.o_proj.weight`, layer('wo', l, dim, dim), [dim, dim]);
      put(`${p}.post_attention_layernorm.weight`, layer('rms_ffn', l, 1, dim), [dim]);
      put(`${p}.mlp.gate_proj.weight`, layer('w1', l, hiddenDim, dim), [hiddenDim, dim]);
      put(`${p}.mlp.down_proj.weight`, layer('w2', l, dim, hiddenDim), [dim, hiddenDim]);
      put(`${p}.mlp.up_proj.weight`, layer('w3', l, hiddenDim, dim), [hiddenDim, dim]);
    }
    put('model.norm.weight', raw.rms_final!, [dim]);
    if (!config.sharedClassifier) put('lm_head.weight', raw.wcls!, [vocabSize, dim]);
    return { config, weights };
  } finally {
    closeSync(fd);
  }
}

/** The equivalent Hugging Face LlamaConfig (config.json contents). */
export function llama2cHfConfig(c: Llama2cConfig): Record<string, unknown> {
  return {
    architectures: ['LlamaForCausalLM'],
    model_type: 'llama',
    hidden_size: c.dim,
    intermediate_size: c.hiddenDim,
    num_hidden_layers: c.nLayers,
    num_attention_heads: c.nHeads,
    num_key_value_heads: c.nKvHeads,
    vocab_size: c.vocabSize,
    max_position_embeddings: c.seqLen,
    rms_norm_eps: 1e-5,
    rope_theta: 10000.0,
    hidden_act: 'silu',
    tie_word_embeddings: c.sharedClassifier,
    bos_token_id: 1,
    eos_token_id: 2,
    torch_dtype: 'float32',
  };
}
