/** Real checkpoints: stories260K from the offline data folder, loaded from llama2.c and after convert. */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as ak from '../src/index.js';
import { dataDir } from '../src/io/data.js';
import { Llama2cTokenizer } from '../src/io/tokenizer-llama2c.js';
import { convertLlama2c } from '../src/models/convert.js';
import { generate } from '../src/models/generate.js';
import { loadModel, loadTokenizer } from '../src/models/load.js';
import { scoreIds } from '../src/cli/models.js';
import { backends } from './helpers.js';

const DIR = join(dataDir(), 'models', 'stories260K');
const BIN = join(DIR, 'stories260K.bin');
const TOK = join(DIR, 'tok512.bin');
// ../shared/data/README.md: greedy decoding from BOS with llama2.c's run.c
const KNOWN = 'Once upon a time, there was a little girl named Lily. She loved to play outside in the park. ' +
  'One day, she saw a big, red ball. She wanted to play with it, but it was too high.';

describe('stories260K', () => {
  const tmp = mkdtempSync(join(tmpdir(), 'adaptkit-model-'));
  const hf = join(tmp, 'hf');

  it('tokenizes "Once upon a time" to the known ids', () => {
    assert.deepEqual(Llama2cTokenizer.fromFile(TOK, 512).encode('Once upon a time'), [1, 403, 407, 261, 378]);
  });

  for (const backend of backends()) {
    it(`greedy generation from BOS reproduces run.c's text (llama2.c .bin, ${backend})`, () => {
      ak.setBackend(backend);
      const { model, unused } = loadModel(BIN);
      assert.deepEqual(unused, []);
      const tok = loadTokenizer(BIN, TOK, 512);
      const r = generate(model, tok, [1], { maxTokens: 80 });
      assert.ok(r.text.startsWith(KNOWN), `got: ${r.text}`);
      model.dispose();
    });
  }

  it('converts to an HF folder that generates the same text and scores the same logits', () => {
    ak.setBackend('native');
    const files = convertLlama2c(BIN, TOK, hf);
    assert.deepEqual(files.sort(), ['config.json', 'generation_config.json', 'model.safetensors', 'tokenizer.json', 'tokenizer_config.json']);
    assert.throws(() => convertLlama2c(BIN, TOK, hf), /is not empty/);
    const a = loadModel(BIN).model;
    const b = loadModel(hf).model;
    const tok = loadTokenizer(hf, undefined, 512);
    assert.ok(generate(b, tok, [1], { maxTokens: 80 }).text.startsWith(KNOWN));
    const ids = tok.encode('Lily went to the park with her mom.');
    const sa = scoreIds(a, ids);
    const sb = scoreIds(b, ids);
    assert.deepEqual(sb.argmax, sa.argmax);
    assert.deepEqual(sb.last_logits, sa.last_logits);
    // the model knows TinyStories text well (README: about 1.1-1.3 nats/token on such text; uniform is 6.24)
    assert.ok(sa.nll! < 2.5, `nll ${sa.nll}`);
  });

  it('the converted tokenizer.json encodes and decodes like the llama2.c tokenizer', () => {
    const ref = Llama2cTokenizer.fromFile(TOK, 512);
    const hfTok = loadTokenizer(hf, undefined, 512);
    for (const s of ['Once upon a time', 'Hello world! The cat sat on the mat.', 'Lily said, "No." 123 ünïcödé 🙂', '  two  spaces', 'a\nb\tc']) {
      assert.deepEqual(hfTok.encode(s), ref.encode(s), s);
      assert.equal(hfTok.decode(hfTok.encode(s)), s);
    }
  });

  it('cleans up', () => rmSync(tmp, { recursive: true, force: true }));
});
