/**
 * The architecture's rules, checked on the sources: no layer imports a layer below it (the order
 * of ../shared/ARCHITECTURE.md), and outside the method files nothing names an adapter method or
 * a model class: they are known only through the method registry and the model descriptors.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { registeredMethods } from '../src/adapters/index.js';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const SRC = join(ROOT, 'src');
/** Top to bottom: each layer imports only from itself and the layers before it. */
const LAYERS = ['tensor', 'backend', 'nn', 'io', 'models', 'adapters', 'train', 'serve', 'cli'];

function files(dir: string): string[] {
  return readdirSync(dir).flatMap((n) => {
    const p = join(dir, n);
    return statSync(p).isDirectory() ? files(p) : p.endsWith('.ts') ? [p] : [];
  });
}

function layerOf(file: string): string | null {
  const rel = relative(SRC, file).split('/');
  return rel.length > 1 && LAYERS.includes(rel[0]!) ? rel[0]! : null;
}

/** Relative imports of a source text (static, re-exports and dynamic). */
function importsOf(text: string): string[] {
  const out: string[] = [];
  for (const m of text.matchAll(/(?:from|import)\s*\(?\s*['"](\.[^'"]+)['"]/g)) out.push(m[1]!);
  return out;
}

/** Source without comments (what a file says about itself in prose is not a dependency). */
function code(text: string): string {
  return text.replace(/\/\*[\s\S]*?\*\//g, '').replace(/(^|[^:'"`])\/\/.*$/gm, '$1');
}

export function violations(edges: { from: string; to: string }[]): string[] {
  const bad: string[] = [];
  for (const { from, to } of edges) {
    const a = layerOf(from);
    const b = layerOf(to);
    if (a && b && LAYERS.indexOf(b) > LAYERS.indexOf(a)) bad.push(`${relative(ROOT, from)} (${a}) imports ${relative(ROOT, to)} (${b})`);
  }
  return bad;
}

describe('architecture', () => {
  it('the checker flags an import of a lower layer and passes one of a higher layer', () => {
    assert.equal(violations([{ from: join(SRC, 'models/x.ts'), to: join(SRC, 'adapters/y.ts') }]).length, 1);
    assert.equal(violations([{ from: join(SRC, 'adapters/y.ts'), to: join(SRC, 'models/x.ts') }]).length, 0);
  });

  it('no layer imports a layer below it', () => {
    const edges = files(SRC).flatMap((f) => importsOf(readFileSync(f, 'utf8')).map((i) => ({ from: f, to: resolve(dirname(f), i) })));
    assert.ok(edges.length > 100, 'imports were found');
    assert.deepEqual(violations(edges), []);
  });

  it('outside the method files, nothing names a method, a preset or a method class; adapters name no model class', () => {
    const methods = registeredMethods();
    const methodFiles = files(join(SRC, 'adapters', 'methods'));
    const classes = methodFiles.flatMap((f) => [...readFileSync(f, 'utf8').matchAll(/export (?:class|const) (\w+)/g)].map((m) => m[1]!))
      .filter((n) => /^[A-Z]/.test(n) && !/^[A-Z_]+_COMBINATIONS$/.test(n));
    const presets = methods.flatMap((m) => (m.presets ?? []).map((p) => p.name));
    const patterns: [RegExp, string][] = [
      ...methods.map((m) => [new RegExp(`\\b${m.peftType}\\b`), `peft_type ${m.peftType}`] as [RegExp, string]),
      // a preset name chosen in code: compared with, switched on, or passed as a method
      ...presets.map((p) => [new RegExp(`(?:[!=]==?\\s*|case\\s+|method:\\s*)['"\`]${p}['"\`]`), `preset "${p}"`] as [RegExp, string]),
      ...classes.map((c) => [new RegExp(`\\b${c}\\b`), `method export ${c}`] as [RegExp, string]),
      [/constructor\.name/, 'constructor.name'],
    ];
    // the demo is one fixed recipe (stories260K + LoRA), not generic code
    const generic = [
      ...['train', 'serve', 'cli'].flatMap((l) => files(join(SRC, l))).filter((f) => !f.endsWith('train/demo.ts')),
      ...['adapter-model.ts', 'mixed.ts', 'combine.ts', 'peft-io.ts', 'registry.ts', 'targets.ts', 'types.ts'].map((f) => join(SRC, 'adapters', f)),
    ];
    const found: string[] = [];
    for (const f of generic) {
      const text = code(readFileSync(f, 'utf8'));
      for (const [re, what] of patterns) if (re.test(text)) found.push(`${relative(ROOT, f)}: ${what}`);
    }
    assert.deepEqual(found, []);
    const modelClasses = /\b(LlamaForCausalLM|GPT2LMHeadModel|BertForSequenceClassification)\b|constructor\.name\]/;
    const inAdapters = files(join(SRC, 'adapters')).filter((f) => modelClasses.test(readFileSync(f, 'utf8'))).map((f) => relative(ROOT, f));
    assert.deepEqual(inAdapters, []);
    assert.ok(patterns.length > 20, 'the method names were collected from the registry');
  });
});
