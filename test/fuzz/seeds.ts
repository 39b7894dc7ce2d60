/**
 * Seed files for the loader fuzz test: the test fixtures, the real assets in ../shared/data, and
 * small synthetic files that reach parts the fixtures do not (every safetensors dtype, every GGUF
 * value type, llama2.c version-1 headers, every tokenizer.json component the tokenizer library has).
 * Large real files are cut down (a few hundred tokens) so thousands of mutants load in a minute.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { dataDir } from '../../src/io/data.js';
import type { Field, Json } from './mutate.js';
import { type GgufArray, type Kv, arr, parseGguf, writeGguf } from './gguf.js';

export const FIX = fileURLToPath(new URL('../fixtures/', import.meta.url));
export const DATA = dataDir();
export const VOCAB = join(DATA, 'tokenizers', 'llamacpp-vocab');
export const STORIES = join(DATA, 'models', 'stories260K');

export const MODEL_FIXTURES = ['bert', 'gpt2', 'llama-gqa', 'llama-rope-linear', 'llama-rope-llama3', 'qwen2-bias'];
export const ADAPTER_FIXTURES = ['dora-gpt2', 'dora-llama', 'ia3-gpt2', 'ia3-llama', 'lora-gpt2', 'lora-llama', 'rslora-llama'];

// ---------------------------------------------------------------------------------------------
// safetensors

export interface BinarySeed {
  name: string;
  bytes: Buffer;
  fields: Field[];
  hotEnd: number;
}

function safetensorsSeed(name: string, bytes: Buffer): BinarySeed {
  const hlen = Number(bytes.readBigUInt64LE(0));
  return { name, bytes, fields: [{ offset: 0, width: 8, name: 'header length' }], hotEnd: 8 + hlen };
}

/** Every dtype, an empty tensor, a scalar and metadata, in one file. */
function allDtypesSafetensors(): Buffer {
  const entries: [string, string, number[], number][] = [
    ['a.f64', 'F64', [2], 8], ['b.f32', 'F32', [2, 2], 4], ['c.f16', 'F16', [3], 2], ['d.bf16', 'BF16', [3], 2],
    ['e.i64', 'I64', [2], 8], ['f.i32', 'I32', [2], 4], ['g.i16', 'I16', [2], 2], ['h.i8', 'I8', [2], 1],
    ['i.u8', 'U8', [2], 1], ['j.bool', 'BOOL', [2], 1], ['k.empty', 'F32', [0, 4], 4], ['l.scalar', 'F32', [], 4],
  ];
  const header: Record<string, unknown> = { __metadata__: { format: 'pt', note: 'fuzz seed' } };
  let off = 0;
  for (const [name, dtype, shape, size] of entries) {
    const n = shape.reduce((p, q) => p * q, 1) * size;
    header[name] = { dtype, shape, data_offsets: [off, off + n] };
    off += n;
  }
  const data = Buffer.alloc(off);
  for (let i = 0; i < off; i++) data[i] = (i * 37) & 0x3f;
  let json = JSON.stringify(header);
  json += ' '.repeat((8 - (json.length % 8)) % 8);
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.length));
  return Buffer.concat([len, Buffer.from(json), data]);
}

export function safetensorsSeeds(): BinarySeed[] {
  const out: BinarySeed[] = [safetensorsSeed('all-dtypes', allDtypesSafetensors())];
  for (const m of MODEL_FIXTURES) out.push(safetensorsSeed(`models/${m}`, readFileSync(join(FIX, 'models', m, 'model.safetensors'))));
  for (const a of ADAPTER_FIXTURES) out.push(safetensorsSeed(`adapters/${a}`, readFileSync(join(FIX, 'adapters', a, 'adapter_model.safetensors'))));
  return out;
}

// ---------------------------------------------------------------------------------------------
// GGUF vocabularies

export interface GgufSeed extends BinarySeed {
  kvs: Kv[];
}

function ggufSeed(name: string, kvs: Kv[]): GgufSeed {
  const { bytes, fields } = writeGguf(kvs);
  return { name, bytes, fields, hotEnd: bytes.length, kvs };
}

function keep(kvs: Kv[], pick: (key: string, a: GgufArray) => GgufArray | null): Kv[] {
  return kvs.map((kv) => {
    if (kv.type !== 9) return kv;
    const a = pick(kv.key, kv.value as GgufArray);
    return a ? { ...kv, value: a } : kv;
  });
}

function setInt(kvs: Kv[], key: string, v: number): void {
  const kv = kvs.find((k) => k.key === key);
  if (kv) kv.value = v;
}

/** The first merges of GPT-2 with the tokens they make, plus <|endoftext|>. */
function smallGpt2(): Kv[] {
  const { kvs } = parseGguf(readFileSync(join(VOCAB, 'ggml-vocab-gpt-2.gguf')));
  const M = 200;
  const tokens = (kvs.find((k) => k.key === 'tokenizer.ggml.tokens')!.value as GgufArray).items as string[];
  const ids = [...Array.from({ length: 256 + M }, (_, i) => i), tokens.length - 1];
  const out = keep(kvs, (key, a) => {
    if (key === 'tokenizer.ggml.tokens' || key === 'tokenizer.ggml.token_type') return arr(a.elem, ids.map((i) => a.items[i]));
    if (key === 'tokenizer.ggml.merges') return arr(a.elem, a.items.slice(0, M));
    return null;
  });
  setInt(out, 'tokenizer.ggml.bos_token_id', ids.length - 1);
  setInt(out, 'tokenizer.ggml.eos_token_id', ids.length - 1);
  return out;
}

/** Control tokens, the 256 byte tokens and the first pieces of the Llama SentencePiece vocabulary. */
function smallLlama(): Kv[] {
  const { kvs } = parseGguf(readFileSync(join(VOCAB, 'ggml-vocab-llama-spm.gguf')));
  const K = 700;
  return keep(kvs, (key, a) => (key.startsWith('tokenizer.ggml.') ? arr(a.elem, a.items.slice(0, K)) : null));
}

/** [PAD], [UNK], [CLS], [SEP], [MASK] and a slice of the BGE WordPiece vocabulary. */
function smallBert(): Kv[] {
  const { kvs } = parseGguf(readFileSync(join(VOCAB, 'ggml-vocab-bert-bge.gguf')));
  const ids = [0, 100, 101, 102, 103, ...Array.from({ length: 1200 }, (_, i) => 999 + i)];
  const remap = new Map(ids.map((id, i) => [id, i]));
  const out = keep(kvs, (key, a) => (key === 'tokenizer.ggml.tokens' || key === 'tokenizer.ggml.token_type' ? arr(a.elem, ids.map((i) => a.items[i])) : null));
  for (const k of ['unknown_token_id', 'seperator_token_id', 'padding_token_id', 'cls_token_id', 'mask_token_id']) {
    const kv = out.find((x) => x.key === `tokenizer.ggml.${k}`);
    if (kv) kv.value = remap.get(kv.value as number) ?? 0;
  }
  return out;
}

/** One key of every GGUF value type, nested arrays included, so each reader branch is a target. */
function everyType(kvs: Kv[]): Kv[] {
  return [
    { key: 'fuzz.u8', type: 0, value: 7 }, { key: 'fuzz.i8', type: 1, value: -7 }, { key: 'fuzz.u16', type: 2, value: 700 },
    { key: 'fuzz.i16', type: 3, value: -700 }, { key: 'fuzz.u32', type: 4, value: 70000 }, { key: 'fuzz.i32', type: 5, value: -70000 },
    { key: 'fuzz.f32', type: 6, value: 0.5 }, { key: 'fuzz.bool', type: 7, value: true }, { key: 'fuzz.str', type: 8, value: 'fuzz' },
    { key: 'fuzz.u64', type: 10, value: 1n << 40n }, { key: 'fuzz.i64', type: 11, value: -(1n << 40n) }, { key: 'fuzz.f64', type: 12, value: 0.25 },
    { key: 'fuzz.nested', type: 9, value: arr(9, [arr(4, [1, 2]), arr(8, ['a', 'b'])]) },
    ...kvs,
  ];
}

export function ggufSeeds(): GgufSeed[] {
  const llama = smallLlama();
  return [ggufSeed('gpt2-small', smallGpt2()), ggufSeed('llama-small', llama), ggufSeed('bert-small', smallBert()), ggufSeed('llama-every-type', everyType(llama))];
}

// ---------------------------------------------------------------------------------------------
// llama2.c

export interface Llama2cSeed extends BinarySeed {
  kind: 'checkpoint' | 'tokenizer';
  /** For tokenizers: the vocabulary size the checkpoint would pass. */
  vocabSize?: number;
}

export interface Dims {
  dim: number;
  hidden: number;
  layers: number;
  heads: number;
  kv: number;
  vocab: number;
  seq: number;
}

const TINY: Dims = { dim: 8, hidden: 12, layers: 2, heads: 2, kv: 1, vocab: 16, seq: 8 };

/** A checkpoint: legacy (shared or not) or version 1 ("ak42", 256-byte header, its own weight order). */
export function checkpointBytes(d: Dims, version: 0 | 1, shared: boolean): Buffer {
  const { dim, hidden, layers, heads, kv, vocab, seq } = d;
  const hd = dim / heads;
  const kvDim = kv * hd;
  const sizes: Record<string, number> = {
    tok: vocab * dim, rms_att: layers * dim, wq: layers * dim * dim, wk: layers * kvDim * dim, wv: layers * kvDim * dim,
    wo: layers * dim * dim, rms_ffn: layers * dim, w1: layers * hidden * dim, w2: layers * dim * hidden, w3: layers * hidden * dim,
    rms_final: dim, freq: seq * hd, wcls: vocab * dim,
  };
  const order = version === 0
    ? ['tok', 'rms_att', 'wq', 'wk', 'wv', 'wo', 'rms_ffn', 'w1', 'w2', 'w3', 'rms_final', 'freq']
    : ['rms_att', 'rms_ffn', 'rms_final', 'tok', 'wq', 'wk', 'wv', 'wo', 'w1', 'w2', 'w3'];
  if (!shared) order.push('wcls');
  const n = order.reduce((s, k) => s + sizes[k]!, 0);
  const weights = Buffer.alloc(n * 4);
  for (let i = 0; i < n; i++) weights.writeFloatLE(Math.sin(i) * 0.1, i * 4);
  const ints = [dim, hidden, layers, heads, kv, version === 0 && !shared ? -vocab : vocab, seq];
  if (version === 0) {
    const head = Buffer.alloc(28);
    ints.forEach((v, i) => head.writeInt32LE(v, 4 * i));
    return Buffer.concat([head, weights]);
  }
  const head = Buffer.alloc(256);
  head.writeUInt32LE(0x616b3432, 0);
  head.writeInt32LE(1, 4);
  ints.forEach((v, i) => head.writeInt32LE(v, 8 + 4 * i));
  head.writeUInt8(shared ? 1 : 0, 36);
  return Buffer.concat([head, weights]);
}

const LEGACY_FIELDS = ['dim', 'hidden_dim', 'n_layers', 'n_heads', 'n_kv_heads', 'vocab_size', 'seq_len'];

function checkpointSeed(name: string, bytes: Buffer): Llama2cSeed {
  const v1 = bytes.readUInt32LE(0) === 0x616b3432;
  const base = v1 ? 8 : 0;
  const fields: Field[] = LEGACY_FIELDS.map((f, i) => ({ offset: base + 4 * i, width: 4, signed: true, name: f }));
  if (v1) fields.push({ offset: 0, width: 4, name: 'magic' }, { offset: 4, width: 4, signed: true, name: 'version' }, { offset: 36, width: 1, name: 'shared_classifier' });
  return { name, bytes, fields, hotEnd: v1 ? 256 : 28, kind: 'checkpoint' };
}

function tokenizerSeed(name: string, bytes: Buffer, vocabSize: number): Llama2cSeed {
  const fields: Field[] = [{ offset: 0, width: 4, signed: true, name: 'max_token_length' }];
  let pos = 4;
  for (let i = 0; i < vocabSize && pos + 8 <= bytes.length; i++) {
    const len = bytes.readInt32LE(pos + 4);
    if (i < 40 || i === vocabSize - 1) fields.push({ offset: pos + 4, width: 4, signed: true, name: `token ${i} length` });
    pos += 8 + len;
  }
  return { name, bytes, fields, hotEnd: bytes.length, kind: 'tokenizer', vocabSize };
}

export function llama2cSeeds(): Llama2cSeed[] {
  return [
    checkpointSeed('tiny-legacy-shared', checkpointBytes(TINY, 0, true)),
    checkpointSeed('tiny-legacy-unshared', checkpointBytes(TINY, 0, false)),
    checkpointSeed('tiny-v1-shared', checkpointBytes(TINY, 1, true)),
    checkpointSeed('tiny-v1-unshared', checkpointBytes(TINY, 1, false)),
    checkpointSeed('stories260K', readFileSync(join(STORIES, 'stories260K.bin'))),
    tokenizerSeed('tok512', readFileSync(join(STORIES, 'tok512.bin')), 512),
  ];
}

// ---------------------------------------------------------------------------------------------
// tokenizer.json

export interface TokenizerSeed {
  name: string;
  tokenizer: Json;
  config: Json;
}

const addedToken = (id: number, content: string, extra: Record<string, Json> = {}): Json => ({
  id, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true, ...extra,
});

/** Unigram with a Sequence of every normalizer, most pre-tokenizers, and every decoder. */
function unigramKitchenSink(): TokenizerSeed {
  const pieces: [string, number][] = [['<unk>', 0], ['<s>', 0], ['</s>', 0], ['<pad>', 0], ['\u2581', -2], ['|', -3]];
  for (const c of 'abcdefghijklmnopqrstuvwxyz0123456789.,!?\'') pieces.push([c, -4 - (c.charCodeAt(0) % 7) / 10]);
  for (const w of ['\u2581the', '\u2581a', 'he', 'll', 'llo', '\u2581hello', 'wor', 'ld', '\u2581once', '\u2581upon', '\u2581time', 'ing', '</w>']) pieces.push([w, -3.5]);
  for (let b = 0; b < 4; b++) pieces.push([`<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`, -9]);
  return {
    name: 'unigram-kitchen-sink',
    tokenizer: {
      version: '1.0', truncation: null, padding: null,
      added_tokens: [addedToken(0, '<unk>'), addedToken(1, '<s>'), addedToken(2, '</s>'), addedToken(3, '<pad>'),
        addedToken(pieces.length, '<mask>', { normalized: true, special: false, lstrip: true, rstrip: true })],
      normalizer: {
        type: 'Sequence',
        normalizers: [
          { type: 'NFKC' }, { type: 'Replace', pattern: { Regex: ' {2,}' }, content: ' ' }, { type: 'Lowercase' }, { type: 'StripAccents' },
          { type: 'Strip', strip_left: true, strip_right: true }, { type: 'Prepend', prepend: '\u2581' }, { type: 'Precompiled', precompiled_charsmap: 'AAAA' },
          { type: 'NFC' }, { type: 'NFD' }, { type: 'NFKD' },
          { type: 'BertNormalizer', clean_text: true, handle_chinese_chars: true, strip_accents: false, lowercase: false },
        ],
      },
      pre_tokenizer: {
        type: 'Sequence',
        pretokenizers: [
          { type: 'Split', pattern: { Regex: '\\p{N}{1,3}' }, behavior: 'Isolated', invert: false },
          { type: 'Digits', individual_digits: true }, { type: 'Punctuation', behavior: 'Isolated' },
          { type: 'Metaspace', replacement: '\u2581', prepend_scheme: 'first', split: true }, { type: 'WhitespaceSplit' },
          { type: 'Replace', pattern: { String: 'x' }, content: 'y' }, { type: 'FixedLength', length: 16 },
        ],
      },
      post_processor: {
        type: 'Sequence',
        processors: [
          { type: 'ByteLevel', add_prefix_space: false, trim_offsets: false, use_regex: false },
          {
            type: 'TemplateProcessing',
            single: [{ SpecialToken: { id: '<s>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }, { SpecialToken: { id: '</s>', type_id: 0 } }],
            pair: [{ Sequence: { id: 'A', type_id: 0 } }, { Sequence: { id: 'B', type_id: 1 } }],
            special_tokens: { '<s>': { id: '<s>', ids: [1], tokens: ['<s>'] }, '</s>': { id: '</s>', ids: [2], tokens: ['</s>'] } },
          },
        ],
      },
      decoder: {
        type: 'Sequence',
        decoders: [
          { type: 'Replace', pattern: { String: '\u2581' }, content: ' ' }, { type: 'ByteFallback' }, { type: 'Fuse' },
          { type: 'Strip', content: ' ', start: 1, stop: 0 }, { type: 'Metaspace', replacement: '\u2581', prepend_scheme: 'always', split: true },
          { type: 'CTC', pad_token: '<pad>', word_delimiter_token: '|', cleanup: true }, { type: 'BPEDecoder', suffix: '</w>' },
        ],
      },
      model: { type: 'Unigram', unk_id: 0, byte_fallback: false, vocab: pieces },
    },
    config: { bos_token: '<s>', eos_token: '</s>', unk_token: '<unk>', pad_token: '<pad>', additional_special_tokens: ['<mask>'], clean_up_tokenization_spaces: false },
  };
}

/** The BERT fixture with BertProcessing, a pre-tokenizer Sequence and the WordPiece decoder. */
function bertVariant(base: Json): TokenizerSeed {
  const t = structuredClone(base) as Record<string, Json>;
  t.pre_tokenizer = { type: 'Sequence', pretokenizers: [{ type: 'Whitespace' }, { type: 'Punctuation', behavior: 'Isolated' }, { type: 'BertPreTokenizer' }] };
  t.post_processor = { type: 'BertProcessing', sep: ['[SEP]', 3], cls: ['[CLS]', 2] };
  return { name: 'bert-bertprocessing', tokenizer: t, config: { unk_token: '[UNK]', cls_token: '[CLS]', sep_token: '[SEP]', do_lower_case: true } };
}

/** A converted tokenizer as a seed, optionally with its post-processor and pre-tokenizer swapped. */
function byteLevelVariant(converted: { tokenizer: Record<string, unknown>; config: Record<string, unknown> }): TokenizerSeed {
  const t = structuredClone(converted.tokenizer) as Record<string, Json>;
  const model = t.model as Record<string, Json>;
  const vocab = model.vocab as Record<string, number>;
  const n = Object.keys(vocab).length;
  t.added_tokens = [addedToken(n, '<s>'), addedToken(n + 1, '</s>')];
  t.pre_tokenizer = {
    type: 'Sequence',
    pretokenizers: [
      { type: 'Split', pattern: { Regex: "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+" }, behavior: 'Isolated', invert: false },
      { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: false },
    ],
  };
  t.post_processor = { type: 'RobertaProcessing', sep: ['</s>', n + 1], cls: ['<s>', n], trim_offsets: true, add_prefix_space: false };
  return { name: 'bpe-bytelevel-roberta', tokenizer: t, config: { bos_token: '<s>', eos_token: '</s>' } };
}

export function tokenizerSeeds(converted: {
  llama2c: { tokenizer: Record<string, unknown>; config: Record<string, unknown> };
  gpt2: { tokenizer: Record<string, unknown>; config: Record<string, unknown> };
}): TokenizerSeed[] {
  const bert = JSON.parse(readFileSync(join(FIX, 'models', 'bert', 'tokenizer.json'), 'utf8')) as Json;
  const bertConfig = JSON.parse(readFileSync(join(FIX, 'models', 'bert', 'tokenizer_config.json'), 'utf8')) as Json;
  return [
    { name: 'bert-fixture', tokenizer: bert, config: bertConfig },
    bertVariant(bert),
    { name: 'tok512-spm-bpe', tokenizer: converted.llama2c.tokenizer as Json, config: converted.llama2c.config as Json },
    { name: 'gpt2-small-bytelevel', tokenizer: converted.gpt2.tokenizer as Json, config: converted.gpt2.config as Json },
    byteLevelVariant(converted.gpt2),
    unigramKitchenSink(),
  ];
}

// ---------------------------------------------------------------------------------------------
// JSON vocabularies for the mutator

export const CONFIG_STRINGS = [
  'llama', 'mistral', 'qwen2', 'smollm', 'gpt2', 'bert', 'gemma', '', 'silu', 'swish', 'gelu', 'gelu_new', 'gelu_pytorch_tanh', 'relu', 'tanh',
  'default', 'linear', 'dynamic', 'llama3', 'yarn', 'longrope', 'su', 'LlamaForCausalLM', 'float32', 'bfloat16',
];

export const CONFIG_KEYS = [
  'model_type', 'hidden_size', 'num_attention_heads', 'num_key_value_heads', 'head_dim', 'hidden_act', 'attention_bias', 'vocab_size',
  'intermediate_size', 'num_hidden_layers', 'max_position_embeddings', 'rms_norm_eps', 'rope_theta', 'rope_scaling', 'tie_word_embeddings',
  'mlp_bias', 'bos_token_id', 'eos_token_id', 'n_embd', 'n_head', 'activation_function', 'n_layer', 'n_positions', 'n_inner',
  'layer_norm_epsilon', 'type_vocab_size', 'layer_norm_eps', 'num_labels', 'id2label', 'label2id', 'rope_type', 'type', 'factor',
  'low_freq_factor', 'high_freq_factor', 'original_max_position_embeddings', 'beta_fast', 'beta_slow', 'attention_factor',
];

export const ADAPTER_STRINGS = [
  'LORA', 'IA3', 'PREFIX_TUNING', 'PROMPT_TUNING', 'BOTTLENECK', 'COMPACTER', 'HYDRA', 'ADALORA', 'lora', '',
  'q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj', 'c_attn', 'c_proj', 'c_fc', 'query', 'value', 'dense',
  'lm_head', 'all-linear', '.*', '.*\\.q_proj', '.*(q|v)_proj', '(a+)+$', '[', '(', 'layers', 'h', 'layer', 'none', 'all', 'lora_only',
  'gaussian', 'pissa', 'olora', 'corda', 'CAUSAL_LM', 'SEQ_CLS', 'RANDOM', 'TEXT', 'houlsby', 'pfeiffer', 'relu', 'tanh',
];

export const ADAPTER_KEYS = [
  'peft_type', 'task_type', 'target_modules', 'exclude_modules', 'r', 'lora_alpha', 'lora_dropout', 'bias', 'fan_in_fan_out', 'use_rslora',
  'use_dora', 'init_lora_weights', 'rank_pattern', 'alpha_pattern', 'layers_to_transform', 'layers_pattern', 'modules_to_save',
  'feedforward_modules', 'inference_mode', 'num_virtual_tokens', 'token_dim', 'num_transformer_submodules', 'num_attention_heads',
  'num_layers', 'prompt_tuning_init', 'prompt_tuning_init_text', 'prefix_projection', 'encoder_hidden_size', 'bottleneck_size',
  'reduction_factor', 'non_linearity', 'adapter_type', 'residual', 'layer_norm', 'scaling', 'phm_dim', 'phm_rank', 'seq_r', 'seq_alpha',
  'corda_config', 'init_token_ids', 'base_model_name_or_path', 'revision',
];

export const TOKENIZER_STRINGS = [
  'BPE', 'WordPiece', 'Unigram', 'WordLevel', 'BertNormalizer', 'Precompiled', 'Sequence', 'Replace', 'NFC', 'NFD', 'NFKC', 'NFKD', 'Strip',
  'StripAccents', 'Lowercase', 'Prepend', 'BertPreTokenizer', 'Whitespace', 'WhitespaceSplit', 'Metaspace', 'ByteLevel', 'Split',
  'Punctuation', 'Digits', 'FixedLength', 'UnicodeScripts', 'TemplateProcessing', 'BertProcessing', 'RobertaProcessing', 'WordPiece',
  'BPEDecoder', 'CTC', 'Fuse', 'ByteFallback', 'A', 'B', '[CLS]', '[SEP]', '[UNK]', '<s>', '</s>', '<unk>', '##', '\u2581', ' ',
  'Removed', 'Isolated', 'MergedWithPrevious', 'MergedWithNext', 'Contiguous', 'always', 'first', 'never', '(', '[a-', '\\p{Foo}', '(?<',
];

export const TOKENIZER_KEYS = [
  'type', 'model', 'normalizer', 'pre_tokenizer', 'post_processor', 'decoder', 'added_tokens', 'vocab', 'merges', 'unk_token', 'unk_id',
  'continuing_subword_prefix', 'end_of_word_suffix', 'continuing_subword_suffix', 'max_input_chars_per_word', 'byte_fallback', 'fuse_unk',
  'ignore_merges', 'dropout', 'normalizers', 'pretokenizers', 'processors', 'decoders', 'pattern', 'content', 'prepend', 'replacement',
  'str_rep', 'prepend_scheme', 'split', 'add_prefix_space', 'trim_offsets', 'use_regex', 'behavior', 'invert', 'individual_digits', 'length',
  'strip_left', 'strip_right', 'clean_text', 'handle_chinese_chars', 'strip_accents', 'lowercase', 'single', 'pair', 'special_tokens',
  'SpecialToken', 'Sequence', 'id', 'ids', 'tokens', 'type_id', 'cls', 'sep', 'prefix', 'cleanup', 'suffix', 'pad_token',
  'word_delimiter_token', 'start', 'stop', 'String', 'Regex', 'single_word', 'lstrip', 'rstrip', 'normalized', 'special',
];

export const SAFETENSORS_STRINGS = ['F64', 'F32', 'F16', 'BF16', 'I64', 'I32', 'I16', 'I8', 'U8', 'BOOL', 'F8_E4M3', 'U64', 'f32', '__metadata__'];
export const SAFETENSORS_KEYS = ['dtype', 'shape', 'data_offsets', '__metadata__', 'format'];
