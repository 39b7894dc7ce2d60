/** Numeric options are checked by one parser: the message names the option and its range. */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { dataDir } from '../src/io/data.js';
import { runCli as err } from './cli-run.js';


describe('numeric options', () => {
  const D = join(dataDir(), 'models', 'stories260K');
  const gen = ['generate', '--model', join(D, 'stories260K.bin'), '--tokenizer', join(D, 'tok512.bin'), '--max-tokens', '2'];
  for (const [flag, value, range] of [
    ['--temperature', '-1', 'a number in \\[0, 2\\]'],
    ['--top-p', '2', 'a number in \\[0, 1\\]'],
    ['--top-k', '0', 'an integer in \\[1, 1048576\\]'],
    ['--repetition-penalty', 'x', 'a number in \\[0.01, 10\\]'],
    ['--max-tokens', '-3', 'an integer in \\[1, '],
    ['--seed', '1.5', 'an integer in \\[0, 2147483647\\]'],
  ] as const) {
    it(`generate ${flag} ${value} is refused naming the option and its range`, async () => {
      const r = await err(...gen, flag, value);
      assert.equal(r.code, 1);
      assert.match(r.err, new RegExp(`${flag} must be ${range}.*got "${value.replace('.', '\\.')}"`));
    });
  }

  it('serve --port 70000 is refused naming the option and its range', async () => {
    const r = await err('serve', '--model', join(D, 'stories260K.bin'), '--port', '70000');
    assert.equal(r.code, 1);
    assert.match(r.err, /--port must be an integer in \[0, 65535\], got "70000"/);
  });
});

describe('plugin specifiers', () => {
  it('a file: URL is imported as it is; a missing file is named', async () => {
    const { pluginUrl } = await import('../src/io/plugins.js');
    const url = new URL('./one-file-method.test.ts', import.meta.url).href;
    assert.equal(pluginUrl(url), url);
    assert.throws(() => pluginUrl('./no-such-plugin.ts'), /plugin \.\/no-such-plugin\.ts: no such file/);
  });
});
