/**
 * GGUF files: the container (every value and tensor type, alignment, bounds and type checks),
 * llama-architecture models in (F32, and F16/BF16/Q8_0/Q4_0/Q4_K/Q6_K linear weights kept packed
 * as QuantLinear layers) and out (F32/F16/Q8_0, the q/k row permutation of llama.cpp's converter),
 * and LoRA adapters out. The independent truths: hand-decoded blocks, the raw rows of stories260K's
 * llama2.c file (which lie in llama.cpp's interleaved RoPE order), models rebuilt from rounded or
 * dequantized weights, a LoRA merged by adaptkit; test/llama-cpp.test.ts runs llama.cpp itself.
 */
import { describe, it, before } from 'node:test';
import assert from 'node:assert/strict';
import { closeSync, existsSync, openSync, readFileSync, readSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import * as ak from '../src/index.js';
import { GgufReader, readGgufHeader, readGgufMetadata } from '../src/io/gguf.js';
import { type GgufContents, type GgufTensorOut, gguf, serializeGguf, spmVocabFromLlama2c, spmVocabKeys, writeGguf } from '../src/io/gguf-write.js';
import { permuteRopeRows } from '../src/io/llama2c.js';
import { Llama2cTokenizer } from '../src/io/tokenizer-llama2c.js';
import { ggufTokenizer } from '../src/io/tokenizer-gguf.js';
import { HfTokenizer } from '../src/io/tokenizer-hf.js';
import { dequantize, quantize, type QuantizedTensor } from '../src/backend/quant/index.js';
import { QuantLinear } from '../src/nn/index.js';
import { loadModel, loadTokenizer } from '../src/models/load.js';
import { parseLlamaConfig } from '../src/models/llama/config.js';
import { buildLlama } from '../src/models/llama/load.js';
import type { LlamaForCausalLM } from '../src/models/llama/model.js';
import { WeightMap } from '../src/models/weights.js';
import { ggufModelContents, loadGgufModel, permuteRopeF32, ropeRowOrder } from '../src/models/gguf.js';
import { runCli } from './cli-run.js';
import {
  HAVE_STORIES, STORIES_BIN, STORIES_TOK, logitsOf, maxAbsDiff, perturbAdapters, randomLlama, randomLlamaConfig, randomLlamaFolder, tmp,
} from './gguf-fixtures.js';
import { dataDir } from '../src/io/data.js';

const IDS = [1, 403, 407, 261, 378, 432, 383, 286, 261, 376, 298, 315, 421];
const TEXTS = ['Once upon a time', 'Lily and Ben went to the park.', ' two  spaces\tand a tab\n', 'héllo wörld 🙂 Ωmega'];

function contentsTensor(c: GgufContents, name: string): GgufTensorOut {
  const t = c.tensors.find((x) => x.name === name);
  assert.ok(t, `tensor ${name} is written`);
  return t;
}

function f32View(t: { data: Uint8Array }): Float32Array {
  return new Float32Array(t.data.buffer.slice(t.data.byteOffset, t.data.byteOffset + t.data.byteLength));
}

/** Weights of a model by HF name, as plain arrays. */
function weightsOf(model: ak.Module): Map<string, { data: Float32Array; shape: number[] }> {
  const out = new Map<string, { data: Float32Array; shape: number[] }>();
  for (const [k, t] of model.namedParameters()) out.set(k, { data: Float32Array.from(t.toArray()), shape: [...t.shape] });
  return out;
}

/** A float Llama built from named weight arrays. */
function buildFrom(raw: Record<string, unknown>, w: Map<string, { data: Float32Array; shape: number[] }>): LlamaForCausalLM {
  const m = new Map([...w].map(([k, v]) => [k, ak.fromBuffer(v.data, v.shape)] as const));
  return buildLlama(parseLlamaConfig(raw), WeightMap.fromMap(m, 'reference'));
}

function roundTrip(format: string, data: Float32Array, shape: number[]): Float32Array {
  return dequantize(quantize(format, data, shape));
}

describe('GGUF container', () => {
  it('writes and reads back every value type and every tensor type, data bit-exact at aligned offsets', () => {
    const rng = new ak.Rng(5);
    const vals = (n: number) => Float32Array.from({ length: n }, () => rng.normal());
    // known bytes for the hand-decoded formats: Q8_0 d = 0.5 (f16 0x3800), q = j - 16
    const q8 = new Uint8Array(34);
    q8[0] = 0x00; q8[1] = 0x38;
    for (let j = 0; j < 32; j++) q8[2 + j] = (j - 16) & 0xff;
    // Q4_0 d = 2 (0x4000); byte j holds element j (low nibble j) and element j + 16 (high nibble 15 - j)
    const q4 = new Uint8Array(18);
    q4[0] = 0x00; q4[1] = 0x40;
    for (let j = 0; j < 16; j++) q4[2 + j] = j | ((15 - j) << 4);
    const f16 = new Uint16Array([0x3c00, 0xc000, 0x3555, 0x0001]); // 1, -2, 0.33325, the smallest subnormal
    const bf16 = new Uint16Array([0x3f80, 0xc040, 0x4049, 0x0000]); // 1, -3, 3.140625, 0
    const packed: Record<string, QuantizedTensor> = {
      k4: quantize('q4_K', vals(512), [2, 256]),
      k6: quantize('q6_K', vals(256), [1, 256]),
      r8: quantize('q8_0', vals(128), [2, 64]),
    };
    const f32 = vals(15);
    const tensors: GgufTensorOut[] = [
      { name: 'f32', type: 0, shape: [3, 5], data: new Uint8Array(f32.buffer) },
      { name: 'f16', type: 1, shape: [4], data: new Uint8Array(f16.buffer) },
      { name: 'bf16', type: 30, shape: [2, 2], data: new Uint8Array(bf16.buffer) },
      { name: 'q8', type: 8, shape: [32], data: q8 },
      { name: 'q4', type: 2, shape: [1, 32], data: q4 },
      { name: 'k4', type: 12, shape: [2, 256], data: (packed.k4 as { data: Uint8Array }).data },
      { name: 'k6', type: 14, shape: [1, 1, 256], data: (packed.k6 as { data: Uint8Array }).data },
      { name: 'r8', type: 8, shape: [2, 64], data: (packed.r8 as { data: Uint8Array }).data },
    ];
    const metadata: [string, ReturnType<typeof gguf.u32>][] = [
      ['t.u8', { type: 'u8', value: 200 }], ['t.i8', { type: 'i8', value: -100 }], ['t.u16', { type: 'u16', value: 60000 }],
      ['t.i16', { type: 'i16', value: -30000 }], ['t.u32', gguf.u32(4000000000)], ['t.i32', gguf.i32(-2000000000)],
      ['t.f32', gguf.f32(0.25)], ['t.bool', gguf.bool(true)], ['t.str', gguf.str('héllo')], ['t.u64', { type: 'u64', value: 2n ** 60n }],
      ['t.i64', { type: 'i64', value: -(2n ** 60n) }], ['t.f64', { type: 'f64', value: Math.PI }],
      ['t.strs', gguf.array('string', ['a', '', '▁b'])], ['t.i32s', gguf.array('i32', [1, -2, 3])], ['t.f32s', gguf.array('f32', [0.5, -1.5])],
    ];
    for (const alignment of [32, 64]) {
      const p = join(tmp(), 'all.gguf');
      writeGguf(p, { metadata, tensors, alignment });
      const h = readGgufHeader(p);
      assert.equal(h.alignment, alignment);
      assert.equal(h.metadata.get('general.alignment'), alignment === 32 ? undefined : alignment);
      const want: Record<string, unknown> = {
        't.u8': 200, 't.i8': -100, 't.u16': 60000, 't.i16': -30000, 't.u32': 4000000000, 't.i32': -2000000000, 't.f32': 0.25, 't.bool': true,
        't.str': 'héllo', 't.u64': 2n ** 60n, 't.i64': -(2n ** 60n), 't.f64': Math.PI, 't.strs': ['a', '', '▁b'], 't.i32s': [1, -2, 3], 't.f32s': [0.5, -1.5],
      };
      for (const [k, v] of Object.entries(want)) assert.deepEqual(h.metadata.get(k), v, k);
      assert.deepEqual(h.types.get('t.f32s'), { type: 9, itemType: 6 });
      const r = GgufReader.open(p);
      try {
        for (const t of tensors) {
          const info = r.info(t.name);
          assert.deepEqual(info.shape, t.shape, `${t.name} shape`);
          assert.deepEqual(info.ne, [...t.shape].reverse(), `${t.name} ne`);
          assert.equal((info.offset - h.dataOffset) % alignment, 0, `${t.name} offset aligned`);
          assert.deepEqual(r.bytes(t.name), t.data, `${t.name} bytes`);
        }
        assert.deepEqual(r.float32('f32'), f32);
        assert.deepEqual(r.float32('q8'), Float32Array.from({ length: 32 }, (_, j) => (j - 16) * 0.5));
        assert.deepEqual(r.float32('q4'), Float32Array.from({ length: 32 }, (_, j) => (j < 16 ? j - 8 : 15 - (j - 16) - 8) * 2));
        assert.deepEqual(r.float32('f16'), Float32Array.from([1, -2, 0.333251953125, 2 ** -24]));
        assert.deepEqual(r.float32('bf16'), Float32Array.from([1, -3, 3.140625, 0]));
        for (const n of ['k4', 'k6', 'r8']) {
          const got = r.tensor(n);
          assert.equal(got.format, packed[n]!.format);
          assert.deepEqual(r.float32(n), dequantize(packed[n]!), n);
        }
      } finally {
        r.close();
      }
    }
  });

  it('reads a header larger than its first read', () => {
    const tokens = Array.from({ length: 150000 }, (_, i) => `token-${i}`);
    const p = join(tmp(), 'big.gguf');
    writeGguf(p, { metadata: [['tokenizer.ggml.tokens', gguf.array('string', tokens)]], tensors: [{ name: 'x', type: 0, shape: [2], data: new Uint8Array(8) }] });
    const h = readGgufHeader(p);
    assert.deepEqual(h.metadata.get('tokenizer.ggml.tokens'), tokens);
    assert.equal(h.tensors.get('x')!.nbytes, 8);
  });

  const vocab = join(dataDir(), 'tokenizers', 'llamacpp-vocab', 'ggml-vocab-gpt-2.gguf');
  it('reads llama.cpp\'s vocabulary files (1.7 MB of header), and names the key where one is cut', { skip: existsSync(vocab) ? false : 'needs ../shared/data (llamacpp-vocab)' }, () => {
    assert.equal((readGgufMetadata(vocab).metadata.get('tokenizer.ggml.tokens') as string[]).length, 50257);
    const cut = join(tmp(), 'cut.gguf');
    writeFileSync(cut, readFileSync(vocab).subarray(0, 1 << 20 | 7));
    assert.throws(() => readGgufMetadata(cut), /cut\.gguf: "tokenizer\.ggml\.merges": .*(truncated GGUF file|exceeds the file size)/);
  });

  describe('malformed files give errors naming the tensor or key and the field', () => {
    // one tensor "w" and no keys: its info sits at fixed offsets (ne[0] at 37, ne[1] at 45, type at 53, offset at 57)
    const one = (type: number, shape: number[], bytes: number) => Buffer.concat(serializeGguf({ metadata: [], tensors: [{ name: 'w', type, shape, data: new Uint8Array(bytes) }] }));
    const check = (buf: Buffer, re: RegExp) => {
      const p = join(tmp(), 'bad.gguf');
      writeFileSync(p, buf);
      assert.throws(() => readGgufHeader(p), (e: Error) => e instanceof ak.AdaptkitError && e.message.includes(p) && re.test(e.message));
    };
    it('truncated data', () => check(one(0, [4, 8], 128).subarray(0, 200), /tensor "w": data \[96, 224\) \(F32, ne \[8, 4\]: 128 bytes\) runs past the end of the file \(200 bytes\)/));
    it('an unknown type id', () => {
      const b = one(0, [4, 8], 128);
      b.writeUInt32LE(99, 53);
      check(b, /tensor "w": unknown tensor type id 99 \(supported: F32, F16, Q4_0, Q8_0, Q4_K, Q6_K, BF16\)/);
    });
    it('a known type this reader cannot use', () => {
      const b = one(0, [4, 8], 128);
      b.writeUInt32LE(13, 53);
      check(b, /tensor "w": type 13 \(Q5_K\) is not supported/);
    });
    it('a block count that disagrees with the shape', () => {
      const b = one(8, [2, 64], 2 * 2 * 34);
      b.writeBigUInt64LE(48n, 37);
      check(b, /tensor "w": ne\[0\] = 48 \(the row length\) is not a multiple of the Q8_0 block size 32/);
      const c = one(8, [2, 64], 2 * 2 * 34);
      c.writeBigUInt64LE(3n, 45);
      check(c, /tensor "w": data .* \(Q8_0, ne \[64, 3\]: 204 bytes\) runs past the end of the file/);
    });
    it('a misaligned offset, a zero dimension, overlapping tensors', () => {
      const b = one(0, [4, 8], 128);
      b.writeBigUInt64LE(8n, 57);
      check(b, /tensor "w": data offset 8 is not a multiple of the alignment 32/);
      const z = one(0, [4, 8], 128);
      z.writeBigUInt64LE(0n, 45);
      check(z, /tensor "w": ne\[1\] is 0; every dimension must be at least 1/);
      const two = Buffer.concat(serializeGguf({ metadata: [], tensors: [{ name: 'a', type: 0, shape: [16], data: new Uint8Array(64) }, { name: 'b', type: 0, shape: [8], data: new Uint8Array(32) }] }));
      // tensor b's offset (after "a": 24 + 8+1+4+8+4+8 = 57, then 8+1+4+8+4) moved into a's data
      two.writeBigUInt64LE(32n, 57 + 25);
      check(two, /tensor "b": data at offset \d+ overlaps tensor "a"/);
    });
  });
});

describe('q/k row permutation', () => {
  it('HF → GGUF → HF is the identity, and GGUF order is llama2.c\'s interleaved order (permuteRopeRows undoes it)', () => {
    for (const [rows, heads, cols] of [[32, 4, 3], [64, 8, 1], [12, 1, 5]] as const) {
      const w = Float32Array.from({ length: rows * cols }, (_, i) => i);
      const g = permuteRopeF32(w, heads, rows, true);
      assert.notDeepEqual(g, w);
      assert.deepEqual(permuteRopeF32(g, heads, rows, false), w);
      assert.deepEqual(permuteRopeRows(g, heads, rows, cols), w, 'the llama2.c reader maps GGUF order to HF order');
      // the converter's permute: row (h, j, half) of the GGUF weight is row (h, half, j) of HF's
      const hd = rows / heads;
      const order = ropeRowOrder(rows, heads, true);
      for (let h = 0; h < heads; h++) for (let j = 0; j < hd / 2; j++) for (let half = 0; half < 2; half++) assert.equal(order[h * hd + 2 * j + half], h * hd + half * (hd / 2) + j);
    }
  });

  it('stories260K exported to GGUF has the llama2.c file\'s raw q and k rows', { skip: HAVE_STORIES ? false : 'needs ../shared/data (stories260K)' }, () => {
    const { model } = loadModel(STORIES_BIN);
    const vocab = spmVocabKeys(spmVocabFromLlama2c(Llama2cTokenizer.fromFile(STORIES_TOK, 512)));
    const { contents } = ggufModelContents(model as LlamaForCausalLM, { type: 'f32', vocab });
    // legacy llama2.c layout: 28-byte header, token embedding [512, 64], rms_att [5, 64], wq [5, 64, 64], wk [5, 32, 64]
    const fd = openSync(STORIES_BIN, 'r');
    const raw = (floatOffset: number, n: number) => {
      const b = Buffer.alloc(n * 4);
      readSync(fd, b, 0, b.length, 28 + 4 * floatOffset);
      return new Uint8Array(b);
    };
    try {
      for (const l of [0, 3]) {
        assert.deepEqual(contentsTensor(contents, `blk.${l}.attn_q.weight`).data, raw(512 * 64 + 5 * 64 + l * 64 * 64, 64 * 64), `layer ${l} q`);
        assert.deepEqual(contentsTensor(contents, `blk.${l}.attn_k.weight`).data, raw(512 * 64 + 5 * 64 + 5 * 64 * 64 + l * 32 * 64, 32 * 64), `layer ${l} k`);
      }
    } finally {
      closeSync(fd);
    }
  });
});

describe('llama GGUF models: export and load', { skip: HAVE_STORIES ? false : 'needs ../shared/data (stories260K)' }, () => {
  const dir = tmp();
  const src = loadModel(STORIES_BIN);
  const srcLogits = logitsOf(src.model, IDS);
  const exported: Record<string, string> = {};
  before(async () => {
    for (const type of ['f32', 'f16', 'q8_0']) {
      exported[type] = join(dir, `stories-${type}.gguf`);
      const r = await runCli('export', '--format', 'gguf', '--model', STORIES_BIN, '--tokenizer', STORIES_TOK, '--type', type, '--out', exported[type]!);
      assert.equal(r.code, 0, r.err);
    }
  });

  it('F32: the metadata llama.cpp reads, a tied head, and logits equal to the source bit for bit', async () => {
    const h = readGgufHeader(exported.f32!);
    const md = h.metadata;
    const want: Record<string, unknown> = {
      'general.architecture': 'llama', 'general.file_type': 0, 'llama.vocab_size': 512, 'llama.context_length': 512, 'llama.embedding_length': 64,
      'llama.block_count': 5, 'llama.feed_forward_length': 172, 'llama.attention.head_count': 8, 'llama.attention.head_count_kv': 4,
      'llama.rope.dimension_count': 8, 'llama.rope.freq_base': 10000, 'tokenizer.ggml.model': 'llama', 'tokenizer.ggml.bos_token_id': 1,
      'tokenizer.ggml.eos_token_id': 2, 'tokenizer.ggml.unknown_token_id': 0, 'tokenizer.ggml.add_bos_token': true,
    };
    for (const [k, v] of Object.entries(want)) assert.deepEqual(md.get(k), v, k);
    assert.ok(Math.abs((md.get('llama.attention.layer_norm_rms_epsilon') as number) - 1e-5) < 1e-12);
    assert.deepEqual(h.types.get('tokenizer.ggml.scores'), { type: 9, itemType: 6 });
    assert.deepEqual((md.get('tokenizer.ggml.tokens') as string[]).slice(0, 4), ['<unk>', '<s>', '</s>', '<0x00>']);
    assert.deepEqual((md.get('tokenizer.ggml.token_type') as number[]).slice(0, 4), [2, 3, 3, 6]);
    assert.equal(h.tensors.has('output.weight'), false);
    assert.deepEqual(h.tensors.get('token_embd.weight')!.ne, [64, 512]);
    assert.deepEqual(h.tensors.get('blk.0.ffn_down.weight')!.ne, [172, 64]);
    const g = loadModel(exported.f32!);
    assert.equal(g.config.tie_word_embeddings, true);
    assert.deepEqual(g.unused, []);
    assert.deepEqual(logitsOf(g.model, IDS), srcLogits);
    const tok = Llama2cTokenizer.fromFile(STORIES_TOK, 512);
    const gt = ggufTokenizer(exported.f32!);
    for (const t of TEXTS) assert.deepEqual(gt.encode(t, { bos: true }), tok.encode(t, { bos: true }), t);
    const a = await runCli('generate', '--model', exported.f32!, '--prompt', 'Once upon a time', '--max-tokens', '30');
    const b = await runCli('generate', '--model', STORIES_BIN, '--tokenizer', STORIES_TOK, '--prompt', 'Once upon a time', '--max-tokens', '30');
    assert.equal(a.code, 0, a.err);
    assert.equal(a.out, b.out);
  });

  for (const type of ['f16', 'q8_0'] as const) {
    it(`${type.toUpperCase()}: linear layers stay packed; logits equal a float model of the rounded weights`, () => {
      const notices: string[] = [];
      const g = loadGgufModel(exported[type]!, { notice: (l) => notices.push(l) });
      const mods = new Map(g.model.namedModules());
      const fmt = (p: string) => (mods.get(p) as QuantLinear).format;
      assert.ok(mods.get('model.layers.0.self_attn.q_proj') instanceof QuantLinear);
      assert.equal(fmt('model.layers.0.self_attn.q_proj'), type);
      assert.equal(fmt('model.layers.4.mlp.gate_proj'), type);
      // 172 inputs are no whole number of Q8_0 blocks: written as F16, as llama.cpp's converter does
      assert.equal(fmt('model.layers.2.mlp.down_proj'), 'f16');
      assert.equal(notices.length, 1);
      assert.match(notices[0]!, new RegExp(`dequantized to f32 .*: token_embd\\.weight \\(${type === 'f16' ? 'F16' : 'Q8_0'}\\)$`));
      // the reference: every matrix rounded the way its tensor was written, norms as they are
      const w = weightsOf(src.model);
      for (const [k, v] of w) {
        if (v.shape.length !== 2) continue;
        const t = type === 'q8_0' && v.shape[1]! % 32 === 0 ? 'q8_0' : 'f16';
        w.set(k, { data: roundTrip(t, v.data, v.shape), shape: v.shape });
      }
      const ref = logitsOf(buildFrom(src.config, w), IDS);
      const got = logitsOf(g.model, IDS);
      assert.ok(maxAbsDiff(got, ref) < 2e-4, `vs the rounded model: ${maxAbsDiff(got, ref)}`);
      const err = maxAbsDiff(got, srcLogits);
      assert.ok(err > 0 && err < (type === 'f16' ? 0.05 : 0.5), `vs the source: ${err}`);
    });
  }

  it('a GGUF source re-exports: packed tensors of the same type are copied byte for byte, other types convert', async () => {
    const again = join(dir, 'again.gguf');
    assert.equal((await runCli('export', '--format', 'gguf', '--model', exported.q8_0!, '--type', 'q8_0', '--out', again)).code, 0);
    const a = GgufReader.open(exported.q8_0!);
    const b = GgufReader.open(again);
    try {
      assert.deepEqual(b.names().sort(), a.names().sort());
      for (const n of a.names()) {
        assert.equal(b.info(n).type, a.info(n).type, n);
        assert.deepEqual(b.bytes(n), a.bytes(n), n);
      }
      for (const k of ['tokenizer.ggml.tokens', 'tokenizer.ggml.scores', 'tokenizer.ggml.token_type']) {
        assert.deepEqual(b.metadata.get(k), a.metadata.get(k), k);
        assert.deepEqual(b.header.types.get(k), a.header.types.get(k), k);
      }
    } finally {
      a.close();
      b.close();
    }
    const f32 = join(dir, 'q8-as-f32.gguf');
    assert.equal((await runCli('export', '--format', 'gguf', '--model', exported.q8_0!, '--type', 'f32', '--out', f32)).code, 0);
    const c = GgufReader.open(f32);
    const q = GgufReader.open(exported.q8_0!);
    try {
      assert.deepEqual(c.float32('blk.1.attn_k.weight'), q.float32('blk.1.attn_k.weight'));
      assert.equal(c.info('blk.1.attn_k.weight').type, 0);
    } finally {
      c.close();
      q.close();
    }
  });

  it('a random Llama-shaped HF model (GQA, untied head, attention biases) exports with its tokenizer.json and loads back exactly', async () => {
    const raw = randomLlamaConfig({ attention_bias: true });
    const folder = randomLlamaFolder(tmp(), raw, 11);
    const out = join(dir, 'random.gguf');
    const r = await runCli('export', '--format', 'gguf', '--model', folder, '--out', out);
    assert.equal(r.code, 0, r.err);
    const h = readGgufHeader(out);
    assert.equal(h.metadata.get('llama.rope.freq_base'), 50000);
    assert.equal(h.metadata.get('llama.attention.head_count_kv'), 2);
    assert.ok(h.tensors.has('output.weight') && h.tensors.has('blk.1.attn_q.bias') && h.tensors.has('blk.1.attn_output.bias'));
    const g = loadModel(out);
    const f = loadModel(folder);
    const c = g.model.config as ak.LlamaConfig;
    assert.deepEqual([c.numHeads, c.numKvHeads, c.headDim, c.ropeTheta, c.tieWordEmbeddings, c.qkvBias, c.oBias], [4, 2, 16, 50000, false, true, true]);
    assert.ok(Math.abs(c.rmsNormEps - 1e-6) < 1e-12);
    assert.deepEqual(logitsOf(g.model, IDS), logitsOf(f.model, IDS));
    const hf = loadTokenizer(folder, undefined, 512);
    assert.ok(hf instanceof HfTokenizer, 'an HF folder is not taken for a GGUF file');
    const gt = loadTokenizer(out, undefined, 512);
    for (const t of TEXTS) assert.deepEqual(gt.encode(t, { bos: true }), hf.encode(t, { bos: true }), t);
  });

  it('a model with more embedding rows than tokens gets [PAD] tokens, as llama.cpp\'s converter writes them', async () => {
    const folder = randomLlamaFolder(tmp(), randomLlamaConfig({ vocab_size: 520 }), 12);
    const out = join(dir, 'padded.gguf');
    assert.equal((await runCli('export', '--format', 'gguf', '--model', folder, '--out', out)).code, 0);
    const md = readGgufHeader(out).metadata;
    const tokens = md.get('tokenizer.ggml.tokens') as string[];
    assert.equal(tokens.length, 520);
    assert.deepEqual(tokens.slice(512), Array.from({ length: 8 }, (_, i) => `[PAD${512 + i}]`));
    assert.deepEqual((md.get('tokenizer.ggml.token_type') as number[]).slice(512), new Array(8).fill(5));
    assert.deepEqual(logitsOf(loadModel(out).model, IDS), logitsOf(loadModel(folder).model, IDS));
  });

  it('Q4_0, Q4_K, Q6_K, BF16, F16 and Q8_0 weights load as QuantLinear layers of their format, equal to a float model of the decoded weights', () => {
    const raw = randomLlamaConfig({ hidden_size: 256, intermediate_size: 256, num_hidden_layers: 1, num_attention_heads: 4, num_key_value_heads: 2 });
    const m = randomLlama(raw, 3);
    const vocab = spmVocabKeys(spmVocabFromLlama2c(Llama2cTokenizer.fromFile(STORIES_TOK, 512)));
    const { contents } = ggufModelContents(m, { type: 'f32', vocab });
    const plan: Record<string, [string, number]> = {
      'blk.0.attn_q.weight': ['q4_K', 12], 'blk.0.attn_k.weight': ['q6_K', 14], 'blk.0.attn_v.weight': ['q4_0', 2], 'blk.0.attn_output.weight': ['bf16', 30],
      'blk.0.ffn_gate.weight': ['q8_0', 8], 'blk.0.ffn_up.weight': ['f16', 1], 'blk.0.ffn_down.weight': ['q4_K', 12], 'output.weight': ['q6_K', 14],
      'token_embd.weight': ['q4_0', 2],
    };
    const decoded = new Map<string, Float32Array>();
    const tensors = contents.tensors.map((t) => {
      const p = plan[t.name];
      if (!p) return t;
      const q = quantize(p[0], f32View(t), [...t.shape]);
      decoded.set(t.name, dequantize(q));
      const d = (q as { data: Uint8Array | Uint16Array }).data;
      return { ...t, type: p[1], data: new Uint8Array(d.buffer, d.byteOffset, d.byteLength) };
    });
    const path = join(tmp(), 'mixed.gguf');
    writeGguf(path, { metadata: contents.metadata, tensors });
    const notices: string[] = [];
    const g = loadGgufModel(path, { notice: (l) => notices.push(l) });
    assert.deepEqual(notices.map((n) => n.replace(/^.*: /, '')), ['token_embd.weight (Q4_0)']);
    const mods = new Map(g.model.namedModules());
    const want: Record<string, string> = {
      'model.layers.0.self_attn.q_proj': 'q4_K', 'model.layers.0.self_attn.k_proj': 'q6_K', 'model.layers.0.self_attn.v_proj': 'q4_0',
      'model.layers.0.self_attn.o_proj': 'bf16', 'model.layers.0.mlp.gate_proj': 'q8_0', 'model.layers.0.mlp.up_proj': 'f16',
      'model.layers.0.mlp.down_proj': 'q4_K', lm_head: 'q6_K',
    };
    for (const [p, f] of Object.entries(want)) {
      const l = mods.get(p);
      assert.ok(l instanceof QuantLinear, `${p} is packed`);
      assert.equal(l.format, f, p);
    }
    // the reference: decoded values, q/k rows back in HF order by the llama2.c reader's permutation
    const w = weightsOf(m);
    const hfName: Record<string, string> = {
      'blk.0.attn_q.weight': 'model.layers.0.self_attn.q_proj.weight', 'blk.0.attn_k.weight': 'model.layers.0.self_attn.k_proj.weight',
      'blk.0.attn_v.weight': 'model.layers.0.self_attn.v_proj.weight', 'blk.0.attn_output.weight': 'model.layers.0.self_attn.o_proj.weight',
      'blk.0.ffn_gate.weight': 'model.layers.0.mlp.gate_proj.weight', 'blk.0.ffn_up.weight': 'model.layers.0.mlp.up_proj.weight',
      'blk.0.ffn_down.weight': 'model.layers.0.mlp.down_proj.weight', 'output.weight': 'lm_head.weight', 'token_embd.weight': 'model.embed_tokens.weight',
    };
    for (const [n, d] of decoded) {
      const k = hfName[n]!;
      const shape = w.get(k)!.shape;
      const heads = n.includes('attn_q') ? 4 : n.includes('attn_k') ? 2 : 0;
      w.set(k, { data: heads ? permuteRopeRows(d, heads, shape[0]!, shape[1]!) : d, shape });
    }
    const ref = logitsOf(buildFrom(raw, w), IDS);
    const got = logitsOf(g.model, IDS);
    assert.ok(maxAbsDiff(got, ref) < 1e-4, `packed vs decoded: ${maxAbsDiff(got, ref)}`);
    assert.ok(maxAbsDiff(got, logitsOf(m, IDS)) > 1e-3, 'the quantization changed the model');
  });

  describe('malformed models give errors naming the key or tensor', () => {
    const vocab = spmVocabKeys(spmVocabFromLlama2c(Llama2cTokenizer.fromFile(STORIES_TOK, 512)));
    const base = ggufModelContents(src.model as LlamaForCausalLM, { type: 'f32', vocab }).contents;
    const check = (c: GgufContents, re: RegExp) => {
      const p = join(tmp(), 'bad-model.gguf');
      writeGguf(p, c);
      assert.throws(() => loadModel(p), (e: Error) => e instanceof ak.AdaptkitError && e.message.startsWith(p) && re.test(e.message));
    };
    const withKey = (k: string, v: ReturnType<typeof gguf.str> | null): GgufContents => ({
      ...base, metadata: v ? base.metadata.map(([a, b]) => [a, a === k ? v : b] as const) : base.metadata.filter(([a]) => a !== k),
    });
    it('an unknown architecture', () => check(withKey('general.architecture', gguf.str('gpt2')), /general\.architecture "gpt2" is not supported \(llama\)/));
    it('a missing required key', () => check(withKey('llama.block_count', null), /llama\.block_count is missing/));
    it('a key of the wrong type', () => check(withKey('llama.embedding_length', gguf.str('64')), /llama\.embedding_length must be a number, got "64"/));
    it('a missing tensor', () => check({ ...base, tensors: base.tensors.filter((t) => t.name !== 'blk.2.attn_q.weight') }, /missing tensor "blk\.2\.attn_q\.weight"/));
    it('a tensor of the wrong shape', () => {
      const t = contentsTensor(base, 'blk.1.attn_v.weight');
      check({ ...base, tensors: base.tensors.map((x) => (x === t ? { ...t, shape: [64, 32], data: t.data } : x)) }, /tensor "blk\.1\.attn_v\.weight" has shape \[64, 32\] \(ne \[32, 64\]\), expected \[32, 64\] \(ne \[64, 32\]\)/);
    });
    it('a tensor whose rope heads do not divide its rows', () => {
      const t = contentsTensor(base, 'blk.0.attn_k.weight');
      check({ ...base, tensors: base.tensors.map((x) => (x === t ? { ...t, shape: [16, 64], data: t.data.subarray(0, 16 * 64 * 4) } : x)) }, /tensor "blk\.0\.attn_k\.weight" has 16 rows, expected 4 heads × 8/);
    });
  });
});

describe('GGUF LoRA adapters', { skip: HAVE_STORIES ? false : 'needs ../shared/data (stories260K)' }, () => {
  const vocab = spmVocabKeys(spmVocabFromLlama2c(Llama2cTokenizer.fromFile(STORIES_TOK, 512)));
  const TARGETS = ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'];

  /** Save an adapter of `config` with perturbed weights, return its folder and the merged model. */
  function adapter(config: Record<string, unknown>, seed: number): { dir: string; merged: LlamaForCausalLM } {
    const am = new ak.AdapterModel(loadModel(STORIES_BIN).model);
    am.add('x', config);
    perturbAdapters(am, seed, 0.05);
    const dir = tmp();
    am.save(dir, 'x');
    return { dir, merged: am.merge() as LlamaForCausalLM };
  }

  /** The GGUF model tensors of base and merged, and the adapter's lora_a/lora_b: merged = base + (alpha/r)·lora_b·lora_a, by loops. */
  function checkMerged(loraPath: string, merged: LlamaForCausalLM, expectRanks: Record<string, number>): void {
    const base = ggufModelContents(loadModel(STORIES_BIN).model as LlamaForCausalLM, { type: 'f32', vocab }).contents;
    const mc = ggufModelContents(merged, { type: 'f32', vocab }).contents;
    const r = GgufReader.open(loraPath);
    try {
      assert.equal(r.metadata.get('general.type'), 'adapter');
      assert.equal(r.metadata.get('adapter.type'), 'lora');
      assert.equal(r.metadata.get('general.architecture'), 'llama');
      const alpha = r.metadata.get('adapter.lora.alpha') as number;
      const names = r.names().filter((n) => n.endsWith('.lora_a'));
      assert.equal(names.length, 35);
      for (const n of names) {
        const t = n.replace(/\.weight\.lora_a$/, '');
        const A = r.float32(n);
        const B = r.float32(`${t}.weight.lora_b`);
        const [rank, inF] = r.info(n).shape as [number, number];
        const outF = r.info(`${t}.weight.lora_b`).shape[0]!;
        assert.deepEqual(r.info(n).ne, [inF, rank], `${n}: ggml ne [in, r]`);
        assert.deepEqual(r.info(`${t}.weight.lora_b`).ne, [rank, outF], `${t}.lora_b: ggml ne [r, out]`);
        const kind = Object.keys(expectRanks).find((k) => t.endsWith(k));
        if (kind) assert.equal(rank, expectRanks[kind], `${t} rank`);
        const W0 = f32View(contentsTensor(base, `${t}.weight`));
        const W1 = f32View(contentsTensor(mc, `${t}.weight`));
        const s = alpha / rank;
        let worst = 0;
        let moved = 0;
        for (let o = 0; o < outF; o++) {
          for (let i = 0; i < inF; i++) {
            let d = 0;
            for (let k = 0; k < rank; k++) d += B[o * rank + k]! * A[k * inF + i]!;
            worst = Math.max(worst, Math.abs(W0[o * inF + i]! + s * d - W1[o * inF + i]!));
            moved = Math.max(moved, Math.abs(W1[o * inF + i]! - W0[o * inF + i]!));
          }
        }
        assert.ok(worst < 1e-5, `${t}: base + (alpha/r)·BA is off the merged weight by ${worst}`);
        assert.ok(moved > 1e-3, `${t}: the adapter changes the weight`);
      }
    } finally {
      r.close();
    }
  }

  it('a LoRA holds s·BA in llama.cpp\'s orientation and q/k row order', async () => {
    const { dir, merged } = adapter({ peft_type: 'LORA', r: 4, lora_alpha: 8, target_modules: TARGETS }, 1);
    const out = join(tmp(), 'lora.gguf');
    const r = await runCli('export', '--format', 'gguf', '--adapter', dir, '--model', STORIES_BIN, '--out', out);
    assert.equal(r.code, 0, r.err);
    assert.equal(readGgufHeader(out).metadata.get('adapter.lora.alpha'), 8);
    checkMerged(out, merged, { attn_q: 4, ffn_down: 4 });
  });

  it('rsLoRA with rank and alpha patterns: each layer\'s own scale is folded into its lora_b', async () => {
    const { dir, merged } = adapter({ peft_type: 'LORA', r: 4, lora_alpha: 6, use_rslora: true, rank_pattern: { q_proj: 2 }, alpha_pattern: { down_proj: 3 }, target_modules: TARGETS }, 2);
    const out = join(tmp(), 'rslora.gguf');
    assert.equal((await runCli('export', '--format', 'gguf', '--adapter', dir, '--model', STORIES_BIN, '--out', out)).code, 0);
    checkMerged(out, merged, { attn_q: 2, attn_k: 4, ffn_down: 4 });
  });

  it('a method that can be written as LoRA goes through its exports capability (ZeroI2V)', async () => {
    const { dir, merged } = adapter({ peft_type: 'ZEROI2V', r: 4 }, 3);
    const out = join(tmp(), 'zeroi2v.gguf');
    const r = await runCli('export', '--format', 'gguf', '--adapter', dir, '--model', STORIES_BIN, '--out', out);
    assert.equal(r.code, 0, r.err);
    checkMerged(out, merged, {});
  });

  it('refuses adapters a GGUF LoRA cannot hold, naming the method or the field', async () => {
    const ia3 = adapter({ peft_type: 'IA3' }, 4).dir;
    const e1 = await runCli('export', '--format', 'gguf', '--adapter', ia3, '--model', STORIES_BIN, '--out', join(tmp(), 'x.gguf'));
    assert.equal(e1.code, 1);
    assert.match(e1.err, /IA3 adapters cannot be written as GGUF LoRA adapters .*these methods can: .*LORA.*ZEROI2V/);
    const dora = adapter({ peft_type: 'LORA', r: 2, use_dora: true, target_modules: ['q_proj'] }, 5).dir;
    const e2 = await runCli('export', '--format', 'gguf', '--adapter', dora, '--model', STORIES_BIN, '--out', join(tmp(), 'x.gguf'));
    assert.match(e2.err, /adapter_config\.json: use_dora is true/);
  });
});

describe('adaptkit export: options', { skip: HAVE_STORIES ? false : 'needs ../shared/data (stories260K)' }, () => {
  it('rejects an unknown format or type and an existing output file', async () => {
    const out = join(tmp(), 'exists.gguf');
    writeFileSync(out, 'x');
    const run = (...a: string[]) => runCli('export', '--model', STORIES_BIN, '--tokenizer', STORIES_TOK, ...a);
    assert.match((await run('--format', 'onnx', '--out', join(tmp(), 'a.gguf'))).err, /--format must be gguf, got "onnx"/);
    assert.match((await run('--format', 'gguf', '--type', 'q4_0', '--out', join(tmp(), 'a.gguf'))).err, /--type must be one of f32, f16, q8_0, got "q4_0"/);
    assert.match((await run('--format', 'gguf', '--out', out)).err, /exists \(pass --overwrite to replace it\)/);
    assert.equal(readFileSync(out, 'utf8'), 'x');
    const noTok = await runCli('export', '--format', 'gguf', '--model', STORIES_BIN, '--out', join(tmp(), 'a.gguf'));
    assert.match(noTok.err, /a llama2\.c checkpoint has no tokenizer: pass --tokenizer/);
  });
});
