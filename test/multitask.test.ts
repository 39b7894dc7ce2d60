/**
 * Multi-task training: how rows pick their tasks (against the sampling formulas, computed here),
 * that the task ids and prompt lengths of the examples reach the model's forward and the
 * adapter's routing context, per-task evaluation (against a forward-by-forward NLL computed
 * here), exact resume, and `adaptkit train` / `eval` with two tasks on stories260K.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as ak from '../src/index.js';
import { AdapterModel, type AdapterInstance, type AdapterMethod, type BaseAdapterConfig, type CreateContext, type LayerDelta, type RawAdapterConfig, baseJson, deltaStateDict, loadInto, parseBase, registerMethod } from '../src/adapters/index.js';
import { Module } from '../src/nn/index.js';
import { AdaptkitError, type Tensor, add, indexSelect, isTraining, mul, noGrad, parameter, reshape, tensor, zeros } from '../src/tensor/index.js';
import { type Example, exampleLength } from '../src/train/examples.js';
import { collate } from '../src/train/batch.js';
import { DEFAULT_TRAIN, Trainer } from '../src/train/trainer.js';
import { runTraining } from '../src/train/run.js';
import { type TaskData, TaskSampler, prefixRecord, taskProbabilities } from '../src/train/multitask.js';
import { readMetrics } from '../src/train/plot.js';
import { runCli as cli } from './cli-run.js';

const tmp = mkdtempSync(join(tmpdir(), 'adaptkit-multitask-'));
const D = join(ak.dataDir(), 'models', 'stories260K');
const BIN = join(D, 'stories260K.bin');
const TOK = join(D, 'tok512.bin');
const MODEL = ['--model', BIN, '--tokenizer', TOK];

/** p_i = w_i n_i^e / sum_j w_j n_j^e, with plain loops. */
function formula(sizes: number[], exponent: number, weights: number[] = sizes.map(() => 1)): number[] {
  const raw: number[] = [];
  let sum = 0;
  for (let i = 0; i < sizes.length; i++) {
    raw.push(weights[i]! * Math.pow(sizes[i]!, exponent));
    sum += raw[i]!;
  }
  return raw.map((r) => r / sum);
}

/** Task t's k-th example: a body whose first token names it, so a batch row says which example it is. */
function toyExample(t: number, k: number, bodyLen: number, completion: number[]): Example {
  return { head: [1], body: [20 + t * 100 + k, ...Array.from({ length: bodyLen - 1 }, (_, j) => 7 + ((k + j) % 5))], tail: [], completion };
}

function toyTasks(sizes: number[]): Example[][] {
  return sizes.map((n, t) => Array.from({ length: n }, (_, k) => ({ ...toyExample(t, k, 2 + t * 5 + (k % 3), [300 + t, 301 + (k % 4)]), task: t })));
}

/** The task ids of `n` draws. */
function draws(s: TaskSampler, n: number): number[] {
  return s.next(n).map((e) => e.task!);
}

describe('task sampling', () => {
  const sizes = [10, 40, 150];
  const tasks = toyTasks(sizes);

  it('size, temperature and uniform probabilities follow p ∝ w · n^(1/T)', () => {
    const close = (a: number[], b: number[]) => a.forEach((x, i) => assert.ok(Math.abs(x - b[i]!) < 1e-12, `${a} vs ${b}`));
    close(taskProbabilities(sizes), formula(sizes, 1));
    close(taskProbabilities(sizes, { sampling: 'temperature', temperature: 1 }), formula(sizes, 1));
    close(taskProbabilities(sizes, { sampling: 'temperature', temperature: 3 }), formula(sizes, 1 / 3));
    close(taskProbabilities(sizes, { sampling: 'uniform' }), [1 / 3, 1 / 3, 1 / 3]);
    close(taskProbabilities(sizes, { sampling: 'size', weights: [5, 1, 1] }), formula(sizes, 1, [5, 1, 1]));
    // T -> infinity tends to uniform
    const hot = taskProbabilities(sizes, { sampling: 'temperature', temperature: 1e6 });
    for (const p of hot) assert.ok(Math.abs(p - 1 / 3) < 1e-4);
    assert.throws(() => taskProbabilities(sizes, { sampling: 'temperature', temperature: 0 }), /temperature must be a number > 0/);
    assert.throws(() => taskProbabilities([3, 0]), /task 1 has no training examples/);
  });

  it('the drawn task frequencies match the probabilities', () => {
    const N = 20000;
    for (const [name, exponent, weights] of [['size', 1, undefined], ['temperature', 1 / 2, undefined], ['uniform', 0, undefined], ['uniform', 0, [3, 1, 1]]] as const) {
      const probs = taskProbabilities(sizes, { sampling: name, temperature: 2, weights: weights as number[] | undefined });
      const want = formula(sizes, exponent, weights as number[] | undefined);
      const counts = [0, 0, 0];
      for (const t of draws(new TaskSampler(tasks, probs, 11), N)) counts[t]!++;
      counts.forEach((c, i) => {
        const sd = Math.sqrt((want[i]! * (1 - want[i]!)) / N);
        assert.ok(Math.abs(c / N - want[i]!) < 4.5 * sd, `${name} task ${i}: ${c / N} vs ${want[i]}`);
      });
    }
  });

  it('each task goes through all of its examples once per pass, in a new order each pass', () => {
    const s = new TaskSampler(tasks, [0.5, 0.25, 0.25], 3);
    const seen: Example[] = s.next(400).filter((e) => e.task === 0);
    assert.ok(seen.length >= 40);
    const pass = (p: number) => seen.slice(p * 10, p * 10 + 10).map((e) => e.body[0]!);
    for (let p = 0; p < 4; p++) assert.deepEqual([...pass(p)].sort((a, b) => a - b), tasks[0]!.map((e) => e.body[0]!).sort((a, b) => a - b), `pass ${p}`);
    assert.notDeepEqual(pass(0), pass(1));
  });

  it('is a function of the seed, and a saved position replays the same rows', () => {
    const probs = taskProbabilities(sizes);
    const ids = (s: TaskSampler, n: number) => s.next(n).map((e) => e.body[0]!);
    const a = new TaskSampler(tasks, probs, 5);
    const first = ids(a, 50);
    assert.deepEqual(ids(new TaskSampler(tasks, probs, 5), 50), first);
    assert.notDeepEqual(ids(new TaskSampler(tasks, probs, 6), 50), first);
    const at = JSON.parse(JSON.stringify(a.position()));
    const rest = ids(a, 300);
    const b = new TaskSampler(tasks, probs, 5);
    b.seek(at);
    assert.deepEqual(ids(b, 300), rest);
    b.restart();
    assert.deepEqual(ids(b, 50), first);
    assert.throws(() => b.seek({ rng: [], tasks: [] }), /not one of 3 tasks/);
  });
});

/** A model that records the conditioning of every forward it is given and hands it on. */
function recorder(am: AdapterModel) {
  const calls: { ids: number[]; T: number; mask: number[]; taskIds: number[] | null; promptLengths: number[] | null }[] = [];
  return {
    calls,
    forward(ids: Tensor, opts: { attentionMask?: Tensor | null; taskIds?: ArrayLike<number> | null; promptLengths?: ArrayLike<number> | null } = {}) {
      calls.push({
        ids: Array.from(ids.toArray() as Int32Array), T: ids.shape[1]!, mask: Array.from(opts.attentionMask!.toArray() as Float32Array),
        taskIds: opts.taskIds ? Array.from(opts.taskIds) : null, promptLengths: opts.promptLengths ? Array.from(opts.promptLengths) : null,
      });
      return am.forward(ids, opts);
    },
  };
}

/** The examples in one batch row, read off its tokens (each example's first body token names it). */
function rowExamples(tokens: number[], byFirst: Map<number, Example>): Example[] {
  const out: Example[] = [];
  for (let p = 0; p < tokens.length;) {
    const e = byFirst.get(tokens[p + 1]!);
    assert.ok(e, `no example starts at ${p} of ${tokens}`);
    out.push(e);
    p += exampleLength(e);
  }
  return out;
}

describe('task ids and prompt lengths reach the forward', () => {
  const { model } = ak.loadModel(BIN);
  const tasks = toyTasks([12, 12]);
  const byFirst = new Map(tasks.flat().map((e) => [e.body[0]!, e]));
  const promptLen = (e: Example) => e.head.length + e.body.length + e.tail.length;

  function train(data: Example[] | TaskSampler, pack: boolean, dir: string) {
    const am = new AdapterModel(model);
    am.add('default', { peft_type: 'LORA', r: 2, lora_alpha: 4, target_modules: ['q_proj', 'v_proj'] }, { seed: 0 });
    const rec = recorder(am);
    new Trainer(rec, am.trainableParameters(), data, 0, { ...DEFAULT_TRAIN, steps: 6, batchSize: 6, lr: 1e-3, pack, maxLen: 64 }, join(tmp, dir), {
      saveWeights: () => {}, loadWeights: () => {},
    }).run();
    am.setActive([]);
    return rec.calls;
  }

  for (const pack of [false, true]) {
    it(`multi-task batches${pack ? ' (packed)' : ''}: each row's task id and prompt length are those of its examples`, () => {
      const calls = train(new TaskSampler(tasks, [0.5, 0.5], 1), pack, `forward-${pack}`);
      assert.equal(calls.length, 6);
      let mixed = 0;
      const seen = new Set<number>();
      for (const c of calls) {
        const B = c.taskIds!.length;
        assert.equal(c.promptLengths!.length, B);
        for (let b = 0; b < B; b++) {
          const len = c.mask.slice(b * c.T, (b + 1) * c.T).reduce((x, y) => x + y, 0);
          const ex = rowExamples(c.ids.slice(b * c.T, b * c.T + len), byFirst);
          if (pack) assert.ok(ex.length >= 1);
          else assert.equal(ex.length, 1);
          for (const e of ex) assert.equal(c.taskIds![b], e.task, 'a row holds examples of its own task only');
          assert.equal(c.promptLengths![b], promptLen(ex[0]!));
          seen.add(c.taskIds![b]!);
        }
        if (new Set(c.taskIds).size > 1) mixed++;
      }
      assert.deepEqual([...seen].sort(), [0, 1]);
      assert.ok(mixed > 0, 'rows of one batch are drawn independently, so batches mix tasks');
      if (pack) assert.ok(calls.some((c) => c.taskIds!.length < 24), 'packing put several examples in a row');
    });
  }

  it('a single-task run routes every row as task 0 with its prompt length', () => {
    const plain = tasks[1]!.map(({ task: _t, ...e }) => e);
    const calls = train(plain, false, 'forward-single');
    for (const c of calls) {
      assert.deepEqual(c.taskIds, c.taskIds!.map(() => 0));
      c.taskIds!.forEach((_, b) => {
        const len = c.mask.slice(b * c.T, (b + 1) * c.T).reduce((x, y) => x + y, 0);
        assert.equal(c.promptLengths![b], promptLen(rowExamples(c.ids.slice(b * c.T, b * c.T + len), byFirst)[0]!));
      });
    }
  });
});

// A probe adapter: one scale vector per task on one layer, y' = y (1 + g[task of the row]),
// which logs the routing context of every forward and the task ids its objective is given.
const N_TASKS = 2;
const probeLog: { tasks: number[] | null; prompts: number[] | null; training: boolean }[] = [];
const objectiveTasks: number[][] = [];

class ProbeDelta extends Module implements LayerDelta {
  constructor(readonly adapterName: string, public probe_g: Tensor, readonly ctx: CreateContext) {
    super();
  }
  apply(_x: Tensor, y: Tensor): Tensor {
    const B = y.shape[0]!;
    const rows = Array.from({ length: B }, (_, b) => this.ctx.tasks.task(b, N_TASKS, 'TASK_PROBE'));
    const ids = this.ctx.tasks.ids;
    const lens = this.ctx.prompts.lengths;
    probeLog.push({ tasks: ids ? Array.from(ids) : null, prompts: lens ? Array.from(lens) : null, training: isTraining() });
    const g = indexSelect(this.probe_g, 0, tensor(rows, [B], { dtype: 'i32' }));
    return mul(y, add(reshape(g, y.ndim === 3 ? [B, 1, -1] : [B, -1]), 1));
  }
}

class ProbeAdapter implements AdapterInstance {
  readonly method = PROBE;
  readonly deltas = new Map<string, ProbeDelta>();
  constructor(readonly name: string, readonly config: BaseAdapterConfig) {}
  parameters(): Tensor[] {
    return [...this.deltas.values()].map((d) => d.probe_g);
  }
  stateDict(): Map<string, Tensor> {
    return deltaStateDict(this.deltas);
  }
  loadStateDict(t: Map<string, Tensor>, source: string): void {
    loadInto(this.stateDict(), t, source);
  }
  configJson(): RawAdapterConfig {
    return { ...baseJson(this.config), n_tasks: N_TASKS };
  }
  objective(step: { logits(): Tensor; loss(l: Tensor): Tensor; taskIds?: Int32Array }): Tensor {
    objectiveTasks.push(step.taskIds ? Array.from(step.taskIds) : []);
    return step.loss(step.logits());
  }
}

const PROBE: AdapterMethod = {
  peftType: 'TASK_PROBE',
  description: 'a scale vector per task on the first query projection',
  kind: 'tuner',
  parseConfig: (raw, source) => parseBase(raw, 'TASK_PROBE', source),
  create(name, config, targets, ctx) {
    const inst = new ProbeAdapter(name, config);
    for (const t of targets) {
      const out = (t.module as unknown as { outFeatures: number }).outFeatures;
      if (!out) throw new AdaptkitError(`${t.path} is not a linear layer`);
      inst.deltas.set(t.path, new ProbeDelta(name, parameter(zeros([N_TASKS, out]), `${t.path}.probe_g`), ctx));
    }
    return inst;
  },
  presets: [{ name: 'taskprobe', description: 'per-task scale probe', config: () => ({ peft_type: 'TASK_PROBE', target_modules: ['q_proj'], layers_to_transform: [0] }) }],
};
registerMethod(PROBE);

function withTaskIds(examples: readonly Example[], task: number, label: string): Example[] {
  return examples.map((e) => ({ ...e, task, label }));
}

/** Mean NLL per completion token, one example per forward, log-softmax by plain loops. */
function nllByHand(am: AdapterModel, examples: readonly Example[], task: number): number {
  let total = 0;
  let count = 0;
  for (const e of examples) {
    const ids = [...e.head, ...e.body, ...e.tail, ...e.completion];
    const logits = noGrad(() => am.forward(tensor(ids, [1, ids.length], { dtype: 'i32' }), { taskIds: [task] })).toArray() as Float32Array;
    const V = logits.length / ids.length;
    for (let t = ids.length - e.completion.length - 1; t < ids.length - 1; t++) {
      let m = -Infinity;
      for (let v = 0; v < V; v++) m = Math.max(m, logits[t * V + v]!);
      let s = 0;
      for (let v = 0; v < V; v++) s += Math.exp(logits[t * V + v]! - m);
      total -= logits[t * V + ids[t + 1]!]! - m - Math.log(s);
      count++;
    }
  }
  return total / count;
}

describe('runTraining with tasks', () => {
  const tok = ak.loadTokenizer(BIN, TOK, 512);
  // the tasks' prompt lengths do not overlap (3-5 and 8-10), so a prompt length tells the task
  const make = (t: number, n: number, from: number) => Array.from({ length: n }, (_, k) => toyExample(t, from + k, 2 + t * 5 + (k % 3), t ? [60, 61, 62] : [50, 51]));
  const tasks = (): TaskData[] => [
    { name: 'short', train: make(0, 16, 0), validation: make(0, 4, 50) },
    { name: 'long', train: make(1, 16, 0), validation: make(1, 4, 50) },
  ];
  const pairs = (list: TaskData[], part: 'train' | 'validation') => new Set(list.flatMap((t, i) => t[part].map((e) => `${i}:${e.head.length + e.body.length}`)));

  it('the routing context holds each row\'s task and prompt; the objective sees the batch\'s task ids; each task is evaluated as itself', () => {
    probeLog.length = 0;
    objectiveTasks.length = 0;
    const { model } = ak.loadModel(BIN);
    const out = join(tmp, 'probe-run');
    const r = runTraining({
      model, tokenizer: tok, method: 'taskprobe', methodOptions: {}, tasks: tasks(), outDir: out,
      config: { steps: 10, batchSize: 8, lr: 5e-2, evalEvery: 5, seed: 2 },
    });
    const train = probeLog.filter((l) => l.training);
    assert.equal(train.length, 10);
    assert.equal(objectiveTasks.length, 10);
    const trainPairs = pairs(tasks(), 'train');
    train.forEach((l, i) => {
      assert.deepEqual(l.tasks, objectiveTasks[i], 'the objective is given the task ids of the forward it runs');
      assert.equal(l.tasks!.length, 8);
      l.tasks!.forEach((t, b) => assert.ok(trainPairs.has(`${t}:${l.prompts![b]}`), `row ${b}: task ${t} with prompt length ${l.prompts![b]}`));
    });
    const evalLog = probeLog.filter((l) => !l.training);
    const valPairs = pairs(tasks(), 'validation');
    assert.ok(evalLog.length >= 4);
    for (const l of evalLog) {
      assert.equal(new Set(l.tasks).size, 1, 'one task per evaluation batch');
      l.tasks!.forEach((t, b) => assert.ok(valPairs.has(`${t}:${l.prompts![b]}`)));
    }
    const evals = r.result.history.filter((h) => h.kind === 'eval') as Record<string, number>[];
    assert.deepEqual(evals.map((e) => e.step), [5, 10]);
    const last = evals[1]!;
    assert.ok(Math.abs(last.loss! - (last['loss/short']! + last['loss/long']!) / 2) < 1e-12);
    assert.ok(Math.abs(last.perplexity! - Math.exp(last.loss!)) < 1e-9);
    // the saved adapter, evaluated forward by forward with each task's id, gives the logged numbers
    const am = new AdapterModel(ak.loadModel(BIN).model);
    am.load(r.adapterDir);
    tasks().forEach((t, i) => {
      const mine = nllByHand(am, t.validation, i);
      assert.ok(Math.abs(mine - last[`loss/${t.name}`]!) < 1e-4 * mine, `${t.name}: ${mine} vs ${last[`loss/${t.name}`]}`);
      const other = nllByHand(am, t.validation, 1 - i);
      assert.ok(Math.abs(other - mine) > 1e-3, 'the tasks were trained apart, so the wrong task id gives another loss');
    });
    // label scoring by whole sequences: the continuations over the cached prompts keep their prompt's task
    const mixed = [...withTaskIds(tasks()[0]!.validation, 0, 'x'), ...withTaskIds(tasks()[1]!.validation, 1, 'y')];
    probeLog.length = 0;
    ak.labelAccuracy(am, mixed, new Map([['x', [50, 51]], ['y', [60, 61, 62]]]), tok.eosId ?? 0, { scoring: 'sequence' });
    assert.equal(probeLog.length, 2, 'one prompt pass and one pass of continuations');
    const [prompt, cont] = probeLog;
    assert.deepEqual([...prompt!.tasks!].sort(), [0, 0, 0, 0, 1, 1, 1, 1]);
    assert.deepEqual(cont!.tasks, prompt!.tasks!.flatMap((t) => [t, t]));
    assert.equal(cont!.prompts, null, 'the continuations\' prompts are in the cache, so they have no prompt lengths');
    const report = JSON.parse(readFileSync(join(out, 'training_report.json'), 'utf8'));
    assert.deepEqual(report.tasks.map((t: { name: string; id: number }) => [t.id, t.name]), [[0, 'short'], [1, 'long']]);
    assert.equal(report.tasks[1].final_eval.loss, last['loss/long']);
    for (const f of [join(out, 'tasks.json'), join(r.adapterDir, 'tasks.json')]) assert.deepEqual(JSON.parse(readFileSync(f, 'utf8')).tasks.map((t: { name: string }) => t.name), ['short', 'long']);
  });

  it('a run stopped mid-way and resumed ends with the adapter of the uninterrupted run', () => {
    const cfg = { steps: 8, batchSize: 4, lr: 5e-3, checkpointEvery: 1, keepCheckpoints: 20, evalEvery: 4, seed: 4 };
    const run = (out: string, extra: { resume?: boolean; stopAfter?: number } = {}) => runTraining({
      model: ak.loadModel(BIN).model, tokenizer: tok, method: 'lora', methodOptions: {},
      adapterConfig: { peft_type: 'LORA', r: 2, lora_alpha: 4, target_modules: ['q_proj', 'v_proj'] },
      tasks: tasks(), taskSampling: { sampling: 'temperature', temperature: 2 }, outDir: out, config: cfg, ...extra,
    });
    const ref = run(join(tmp, 'resume-ref'));
    const cut = join(tmp, 'resume-cut');
    const first = run(cut, { stopAfter: 3 });
    assert.equal(first.result.steps, 3);
    const resumed = run(cut, { resume: true });
    assert.equal(resumed.result.steps, 8);
    const bytes = (r: { adapterDir: string }) => readFileSync(join(r.adapterDir, 'adapter_model.safetensors'));
    assert.deepEqual(bytes(resumed), bytes(ref));
    const lines = (dir: string) => readMetrics(join(dir, 'metrics.jsonl')).records.map(({ tokens_per_s: _a, elapsed_s: _b, ...m }) => m);
    assert.deepEqual(lines(cut), lines(join(tmp, 'resume-ref')));
  });

  it('refuses tasks that cannot train', () => {
    const base = { model: ak.loadModel(BIN).model, tokenizer: tok, method: 'lora', methodOptions: {}, config: { steps: 1 } };
    const t = tasks();
    assert.throws(() => runTraining({ ...base, tasks: [t[0]!, { ...t[1]!, name: 'short' }], outDir: join(tmp, 'dup') }), /task 1: task name "short" is already the name of task 0/);
    assert.throws(() => runTraining({ ...base, tasks: [t[0]!, { ...t[1]!, train: [] }], outDir: join(tmp, 'empty') }), /task "long" has no training examples/);
    assert.throws(() => runTraining({ ...base, tasks: [{ ...t[0]!, name: '' }], outDir: join(tmp, 'noname') }), /task 0: the task name is empty/);
    for (const d of ['dup', 'empty', 'noname']) assert.ok(!existsSync(join(tmp, d)));
  });
});

describe('task prefixes', () => {
  it('go before the input of every kind of record, and stay out of the loss', () => {
    assert.deepEqual(prefixRecord({ kind: 'completion', prompt: 'Q?', completion: ' A' }, 'qa'), { kind: 'completion', prompt: 'qa: Q?', completion: ' A' });
    assert.deepEqual(prefixRecord({ kind: 'label', text: 'hi', label: 'ham' }, 'sms'), { kind: 'label', text: 'sms: hi', label: 'ham' });
    assert.deepEqual(prefixRecord({ kind: 'text', text: 'story' }, 'lm'), { kind: 'completion', prompt: 'lm: ', completion: 'story' });
    assert.deepEqual(prefixRecord({ kind: 'chat', messages: [{ role: 'system', content: 's' }, { role: 'user', content: 'u' }, { role: 'assistant', content: 'a' }] }, 'c'),
      { kind: 'chat', messages: [{ role: 'system', content: 's' }, { role: 'user', content: 'c: u' }, { role: 'assistant', content: 'a' }] });
    const tok = ak.loadTokenizer(BIN, TOK, 512);
    const e = ak.toExample(prefixRecord({ kind: 'text', text: 'Once upon a time' }, 'lm'), tok);
    const plain = ak.toExample({ kind: 'text', text: 'Once upon a time' }, tok);
    assert.deepEqual(e.body, tok.encode('lm: ', { bos: false }));
    assert.equal(collate([e], 0).lossTokens, collate([plain], 0).lossTokens, 'the prefix adds no loss tokens');
  });
});

describe('adaptkit train and eval with two tasks', () => {
  const dir = join(tmp, 'cli');
  mkdirSync(dir);
  const smsLines = readFileSync(join(ak.dataDir(), 'datasets', 'sms_spam', 'SMSSpamCollection'), 'utf8').split('\n');
  const pick = (label: string) => smsLines.slice(1).filter((l) => l.startsWith(`${label}\t`)).slice(0, 20);
  writeFileSync(join(dir, 'sms.tsv'), [smsLines[0], ...pick('ham'), ...pick('spam')].join('\n'));
  writeFileSync(join(dir, 'sms.jsonl'), [...pick('ham'), ...pick('spam')].map((l) => JSON.stringify({ text: l.split('\t')[1]!.slice(0, 100), label: l.split('\t')[0] })).join('\n'));
  writeFileSync(join(dir, 'words.json'), JSON.stringify({ ham: 'normal', spam: 'spam' }));
  const questions = readFileSync(join(ak.dataDir(), 'datasets', 'gsm8k', 'train.jsonl'), 'utf8').split('\n').slice(0, 50).map((l) => JSON.parse(l).question as string);
  writeFileSync(join(dir, 'gsm.jsonl'), questions.slice(0, 40).map((q) => JSON.stringify({ text: q })).join('\n'));
  writeFileSync(join(dir, 'gsm-val.jsonl'), questions.slice(40).map((q) => JSON.stringify({ text: q })).join('\n'));
  const manifest = join(dir, 'tasks.json');
  const writeManifest = (gsmWeight: number) => writeFileSync(manifest, JSON.stringify({
    tasks: [
      { name: 'sms', data: 'sms.tsv', format: 'tsv', quote: false, text_column: 'SMS', label_column: 'Label', label_words: 'words.json', label_cue: '\nSpam?' },
      { name: 'gsm', data: 'gsm.jsonl', val_data: 'gsm-val.jsonl', weight: gsmWeight },
    ],
  }));
  writeManifest(2);
  const COMMON = [...MODEL, '--method', 'taskprobe', '--steps', '6', '--batch-size', '6', '--lr', '3e-2', '--seq-len', '64', '--eval-every', '3', '--checkpoint-every', '3', '--json'];
  const TRAIN = ['train', ...COMMON, '--tasks', manifest, '--task-sampling', 'temperature', '--task-temperature', '2', '--task-prefix'];
  const out = join(tmp, 'cli-run');

  it('--tasks: tasks.json, per-task metrics, report and curves; eval --task and --task-id reproduce the per-task numbers', async () => {
    const r = await cli(...TRAIN, '--out', out);
    assert.equal(r.code, 0, r.err);
    const tf = JSON.parse(readFileSync(join(out, 'tasks.json'), 'utf8'));
    assert.equal(tf.sampling, 'temperature');
    assert.equal(tf.temperature, 2);
    assert.equal(tf.task_prefix, true);
    assert.deepEqual(tf.tasks.map((t: { id: number; name: string }) => [t.id, t.name]), [[0, 'sms'], [1, 'gsm']]);
    assert.deepEqual(tf.tasks.map((t: { train_examples: number; validation_examples: number }) => [t.train_examples, t.validation_examples]), [[36, 4], [40, 10]]);
    const want = formula([36, 40], 1 / 2, [1, 2]);
    tf.tasks.forEach((t: { probability: number }, i: number) => assert.ok(Math.abs(t.probability - want[i]!) < 1e-12));
    assert.deepEqual(tf.tasks[0].label_words, { ham: 'normal', spam: 'spam' });
    assert.equal(tf.tasks[0].label_cue, '\nSpam?');
    assert.deepEqual(JSON.parse(readFileSync(join(out, 'adapter', 'tasks.json'), 'utf8')), tf);

    const evals = readMetrics(join(out, 'metrics.jsonl')).records.filter((m) => m.kind === 'eval') as Record<string, number>[];
    assert.deepEqual(evals.map((e) => e.step), [3, 6]);
    for (const e of evals) {
      for (const k of ['loss/sms', 'perplexity/sms', 'accuracy/sms', 'loss/gsm', 'perplexity/gsm']) assert.equal(typeof e[k], 'number', k);
      assert.ok(!('accuracy/gsm' in e), 'a task without labels has no accuracy');
      assert.ok(Math.abs(e.loss! - (e['loss/sms']! + e['loss/gsm']!) / 2) < 1e-12);
      assert.equal(e.accuracy, e['accuracy/sms']);
    }
    const final = evals[1]!;
    const report = JSON.parse(readFileSync(join(out, 'training_report.json'), 'utf8'));
    assert.deepEqual(report.tasks.map((t: { name: string; final_eval: Record<string, number> }) => [t.name, t.final_eval.loss]), [['sms', final['loss/sms']], ['gsm', final['loss/gsm']]]);
    assert.equal(report.tasks[0].final_eval.accuracy, final['accuracy/sms']);
    const svg = readFileSync(join(out, 'curves.svg'), 'utf8');
    for (const s of ['eval loss/sms', 'eval loss/gsm', 'accuracy/sms']) assert.ok(svg.includes(s), s);

    const evalArgs = ['eval', ...MODEL, '--adapter', join(out, 'adapter'), '--data', join(dir, 'gsm-val.jsonl'), '--seq-len', '64', '--json'];
    const byName = await cli(...evalArgs, '--task', 'gsm');
    assert.equal(byName.code, 0, byName.err);
    const gsm = JSON.parse(byName.out);
    assert.equal(gsm.task, 'gsm');
    assert.equal(gsm.task_id, 1);
    assert.ok(Math.abs(gsm.loss - final['loss/gsm']!) < 1e-5, `eval --task gsm ${gsm.loss} vs ${final['loss/gsm']}`);
    const byId = JSON.parse((await cli(...evalArgs, '--task-id', '1')).out);
    assert.equal(byId.loss, gsm.loss);
    // as the other task (its id and prefix) the same data scores differently
    const asSms = JSON.parse((await cli(...evalArgs, '--task', 'sms')).out);
    assert.notEqual(asSms.loss, gsm.loss);
    const sms = await cli('eval', ...MODEL, '--adapter', join(out, 'adapter'), '--data', join(dir, 'sms.tsv'), '--format', 'tsv', '--no-quote', '--text-column', 'SMS', '--label-column', 'Label', '--seq-len', '64', '--task', 'sms', '--json');
    assert.equal(sms.code, 0, sms.err);
    assert.equal(typeof JSON.parse(sms.out).accuracy, 'number', 'the task\'s label words score the labels');

    // an adapter folder that lost its tasks.json finds its run folder's
    const copy = join(tmp, 'cli-run-copy');
    cpSync(out, copy, { recursive: true });
    rmSync(join(copy, 'adapter', 'tasks.json'));
    const fromRun = JSON.parse((await cli('eval', ...MODEL, '--adapter', join(copy, 'adapter'), '--data', join(dir, 'gsm-val.jsonl'), '--seq-len', '64', '--json', '--task', 'gsm')).out);
    assert.equal(fromRun.loss, gsm.loss);

    const bad = await cli(...evalArgs, '--task-id', '2');
    assert.equal(bad.code, 1);
    assert.match(bad.err, /--task-id must be an integer in \[0, 1\] \(the tasks of .*tasks\.json\), got "2"/);
    assert.match((await cli(...evalArgs, '--task', 'nope')).err, /--task nope: no such task in .*tasks\.json \(tasks: sms, gsm\)/);
    // away from its run folder and without tasks.json, the adapter's config still bounds --task-id
    const bare = join(tmp, 'bare-adapter');
    cpSync(join(out, 'adapter'), bare, { recursive: true });
    rmSync(join(bare, 'tasks.json'));
    const noFile = ['eval', ...MODEL, '--adapter', bare, '--data', join(dir, 'gsm-val.jsonl'), '--seq-len', '64', '--json'];
    assert.match((await cli(...noFile, '--task-id', '5')).err, /--task-id must be an integer in \[0, 1\] \(n_tasks of .*adapter_config\.json\), got "5"/);
    assert.match((await cli(...noFile, '--task', 'gsm')).err, /--task gsm: neither .* nor its run folder has a tasks\.json/);
    const routed = JSON.parse((await cli(...noFile, '--task-id', '0')).out);
    assert.equal(routed.task_id, 0);
    // a task-routed adapter evaluated with no task says it needs one
    assert.match((await cli(...noFile)).err, /routes by task \(n_tasks 2\) but the forward was given no task ids/);
  });

  it('--resume continues a multi-task run with its settings and names a changed task setting', async () => {
    const again = await cli(...TRAIN, '--out', out, '--resume');
    assert.equal(again.code, 0, again.err);
    writeManifest(3);
    const changed = await cli(...TRAIN, '--out', out, '--resume');
    writeManifest(2);
    assert.equal(changed.code, 1);
    assert.match(changed.err, /the weight of task gsm was 2, now 3/);
  });

  it('--data NAME=FILE per task, --label-words NAME=FILE; a plain --data FILE still trains one task without tasks.json', async () => {
    const o = join(tmp, 'cli-named');
    const r = await cli('train', ...COMMON, '--method', 'lora', '--r', '2', '--steps', '2', '--data', `sms=${join(dir, 'sms.jsonl')}`, '--data', `gsm=${join(dir, 'gsm.jsonl')}`,
      '--label-words', `sms=${join(dir, 'words.json')}`, '--val-data', `gsm=${join(dir, 'gsm-val.jsonl')}`, '--task-sampling', 'uniform', '--out', o);
    assert.equal(r.code, 0, r.err);
    const tf = JSON.parse(readFileSync(join(o, 'tasks.json'), 'utf8'));
    assert.deepEqual(tf.tasks.map((t: { name: string; probability: number; validation_examples: number }) => [t.name, t.probability, t.validation_examples]), [['sms', 0.5, 4], ['gsm', 0.5, 10]]);
    assert.deepEqual(tf.tasks[0].label_words, { ham: 'normal', spam: 'spam' });
    assert.equal(tf.task_prefix, false);
    const single = join(tmp, 'cli-single');
    const s = await cli('train', ...COMMON, '--method', 'lora', '--r', '2', '--steps', '2', '--data', join(dir, 'gsm.jsonl'), '--out', single);
    assert.equal(s.code, 0, s.err);
    assert.ok(!existsSync(join(single, 'tasks.json')));
    const ev = readMetrics(join(single, 'metrics.jsonl')).records.filter((m) => m.kind === 'eval');
    assert.deepEqual(Object.keys(ev[0]!).sort(), ['kind', 'loss', 'perplexity', 'step']);
  });

  it('bad task input fails before training with an error naming the field', async () => {
    const j = (name: string, v: unknown) => {
      const p = join(dir, name);
      writeFileSync(p, typeof v === 'string' ? v : JSON.stringify(v));
      return p;
    };
    const empty = j('empty.jsonl', '');
    const base = ['train', ...COMMON];
    const sms = join(dir, 'sms.jsonl');
    const gsm = join(dir, 'gsm.jsonl');
    const cases: [string[], RegExp][] = [
      [['--data', `=${sms}`], /--data =.*sms\.jsonl: the task name is empty/],
      [['--data', `sms=${sms}`, '--data', `sms=${gsm}`], /--data sms=.*gsm\.jsonl: task name "sms" is already the name of --data sms=.*sms\.jsonl; task names must differ/],
      [['--data', sms, '--data', `gsm=${gsm}`], /--data .*sms\.jsonl: with several data files each one names its task, as --data NAME=FILE/],
      [['--data', `a b=${sms}`], /task name "a b" may hold only letters, digits/],
      [['--data', `sms=${sms}`, '--data', `gsm=${gsm}`, '--label-words', `nope=${join(dir, 'words.json')}`], /--label-words nope=.*: no task is named "nope" \(tasks: sms, gsm\)/],
      [['--data', `sms=${sms}`, '--data', `gsm=${gsm}`, '--val-data', join(dir, 'gsm-val.jsonl')], /--val-data .*: with several tasks, name the task it is for/],
      [['--data', `sms=${sms}`, '--data', `e=${empty}`], /task "e" \(--data e=.*empty\.jsonl\): .*empty\.jsonl: the data file is empty/],
      [['--tasks', j('m-field.json', { tasks: [{ name: 'sms', data: 'sms.jsonl', lable_words: 'words.json' }] })], /tasks\[0\]: unknown field "lable_words"/],
      [['--tasks', j('m-dup.json', { tasks: [{ name: 'x', data: 'sms.jsonl' }, { name: 'x', data: 'gsm.jsonl' }] })], /tasks\[1\]\.name: task name "x" is already the name of .*tasks\[0\]\.name/],
      [['--tasks', j('m-nodata.json', { tasks: [{ name: 'x' }] })], /tasks\[0\]\.data is missing/],
      [['--tasks', j('m-weight.json', { tasks: [{ name: 'x', data: 'sms.jsonl', weight: 0 }] })], /tasks\[0\]\.weight must be a number > 0/],
      [['--tasks', j('m-empty.json', { tasks: [] })], /"tasks" is empty/],
      [['--tasks', j('m-top.json', { tasks: [{ name: 'x', data: 'sms.jsonl' }], sampling: 'size' })], /unknown field\(s\) "sampling"/],
      [['--tasks', manifest, '--data', gsm], /either as --data .* or as --tasks MANIFEST, not both/],
      [['--tasks', manifest, '--task-sampling', 'size', '--task-temperature', '2'], /--task-temperature applies to --task-sampling temperature, not size/],
      [['--tasks', manifest, '--task-sampling', 'random'], /--task-sampling must be size, temperature, uniform, got "random"/],
      [['--tasks', manifest, '--task-temperature', '0'], /--task-temperature must be a number > 0, got "0"/],
      [['--tasks', manifest, '--bucket'], /--bucket .* does not apply/],
      [['--data', gsm, '--task-prefix'], /--task-prefix is for multi-task training/],
      [[], /no data: give --data FILE/],
    ];
    for (const [args, re] of cases) {
      const o = join(tmp, `bad-${cases.findIndex((c) => c[0] === args)}`);
      const r = await cli(...base, ...args, '--out', o);
      assert.equal(r.code, 1, `${args.join(' ')}: ${r.err}`);
      assert.match(r.err, re, args.join(' '));
      assert.ok(!existsSync(o), `${args.join(' ')} left ${o}`);
    }
  });
});

describe('loss averaging', () => {
  // logits [2, 3, 4]: row 0 counts one token, row 1 counts three
  const V = 4;
  const rng = new ak.Rng(5);
  const logitsData = Array.from({ length: 2 * 3 * V }, () => rng.normal());
  const targetsData = [1, -100, -100, 0, 3, 2];
  const logSoftmaxAt = (at: number, y: number) => {
    const row = logitsData.slice(at * V, at * V + V);
    const m = Math.max(...row);
    return row[y]! - m - Math.log(row.reduce((s, v) => s + Math.exp(v - m), 0));
  };
  const nll = targetsData.map((y, i) => (y === -100 ? null : -logSoftmaxAt(i, y)));

  it('"row" is the mean over rows of each row\'s mean, "token" the mean over tokens (hand computation)', () => {
    const logits = ak.tensor(logitsData, [2, 3, V]);
    const targets = ak.tensor(targetsData, [2, 3], { dtype: 'i32' });
    const row0 = nll[0]!;
    const row1 = (nll[3]! + nll[4]! + nll[5]!) / 3;
    const byToken = (nll[0]! + nll[3]! + nll[4]! + nll[5]!) / 4;
    assert.ok(Math.abs(ak.tokenLoss(logits, targets, 'row').item() - (row0 + row1) / 2) < 1e-5);
    assert.ok(Math.abs(ak.tokenLoss(logits, targets, 'token').item() - byToken) < 1e-5);
    // the two differ here, so the check can tell them apart
    assert.ok(Math.abs((row0 + row1) / 2 - byToken) > 1e-3);
  });

  it('a row with no counted token does not count, and the gradient of "row" is that of the weighted mean', () => {
    const logits = ak.parameter(ak.tensor([...logitsData, ...logitsData.slice(0, 3 * V)], [3, 3, V]));
    const targets = ak.tensor([...targetsData, -100, -100, -100], [3, 3], { dtype: 'i32' });
    const loss = ak.tokenLoss(logits, targets, 'row');
    assert.ok(Math.abs(loss.item() - (nll[0]! + (nll[3]! + nll[4]! + nll[5]!) / 3) / 2) < 1e-5);
    loss.backward();
    const g = logits.grad!.toArray() as Float32Array;
    // d/dlogit of position 0 (row 0, weight 1/2): (softmax - onehot) / 2
    const row = logitsData.slice(0, V);
    const m = Math.max(...row);
    const z = row.reduce((s, v) => s + Math.exp(v - m), 0);
    for (let k = 0; k < V; k++) assert.ok(Math.abs(g[k]! - (Math.exp(row[k]! - m) / z - (k === 1 ? 1 : 0)) / 2) < 1e-5);
    assert.ok(Array.from(g.slice(6 * V)).every((v) => v === 0), 'the empty row gets no gradient');
  });

  it('the CLI refuses a --loss-average other than token or row, by name, before reading anything', async () => {
    const r = await cli('train', '--model', 'x', '--data', 'y', '--method', 'lora', '--loss-average', 'rows', '--out', join(mkdtempSync(join(tmpdir(), 'adaptkit-la-')), 'o'));
    assert.notEqual(r.code, 0);
    assert.match(r.err, /--loss-average must be token or row, got "rows"/);
  });
});
