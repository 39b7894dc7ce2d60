/**
 * IAPT: the adapter contract; each layer's soft keys/values against a plain-loop computation of
 * the generator (down-projection, query pooling over the instruction, rational activation,
 * up-projection) and of the layer's own key/value projections, from the layer input the model
 * gave the hook; the same keys/values fed through prefix tuning give the same model output;
 * pooling sees only the instruction (response tokens and padding change nothing); cached decode
 * equals a full recompute with the prompt length, in the library, through `generate` and the
 * CLI, and for caches whose rows are rearranged; a new adapter's tokens are zero yet change the
 * output; bad input fails by name.
 */
import { describe, it, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as ak from '../src/index.js';
import { AdapterModel } from '../src/adapters/index.js';
import { type KVPrefixHook, type KVPrefixStep, describeModel } from '../src/nn/index.js';
import { loadAnyModel, loadModel } from '../src/models/load.js';
import { main } from '../src/cli/main.js';
import { Engine } from '../src/serve/engine.js';
import '../src/adapters/methods/iapt.js';
import { FIX, contractSuite, perturb, registryCases } from './contract.js';
import { assertClose } from './helpers.js';

contractSuite(registryCases().filter((c) => c.config.peft_type === 'IAPT'));

const tmp = mkdtempSync(join(tmpdir(), 'adaptkit-iapt-'));
after(() => rmSync(tmp, { recursive: true, force: true }));

const P = 3;
const M = 5;

function fixture(model: string, config: Record<string, unknown> = {}, seed = 4): AdapterModel {
  const am = new AdapterModel(loadModel(join(FIX, model)).model);
  am.add('a', { peft_type: 'IAPT', num_virtual_tokens: P, bottleneck_size: M, ...config }, { seed: 1 });
  perturb(am, seed);
  return am;
}

const ids = (rows: number[][]) => ak.tensor(rows.flat(), [rows.length, rows[0]!.length], { dtype: 'i32' });

interface Seen {
  x: Float32Array;
  xShape: number[];
  keyMask: Float32Array | null;
  k: Float32Array;
  v: Float32Array;
  kShape: number[];
}

/** Run fn and record, per attention layer, what the model gave the kv_prefix hook and what it returned. */
function watch<T>(am: AdapterModel, fn: () => T): { out: T; seen: Seen[] } {
  const slots = describeModel(am.model).attention!.layers.map((l) => `${l.path}.kv_prefix`);
  const seen: Seen[] = [];
  const hooks = slots.map((s) => am.model.get(s) as unknown as KVPrefixHook);
  hooks.forEach((hook, l) => {
    const orig = hook.prefix;
    hook.prefix = (layer: number, batch: number, step: KVPrefixStep) => {
      const r = orig.call(hook, layer, batch, step);
      seen[l] = {
        x: step.x.toArray() as Float32Array, xShape: [...step.x.shape], keyMask: step.keyMask ? (step.keyMask.toArray() as Float32Array) : null,
        k: r.k.toArray() as Float32Array, v: r.v.toArray() as Float32Array, kShape: [...r.k.shape],
      };
      return r;
    };
  });
  try {
    return { out: ak.tidy(() => ak.noGrad(fn)), seen };
  } finally {
    for (const h of hooks) delete (h as unknown as Record<string, unknown>).prefix;
  }
}

const values = (am: AdapterModel, key: string) => am.adapters.get('a')!.stateDict().get(`base_model.model.${key}`)!.toArray() as Float32Array;

/** The generator and the layer's key/value projections in plain loops, for one row. */
function handKV(am: AdapterModel, layer: number, x: Float32Array, row: number, T: number, instruction: boolean[]): { k: number[][][]; v: number[][][] } {
  const d = describeModel(am.model);
  const attn = d.attention!.layers[layer]!.path;
  const H = d.embedding.dim;
  const { kvHeads, headDim } = d.attention!;
  const g = (k: string) => values(am, `${attn}.iapt.${k}`);
  const [Wd, bd, Q, a, b, Wu, bu] = ['down.weight', 'down.bias', 'queries', 'numerator', 'denominator', 'up.weight', 'up.bias'].map(g) as Float32Array[];
  const xs = (t: number, j: number) => x[(row * T + t) * H + j]!;
  const z = Array.from({ length: T }, (_, t) => Array.from({ length: M }, (_, i) => {
    let s = bd![i]!;
    for (let j = 0; j < H; j++) s += Wd![i * H + j]! * xs(t, j);
    return s;
  }));
  const phi = (u: number) => (a![0]! + a![1]! * u + a![2]! * u * u + a![3]! * u ** 3) / Math.sqrt(1 + (b![0]! * u + b![1]! * u * u) ** 2);
  const soft: number[][] = [];
  for (let p = 0; p < P; p++) {
    const ts = [...Array(T).keys()].filter((t) => instruction[t]);
    const sc = ts.map((t) => z[t]!.reduce((s, zi, i) => s + Q![p * M + i]! * zi, 0) / Math.sqrt(M));
    const mx = Math.max(...sc);
    const e = sc.map((s) => Math.exp(s - mx));
    const tot = e.reduce((s, v) => s + v, 0);
    const u = Array.from({ length: M }, (_, i) => ts.reduce((s, t, n) => s + (e[n]! / tot) * z[t]![i]!, 0));
    const f = u.map(phi);
    soft.push(Array.from({ length: H }, (_, o) => f.reduce((s, fi, i) => s + Wu![o * M + i]! * fi, bu![o]!)));
  }
  // the layer's own projections, read from the base weights
  const W = d.family === 'gpt2'
    ? (() => {
      const c = am.model.get(`${attn}.c_attn`) as unknown as { weight: ak.Tensor; bias: ak.Tensor };
      const w = c.weight.toArray() as Float32Array;
      const bias = c.bias.toArray() as Float32Array;
      // Conv1D [in, 3H]: keys are columns H..2H, values 2H..3H
      return (which: 1 | 2, o: number, j: number) => (j < 0 ? bias[which * H + o]! : w[j * 3 * H + which * H + o]!);
    })()
    : (() => {
      const lin = (n: string) => am.model.get(`${attn}.${n}`) as unknown as { weight: ak.Tensor; bias: ak.Tensor | null };
      const [wk, wv] = [lin('k_proj'), lin('v_proj')].map((l) => ({ w: l.weight.toArray() as Float32Array, b: l.bias ? (l.bias.toArray() as Float32Array) : null }));
      return (which: 1 | 2, o: number, j: number) => {
        const m = which === 1 ? wk! : wv!;
        return j < 0 ? (m.b ? m.b[o]! : 0) : m.w[o * H + j]!;
      };
    })();
  const proj = (which: 1 | 2) => Array.from({ length: kvHeads }, (_, h) => soft.map((s) => Array.from({ length: headDim }, (_, e) => {
    const o = h * headDim + e;
    return s.reduce((acc, sj, j) => acc + W(which, o, j) * sj, W(which, o, -1));
  })));
  return { k: proj(1), v: proj(2) };
}

function rowOf(t: Float32Array, shape: number[], row: number): Float32Array {
  const n = shape.slice(1).reduce((a, b) => a * b, 1);
  return t.subarray(row * n, (row + 1) * n);
}

describe('IAPT: the generator', () => {
  for (const model of ['llama-gqa', 'qwen2-bias', 'gpt2']) {
    it(`${model}: every layer's soft keys/values equal a plain-loop generator and projection of the layer input`, () => {
      const am = fixture(model);
      const lengths = [3, 5];
      const mask = ak.tensor([1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0], [2, 6]);
      const { seen } = watch(am, () => am.forward(ids([[5, 17, 3, 44, 9, 1], [60, 2, 7, 8, 30, 30]]), { promptLengths: lengths, attentionMask: mask }));
      const layers = describeModel(am.model).attention!.layers.length;
      assert.equal(seen.filter(Boolean).length, layers);
      for (let l = 0; l < layers; l++) {
        const s = seen[l]!;
        for (let r = 0; r < 2; r++) {
          const inst = Array.from({ length: 6 }, (_, t) => t < lengths[r]! && mask.toArray()[r * 6 + t] === 1);
          const hand = handKV(am, l, s.x, r, 6, inst);
          assertClose(rowOf(s.k, s.kShape, r), hand.k.flat(2), `${model} layer ${l} row ${r} keys`, 1e-5, 1e-4);
          assertClose(rowOf(s.v, s.kShape, r), hand.v.flat(2), `${model} layer ${l} row ${r} values`, 1e-5, 1e-4);
        }
      }
    });
  }

  it('the generated keys/values put into a prefix-tuning table give the same model output', () => {
    for (const model of ['llama-gqa', 'gpt2']) {
      const am = fixture(model);
      const row = [[5, 17, 3, 44, 9, 1, 60]];
      const { out, seen } = watch(am, () => am.forward(ids(row), { promptLengths: [4] }).toArray() as Float32Array);
      const d = describeModel(am.model);
      const { kvHeads: Hk, headDim: D } = d.attention!;
      const L = d.attention!.layers.length;
      const inst = am.add('p', { peft_type: 'PREFIX_TUNING', num_virtual_tokens: P });
      // PEFT's table: [P, L·2·Hk·D], per layer keys then values, head-major
      const table = new Float32Array(P * L * 2 * Hk * D);
      for (let l = 0; l < L; l++) {
        for (const [w, src] of [[0, seen[l]!.k], [1, seen[l]!.v]] as const) {
          for (let h = 0; h < Hk; h++) for (let p = 0; p < P; p++) for (let e = 0; e < D; e++) {
            table[p * L * 2 * Hk * D + ((2 * l + w) * Hk + h) * D + e] = src[(h * P + p) * D + e]!;
          }
        }
      }
      ((inst as unknown as { prompt: ak.Tensor }).prompt.storage.data as Float32Array).set(table);
      am.setActive(['p']);
      const viaPrefix = ak.tidy(() => ak.noGrad(() => am.forward(ids(row)).toArray() as Float32Array));
      assertClose(viaPrefix, out, `${model}: IAPT vs prefix tuning with its keys`, 1e-5, 1e-4);
    }
  });

  it('a new adapter generates zero tokens for every input and still changes the output (startsAsIdentity false)', () => {
    const am = new AdapterModel(loadModel(join(FIX, 'llama-gqa')).model);
    const input = ids([[5, 17, 3, 44]]);
    const base = ak.tidy(() => ak.noGrad(() => am.forward(input).toArray() as Float32Array));
    am.add('a', { peft_type: 'IAPT' }, { seed: 1 });
    assert.equal(ak.getMethod('IAPT').startsAsIdentity, false);
    const { out, seen } = watch(am, () => am.forward(input).toArray() as Float32Array);
    // llama projections have no bias: zero tokens give zero keys and values
    for (const s of seen) assert.ok(s.k.every((v) => v === 0) && s.v.every((v) => v === 0));
    assert.ok(out.some((v, i) => Math.abs(v - base[i]!) > 1e-4), 'zero keys still take attention weight');
  });
});

describe('IAPT: pooling sees only the instruction', () => {
  const softOf = (am: AdapterModel, rows: number[][], opts: { promptLengths?: number[]; attentionMask?: ak.Tensor }) => {
    const { out, seen } = watch(am, () => am.forward(ids(rows), opts).toArray() as Float32Array);
    return { logits: out, kv: seen.map((s) => [...s.k, ...s.v]) };
  };

  it('tokens after the prompt length change no soft token and no prompt-position output; a prompt token does', () => {
    for (const model of ['llama-gqa', 'gpt2']) {
      const am = fixture(model);
      const lengths = [3, 5];
      const a = softOf(am, [[5, 17, 3, 44, 9, 1], [60, 2, 7, 8, 30, 12]], { promptLengths: lengths });
      const b = softOf(am, [[5, 17, 3, 11, 22, 33], [60, 2, 7, 8, 30, 50]], { promptLengths: lengths });
      assert.deepEqual(b.kv, a.kv, `${model}: response tokens leave the soft tokens alone`);
      const V = a.logits.length / 12;
      for (const [r, n] of lengths.entries()) {
        const at = (l: Float32Array) => l.subarray(r * 6 * V, (r * 6 + n) * V);
        assert.deepEqual(at(b.logits), at(a.logits), `${model} row ${r}: the prompt's own outputs do not see the response`);
      }
      const c = softOf(am, [[5, 18, 3, 44, 9, 1], [60, 2, 7, 8, 30, 12]], { promptLengths: lengths });
      assert.ok(c.kv[0]!.some((v, i) => Math.abs(v - a.kv[0]![i]!) > 1e-6), `${model}: a prompt token changes the soft tokens`);
      // without prompt lengths the whole forward is the instruction
      const whole = softOf(am, [[5, 17, 3, 44, 9, 1], [60, 2, 7, 8, 30, 12]], {});
      assert.ok(whole.kv[0]!.some((v, i) => Math.abs(v - a.kv[0]![i]!) > 1e-6));
    }
  });

  it('padding is not pooled over', () => {
    const am = fixture('llama-gqa');
    const mask = ak.tensor([1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0], [2, 6]);
    const a = softOf(am, [[5, 17, 3, 44, 9, 1], [60, 2, 0, 0, 0, 0]], { attentionMask: mask });
    const b = softOf(am, [[5, 17, 3, 44, 9, 1], [60, 2, 9, 40, 33, 7]], { attentionMask: mask });
    assert.deepEqual(b.kv, a.kv);
    const c = softOf(am, [[5, 17, 3, 44, 9, 1], [60, 3, 0, 0, 0, 0]], { attentionMask: mask });
    assert.ok(c.kv[0]!.some((v, i) => Math.abs(v - a.kv[0]![i]!) > 1e-6));
  });
});

/** Greedy tokens by full forwards over prompt + generated, with the prompt length given. */
function fullGreedy(am: AdapterModel, prompt: number[], n: number, stops: ReadonlySet<number> = new Set()): { tokens: number[]; logits: Float32Array[] } {
  const seq = [...prompt];
  const logits: Float32Array[] = [];
  while (seq.length - prompt.length < n) {
    const last = ak.tidy(() => ak.noGrad(() => {
      const l = am.forward(ids([seq]), { promptLengths: [prompt.length] });
      return ak.narrow(l, 1, seq.length - 1, 1).toArray() as Float32Array;
    }));
    let best = 0;
    for (let i = 1; i < last.length; i++) if (last[i]! > last[best]!) best = i;
    if (stops.has(best)) break;
    logits.push(last);
    seq.push(best);
  }
  return { tokens: seq.slice(prompt.length), logits };
}

/** Greedy tokens with a KV cache: the prompt once, then one token per forward. */
function cachedGreedy(am: AdapterModel, prompt: number[], n: number): { tokens: number[]; logits: Float32Array[] } {
  const cache = am.newCache();
  const out: number[] = [];
  const logits: Float32Array[] = [];
  try {
    let next = prompt;
    while (out.length < n) {
      const last = ak.tidy(() => ak.noGrad(() => {
        const l = am.forward(ids([next]), { cache });
        return ak.narrow(l, 1, next.length - 1, 1).toArray() as Float32Array;
      }));
      let best = 0;
      for (let i = 1; i < last.length; i++) if (last[i]! > last[best]!) best = i;
      logits.push(last);
      out.push(best);
      next = [best];
    }
  } finally {
    cache.dispose();
  }
  return { tokens: out, logits };
}

describe('IAPT: generation with a KV cache', () => {
  for (const model of ['llama-gqa', 'gpt2']) {
    it(`${model}: cached greedy decode equals full recomputation with the prompt length`, () => {
      const am = fixture(model, {}, 9);
      const prompt = [5, 17, 3, 44, 9];
      const cached = cachedGreedy(am, prompt, 8);
      const full = fullGreedy(am, prompt, 8);
      assert.deepEqual(cached.tokens, full.tokens);
      cached.logits.forEach((l, i) => assertClose(l, full.logits[i]!, `${model} step ${i}`, 1e-4, 1e-4));
      const base = am.withoutAdapters(() => cachedGreedy(am, prompt, 1));
      assert.ok(base.logits[0]!.some((v, i) => Math.abs(v - cached.logits[0]![i]!) > 1e-3), 'the adapter changes the decode');
    });
  }

  it('stories260K: `generate` and `adaptkit generate --adapter` with a saved IAPT adapter equal full recomputation', async () => {
    const D = join(ak.dataDir(), 'models', 'stories260K');
    const MODEL = join(D, 'stories260K.bin');
    const TOK = join(D, 'tok512.bin');
    const trained = new AdapterModel(ak.loadModel(MODEL).model);
    trained.add('a', { peft_type: 'IAPT' }, { seed: 3 });
    const rng = new ak.Rng(11);
    ak.noGrad(() => {
      for (const t of trained.trainableParameters()) {
        const a = t.storage.data as Float32Array;
        for (let j = 0; j < t.size; j++) a[t.offset + j]! += 0.3 * rng.normal();
      }
    });
    const dir = join(tmp, 'stories-iapt');
    trained.save(dir, 'a');
    const am = new AdapterModel(ak.loadModel(MODEL).model);
    am.load(dir);
    const tok = ak.loadTokenizer(MODEL, TOK, 512);
    const PROMPT = 'Once upon a time';
    const prompt = tok.encode(PROMPT, { bos: true });
    const lib = ak.generate(am, tok, prompt, { maxTokens: 16 });
    const full = fullGreedy(am, prompt, 16, new Set(ak.stopTokensOf(tok)));
    assert.deepEqual(lib.tokens, full.tokens);
    const base = ak.generate(new AdapterModel(ak.loadModel(MODEL).model), tok, prompt, { maxTokens: 16 });
    assert.notDeepEqual(lib.tokens, base.tokens, 'the adapter changes what is generated');
    let printed = '';
    const write = process.stdout.write.bind(process.stdout);
    process.stdout.write = ((s: string | Uint8Array) => ((printed += String(s)), true)) as typeof process.stdout.write;
    try {
      const code = await main(['node', 'adaptkit', 'generate', '--model', MODEL, '--tokenizer', TOK, '--prompt', PROMPT, '--max-tokens', '16', '--adapter', dir]);
      assert.equal(code, 0);
    } finally {
      process.stdout.write = write;
    }
    assert.equal(printed, `${PROMPT}${lib.text}\n`);
  });

  /** A cache whose rows can be repeated (continuations of one prompt), naming its rows' sequences. */
  class RowsCache {
    length = 0;
    k: ak.Tensor[] = [];
    v: ak.Tensor[] = [];
    constructor(readonly seqs?: readonly object[]) {}
    append(layer: number, k: ak.Tensor, v: ak.Tensor): { k: ak.Tensor; v: ak.Tensor } {
      const pk = this.k[layer];
      const pv = this.v[layer];
      this.k[layer] = (pk ? ak.concat([pk, k], 2) : k).keep();
      this.v[layer] = (pv ? ak.concat([pv, v], 2) : v).keep();
      return { k: this.k[layer]!, v: this.v[layer]! };
    }
    repeat(rows: number[], named: boolean): RowsCache {
      const c = new RowsCache(named ? rows.map((r) => this.seqs![r]!) : undefined);
      c.length = this.length;
      const idx = ak.tensor(rows, [rows.length], { dtype: 'i32' });
      c.k = this.k.map((t) => ak.indexSelect(t, 0, idx).keep());
      c.v = this.v.map((t) => ak.indexSelect(t, 0, idx).keep());
      return c;
    }
  }

  it('a cache that names its rows\' sequences may rearrange them between forwards; one that does not is refused', () => {
    const am = fixture('llama-gqa', {}, 12);
    const prompts = [[5, 17, 3, 44], [9, 1, 60, 2]];
    const cache = new RowsCache([{}, {}]);
    ak.tidy(() => ak.noGrad(() => am.forward(ids(prompts), { cache })));
    assert.equal(cache.length, 4);
    const order = [1, 0, 1];
    const next = [7, 8, 9];
    const decode = (c: RowsCache) => ak.tidy(() => ak.noGrad(() => am.forward(ak.tensor(next, [3, 1], { dtype: 'i32' }), { cache: c }).toArray() as Float32Array));
    const got = decode(cache.repeat(order, true));
    const V = got.length / 3;
    order.forEach((r, i) => {
      const full = ak.tidy(() => ak.noGrad(() => {
        const l = am.forward(ids([[...prompts[r]!, next[i]!]]), { promptLengths: [4] });
        return ak.narrow(l, 1, 4, 1).toArray() as Float32Array;
      }));
      assertClose(got.subarray(i * V, (i + 1) * V), full, `continuation ${i} of prompt ${r}`, 1e-4, 1e-4);
    });
    assert.throws(() => decode(cache.repeat(order, false)), /IAPT adapter "a": this forward continues 3 cached sequence\(s\) \(4 positions\) whose prompts this adapter did not see/);
  });

  it('a named sequence run again from its start (a recompute) keeps the soft tokens of its prompt', () => {
    const am = fixture('llama-gqa', {}, 12);
    const seq = {};
    const prompt = [5, 17, 3, 44];
    ak.tidy(() => ak.noGrad(() => am.forward(ids([prompt]), { cache: new RowsCache([seq]) })));
    const again = [...prompt, 9, 1];
    const last = (l: ak.Tensor) => ak.narrow(l, 1, again.length - 1, 1).toArray() as Float32Array;
    const recomputed = ak.tidy(() => ak.noGrad(() => last(am.forward(ids([again]), { cache: new RowsCache([seq]) }))));
    const full = ak.tidy(() => ak.noGrad(() => last(am.forward(ids([again]), { promptLengths: [prompt.length] }))));
    assertClose(recomputed, full, 'recompute of a named sequence', 1e-5, 1e-4);
    // an unnamed cache starts a new sequence: everything it is given is the instruction
    const fresh = ak.tidy(() => ak.noGrad(() => last(am.forward(ids([again]), { cache: new RowsCache() }))));
    const whole = ak.tidy(() => ak.noGrad(() => last(am.forward(ids([again])))));
    assertClose(fresh, whole, 'a new sequence', 1e-5, 1e-4);
    assert.ok(fresh.some((v, i) => Math.abs(v - full[i]!) > 1e-4));
  });

  it('the serving engine (per-step caches naming their sequences) batches, preempts and still equals `generate`', () => {
    const D = join(ak.dataDir(), 'models', 'stories260K');
    const bin = join(D, 'stories260K.bin');
    const tok = ak.loadTokenizer(bin, join(D, 'tok512.bin'), 512);
    const dir = join(tmp, 'served');
    const am = new AdapterModel(ak.loadModel(bin).model);
    am.add('ia', { peft_type: 'IAPT' }, { seed: 3 });
    const rng = new ak.Rng(11);
    ak.noGrad(() => {
      for (const t of am.trainableParameters()) {
        const a = t.storage.data as Float32Array;
        for (let j = 0; j < t.size; j++) a[t.offset + j]! += 0.3 * rng.normal();
      }
    });
    am.save(join(dir, 'ia'), 'ia');
    const reqs = ['Once upon a time', 'Lily saw', 'The dog', 'One day'].map((p, i) => ({
      id: String(i), promptIds: tok.encode(p, { bos: true }), adapter: i === 3 ? null : 'ia', maxTokens: 40, temperature: 0,
    }));
    // 0.06 MiB holds 6 blocks of 8 positions: the four sequences do not fit at once
    const engine = new Engine(ak.loadModel(bin).model as never, tok, { maxBatch: 4, kvCacheMb: 0.06, blockSize: 8, maxLoadedAdapters: 2, maxRank: 8, maxQueue: 8, contextLength: 256, adapterDir: dir });
    const served: Record<string, string> = {};
    for (const r of reqs) engine.submit(r, () => {}, (d) => (served[d.id] = d.text), (e) => { throw e; });
    while (!engine.idle) engine.step();
    assert.ok(engine.metrics().preemptions > 0, 'some sequences were preempted and recomputed');
    const lib = new AdapterModel(ak.loadModel(bin).model);
    lib.load(join(dir, 'ia'));
    for (const r of reqs) {
      const g = r.adapter ? ak.generate(lib, tok, r.promptIds, { maxTokens: 40 }) : lib.withoutAdapters(() => ak.generate(lib, tok, r.promptIds, { maxTokens: 40 }));
      assert.equal(served[r.id], g.text, `request ${r.id}`);
    }
  });
});

describe('IAPT: bad input', () => {
  const input = ids([[5, 17, 3, 44, 9, 1], [60, 2, 7, 8, 30, 12]]);
  const run = (am: AdapterModel, promptLengths: number[]) => ak.tidy(() => ak.noGrad(() => am.forward(input, { promptLengths })));

  it('prompt lengths outside the sequence, or not one per row, are refused', () => {
    const am = fixture('llama-gqa');
    assert.throws(() => run(am, [3, 7]), /IAPT adapter "a": prompt length 7 of row 1 is outside 1\.\.6/);
    assert.throws(() => run(am, [0, 2]), /prompt length 0 of row 0 is outside 1\.\.6/);
    assert.throws(() => run(am, [2, 2, 2]), /3 prompt lengths for a batch of 2 rows/);
    const mask = ak.tensor([1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0], [2, 6]);
    assert.throws(() => ak.tidy(() => ak.noGrad(() => am.forward(input, { attentionMask: mask }))), /row 1 has no instruction token/);
  });

  it('decoding from a cache whose prompt the adapter never saw is refused', () => {
    const am = fixture('llama-gqa');
    const cache = am.newCache();
    am.withoutAdapters(() => ak.tidy(() => ak.noGrad(() => am.forward(ids([[5, 17, 3]]), { cache }))));
    assert.throws(() => ak.tidy(() => ak.noGrad(() => am.forward(ids([[4]]), { cache }))), /whose prompts this adapter did not see/);
    cache.dispose();
  });

  it('config values and models it cannot use are refused by name', () => {
    const add = (cfg: Record<string, unknown>, model = 'llama-gqa') => new AdapterModel(loadAnyModel(join(FIX, model)).model).add('a', { peft_type: 'IAPT', ...cfg });
    assert.throws(() => add({ num_virtual_tokens: 0 }), /"num_virtual_tokens" must be a number >= 1, got 0/);
    assert.throws(() => add({ bottleneck_size: 0 }), /"bottleneck_size" must be a number >= 1, got 0/);
    assert.throws(() => add({ bottleneck_size: 2.5 }), /"bottleneck_size" must be an integer/);
    assert.throws(() => add({ token_dim: 16 }), /"token_dim" is 16, the model's hidden size is 32/);
    assert.throws(() => add({ num_layers: 3 }), /"num_layers" is 3, the model has 2 attention layers/);
    assert.throws(() => add({ num_virtual_token: 4 }), /does not read "num_virtual_token"/);
    assert.throws(() => add({}, 'bert'), /no attention layers with a key\/value prefix slot/);
  });

  it('saved weights that do not fit are refused by key', () => {
    const am = fixture('llama-gqa');
    const dir = join(tmp, 'fit');
    am.save(dir, 'a');
    const other = new AdapterModel(loadModel(join(FIX, 'llama-gqa')).model);
    const inst = other.add('b', { peft_type: 'IAPT', num_virtual_tokens: P + 1, bottleneck_size: M });
    const saved = am.adapters.get('a')!.stateDict();
    assert.throws(() => inst.loadStateDict(saved, 'adapter_model.safetensors'), /"base_model\.model\.model\.layers\.0\.self_attn\.iapt\.queries" has shape \[3, 5\], the model needs \[4, 5\]/);
    saved.delete('base_model.model.model.layers.1.self_attn.iapt.up.bias');
    assert.throws(() => am.adapters.get('a')!.loadStateDict(saved, 'adapter_model.safetensors'), /missing: base_model\.model\.model\.layers\.1\.self_attn\.iapt\.up\.bias/);
  });

  it('the preset reads --virtual-tokens and --generator-width', () => {
    const preset = ak.getMethod('IAPT').presets!.find((p) => p.name === 'iapt')!;
    const d = describeModel(loadModel(join(FIX, 'llama-gqa')).model);
    assert.deepEqual(preset.config({}, d), { peft_type: 'IAPT', num_virtual_tokens: 4, bottleneck_size: 8 });
    assert.deepEqual(preset.config({ 'virtual-tokens': 2, 'generator-width': 16 }, d), { peft_type: 'IAPT', num_virtual_tokens: 2, bottleneck_size: 16 });
    assert.deepEqual(ak.getMethod('IAPT').options!.map((o) => [o.name, o.min]), [['virtual-tokens', 1], ['generator-width', 1]]);
  });
});
