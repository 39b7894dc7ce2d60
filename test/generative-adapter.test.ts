/**
 * Generative Adapter: the adapter contract (each adapter given a context); the generated LoRA
 * against the generative forward and against S computed by hand from the decoder layers' own
 * inputs (Frobenius and spectral norms, Llama and GPT-2's Conv1D layout); padding of contexts;
 * spectral-norm gradients against finite differences; the windowed reconstruction objective
 * against one forward per window with the adapter of its prefix; a short seeded reconstruction
 * training on stories260K through `adaptkit train`; `adaptkit generate --context` with
 * --save-lora against the same LoRA made in-process; bad input.
 */
import { describe, it, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as ak from '../src/index.js';
import { AdapterModel } from '../src/adapters/index.js';
import { Module } from '../src/nn/index.js';
import { loadAnyModel, loadModel } from '../src/models/load.js';
import { generate } from '../src/models/generate.js';
import { GENERATIVE_ADAPTER, type GenerativeAdapter, type GenerativeDelta } from '../src/adapters/methods/generative-adapter.js';
import { FIX, contractSuite, perturb, registryCases } from './contract.js';
import { assertClose } from './helpers.js';
import { runCli } from './cli-run.js';

const DATA = ak.dataDir();
const BIN = join(DATA, 'models', 'stories260K', 'stories260K.bin');
const TOK = join(DATA, 'models', 'stories260K', 'tok512.bin');
const tmp = mkdtempSync(join(tmpdir(), 'adaptkit-generative-'));
after(() => rmSync(tmp, { recursive: true, force: true }));

contractSuite(registryCases().filter((c) => c.config.peft_type === 'GENERATIVE_ADAPTER'));

const ids = (v: number[], rows = 1) => ak.tensor(v, [rows, v.length / rows], { dtype: 'i32' });
const CONTEXT = [1, 9, 27, 4, 11, 50, 8, 33, 3];
const PROMPT = ids([5, 17, 3, 44, 9, 1, 60, 2], 2);

function generator(model: 'llama-gqa' | 'gpt2', config: Record<string, unknown> = {}, seed = 1): { am: AdapterModel; inst: GenerativeAdapter } {
  const am = new AdapterModel(loadModel(join(FIX, model)).model);
  const inst = am.add('g', { peft_type: 'GENERATIVE_ADAPTER', r1: 5, r2: 3, alpha: 6, ...config }, { seed }) as GenerativeAdapter;
  perturb(am, seed + 10);
  return { am, inst };
}

const logitsOf = (am: AdapterModel, x = PROMPT) => ak.tidy(() => ak.noGrad(() => am.forward(x).toArray() as Float32Array));

/**
 * The inputs of every decoder layer of the base model over `x`, recorded by wrapping the layers'
 * own forward (independently of how the adapter captures them), as float64 rows [T][D].
 */
function layerInputs(am: AdapterModel, x: ak.Tensor): Float64Array[][] {
  const m = am.model as unknown as { model?: { layers: Module[] }; transformer?: { h: Module[] } };
  const layers = (m.model?.layers ?? m.transformer!.h) as unknown as { forward: (h: ak.Tensor, c: unknown) => ak.Tensor }[];
  const seen: Float64Array[][] = [];
  const originals = layers.map((l) => l.forward);
  layers.forEach((l, i) => {
    l.forward = (h, c) => {
      const [, T, D] = h.shape as [number, number, number];
      const a = h.toArray();
      seen[i] = Array.from({ length: T }, (_, t) => Float64Array.from(a.subarray(t * D, (t + 1) * D)));
      return originals[i]!.call(l, h, c);
    };
  });
  try {
    am.withoutAdapters(() => ak.noGrad(() => am.forward(x)));
  } finally {
    layers.forEach((l, i) => (l.forward = originals[i]!));
  }
  return seen;
}

const rowsOf = (t: ak.Tensor): Float64Array[] => {
  const [r, c] = t.shape as [number, number];
  const a = t.toArray();
  return Array.from({ length: r }, (_, i) => Float64Array.from(a.subarray(i * c, (i + 1) * c)));
};

/** S = Norm(Σ_t (A2 ĥ_t)(A3 ĥ_t)ᵀ) with ĥ = h / rms(h) · g, in plain loops. */
function handCore(d: GenerativeDelta, hs: Float64Array[], norm: 'frobenius' | 'spectral'): Float64Array[] {
  const A2 = rowsOf(d.generator_A2);
  const A3 = rowsOf(d.generator_A3);
  const g = d.generator_norm.toArray();
  const R1 = A2.length;
  const R2 = A3.length;
  const S = Array.from({ length: R1 }, () => new Float64Array(R2));
  for (const h of hs) {
    const D = h.length;
    let ms = 0;
    for (let i = 0; i < D; i++) ms += h[i]! * h[i]!;
    const inv = 1 / Math.sqrt(ms / D + 1e-6);
    const hn = Float64Array.from(h, (v, i) => v * inv * g[i]!);
    const dot = (w: Float64Array) => w.reduce((s, v, i) => s + v * hn[i]!, 0);
    const p = A2.map(dot);
    const q = A3.map(dot);
    for (let i = 0; i < R1; i++) for (let j = 0; j < R2; j++) S[i]![j]! += p[i]! * q[j]!;
  }
  let n = 0;
  if (norm === 'frobenius') {
    for (const row of S) for (const v of row) n += v * v;
    n = Math.sqrt(n);
  } else {
    // σ_max by power iteration on SᵀS
    let v = new Float64Array(R2).fill(1);
    for (let it = 0; it < 500; it++) {
      const u = S.map((row) => row.reduce((s, x, j) => s + x * v[j]!, 0));
      const w = new Float64Array(R2);
      for (let i = 0; i < R1; i++) for (let j = 0; j < R2; j++) w[j]! += S[i]![j]! * u[i]!;
      const len = Math.sqrt(w.reduce((s, x) => s + x * x, 0));
      v = Float64Array.from(w, (x) => x / len);
    }
    const u = S.map((row) => row.reduce((s, x, j) => s + x * v[j]!, 0));
    n = Math.sqrt(u.reduce((s, x) => s + x * x, 0));
  }
  return S.map((row) => Float64Array.from(row, (v) => v / n));
}

/** Add the generated LoRA to the model as adapter "lora" and make it the active one. */
function useGenerated(am: AdapterModel, made: { config: Record<string, unknown>; tensors: Map<string, ak.Tensor> }): ak.AdapterInstance {
  const lora = am.add('lora', made.config);
  lora.loadStateDict(made.tensors, 'generated');
  am.setActive(['lora']);
  return lora;
}

describe('Generative Adapter: the generated LoRA', () => {
  for (const [model, norm] of [['llama-gqa', 'frobenius'], ['llama-gqa', 'spectral'], ['gpt2', 'frobenius']] as const) {
    it(`${model}, ${norm}: lora_A = Sᵀ A1 with S from the decoder layers' inputs, and the LoRA's forward is the generative forward`, () => {
      ak.setBackend('js');
      const { am, inst } = generator(model, { core_norm: norm });
      const base = logitsOf(am);
      const made = inst.toLora(am, ids(CONTEXT));
      assert.equal(made.config.peft_type, 'LORA');
      assert.equal(made.config.r, 3);
      assert.equal(made.config.fan_in_fan_out, model === 'gpt2');
      const hs = layerInputs(am, ids(CONTEXT));
      for (const [path, d] of inst.deltas) {
        const S = handCore(d, hs[d.layer]!, norm);
        const A1 = rowsOf(d.generator_A1);
        const want = new Float32Array(3 * A1[0]!.length);
        for (let j = 0; j < 3; j++) for (let k = 0; k < A1[0]!.length; k++) want[j * A1[0]!.length + k] = S.reduce((s, row, i) => s + row[j]! * A1[i]![k]!, 0);
        assertClose(made.tensors.get(ak.peftKey(path, 'lora_A.weight'))!.toArray(), want, `${path} lora_A`, 1e-5, 1e-4);
        assert.deepEqual(made.tensors.get(ak.peftKey(path, 'lora_B.weight'))!.toArray(), d.generator_B.toArray());
      }
      const generative = logitsOf(am);
      assert.ok(generative.some((v, i) => Math.abs(v - base[i]!) > 1e-3), 'the generated adapter changes the output');
      useGenerated(am, made);
      assertClose(logitsOf(am), generative, `${model} LoRA vs generative forward`, 1e-5, 1e-5);
    });
  }

  it('without a context the generator is the base model, and going back to none restores it exactly', () => {
    ak.setBackend('js');
    const { am, inst } = generator('llama-gqa');
    const base = am.withoutAdapters(() => logitsOf(am));
    assert.deepEqual(logitsOf(am), base);
    inst.condition(am, ids(CONTEXT));
    assert.ok(logitsOf(am).some((v, i) => Math.abs(v - base[i]!) > 1e-3));
    inst.condition(am, null);
    assert.deepEqual(logitsOf(am), base);
  });

  it('padding of a context changes nothing: right-padded contexts, and one context per batch row', () => {
    ak.setBackend('js');
    const { am, inst } = generator('llama-gqa');
    const plain = inst.toLora(am, ids(CONTEXT)).tensors;
    const padded = inst.toLora(am, ids([...CONTEXT, 7, 7, 63]), ak.tensor([...CONTEXT.map(() => 1), 0, 0, 0], [1, CONTEXT.length + 3])).tensors;
    for (const [k, t] of plain) assertClose(padded.get(k)!.toArray(), t.toArray(), `padded ${k}`, 1e-6, 1e-5);
    // two contexts of different lengths in one batch, each row of the prompt with its own
    const short = [1, 40, 41, 42];
    const both = ids([...CONTEXT, ...short, 0, 0, 0, 0, 0], 2);
    const mask = ak.tensor([...CONTEXT.map(() => 1), 1, 1, 1, 1, 0, 0, 0, 0, 0], [2, CONTEXT.length]);
    inst.condition(am, both, mask);
    const batched = logitsOf(am);
    const per = batched.length / 2;
    [CONTEXT, short].forEach((c, row) => {
      inst.condition(am, ids(c));
      const alone = logitsOf(am, ak.narrow(PROMPT, 0, row, 1));
      assertClose(batched.subarray(row * per, (row + 1) * per), alone, `row ${row}`, 1e-5, 1e-5);
    });
  });

  it('the spectral core\'s gradients match finite differences', () => {
    ak.setBackend('js');
    const { am, inst } = generator('llama-gqa', { core_norm: 'spectral' });
    inst.condition(am, ids(CONTEXT));
    const R = ak.randn([2, 4, 64], { rng: new ak.Rng(5) });
    const objective = () => ak.tidy(() => ak.sum(ak.mul(am.forward(PROMPT), R)).item());
    ak.tidy(() => ak.sum(ak.mul(am.forward(PROMPT), R)).backward());
    const d = [...inst.deltas.values()][0]!;
    for (const p of [d.generator_A2, d.generator_A3, d.generator_norm]) {
      const g = p.grad!.toArray();
      const data = p.storage.data as Float32Array;
      for (const j of [0, Math.floor(p.size / 3), p.size - 1]) {
        const orig = data[p.offset + j]!;
        const h = 1e-2;
        data[p.offset + j] = orig + h;
        const up = ak.noGrad(objective);
        data[p.offset + j] = orig - h;
        const down = ak.noGrad(objective);
        data[p.offset + j] = orig;
        const fd = (up - down) / (2 * h);
        assert.ok(Math.abs(fd - g[j]!) <= 2e-2 + 2e-2 * Math.abs(g[j]!), `${p.name}[${j}]: autodiff ${g[j]} vs finite differences ${fd}`);
      }
    }
  });
});

describe('Generative Adapter: reconstruction training', () => {
  it('the objective is the next-token loss of the windows of text ⊕ copy, each run with the adapter of everything before it', () => {
    ak.setBackend('js');
    const { am, inst } = generator('llama-gqa', { window: 4 });
    const texts = [[1, 12, 13, 14, 15, 16], [1, 20, 21]];
    const T = 6;
    const batch = ids([...texts[0]!, ...texts[1]!, 0, 0, 0], 2);
    const mask = ak.tensor([1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0], [2, T]);
    const got = ak.training(() => ak.tidy(() => inst.objective({ logits: () => assert.fail('unused'), loss: () => assert.fail('unused'), ids: batch, mask }).item()));
    // the windows by hand: text 0 (6 tokens) ⊕ copy is cut at 0, 4 | 6, 10; text 1 (3) at 0 | 3
    let nll = 0;
    let count = 0;
    for (const [t, starts] of [[texts[0]!, [4, 6, 10]], [texts[1]!, [3]]] as const) {
      const seq = [...t, ...t];
      const ends = (s: number) => (s < t.length ? Math.min(s + 4, t.length) : Math.min(s + 4, 2 * t.length));
      for (const s of starts) {
        const win = seq.slice(s, ends(s));
        inst.condition(am, ids(seq.slice(0, s)));
        const lp = ak.tidy(() => ak.noGrad(() => ak.logSoftmax(am.forward(ids(win))).toArray()));
        for (let p = 0; p + 1 < win.length; p++) {
          nll -= lp[p * 64 + win[p + 1]!]!;
          count++;
        }
      }
    }
    assertClose([got], [nll / count], 'objective', 1e-5, 1e-5);
  });

  it('gradient checkpointing recomputes the windows with the same contexts', () => {
    ak.setBackend('js');
    const grads = (checkpointing: boolean) => {
      const { am, inst } = generator('llama-gqa', { window: 3 });
      (am.model as unknown as { gradientCheckpointing: boolean }).gradientCheckpointing = checkpointing;
      ak.training(() => ak.tidy(() => inst.objective({ logits: () => assert.fail('unused'), loss: () => assert.fail('unused'), ids: ids([1, 5, 6, 7, 8, 9, 10, 11], 1) }).backward()));
      return inst.parameters().map((p) => Array.from(p.grad!.toArray()));
    };
    const plain = grads(false);
    grads(true).forEach((g, i) => assertClose(g, plain[i]!, `gradient ${i}`, 1e-6, 1e-5));
  });

  it('adaptkit train on GSM8K questions: the adapter generated from a question lowers the NLL of its copy, more than one generated from another question', async () => {
    ak.setBackend(ak.nativeBackend() ? 'native' : 'js');
    const questions = readFileSync(join(DATA, 'datasets', 'gsm8k', 'train.jsonl'), 'utf8').trim().split('\n').map((l) => (JSON.parse(l) as { question: string }).question);
    const data = join(tmp, 'questions.jsonl');
    writeFileSync(data, questions.slice(0, 1200).map((q) => JSON.stringify({ text: q })).join('\n'));
    const run = join(tmp, 'run');
    const r = await runCli('train', '--model', BIN, '--tokenizer', TOK, '--data', data, '--method', 'generative-adapter', '--steps', '150', '--batch-size', '8',
      '--lr', '1e-2', '--seq-len', '32', '--val-split', '0', '--checkpoint-every', '0', '--seed', '1', '--out', run);
    assert.equal(r.code, 0, r.err);
    const am = new AdapterModel(ak.loadModel(BIN).model);
    const tok = ak.loadTokenizer(BIN, TOK, 512);
    const inst = am.load(join(run, 'adapter'), 'g');
    assert.equal(inst.method, GENERATIVE_ADAPTER);
    const held = questions.slice(1200, 1240).map((q) => tok.encode(q, { bos: true }).slice(0, 32));
    const nll = { base: 0, own: 0, other: 0, tokens: 0 };
    held.forEach((q, i) => {
      const x = ids(q);
      const target = ak.tensor([...q.slice(1), -100], [1, q.length], { dtype: 'i32' });
      const score = () => ak.tidy(() => ak.noGrad(() => ak.crossEntropy(am.forward(x), target, { reduction: 'sum' }).item()));
      inst.condition!(am, null);
      nll.base += score();
      inst.condition!(am, x);
      nll.own += score();
      inst.condition!(am, ids(held[(i + 1) % held.length]!));
      nll.other += score();
      nll.tokens += q.length - 1;
    });
    const [base, own, other] = [nll.base, nll.own, nll.other].map((v) => v / nll.tokens);
    assert.ok(own < base - 0.3, `copy NLL with the generated adapter ${own} vs without ${base}`);
    assert.ok(own < other - 0.03, `copy NLL with its own context ${own} vs another question's ${other}`);
  });
});

describe('Generative Adapter: adaptkit generate --context', () => {
  const genDir = join(tmp, 'generator');
  const contextFile = join(tmp, 'context.txt');
  const context = 'Tim had a big red ball. He liked to play with it in the park every day.';

  it('saves the generated LoRA, which loads as a LoRA and generates what the same LoRA made in-process generates', async () => {
    ak.setBackend(ak.nativeBackend() ? 'native' : 'js');
    {
      const am = new AdapterModel(ak.loadModel(BIN).model);
      am.add('g', { peft_type: 'GENERATIVE_ADAPTER', r1: 8, r2: 8, alpha: 64 }, { seed: 4 });
      // B at zero generates nothing; move every tensor so the generated LoRA changes the text
      const rng = new ak.Rng(9);
      ak.noGrad(() => {
        for (const p of am.trainableParameters()) {
          const a = p.storage.data as Float32Array;
          for (let j = 0; j < p.size; j++) a[p.offset + j]! += rng.normal() * 0.5;
        }
      });
      am.save(genDir, 'g');
    }
    writeFileSync(contextFile, `${context}\n`);
    const loraDir = join(tmp, 'generated-lora');
    const prompt = 'Once upon a time';
    const cli = await runCli('generate', '--model', BIN, '--tokenizer', TOK, '--adapter', genDir, '--context', contextFile, '--save-lora', loraDir, '--prompt', prompt, '--max-tokens', '24');
    assert.equal(cli.code, 0, cli.err);
    const saved = JSON.parse(readFileSync(join(loraDir, 'adapter_config.json'), 'utf8')) as Record<string, unknown>;
    assert.equal(saved.peft_type, 'LORA');
    const tok = ak.loadTokenizer(BIN, TOK, 512);
    const greedy = (am: AdapterModel) => prompt + generate(am, tok, tok.encode(prompt, { bos: true }), { maxTokens: 24, temperature: 0 }).text + '\n';
    const loaded = new AdapterModel(ak.loadModel(BIN).model);
    assert.equal(loaded.load(loraDir).method.peftType, 'LORA');
    assert.equal(cli.out, greedy(loaded));
    // the same LoRA generated in-process from the file's text
    const am = new AdapterModel(ak.loadModel(BIN).model);
    const gen = am.load(genDir, 'g') as GenerativeAdapter;
    const made = ak.tidy(() => gen.toLora(am, ids(tok.encode(context, { bos: true }))));
    useGenerated(am, made);
    assert.equal(greedy(am), cli.out);
    assert.notEqual(cli.out, greedy(new AdapterModel(ak.loadModel(BIN).model)), 'the generated adapter changes the text');
  });

  it('bad input is named: missing or empty context files, --context without a generator, --save-lora without --context', async () => {
    const base = ['generate', '--model', BIN, '--tokenizer', TOK, '--prompt', 'Hi', '--max-tokens', '2'];
    const missing = await runCli(...base, '--adapter', genDir, '--context', join(tmp, 'nope.txt'));
    assert.equal(missing.code, 1);
    assert.match(missing.err, /nope\.txt: no context file/);
    const empty = join(tmp, 'empty.txt');
    writeFileSync(empty, ' \n');
    assert.match((await runCli(...base, '--adapter', genDir, '--context', empty)).err, /empty\.txt: the file is empty/);
    assert.match((await runCli(...base, '--context', contextFile)).err, /--context needs --adapter/);
    const loraDir = join(tmp, 'generated-lora');
    assert.match((await runCli(...base, '--adapter', loraDir, '--context', contextFile)).err, /--adapter \(LORA\) does not generate adapters from a context/);
    assert.match((await runCli(...base, '--save-lora', join(tmp, 'x'))).err, /--save-lora saves the adapter generated from --context/);
    // a generator without a context runs the base model, and says so
    const bare = await runCli(...base, '--adapter', genDir);
    assert.equal(bare.code, 0);
    assert.match(bare.err, /without --context it leaves the model unchanged/);
  });
});

describe('Generative Adapter: bad input', () => {
  it('empty and all-padding contexts, a mask of another shape, no context to generate from, several contexts for one LoRA', () => {
    ak.setBackend('js');
    const { am, inst } = generator('llama-gqa');
    assert.throws(() => inst.condition(am, ak.tensor([], [1, 0], { dtype: 'i32' })), /the context is empty/);
    assert.throws(() => inst.condition(am, ids([3, 4]), ak.tensor([0, 0], [1, 2])), /context row 0 is all padding/);
    assert.throws(() => inst.condition(am, ids([3, 4]), ak.tensor([1, 1, 1], [1, 3])), /the context mask is \[1, 3\], the context ids \[1, 2\]/);
    assert.throws(() => inst.generated(), /has no context to generate an adapter from/);
    inst.condition(am, ids([3, 4, 5, 6], 2));
    assert.throws(() => inst.generated(), /holds 2 contexts; one adapter is generated from one context/);
    assert.throws(() => logitsOf(am, ids([1, 2, 3])), /2 contexts for a batch of 1 rows/);
    assert.throws(() => ak.training(() => inst.objective({ logits: () => assert.fail(), loss: () => assert.fail() })), /trains on the batch's token ids/);
  });

  it('config errors name the key; a model that publishes no block input norm is refused by role', () => {
    const am = new AdapterModel(loadModel(join(FIX, 'llama-gqa')).model);
    assert.throws(() => am.add('a', { peft_type: 'GENERATIVE_ADAPTER', core_norm: 'svd' }), /"core_norm" must be one of "frobenius", "spectral", got "svd"/);
    assert.throws(() => am.add('b', { peft_type: 'GENERATIVE_ADAPTER', r1: 0 }), /"r1" must be a number >= 1/);
    assert.throws(() => am.add('c', { peft_type: 'GENERATIVE_ADAPTER', window: 1 }), /"window" must be a number >= 2/);
    assert.throws(() => am.add('d', { peft_type: 'GENERATIVE_ADAPTER', r3: 4 }), /does not read "r3"/);
    assert.throws(() => am.add('e', { peft_type: 'GENERATIVE_ADAPTER', target_modules: ['input_layernorm'] }), /targets linear layers; "model.layers.0.input_layernorm" is not one/);
    const bert = new AdapterModel(loadAnyModel(join(FIX, 'bert')).model);
    assert.throws(() => bert.add('g', { peft_type: 'GENERATIVE_ADAPTER' }), /the bert model publishes none \(adapter descriptor role "block.input_norm"\)/);
  });
});
