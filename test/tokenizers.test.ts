/** Tokenizer test vectors from llama.cpp (GGUF vocabularies) and cross-checks between formats. */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { dataDir } from '../src/io/data.js';
import { ggufTokenizer } from '../src/io/tokenizer-gguf.js';
import { Llama2cTokenizer } from '../src/io/tokenizer-llama2c.js';
import { readGgufMetadata } from '../src/io/gguf.js';
import * as ak from '../src/index.js';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';

const VOCAB = join(dataDir(), 'tokenizers', 'llamacpp-vocab');

function vectors(name: string): [string, number[]][] {
  const inp = readFileSync(join(VOCAB, `ggml-vocab-${name}.gguf.inp`), 'utf8').split('\n__ggml_vocab_test__\n');
  const out = readFileSync(join(VOCAB, `ggml-vocab-${name}.gguf.out`), 'utf8').split('\n');
  return inp.slice(0, out.length).map((text, i) => [text, out[i]!.trim() === '' ? [] : out[i]!.trim().split(/\s+/).map(Number)]);
}

describe('tokenizers', () => {
  for (const name of ['gpt-2', 'llama-spm', 'bert-bge']) {
    it(`${name}: every llama.cpp test vector`, () => {
      const tok = ggufTokenizer(join(VOCAB, `ggml-vocab-${name}.gguf`));
      const cases = vectors(name);
      assert.ok(cases.length >= 40);
      for (const [text, want] of cases) assert.deepEqual(tok.encode(text, { bos: false }), want, JSON.stringify(text));
    });
  }

  it('TextStream emits, token by token, exactly the text the whole sequence decodes to after the prompt', () => {
    const toks = [
      ggufTokenizer(join(VOCAB, 'ggml-vocab-gpt-2.gguf')),
      ggufTokenizer(join(VOCAB, 'ggml-vocab-llama-spm.gguf')),
      Llama2cTokenizer.fromFile(join(dataDir(), 'tokenizers', 'llama2-32k-tokenizer.bin'), 32000),
    ];
    let checked = 0;
    const texts = [
      "Hello, y'all! How are you 😁 ?我想在apple工作1314151天～ and then   some spaces\n\nnew lines",
      'нещо на Български 🦙🦙 Führer ½ months, 3333 tokens',
    ];
    for (const tok of toks) {
      for (const text of texts) {
        const ids = tok.encode(text, { bos: true });
        for (const cut of [0, 1, 3, 7]) {
          const prompt = ids.slice(0, cut);
          const gen = ids.slice(cut);
          const promptText = tok.decode(prompt);
          const full = tok.decode([...prompt, ...gen]);
          if (!full.startsWith(promptText)) continue; // the cut splits a character
          checked++;
          const want = full.slice(promptText.length);
          const stream = new ak.TextStream(tok, prompt);
          let got = '';
          for (const id of gen) {
            const delta = stream.push(id);
            assert.ok(!delta.includes('\uFFFD'), `an incomplete character was emitted: ${JSON.stringify(delta)}`);
            got += delta;
            assert.ok(want.startsWith(got), `${JSON.stringify(got)} is not a prefix of ${JSON.stringify(want)}`);
          }
          got += stream.flush();
          assert.equal(got, want);
          assert.equal(stream.text, want);
        }
      }
    }
    assert.ok(checked >= 20, `only ${checked} cases checked`);
  });

  it('TextStream decodes a short window per token, however long the prompt and the output', () => {
    const tok = ggufTokenizer(join(VOCAB, 'ggml-vocab-gpt-2.gguf'));
    let longest = 0;
    const counting = { decode: (ids: readonly number[]) => { longest = Math.max(longest, ids.length); return tok.decode(ids); } };
    const ids = tok.encode('The quick brown fox jumps over the lazy dog. '.repeat(100), { bos: false });
    const stream = new ak.TextStream(counting, ids.slice(0, 500));
    for (const id of ids.slice(500)) stream.push(id);
    assert.equal(stream.text + stream.flush(), tok.decode(ids).slice(tok.decode(ids.slice(0, 500)).length));
    assert.ok(ids.length > 900 && longest <= 10, `longest decoded window: ${longest} tokens`);
  });

  it('gpt-2 and llama-spm decode their encodings back to the text', () => {
    for (const name of ['gpt-2', 'llama-spm']) {
      const tok = ggufTokenizer(join(VOCAB, `ggml-vocab-${name}.gguf`));
      for (const text of ['Hello world', 'нещо на Български', "Hello, y'all! How are you 😁 ?我想在apple工作1314151天～"]) {
        assert.equal(tok.decode(tok.encode(text, { bos: false })), text, `${name}: ${text}`);
      }
    }
  });

  it('the llama2.c Llama-2 vocabulary encodes like the llama-spm GGUF vocabulary', () => {
    const bin = Llama2cTokenizer.fromFile(join(dataDir(), 'tokenizers', 'llama2-32k-tokenizer.bin'), 32000);
    const gguf = ggufTokenizer(join(VOCAB, 'ggml-vocab-llama-spm.gguf'));
    for (const text of ['Hello world', ' Hello World!', 'this is 🦙.cpp', 'w048 7tuijk dsdfhu', 'нещо на Български', '3333333']) {
      assert.deepEqual(bin.encode(text, { bos: true }), gguf.encode(text, { bos: true }), text);
    }
  });

  it('rejects a truncated GGUF file with a clear error', () => {
    const full = readFileSync(join(VOCAB, 'ggml-vocab-gpt-2.gguf'));
    const p = join(mkdtempSync(join(tmpdir(), 'adaptkit-gguf-')), 'cut.gguf');
    writeFileSync(p, full.subarray(0, 5000));
    assert.throws(() => readGgufMetadata(p), (e: Error) => e instanceof ak.AdaptkitError && /truncated GGUF file|exceeds the file size/.test(e.message));
    writeFileSync(p, Buffer.from('GGML0000'));
    assert.throws(() => readGgufMetadata(p), /not a GGUF file/);
  });
});

import { applyChatTemplate } from '../src/io/chat-template.js';

describe('chat templates', () => {
  // the ChatML template SmolLM2-Instruct and Qwen2 ship (abridged to its message loop)
  const chatml = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";
  it('renders ChatML with a generation prompt', () => {
    const text = applyChatTemplate(chatml, [{ role: 'system', content: 'Be brief.' }, { role: 'user', content: 'Hi!' }], { addGenerationPrompt: true });
    assert.equal(text, '<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n');
  });
  it('renders a Llama-2 style template with bos/eos and raise_exception', () => {
    const llama2 = "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}{{ '[INST] ' + m['content'] + ' [/INST]' }}{% elif m['role'] == 'assistant' %}{{ ' ' + m['content'] + ' ' + eos_token }}{% else %}{{ raise_exception('bad role') }}{% endif %}{% endfor %}";
    const text = applyChatTemplate(llama2, [{ role: 'user', content: 'a' }, { role: 'assistant', content: 'b' }], { bosToken: '<s>', eosToken: '</s>' });
    assert.equal(text, '<s>[INST] a [/INST] b </s>');
    assert.throws(() => applyChatTemplate(llama2, [{ role: 'tool', content: 'x' }]), /chat template failed: .*bad role/);
  });
  it('reports a template that does not parse', () => {
    assert.throws(() => applyChatTemplate('{% for %}', []), ak.AdaptkitError);
  });
});
