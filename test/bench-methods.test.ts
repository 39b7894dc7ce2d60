/**
 * `bench methods` on a tiny configuration: its JSON lines carry every field, the seeds and the
 * split; the summaries' mean ± std are those of the per-seed lines; the table lists every method.
 * The whole-label-sequence scorer equals scoring each full sequence on its own, and a matched
 * budget picks the nearest rank. Timing values are only checked to be reported.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { AdapterModel, dataDir, loadModel, loadTokenizer, narrow, noGrad, tensor, tidy, toExample, type Example } from '../src/index.js';
import {
  BASE, type RunLine, type SummaryLine, formatMetric, labelSequenceScores, resolveMethods, runMethodsBench,
} from '../bench/methods.js';

const MODEL_DIR = join(dataDir(), 'models', 'stories260K');
const HAVE_DATA = existsSync(join(MODEL_DIR, 'stories260K.bin')) && existsSync(join(dataDir(), 'datasets', 'sms_spam', 'SMSSpamCollection'));

function stories() {
  const bin = join(MODEL_DIR, 'stories260K.bin');
  const { model } = loadModel(bin);
  return { model, tok: loadTokenizer(bin, join(MODEL_DIR, 'tok512.bin'), model.config.vocabSize) };
}

/** Sum of log-probs of `label` after `prompt`, from one forward over the whole sequence. */
function fullSequenceScore(am: AdapterModel, prompt: number[], label: number[]): number {
  return tidy(() => noGrad(() => {
    const ids = [...prompt, ...label];
    const out = am.forward(tensor(ids, [1, ids.length], { dtype: 'i32' }));
    const T = out.shape[1]!;
    const logits = narrow(out, 1, T - ids.length, ids.length).toArray() as Float32Array;
    const V = out.shape[2]!;
    let s = 0;
    label.forEach((t, j) => {
      const at = (prompt.length - 1 + j) * V;
      let m = -Infinity;
      for (let i = 0; i < V; i++) m = Math.max(m, logits[at + i]!);
      let z = 0;
      for (let i = 0; i < V; i++) z += Math.exp(logits[at + i]! - m);
      s += logits[at + t]! - m - Math.log(z);
    });
    return s;
  }));
}

describe('bench methods', { skip: HAVE_DATA ? false : 'needs ../shared/data (stories260K and SMS spam)' }, () => {
  it('prints a JSON line per (method, task, seed) with every field, summaries that match them, and a table of every method', async () => {
    const out: string[] = [];
    const r = await runMethodsBench({
      tasks: ['sms'],
      methods: [
        { name: 'lora', method: 'lora', options: { r: 2 }, lr: 5e-3 },
        { name: 'prompt', method: 'prompt', options: { 'virtual-tokens': 4 }, lr: 1e-1 },
      ],
      seeds: 2, steps: 2, trainExamples: 16, heldOut: 8,
      write: (l) => out.push(l), log: () => {},
    });
    const lines = out.map((l) => JSON.parse(l) as RunLine | SummaryLine);
    const runs = lines.filter((l) => l.kind === 'run') as RunLine[];
    const summaries = lines.filter((l) => l.kind === 'summary') as SummaryLine[];
    assert.equal(runs.length, 1 + 2 * 2, 'the base row plus 2 methods x 2 seeds');
    assert.deepEqual(runs.map((x) => [x.method, x.seed]), [[BASE, null], ['lora', 0], ['lora', 1], ['prompt', 0], ['prompt', 1]]);
    for (const x of runs) {
      assert.equal(x.error, undefined, `${x.method} seed ${x.seed} failed: ${String(x.error)}`);
      assert.equal(x.bench, 'methods');
      assert.equal(x.task, 'sms');
      for (const f of ['metric', 'value', 'scoring', 'inference_kind', 'trainable_parameters', 'adapter_bytes', 'peak_rss_mb', 'inference_tokens_per_s', 'inference_detail', 'eval_seconds', 'wall_seconds', 'split', 'machine', 'steps', 'lr', 'batch_size', 'backend']) {
        assert.ok(f in x, `${x.method}: field ${f}`);
      }
      assert.equal(x.metric, 'accuracy');
      assert.ok(typeof x.value === 'number' && x.value >= 0 && x.value <= 1);
      const split = x.split as Record<string, unknown>;
      assert.deepEqual({ seed: split.seed, train_examples: split.train_examples, held_out: split.held_out }, { seed: 0, train_examples: 16, held_out: 8 });
      assert.ok(typeof split.rule === 'string' && Array.isArray(split.files));
      const m = x.machine as Record<string, unknown>;
      for (const f of ['cpu', 'cores', 'caches', 'simd', 'threads', 'fma_peak_gflops', 'copy_bandwidth_gbs']) assert.ok(f in m, `machine.${f}`);
      // timings are reported (numbers), never judged
      assert.equal(typeof x.peak_rss_mb, 'number');
      assert.equal(typeof x.inference_tokens_per_s, 'number');
      if (x.method === BASE) {
        assert.equal(x.trainable_parameters, 0);
        assert.equal(x.adapter_bytes, 0);
      } else {
        assert.equal(x.steps, 2);
        assert.ok(Number(x.trainable_parameters) > 0 && Number(x.adapter_bytes) > 0);
        const files = x.adapter_files as Record<string, number>;
        assert.ok('adapter_config.json' in files && 'adapter_model.safetensors' in files);
        assert.equal(Object.values(files).reduce((n, b) => n + b, 0), x.adapter_bytes);
        assert.equal(typeof x.train_tokens_per_s, 'number');
        assert.ok(x.adapter_config && typeof x.adapter_config === 'object');
      }
    }
    assert.deepEqual(runs.filter((x) => x.method === 'prompt').map((x) => x.trainable_parameters), [4 * 64, 4 * 64]);
    assert.equal(summaries.length, 3);
    for (const s of summaries) {
      const vals = runs.filter((x) => x.method === s.method).map((x) => x.value as number);
      const mean = vals.reduce((a, b) => a + b, 0) / vals.length;
      const std = vals.length > 1 ? Math.sqrt(vals.reduce((a, b) => a + (b - mean) ** 2, 0) / (vals.length - 1)) : null;
      assert.equal(s.n, vals.length);
      assert.ok(Math.abs(s.mean - mean) < 1e-12, `${s.method} mean`);
      if (std === null) assert.equal(s.std, null);
      else assert.ok(Math.abs(s.std! - std) < 1e-12, `${s.method} std`);
      assert.deepEqual(s.seeds, runs.filter((x) => x.method === s.method).map((x) => x.seed));
    }
    for (const name of ['lora', 'prompt']) {
      const s = summaries.find((x) => x.method === name)!;
      assert.match(r.markdown, new RegExp(`\\| sms \\| ${name} \\| accuracy ↑ ${formatMetric(s).replace(/[.+]/g, '\\$&')} \\|`));
    }
    assert.match(r.markdown, /\| sms \| base \(no adapter\) \|/);
    assert.match(r.markdown, /machine: /);
  });

  it('scores whole label sequences exactly as one full forward per label does (base model and prompt tuning)', () => {
    const { model, tok } = stories();
    const am = new AdapterModel(model);
    // labels that share their first tokens, of different lengths (one of a single token)
    const words = ['card arrival', 'card linking', 'cash withdrawal charge', 'top up failed'];
    const ex = (text: string, label: string): Example => toExample({ kind: 'label', text, label }, tok, { labelCue: '\nIntent:' });
    const seqs = new Map(words.map((w) => [w, ex('x', w).completion]));
    seqs.set('one token', [seqs.get('card arrival')![0]!]);
    words.push('one token');
    assert.ok(new Set(words.map((w) => seqs.get(w)![0])).size < words.length, 'some labels share their first token');
    const examples = [ex('My card has not arrived yet.', 'card arrival'), ex('Why did the top up not go through?', 'top up failed')];
    for (const adapter of [null, { peft_type: 'PROMPT_TUNING', num_virtual_tokens: 3, prompt_tuning_init: 'SAMPLE_VOCAB' }]) {
      if (adapter) am.add('p', adapter, { seed: 3 });
      const got = labelSequenceScores(am, examples, seqs, tok.eosId ?? 0);
      examples.forEach((e, k) => {
        words.forEach((w, i) => {
          const want = fullSequenceScore(am, [...e.head, ...e.body, ...e.tail], seqs.get(w)!);
          assert.ok(Math.abs(got.scores[k]![i]! - want) < 2e-3, `${adapter ? 'prompt' : 'base'} example ${k} label "${w}": ${got.scores[k]![i]} vs ${want}`);
        });
      });
    }
  });

  it('match_params_of gives LoRA the rank whose parameter count is nearest the other method\'s', () => {
    const { model } = stories();
    const [bn, lora] = resolveMethods([
      { name: 'bottleneck', method: 'bottleneck' },
      { name: 'lora-matched', method: 'lora', match_params_of: 'bottleneck' },
    ], model);
    assert.equal(lora!.matched!.to, 'bottleneck');
    assert.equal(lora!.matched!.target_parameters, bn!.parameters);
    const r = lora!.matched!.r;
    const at = (rank: number) => resolveMethods([{ name: 'l', method: 'lora', options: { r: rank } }], model)[0]!.parameters;
    assert.equal(at(r), lora!.parameters);
    for (const other of [r - 1, r + 1].filter((x) => x >= 1)) assert.ok(Math.abs(at(r) - bn!.parameters) <= Math.abs(at(other) - bn!.parameters), `r ${r} vs ${other}`);
    assert.throws(() => resolveMethods([{ name: 'x', method: 'lora', match_params_of: 'missing' }], model), /not in the list/);
  });
});
