/** Bad input gets an error that names the op and the shapes, on every backend. */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as ak from '../src/index.js';
import { readGgufMetadata } from '../src/io/gguf.js';
import { readLlama2c } from '../src/io/llama2c.js';
import { SafetensorsFile } from '../src/io/safetensors.js';
import { HfTokenizer } from '../src/io/tokenizer-hf.js';
import { readConfigFile } from '../src/models/config.js';
import { parseLlamaConfig } from '../src/models/llama/config.js';
import { backends } from './helpers.js';

const FIX = fileURLToPath(new URL('./fixtures/', import.meta.url));

for (const backend of backends()) {
  describe(`argument errors on ${backend}`, () => {
    const cases: [string, () => unknown, RegExp][] = [
      ['matmul inner dims', () => ak.matmul(ak.zeros([2, 3]), ak.zeros([4, 5])), /^matmul: inner dimensions differ \(3 vs 4\): a \[2, 3\] b \[4, 5\]$/],
      ['matmul 1-D', () => ak.matmul(ak.zeros([3]), ak.zeros([3, 2])), /^matmul: both operands need at least 2 dimensions/],
      ['matmul batch', () => ak.matmul(ak.zeros([2, 3, 4]), ak.zeros([3, 4, 5])), /^matmul: shapes do not broadcast: a \[2\] b \[3\]$/],
      ['add broadcast', () => ak.add(ak.zeros([2, 3]), ak.zeros([4])), /^add: shapes do not broadcast: a \[2, 3\] b \[4\]$/],
      ['add dtype', () => ak.add(ak.zeros([2]), ak.zeros([2], { dtype: 'i32' })), /^add: b must be f32, got i32: b \[2\]$/],
      ['reshape size', () => ak.reshape(ak.zeros([2, 3]), [4, 2]), /^reshape: cannot reshape 6 elements: x \[2, 3\] shape \[4, 2\]$/],
      ['reshape two -1', () => ak.reshape(ak.zeros([2, 3]), [-1, -1]), /^reshape: at most one -1/],
      ['permute', () => ak.permute(ak.zeros([2, 3]), [0, 0]), /^permute: invalid permutation \[0,0\]: x \[2, 3\]$/],
      ['narrow range', () => ak.narrow(ak.zeros([2, 3]), 1, 2, 2), /^narrow: range 2\.\.4 outside dim 1 of size 3: x \[2, 3\]$/],
      ['axis range', () => ak.sum(ak.zeros([2, 3]), 2), /^sum: axis 2 out of range for a tensor with 2 dimensions$/],
      ['index range', () => ak.embedding(ak.zeros([4, 2]), ak.tensor([1, 4], [2], { dtype: 'i32' })), /^indexSelect: index 4 out of range for a dimension of size 4: index \[2\]$/],
      ['index dtype', () => ak.embedding(ak.zeros([4, 2]), ak.tensor([1, 2])), /^indexSelect: index must be i32 indices, got f32: index \[2\]$/],
      ['concat shapes', () => ak.concat([ak.zeros([2, 3]), ak.zeros([3, 3])], 1), /^concat: shapes\/dtypes differ outside dim 1: first \[2, 3\] other \[3, 3\]$/],
      ['rmsNorm weight', () => ak.rmsNorm(ak.zeros([2, 4]), ak.zeros([3])), /^rmsNorm: weight must be 1-D of the last dim: x \[2, 4\] w \[3\]$/],
      ['crossEntropy target', () => ak.crossEntropy(ak.zeros([2, 3]), ak.tensor([0, 3], [2], { dtype: 'i32' })), /^crossEntropy: target 3 out of range for 3 classes: logits \[2, 3\]$/],
      ['crossEntropy shapes', () => ak.crossEntropy(ak.zeros([2, 3]), ak.tensor([0], [1], { dtype: 'i32' })), /^crossEntropy: targets must have the shape of logits without the last dim: logits \[2, 3\] targets \[1\]$/],
      ['attention heads', () => ak.attention(ak.zeros([1, 3, 2, 4]), ak.zeros([1, 2, 2, 4]), ak.zeros([1, 2, 2, 4])), /^attention: q\/k\/v shapes disagree .*: q \[1, 3, 2, 4\] k \[1, 2, 2, 4\] v \[1, 2, 2, 4\]$/],
      ['rope tables', () => ak.rope(ak.zeros([1, 2, 4]), ak.zeros([2, 3]), ak.zeros([2, 3])), /^rope: cos\/sin must be \[T, D\/2\] \(or \[B, T, D\/2\] for x \[B, H, T, D\]\) and D even/],
      ['tensor size', () => ak.tensor([1, 2, 3], [2, 2]), /^tensor: 3 values do not fill the shape: shape \[2, 2\]$/],
      ['assign non-contiguous', () => ak.assign(ak.transpose(ak.zeros([2, 3])), ak.zeros([3, 2])), /^assign: destination must be contiguous: dst \[3, 2\]$/],
      ['buffer of a view', () => ak.transpose(ak.zeros([2, 3])).buffer(), /^buffer: tensor is not contiguous: shape \[3, 2\]$/],
      ['backward non-scalar', () => ak.mul(ak.zeros([2], { requiresGrad: true }), 2).backward(), /^backward: a gradient is needed for a non-scalar tensor of shape \[2\]$/],
    ];
    for (const [name, fn, re] of cases) {
      it(name, () => {
        ak.setBackend(backend);
        assert.throws(fn, (e: Error) => {
          assert.ok(e instanceof ak.AdaptkitError, `${name}: expected an AdaptkitError, got ${e}`);
          assert.match(e.message, re);
          return true;
        });
      });
    }
  });
}

for (const backend of backends()) {
  describe(`empty tensors on ${backend}`, () => {
    it('every op accepts zero-size dimensions and returns the right shape', () => {
      ak.setBackend(backend);
      const z = ak.zeros([0, 5], { requiresGrad: true });
      const cases: [() => ak.Tensor, number[]][] = [
        [() => ak.matmul(z, ak.zeros([5, 3])), [0, 3]],
        [() => ak.matmul(ak.zeros([2, 0]), ak.zeros([0, 3])), [2, 3]],
        [() => ak.softmax(z), [0, 5]],
        [() => ak.sum(z, 0), [5]],
        [() => ak.exp(z), [0, 5]],
        [() => ak.add(z, ak.zeros([5])), [0, 5]],
        [() => ak.rmsNorm(z, ak.ones([5])), [0, 5]],
        [() => ak.layerNorm(z, ak.ones([5]), ak.zeros([5])), [0, 5]],
        [() => ak.crossEntropy(z, ak.zeros([0], { dtype: 'i32' })), []],
        [() => ak.concat([z, z], 0), [0, 5]],
        [() => ak.contiguous(ak.transpose(z)), [5, 0]],
        [() => ak.attention(ak.zeros([1, 1, 0, 4]), ak.zeros([1, 1, 0, 4]), ak.zeros([1, 1, 0, 4])), [1, 1, 0, 4]],
        [() => ak.embedding(ak.zeros([3, 4]), ak.zeros([0], { dtype: 'i32' })), [0, 4]],
      ];
      for (const [fn, shape] of cases) {
        const t = fn();
        assert.deepEqual(t.shape, shape);
        if (t.requiresGrad) ak.sum(t).backward();
      }
      assert.deepEqual(z.grad!.shape, [0, 5]);
    });
  });
}

// Reproducers from the loader fuzz test (test/fuzz.test.ts): each broken file is an AdaptkitError
// that names the file and the field, quickly and without a stack overflow.
describe('loader errors name the file and the field', () => {
  const dir = mkdtempSync(join(tmpdir(), 'adaptkit-loader-errors-'));
  const file = (name: string, data: string | Buffer) => {
    const d = mkdtempSync(join(dir, 'case-'));
    writeFileSync(join(d, name), data);
    return { dir: d, path: join(d, name) };
  };
  const deep = (n: number) => '['.repeat(n) + ']'.repeat(n);
  const bert = JSON.parse(readFileSync(join(FIX, 'models', 'bert', 'tokenizer.json'), 'utf8')) as Record<string, unknown>;
  const llamaConfig = JSON.parse(readFileSync(join(FIX, 'models', 'llama-gqa', 'config.json'), 'utf8')) as Record<string, unknown>;

  const cases: [string, () => { run: () => unknown; names: string; re: RegExp }][] = [
    ['config.json that is null', () => {
      const f = file('config.json', 'null');
      return { run: () => readConfigFile(f.path), names: f.path, re: /config\.json: must hold a JSON object, got null$/ };
    }],
    ['a config object that is null', () => ({ run: () => parseLlamaConfig(null as never, 'm/config.json'), names: 'm/config.json', re: /must hold a JSON object, got null$/ })],
    ['config.json hidden_size nested 20000 deep', () => {
      const f = file('config.json', `{"model_type":"llama","hidden_size":${deep(20000)}}`);
      return { run: () => parseLlamaConfig(readConfigFile(f.path), f.path), names: f.path, re: /"hidden_size" must be a non-negative integer, got \[\[\[1 item\]\]\]$/ };
    }],
    ['config.json model_type that is a list', () => {
      const f = file('config.json', '{"model_type":[1,2]}');
      return { run: () => readConfigFile(f.path), names: f.path, re: /"model_type" must be a model type name .*, got \[1,2\]$/ };
    }],
    ['config.json head_dim that is odd', () => ({ run: () => parseLlamaConfig({ ...llamaConfig, head_dim: 7 }, 'm/config.json'), names: 'm/config.json', re: /"head_dim" must be a positive even number \(RoPE rotates pairs\), got 7$/ })],
    ['config.json rope_scaling type that is a number', () => ({ run: () => parseLlamaConfig({ ...llamaConfig, rope_scaling: { type: 5 } }, 'm/config.json'), names: 'm/config.json', re: /rope_scaling type 5 is not supported/ })],
    ['config.json rope_scaling factor that is a string', () => ({ run: () => parseLlamaConfig({ ...llamaConfig, rope_scaling: { rope_type: 'linear', factor: 'two' } }, 'm/config.json'), names: 'm/config.json', re: /"rope_scaling\.factor" must be a number, got "two"$/ })],
    ['GGUF array nested 20000 deep', () => {
      const key = Buffer.from('tokenizer.ggml.tokens');
      const head = Buffer.alloc(32);
      head.write('GGUF', 0, 'latin1');
      head.writeUInt32LE(3, 4);
      head.writeBigUInt64LE(1n, 16);
      head.writeBigUInt64LE(BigInt(key.length), 24);
      const level = Buffer.alloc(12);
      level.writeUInt32LE(9, 0);
      level.writeBigUInt64LE(1n, 4);
      const t = Buffer.alloc(4);
      t.writeUInt32LE(9);
      const f = file('v.gguf', Buffer.concat([head, key, t, ...new Array<Buffer>(20000).fill(level)]));
      return { run: () => readGgufMetadata(f.path), names: f.path, re: /"tokenizer\.ggml\.tokens": arrays nested more than 8 deep/ };
    }],
    ['GGUF count of 2^64-1', () => {
      const b = Buffer.alloc(24);
      b.write('GGUF', 0, 'latin1');
      b.writeUInt32LE(3, 4);
      b.writeBigUInt64LE(2n ** 64n - 1n, 16);
      const f = file('v.gguf', b);
      return { run: () => readGgufMetadata(f.path), names: f.path, re: /key\/value count 18446744073709551615 at offset 16 exceeds the file size/ };
    }],
    ['tokenizer.json FixedLength of length 0', () => {
      const f = file('tokenizer.json', JSON.stringify({ ...bert, pre_tokenizer: { type: 'FixedLength', length: 0 } }));
      return { run: () => HfTokenizer.fromDir(f.dir), names: f.path, re: /tokenizer\.json: pre_tokenizer\.length must be an integer from 1 to \d+, got 0$/ };
    }],
    ['tokenizer.json added token without content', () => {
      const added = (bert.added_tokens as object[]).map((t, i) => (i === 2 ? { ...t, content: null } : t));
      const f = file('tokenizer.json', JSON.stringify({ ...bert, added_tokens: added }));
      return { run: () => HfTokenizer.fromDir(f.dir), names: f.path, re: /added_tokens\[2\]\.content must be a string, got null$/ };
    }],
    ['tokenizer.json Split with an invalid regex', () => {
      const f = file('tokenizer.json', JSON.stringify({ ...bert, pre_tokenizer: { type: 'Split', pattern: { Regex: '(' }, behavior: 'Isolated' } }));
      return { run: () => HfTokenizer.fromDir(f.dir), names: f.path, re: /pre_tokenizer\.pattern\.Regex is not a valid regular expression/ };
    }],
    ['tokenizer.json unknown normalizer type', () => {
      const f = file('tokenizer.json', JSON.stringify({ ...bert, normalizer: { type: 'Nope' } }));
      return { run: () => HfTokenizer.fromDir(f.dir), names: f.path, re: /normalizer\.type "Nope" is not a normalizer the tokenizer library runs/ };
    }],
    ['tokenizer.json normalizer Sequence nested 20000 deep', () => {
      const nested = '{"type":"Sequence","normalizers":['.repeat(20000) + '{"type":"NFC"}' + ']}'.repeat(20000);
      const f = file('tokenizer.json', JSON.stringify({ ...bert, normalizer: null }).replace('"normalizer":null', `"normalizer":${nested}`));
      return { run: () => HfTokenizer.fromDir(f.dir), names: f.path, re: /nests Sequences more than 16 deep/ };
    }],
    ['tokenizer.json WordPiece unk_token missing from the vocabulary', () => {
      const f = file('tokenizer.json', JSON.stringify({ ...bert, model: { ...(bert.model as object), unk_token: '[NOPE]' } }));
      return { run: () => HfTokenizer.fromDir(f.dir), names: f.path, re: /model\.unk_token names "\[NOPE\]", which is neither in the vocabulary nor an added token$/ };
    }],
    ['safetensors header nested 20000 deep', () => {
      const h = Buffer.from(`{"x":{"dtype":${deep(20000)},"shape":[1],"data_offsets":[0,4]}}`);
      const len = Buffer.alloc(8);
      len.writeBigUInt64LE(BigInt(h.length));
      const f = file('m.safetensors', Buffer.concat([len, h, Buffer.alloc(4)]));
      return { run: () => new SafetensorsFile(f.path), names: f.path, re: /tensor "x" has unknown dtype \[\[\[1 item\]\]\]$/ };
    }],
    ['llama2.c version-1 header cut short', () => {
      const b = Buffer.alloc(40);
      b.writeUInt32LE(0x616b3432, 0);
      b.writeInt32LE(1, 4);
      const f = file('m.bin', b);
      return { run: () => readLlama2c(f.path), names: f.path, re: /shorter than the 256-byte version-1 header$/ };
    }],
    ['llama2.c odd head size', () => {
      const b = Buffer.alloc(28 + 4 * 4096);
      [6, 8, 1, 2, 1, 8, 4].forEach((v, i) => b.writeInt32LE(v, 4 * i));
      const f = file('m.bin', b);
      return { run: () => readLlama2c(f.path), names: f.path, re: /head size 3 \(dim \/ n_heads\) must be even$/ };
    }],
  ];
  for (const [name, make] of cases) {
    it(name, () => {
      const { run, names, re } = make();
      assert.throws(run, (e: Error) => {
        assert.ok(e instanceof ak.AdaptkitError, `${name}: expected an AdaptkitError, got ${e}`);
        assert.ok(e.message.includes(names), `${name}: the message does not name ${names}: ${e.message}`);
        assert.match(e.message, re);
        assert.ok(e.message.length < 400, `${name}: a ${e.message.length}-character message`);
        return true;
      });
    });
  }
});
