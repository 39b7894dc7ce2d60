/**
 * The formats the loader fuzz test covers: for each, its seeds, its named reproducer cases, its
 * random mutator and the loader call a user would make. A load "passes" when it succeeds (and a
 * tokenizer then encodes and decodes sample text to valid ids) or fails with an AdaptkitError that
 * names the file.
 */
import { copyFileSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { AdaptkitError } from '../../src/tensor/index.js';
import { getBackend } from '../../src/backend/index.js';
import { readSafetensors } from '../../src/io/safetensors.js';
import { ggufTokenizer, ggufTokenizerJson } from '../../src/io/tokenizer-gguf.js';
import { Llama2cTokenizer } from '../../src/io/tokenizer-llama2c.js';
import { llama2cToTokenizerJson } from '../../src/io/tokenizer-convert.js';
import { HfTokenizer } from '../../src/io/tokenizer-hf.js';
import { loadAnyModel, loadModel } from '../../src/models/load.js';
import { AdapterModel } from '../../src/adapters/index.js';
import { type Json, type Mutant, Rng, deepArray, jsonText, mutateBytes, mutateJson, rawNumber } from './mutate.js';
import { type GgufArray, type Kv, arr, deepNestedArrayGguf, writeGguf } from './gguf.js';
import {
  ADAPTER_FIXTURES, ADAPTER_KEYS, ADAPTER_STRINGS, type BinarySeed, CONFIG_KEYS, CONFIG_STRINGS, FIX, MODEL_FIXTURES, SAFETENSORS_KEYS,
  SAFETENSORS_STRINGS, STORIES, TOKENIZER_KEYS, TOKENIZER_STRINGS, type TokenizerSeed, checkpointBytes, ggufSeeds, llama2cSeeds,
  safetensorsSeeds, tokenizerSeeds,
} from './seeds.js';

export interface Target {
  /** The file the mutant is written to. */
  file: string;
  /** Strings an error message may use to name it (the file; for folder loaders, the folder too). */
  names: string[];
}

export interface FormatCtx {
  fixed: { name: string; make(): Mutant }[];
  random(rng: Rng): Mutant;
  target(seed: number): Target;
  load(seed: number): void;
}

export interface Format {
  name: string;
  /** Random mutants per run (before ADAPTKIT_FUZZ_SCALE). */
  count: number;
  setup(work: string): FormatCtx;
}

// what importing the package does: install the default backend, which model loading needs
getBackend();

const TEXTS = [
  'Hello world', 'Once upon a time, there were 1234 tokens!', '  two  spaces\tand\nnew lines  ', 'ünïcödé 你好 🦙 Führer ½',
  '', '[CLS] [SEP] <s> </s> <unk> <mask> <|endoftext|>', `${'a'.repeat(150)} ${'xyz'.repeat(40)}`,
];

interface AnyTokenizer {
  readonly vocabSize: number;
  encode(text: string, opts?: { bos?: boolean; eos?: boolean }): number[];
  decode(ids: readonly number[]): string;
}

/** A tokenizer that loaded must also work: every id it produces is a real id, and they decode. */
function exercise(tok: AnyTokenizer, where: string): void {
  const V = tok.vocabSize;
  for (const text of TEXTS) {
    for (const opts of [{ bos: true }, { bos: false, eos: true }]) {
      const ids = tok.encode(text, opts);
      for (const id of ids) {
        if (!Number.isInteger(id) || id < 0 || id >= V) throw new BadOutput(`${where}: encode(${JSON.stringify(text.slice(0, 20))}) gave id ${id} (vocabulary of ${V})`);
      }
      const s = tok.decode(ids);
      if (typeof s !== 'string') throw new BadOutput(`${where}: decode gave ${typeof s}`);
    }
  }
  const sample = Array.from({ length: Math.min(V, 48) }, (_, i) => i);
  if (V > 0) sample.push(V - 1);
  tok.decode(sample);
}

/** A loader that accepted a broken file and produced unusable output. */
export class BadOutput extends Error {
  override name = 'BadOutput';
}

function at(work: string, sub: string): string {
  const d = join(work, sub);
  mkdirSync(d, { recursive: true });
  return d;
}

// ---------------------------------------------------------------------------------------------

function binaryFixed(seedIndex: number, name: string, edit: (b: Buffer) => Buffer): (seeds: BinarySeed[]) => { name: string; make(): Mutant } {
  return (seeds) => ({ name, make: () => ({ seed: seedIndex, bytes: edit(Buffer.from(seeds[seedIndex]!.bytes)), desc: name }) });
}

function withU64(off: number, v: bigint): (b: Buffer) => Buffer {
  return (b) => {
    b.writeBigUInt64LE(v, off);
    return b;
  };
}

const safetensors: Format = {
  name: 'safetensors',
  count: 2500,
  setup(work) {
    const seeds = safetensorsSeeds();
    const header = (bytes: Buffer, text: string, len?: number) => {
      const h = Buffer.from(text);
      const l = Buffer.alloc(8);
      l.writeBigUInt64LE(BigInt(len ?? h.length));
      return Buffer.concat([l, h, bytes.subarray(8 + Number(bytes.readBigUInt64LE(0)))]);
    };
    const parsed = seeds.map((s) => JSON.parse(s.bytes.toString('utf8', 8, s.hotEnd)) as Json);
    const fixed = [
      binaryFixed(0, 'header length 2^64-1', withU64(0, 2n ** 64n - 1n)),
      binaryFixed(0, 'header length one past the file', (b) => withU64(0, BigInt(b.length - 7))(b)),
      binaryFixed(0, 'empty file', () => Buffer.alloc(0)),
      binaryFixed(0, 'header is JSON null', (b) => header(b, 'null    ')),
      binaryFixed(0, 'header nested 20000 deep', (b) => header(b, jsonText(deepArray()))),
      binaryFixed(0, 'data_offsets past the data section', (b) => header(b, JSON.stringify({ x: { dtype: 'F32', shape: [2], data_offsets: [1 << 20, (1 << 20) + 8] } }))),
      binaryFixed(0, 'shape with 2^53 elements', (b) => header(b, JSON.stringify({ x: { dtype: 'F32', shape: [2 ** 26, 2 ** 27], data_offsets: [0, 8] } }))),
      binaryFixed(0, 'tensor entry is a string', (b) => header(b, JSON.stringify({ x: 'F32' }))),
    ].map((f) => f(seeds));
    return {
      fixed,
      random(rng) {
        const k = rng.int(seeds.length);
        const s = seeds[k]!;
        if (rng.chance(0.55)) return mutateBytes(rng, k, s.bytes, s);
        const m = mutateJson(rng, k, parsed[k]!, { strings: [...SAFETENSORS_STRINGS, ...Object.keys(parsed[k] as object).slice(0, 8)], keys: SAFETENSORS_KEYS });
        const text = m.bytes.toString();
        const stale = rng.chance(0.2);
        return { seed: k, bytes: header(s.bytes, text, stale ? s.hotEnd - 8 : undefined), desc: `header JSON: ${m.desc}${stale ? ' (old header length kept)' : ''}` };
      },
      target: (k) => {
        const file = join(at(work, `s${k}`), 'model.safetensors');
        return { file, names: [file] };
      },
      load(k) {
        const { tensors } = readSafetensors(join(work, `s${k}`, 'model.safetensors'));
        for (const t of Object.values(tensors)) t.dispose();
      },
    };
  },
};

// ---------------------------------------------------------------------------------------------

const GGUF_MODELS = ['gpt2', 'llama', 'bert', 't5', '', 'GPT2'];

function ggufValue(rng: Rng, type: number, n: number): unknown {
  switch (type) {
    case 0: return rng.pick([0, 1, 255]);
    case 1: return rng.pick([-128, -1, 127]);
    case 2: return rng.pick([0, 65535]);
    case 3: return rng.pick([-32768, -1, 32767]);
    case 4: return rng.pick([0, 1, n - 1, n, n + 1, 2 ** 31, 0xffffffff]);
    case 5: return rng.pick([-1, -(2 ** 31), 2 ** 31 - 1, n, n + 1]);
    case 6: return rng.pick([NaN, Infinity, -1, 0.5, 3.4e38]);
    case 7: return rng.chance(0.5);
    case 8: return rng.pick([...GGUF_MODELS, 'x'.repeat(1000), '\u0000']);
    case 9: return rng.pick([arr(8, ['a']), arr(4, [1, 2]), arr(9, [arr(8, [])]), arr(6, [NaN]), arr(8, [])]);
    case 10: return rng.pick([0n, 1n, BigInt(n), 2n ** 64n - 1n]);
    case 11: return rng.pick([-1n, 0n, BigInt(n), 2n ** 63n - 1n]);
    default: return rng.pick([NaN, -1, 1e308]);
  }
}

/** A typed edit of one key: its type, its value, its array's element type or length, or the key itself. */
function mutateGgufKvs(rng: Rng, kvs: Kv[]): { kvs: Kv[]; desc: string } {
  const out = kvs.map((kv) => ({ ...kv }));
  const tokenizerKeys = out.map((kv, i) => [kv, i] as const).filter(([kv]) => kv.key.startsWith('tokenizer.'));
  const [kv, i] = rng.chance(0.8) && tokenizerKeys.length > 0 ? rng.pick(tokenizerKeys) : [out[rng.int(out.length)]!, -1];
  const idx = i >= 0 ? i : out.indexOf(kv);
  const tokens = (out.find((k) => k.key === 'tokenizer.ggml.tokens')?.value as GgufArray | undefined)?.items.length ?? 0;
  const op = rng.int(8);
  if (op === 0) {
    out.splice(idx, 1);
    return { kvs: out, desc: `drop ${kv.key}` };
  }
  if (op === 1) {
    const t = rng.int(13);
    kv.type = t;
    kv.value = ggufValue(rng, t, tokens);
    return { kvs: out, desc: `${kv.key} becomes type ${t} = ${show(kv.value)}` };
  }
  if (kv.type === 9) {
    const a = kv.value as GgufArray;
    if (op === 2) {
      const elem = rng.int(13);
      kv.value = arr(elem, a.items.slice(0, rng.pick([0, 1, 5, a.items.length])).map(() => ggufValue(rng, elem, tokens)));
      return { kvs: out, desc: `${kv.key} becomes an array of type ${elem} (${(kv.value as GgufArray).items.length} items)` };
    }
    if (op === 3 || op === 4) {
      const n = rng.pick([0, 1, Math.floor(a.items.length / 2), Math.max(0, a.items.length - 1)]);
      kv.value = arr(a.elem, a.items.slice(0, n));
      return { kvs: out, desc: `${kv.key} cut to ${n} items` };
    }
    if (op === 5 && a.items.length > 0) {
      const items = a.items.slice();
      const j = rng.int(items.length);
      items[j] = ggufValue(rng, a.elem, tokens);
      kv.value = arr(a.elem, items);
      return { kvs: out, desc: `${kv.key}[${j}] = ${show(items[j])}` };
    }
    if (op === 6) {
      kv.value = arr(9, [a]);
      return { kvs: out, desc: `${kv.key} wrapped in another array` };
    }
  }
  if (op === 7) {
    out.push({ ...kv });
    return { kvs: out, desc: `${kv.key} repeated` };
  }
  kv.value = kv.type === 9 ? arr(8, []) : ggufValue(rng, kv.type, tokens);
  return { kvs: out, desc: `${kv.key} = ${show(kv.value)}` };
}

function show(v: unknown): string {
  if (typeof v === 'bigint') return `${v}`;
  if (v && typeof v === 'object' && 'items' in v) return `array(${(v as GgufArray).elem}) of ${(v as GgufArray).items.length}`;
  const s = JSON.stringify(v);
  return s === undefined ? String(v) : s.length > 40 ? `${s.slice(0, 40)}…` : s;
}

const gguf: Format = {
  name: 'gguf',
  count: 2500,
  setup(work) {
    const seeds = ggufSeeds();
    const with_ = (k: number, name: string, edit: (kvs: Kv[]) => Kv[]) => ({
      name, make: (): Mutant => ({ seed: k, bytes: writeGguf(edit(seeds[k]!.kvs.map((kv) => ({ ...kv })))).bytes, desc: name }),
    });
    const tokensCount = seeds[1]!.fields.find((f) => f.name === 'tokenizer.ggml.tokens count')!;
    const fixed = [
      { name: 'array nested 20000 deep', make: (): Mutant => ({ seed: 1, bytes: deepNestedArrayGguf(20000), desc: 'tokenizer.ggml.tokens nested 20000 deep' }) },
      binaryFixed(1, 'tokenizer.ggml.tokens count 2^64-1', withU64(tokensCount.offset, 2n ** 64n - 1n))(seeds),
      binaryFixed(1, 'tokenizer.ggml.tokens count one past its items', (b) => withU64(tokensCount.offset, b.readBigUInt64LE(tokensCount.offset) + 1n)(b))(seeds),
      binaryFixed(1, 'magic only', (b) => b.subarray(0, 4))(seeds),
      with_(1, 'token_type is a string', (kvs) => kvs.map((kv) => (kv.key === 'tokenizer.ggml.token_type' ? { ...kv, type: 8, value: 'x' } : kv))),
      with_(1, 'scores shorter than tokens', (kvs) => kvs.map((kv) => (kv.key === 'tokenizer.ggml.scores' ? { ...kv, value: arr(6, (kv.value as GgufArray).items.slice(0, 10)) } : kv))),
      with_(1, 'scores are strings', (kvs) => kvs.map((kv) => (kv.key === 'tokenizer.ggml.scores' ? { ...kv, value: arr(8, (kv.value as GgufArray).items.map(() => 's')) } : kv))),
      with_(1, 'unknown_token_id out of range', (kvs) => kvs.map((kv) => (kv.key === 'tokenizer.ggml.unknown_token_id' ? { ...kv, value: 0xffffffff } : kv))),
      with_(2, 'bert unknown_token_id out of range', (kvs) => kvs.map((kv) => (kv.key === 'tokenizer.ggml.unknown_token_id' ? { ...kv, value: 1 << 30 } : kv))),
      with_(0, 'merges are numbers', (kvs) => kvs.map((kv) => (kv.key === 'tokenizer.ggml.merges' ? { ...kv, value: arr(4, [1, 2, 3]) } : kv))),
      with_(0, 'merge without a space', (kvs) => kvs.map((kv) => (kv.key === 'tokenizer.ggml.merges' ? { ...kv, value: arr(8, ['ab', ...(kv.value as GgufArray).items]) } : kv))),
      with_(1, 'token named __proto__', (kvs) => kvs.map((kv) => (kv.key === 'tokenizer.ggml.tokens' ? { ...kv, value: arr(8, ['__proto__', ...(kv.value as GgufArray).items.slice(1)]) } : kv))),
    ];
    return {
      fixed,
      random(rng) {
        const k = rng.int(seeds.length);
        const s = seeds[k]!;
        if (rng.chance(0.5)) return mutateBytes(rng, k, s.bytes, s);
        const m = mutateGgufKvs(rng, s.kvs);
        return { seed: k, bytes: writeGguf(m.kvs).bytes, desc: m.desc };
      },
      target: (k) => {
        const file = join(at(work, `g${k}`), 'vocab.gguf');
        return { file, names: [file] };
      },
      load(k) {
        const file = join(work, `g${k}`, 'vocab.gguf');
        exercise(ggufTokenizer(file), file);
      },
    };
  },
};

// ---------------------------------------------------------------------------------------------

const llama2c: Format = {
  name: 'llama2c',
  count: 2000,
  setup(work) {
    const seeds = llama2cSeeds();
    const file = (k: number) => join(work, `l${k}`, seeds[k]!.kind === 'checkpoint' ? 'model.bin' : 'tokenizer.bin');
    const tok = seeds.findIndex((s) => s.kind === 'tokenizer');
    const fixed = [
      binaryFixed(2, 'version-1 header cut at 40 bytes', (b) => b.subarray(0, 40))(seeds),
      binaryFixed(0, 'legacy header cut at 27 bytes', (b) => b.subarray(0, 27))(seeds),
      { name: 'head size 3 (odd)', make: (): Mutant => ({ seed: 0, bytes: checkpointBytes({ dim: 6, hidden: 8, layers: 1, heads: 2, kv: 1, vocab: 8, seq: 4 }, 0, true), desc: 'dim 6, 2 heads' }) },
      binaryFixed(0, 'n_kv_heads 0', (b) => { b.writeInt32LE(0, 16); return b; })(seeds),
      binaryFixed(0, 'dim -8', (b) => { b.writeInt32LE(-8, 0); return b; })(seeds),
      binaryFixed(2, 'version 7', (b) => { b.writeInt32LE(7, 4); return b; })(seeds),
      binaryFixed(tok, 'tokenizer token 0 length -1', (b) => { b.writeInt32LE(-1, 8); return b; })(seeds),
      binaryFixed(tok, 'tokenizer token 0 length 2^31-1', (b) => { b.writeInt32LE(2 ** 31 - 1, 8); return b; })(seeds),
      binaryFixed(tok, 'tokenizer cut at 100 bytes', (b) => b.subarray(0, 100))(seeds),
    ];
    // stories260K is 1 MB: mutate it at a quarter of the rate of the small seeds
    const weights = seeds.map((s) => (s.name === 'stories260K' ? 0.25 : 1));
    const total = weights.reduce((a, b) => a + b, 0);
    return {
      fixed,
      random(rng) {
        let r = rng.float() * total;
        let k = 0;
        while (r >= weights[k]!) r -= weights[k++]!;
        const s = seeds[k]!;
        return mutateBytes(rng, k, s.bytes, s);
      },
      target: (k) => {
        at(work, `l${k}`);
        return { file: file(k), names: [file(k)] };
      },
      load(k) {
        const s = seeds[k]!;
        if (s.kind === 'checkpoint') loadAnyModel(file(k));
        else exercise(Llama2cTokenizer.fromFile(file(k), s.vocabSize!), file(k));
      },
    };
  },
};

// ---------------------------------------------------------------------------------------------

function jsonFixed(seed: number, name: string, text: string | ((seed: Json) => Json)): (seeds: Json[]) => { name: string; make(): Mutant } {
  return (seeds) => ({
    name,
    make: () => ({ seed, bytes: Buffer.from(typeof text === 'string' ? text : jsonText(text(structuredClone(seeds[seed]!)))), desc: name }),
  });
}

function edit(f: (o: Record<string, Json>) => void): (seed: Json) => Json {
  return (seed) => {
    f(seed as Record<string, Json>);
    return seed;
  };
}

const configJson: Format = {
  name: 'config.json',
  count: 2500,
  setup(work) {
    const seeds = MODEL_FIXTURES.map((m) => JSON.parse(readFileSync(join(FIX, 'models', m, 'config.json'), 'utf8')) as Json);
    MODEL_FIXTURES.forEach((m, k) => copyFileSync(join(FIX, 'models', m, 'model.safetensors'), join(at(work, `c${k}`), 'model.safetensors')));
    const L = MODEL_FIXTURES.indexOf('llama-gqa');
    const G = MODEL_FIXTURES.indexOf('gpt2');
    const B = MODEL_FIXTURES.indexOf('bert');
    const fixed = [
      jsonFixed(L, 'config.json is null', 'null'),
      jsonFixed(L, 'config.json is an array', '[]'),
      jsonFixed(L, 'config.json is a string', '"llama"'),
      jsonFixed(L, 'hidden_size nested 20000 deep', edit((o) => { o.hidden_size = deepArray(); })),
      jsonFixed(L, 'num_attention_heads null', edit((o) => { o.num_attention_heads = null; })),
      jsonFixed(L, 'head_dim 7 (odd)', edit((o) => { o.head_dim = 7; })),
      jsonFixed(L, 'max_position_embeddings 1e999', edit((o) => { o.max_position_embeddings = rawNumber('1e999'); })),
      jsonFixed(L, 'rope_scaling type is a number', edit((o) => { o.rope_scaling = { type: 5, factor: 2 }; })),
      jsonFixed(L, 'rope_scaling factor is a string', edit((o) => { o.rope_scaling = { rope_type: 'linear', factor: 'two' }; })),
      jsonFixed(L, 'vocab_size 2^53', edit((o) => { o.vocab_size = 2 ** 53; })),
      jsonFixed(G, 'gpt2 n_head 0', edit((o) => { o.n_head = 0; })),
      jsonFixed(B, 'bert id2label is null-valued array', edit((o) => { o.id2label = [null]; })),
      jsonFixed(L, 'eos_token_id list of strings', edit((o) => { o.eos_token_id = ['</s>']; })),
    ].map((f) => f(seeds));
    return {
      fixed,
      random: (rng) => {
        const k = rng.int(seeds.length);
        return mutateJson(rng, k, seeds[k]!, { strings: CONFIG_STRINGS, keys: CONFIG_KEYS });
      },
      target: (k) => {
        const dir = join(work, `c${k}`);
        return { file: join(dir, 'config.json'), names: [join(dir, 'config.json'), dir] };
      },
      load: (k) => {
        loadAnyModel(join(work, `c${k}`));
      },
    };
  },
};

// ---------------------------------------------------------------------------------------------

const adapterConfig: Format = {
  name: 'adapter_config.json',
  count: 2000,
  setup(work) {
    const seeds = ADAPTER_FIXTURES.map((a) => JSON.parse(readFileSync(join(FIX, 'adapters', a, 'adapter_config.json'), 'utf8')) as Json);
    const models = ADAPTER_FIXTURES.map((a) => (JSON.parse(readFileSync(join(FIX, 'adapters', a, 'expected.json'), 'utf8')) as { model: string }).model);
    ADAPTER_FIXTURES.forEach((a, k) => copyFileSync(join(FIX, 'adapters', a, 'adapter_model.safetensors'), join(at(work, `a${k}`), 'adapter_model.safetensors')));
    const L = ADAPTER_FIXTURES.indexOf('lora-llama');
    const fixed = [
      jsonFixed(L, 'adapter_config.json is null', 'null'),
      jsonFixed(L, 'layers_pattern is an invalid regex', edit((o) => { o.layers_pattern = '('; o.layers_to_transform = [0]; })),
      // exponential for a backtracking matcher on a 30-character module path; linear for RE2-style ones
      jsonFixed(L, 'target_modules backtracking regex', edit((o) => { o.target_modules = '(.|.)*y'; })),
      jsonFixed(L, 'rank_pattern backtracking key', edit((o) => { o.rank_pattern = { '(.|.)*y': 2 }; })),
      jsonFixed(L, 'r 4194304', edit((o) => { o.r = 4194304; })),
      jsonFixed(L, 'target_modules nested 20000 deep', edit((o) => { o.target_modules = deepArray(); })),
      jsonFixed(L, 'peft_type is a number', edit((o) => { o.peft_type = 1; })),
    ].map((f) => f(seeds));
    return {
      fixed,
      random: (rng) => {
        const k = rng.int(seeds.length);
        return mutateJson(rng, k, seeds[k]!, { strings: ADAPTER_STRINGS, keys: ADAPTER_KEYS });
      },
      target: (k) => {
        const dir = join(work, `a${k}`);
        return { file: join(dir, 'adapter_config.json'), names: [join(dir, 'adapter_config.json'), dir] };
      },
      load: (k) => {
        const am = new AdapterModel(loadModel(join(FIX, 'models', models[k]!)).model);
        am.load(join(work, `a${k}`));
      },
    };
  },
};

// ---------------------------------------------------------------------------------------------

function nestedNormalizers(depth: number): string {
  return `{"type":"Sequence","normalizers":[`.repeat(depth) + '{"type":"NFC"}' + ']}'.repeat(depth);
}

const tokenizerJson: Format = {
  name: 'tokenizer.json',
  count: 2500,
  setup(work) {
    const gpt2 = ggufSeeds()[0]!;
    const gpt2File = join(at(work, 'src'), 'gpt2-small.gguf');
    writeFileSync(gpt2File, gpt2.bytes);
    const seeds: TokenizerSeed[] = tokenizerSeeds({
      llama2c: llama2cToTokenizerJson(Llama2cTokenizer.fromFile(join(STORIES, 'tok512.bin'), 512)),
      gpt2: ggufTokenizerJson(gpt2File),
    });
    seeds.forEach((s, k) => writeFileSync(join(at(work, `t${k}`), 'tokenizer_config.json'), JSON.stringify(s.config)));
    const json = seeds.map((s) => s.tokenizer);
    const B = 0;
    const U = seeds.findIndex((s) => s.name === 'unigram-kitchen-sink');
    const S = seeds.findIndex((s) => s.name === 'tok512-spm-bpe');
    const fixed = [
      jsonFixed(U, 'FixedLength length 0', edit((o) => { ((o.pre_tokenizer as { pretokenizers: Json[] }).pretokenizers[6] as Record<string, Json>).length = 0; })),
      jsonFixed(U, 'FixedLength length -1', edit((o) => { o.pre_tokenizer = { type: 'FixedLength', length: -1 }; })),
      jsonFixed(B, 'tokenizer.json is null', 'null'),
      jsonFixed(B, 'model is null', edit((o) => { o.model = null; })),
      jsonFixed(B, 'model.vocab is a string', edit((o) => { (o.model as Record<string, Json>).vocab = 'abc'; })),
      jsonFixed(B, 'unk_token not in the vocabulary', edit((o) => { (o.model as Record<string, Json>).unk_token = '[NOPE]'; })),
      jsonFixed(B, 'added token id 1e9', edit((o) => { (o.added_tokens as Record<string, Json>[])[0]!.id = 1e9; })),
      jsonFixed(B, 'added_tokens missing', edit((o) => { delete o.added_tokens; })),
      jsonFixed(B, 'TemplateProcessing item is a string', edit((o) => { (o.post_processor as Record<string, Json>).single = ['[CLS]']; })),
      jsonFixed(U, 'Split pattern is an invalid regex', edit((o) => { o.pre_tokenizer = { type: 'Split', pattern: { Regex: '(' }, behavior: 'Isolated', invert: false }; })),
      jsonFixed(U, 'Split behavior is a number', edit((o) => { o.pre_tokenizer = { type: 'Split', pattern: { String: ' ' }, behavior: 1, invert: false }; })),
      jsonFixed(U, 'decoder Replace without pattern', edit((o) => { o.decoder = { type: 'Replace', content: ' ' }; })),
      jsonFixed(U, 'Unigram vocab entry is a number', edit((o) => { ((o.model as Record<string, Json>).vocab as Json[])[4] = 5; })),
      jsonFixed(U, 'Unigram unk_id out of range', edit((o) => { (o.model as Record<string, Json>).unk_id = 9999; })),
      jsonFixed(S, 'BPE merges missing', edit((o) => { delete (o.model as Record<string, Json>).merges; })),
      jsonFixed(S, 'BPE merge nested 20000 deep', edit((o) => { ((o.model as Record<string, Json>).merges as Json[])[0] = ['a', deepArray()]; })),
      { name: 'normalizer Sequence nested 20000 deep', make: (): Mutant => {
        const t = jsonText(json[B]!).replace(/"normalizer": \{[^}]*\}/, `"normalizer": ${nestedNormalizers(20000)}`);
        return { seed: B, bytes: Buffer.from(t), desc: 'normalizer Sequence nested 20000 deep' };
      } },
      jsonFixed(B, 'added token content nested 20000 deep', edit((o) => { (o.added_tokens as Record<string, Json>[])[0]!.content = deepArray(); })),
    ].map((f) => (typeof f === 'function' ? f(json) : f));
    return {
      fixed,
      random: (rng) => {
        const k = rng.int(seeds.length);
        return mutateJson(rng, k, json[k]!, { strings: TOKENIZER_STRINGS, keys: TOKENIZER_KEYS });
      },
      target: (k) => {
        const file = join(work, `t${k}`, 'tokenizer.json');
        return { file, names: [file] };
      },
      load: (k) => {
        const dir = join(work, `t${k}`);
        exercise(HfTokenizer.fromDir(dir), join(dir, 'tokenizer.json'));
      },
    };
  },
};

// ---------------------------------------------------------------------------------------------

/** Cases that must be caught, to prove the harness itself sees each kind of failure. */
const selftest: Format = {
  name: 'harness-selftest',
  count: 0,
  setup(work) {
    const file = join(at(work, 'x'), 'x.bin');
    const behaviours: Record<string, () => void> = {
      ok: () => {},
      clear: () => { throw new AdaptkitError(`${file}: clear`); },
      'raw TypeError': () => { (null as unknown as { x: number }).x; },
      'unnamed AdaptkitError': () => { throw new AdaptkitError('no file named'); },
      'wrapped raw error': () => { throw new AdaptkitError(`${file}: wrapped`, { cause: new TypeError('inner') }); },
      'bad output': () => { throw new BadOutput('garbage ids'); },
      hang: () => { for (;;) { /* spin */ } },
      crash: () => { process.exit(3); },
      // large chunks: the limit is crossed within a few polls even on a busy machine
      memory: () => { const keep: Buffer[] = []; for (;;) keep.push(Buffer.alloc(128 << 20, 1)); },
      'after a hang': () => {},
    };
    const names = Object.keys(behaviours);
    let current = 'ok';
    return {
      fixed: names.map((name) => ({ name, make: (): Mutant => { current = name; return { seed: 0, bytes: Buffer.from(name), desc: name }; } })),
      random: () => { throw new Error('no random cases'); },
      target: () => ({ file, names: [file] }),
      load: () => behaviours[current]!(),
    };
  },
};

export const FORMATS: Format[] = [safetensors, gguf, llama2c, configJson, adapterConfig, tokenizerJson, selftest];

export function formatByName(name: string): Format {
  const f = FORMATS.find((x) => x.name === name);
  if (!f) throw new Error(`unknown fuzz format ${name} (${FORMATS.map((x) => x.name).join(', ')})`);
  return f;
}

