/**
 * The README is true: every TypeScript snippet in it runs (each in its own process, against this
 * checkout's sources, in a folder holding what the README says the snippets find there), and its
 * generation command prints the known greedy text of stories260K.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import * as ak from '../src/index.js';
import { main } from '../src/cli/main.js';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const README = readFileSync(join(ROOT, 'README.md'), 'utf8');
const INDEX = pathToFileURL(join(ROOT, 'src', 'index.ts')).href;
const STORIES = join(ROOT, 'assets', 'stories260K');

/** The fenced blocks of a language. */
function blocks(lang: string): string[] {
  return [...README.matchAll(new RegExp('```' + lang + '\\n([\\s\\S]*?)```', 'g'))].map((m) => m[1]!);
}

/** What the README says every snippet may use (unless it makes its own): ak, model, tok, ids. */
function prelude(code: string): string {
  const declares = (name: string) => new RegExp(`(?:const|let)\\s*(?:\\{[^}]*\\b${name}\\b[^}]*\\}|${name}\\b)`).test(code);
  return [
    `import * as ak from ${JSON.stringify(INDEX)};`,
    declares('model') ? '' : "const model = ak.loadModel('models/stories260K/stories260K.bin').model;",
    declares('tok') ? '' : "const tok = ak.loadTokenizer('models/stories260K/stories260K.bin', 'models/stories260K/tok512.bin', model.config.vocabSize);",
    declares('ids') ? '' : "const ids = ak.tensor([1, 403, 407, 261, 1, 403, 407, 378, 1, 261, 378, 407], [3, 4], { dtype: 'i32' });",
  ].join('\n');
}

let dir: string;

before(() => {
  dir = mkdtempSync(join(tmpdir(), 'adaptkit-readme-'));
  mkdirSync(join(dir, 'models'));
  symlinkSync(STORIES, join(dir, 'models', 'stories260K'));
  const lines = Array.from({ length: 40 }, (_, i) => JSON.stringify({ text: `Once upon a time there was a ${['cat', 'dog', 'bird', 'fish'][i % 4]} that liked to ${['run', 'sing', 'jump', 'swim'][i % 4]}.` }));
  writeFileSync(join(dir, 'data.jsonl'), `${lines.join('\n')}\n`);
  const model = ak.loadModel(join(STORIES, 'stories260K.bin')).model;
  const am = new ak.AdapterModel(model);
  am.add('other', { peft_type: 'LORA', r: 4, lora_alpha: 8, target_modules: ['q_proj', 'v_proj'] });
  am.save(join(dir, 'other', 'adapter'), 'other');
});

after(() => rmSync(dir, { recursive: true, force: true }));

describe('README', () => {
  const ts = blocks('ts');

  it('has TypeScript snippets to run', () => assert.ok(ts.length >= 4, `${ts.length} snippets`));

  ts.forEach((code, i) => {
    it(`snippet ${i + 1} runs: ${code.trim().split('\n')[0]!.slice(0, 60)}`, () => {
      const body = code.replace(/^import \* as ak from 'adaptkit';\n/m, '');
      const file = join(dir, `snippet-${i + 1}.mts`);
      writeFileSync(file, `${prelude(body)}\n${body}\n`);
      const r = spawnSync(process.execPath, ['--import', import.meta.resolve('tsx'), file], { cwd: dir, encoding: 'utf8', env: { ...process.env, HF_HUB_OFFLINE: '1' } });
      assert.equal(r.status, 0, `snippet ${i + 1} failed:\n${r.stderr}`);
    });
  });

  it('the generation command prints the known greedy text of stories260K', async () => {
    const cmd = blocks('sh').find((b) => b.includes('adaptkit generate'));
    assert.ok(cmd, 'the README shows adaptkit generate');
    const args = cmd!.replace(/\\\n\s*/g, ' ').trim().split(/\s+/).slice(2); // after "npx adaptkit"
    let out = '';
    const ow = process.stdout.write.bind(process.stdout);
    process.stdout.write = ((s: string | Uint8Array) => ((out += String(s)), true)) as typeof process.stdout.write;
    try {
      assert.equal(await main(['node', 'adaptkit', ...args.map((a) => a.replace('../shared/data', ak.dataDir()))]), 0);
    } finally {
      process.stdout.write = ow;
    }
    assert.match(out, /^Once upon a time, there was a little girl named Lily\. She loved to play outside in the park\./);
  });
});
