/**
 * Classification: label words of many tokens scored as whole sequences, label maps, the
 * classification head on decoders, collision errors, and EOS after label words.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as ak from '../src/index.js';
import { Engine } from '../src/serve/engine.js';
import { CausalLMForSequenceClassification } from '../src/models/sequence-classification.js';
import { labelLogProbs, labelAccuracy } from '../src/train/evaluate.js';
import { readLabelWords } from '../src/train/examples.js';
import { labelFirstTokens, labelSequences } from '../src/train/run.js';
import { runCli as cli } from './cli-run.js';

const FIX = fileURLToPath(new URL('./fixtures/', import.meta.url));
const tmp = mkdtempSync(join(tmpdir(), 'adaptkit-cls-'));
const DATA = ak.dataDir();
const BIN = join(DATA, 'models', 'stories260K', 'stories260K.bin');
const TOK = join(DATA, 'models', 'stories260K', 'tok512.bin');
const tok = ak.loadTokenizer(BIN, TOK, 512);
const stories = () => ak.loadModel(BIN).model;
const BANKING = join(DATA, 'datasets', 'banking77');
const SMS = join(DATA, 'datasets', 'sms_spam', 'SMSSpamCollection');
const smsRecords = ak.readRecords(SMS, { format: 'tsv', quote: false, textColumn: 'SMS', labelColumn: 'Label' }).records as Extract<ak.DataRecord, { kind: 'label' }>[];


/** SMS records as a TSV file the CLI reads with --text-column SMS --label-column Label --no-quote. */
function smsFile(name: string, rs: readonly { text: string; label: string }[]): string {
  const p = join(tmp, name);
  writeFileSync(p, `Label\tSMS\n${rs.map((r) => `${r.label}\t${r.text}`).join('\n')}\n`);
  return p;
}

/** log p(seq | prompt) from one plain forward over prompt + seq, per-token log-softmax in float64. */
function independentLogProb(model: { forward(ids: ak.Tensor): ak.Tensor }, prompt: number[], seq: number[]): number {
  const ids = [...prompt, ...seq];
  const v = ak.tidy(() => ak.noGrad(() => {
    const l = model.forward(ak.tensor(ids, [1, ids.length], { dtype: 'i32' }));
    // prompt tuning puts virtual positions in front: the real ones are the last ids.length
    return ak.narrow(l, 1, l.shape[1]! - ids.length, ids.length).toArray();
  }));
  const V = v.length / ids.length;
  let sum = 0;
  for (let j = 0; j < seq.length; j++) {
    const at = (prompt.length - 1 + j) * V;
    let m = -Infinity;
    for (let i = 0; i < V; i++) m = Math.max(m, v[at + i]!);
    let s = 0;
    for (let i = 0; i < V; i++) s += Math.exp(v[at + i]! - m);
    sum += v[at + seq[j]!]! - m - Math.log(s);
  }
  return sum;
}

describe('label words of many tokens', () => {
  it('the whole-sequence scorer equals summed log-softmax of a plain forward (llama, GPT-2, prompt tuning)', () => {
    const seqs = [[5, 9, 11], [5, 9, 12, 3], [7], [5, 2]];
    const prompts = [[1, 4, 8, 20, 6], [1, 30], [1, 14, 15, 16, 17, 18, 19, 21]];
    const examples = prompts.map((p) => ({ head: p.slice(0, 1), body: p.slice(1), tail: [], completion: [] }));
    const cases: [string, ak.AdapterModel][] = [
      ['llama-gqa', new ak.AdapterModel(ak.loadModel(join(FIX, 'models', 'llama-gqa')).model)],
      ['gpt2', new ak.AdapterModel(ak.loadModel(join(FIX, 'models', 'gpt2')).model)],
    ];
    const pt = new ak.AdapterModel(ak.loadModel(join(FIX, 'models', 'llama-gqa')).model);
    pt.add('p', { peft_type: 'PROMPT_TUNING', num_virtual_tokens: 3, prompt_tuning_init: 'SAMPLE_VOCAB' }, { seed: 2 });
    cases.push(['llama-gqa + prompt tuning', pt]);
    for (const [name, am] of cases) {
      // a prompt batch of 2 puts prompts of different lengths, so padding, in one batch
      const got = labelLogProbs(am, examples, seqs, 0, 2);
      prompts.forEach((p, i) => seqs.forEach((q, l) => {
        const want = independentLogProb(am, p, q);
        assert.ok(Math.abs(got[i * seqs.length + l]! - want) < 1e-3, `${name}: prompt ${i}, label ${l}: ${got[i * seqs.length + l]} vs ${want}`);
      }));
    }
  });

  it('BANKING77: 12 intents that share first tokens train to well above chance with automatic label words', () => {
    // 12 intents whose label names begin with only 5 distinct tokens (" c", " t", " to", " e", " p")
    const intents = ['card_arrival', 'card_linking', 'cash_withdrawal_charge', 'change_pin', 'country_support', 'top_up_failed',
      'top_up_limits', 'transfer_timing', 'terminate_account', 'exchange_rate', 'pending_transfer', 'pin_blocked'];
    const read = (f: string) => ak.readRecords(join(BANKING, f), { format: 'tsv' }).records.filter((r) => r.kind === 'label' && intents.includes(r.label));
    const make = (rs: ak.DataRecord[]) => ak.fitExamples(rs.map((r) => ak.toExample(r, tok)), 64, true).examples;
    const train = make(read('train.tsv'));
    const heldOut = ak.splitExamples(make(read('test.tsv')), 120, 0).validation;
    const labels = [...intents].sort();
    assert.throws(() => labelFirstTokens(train, labels), /begin with the same token/);
    const r = ak.runTraining({
      model: stories(), tokenizer: tok, method: 'lora', methodOptions: { r: 8, alpha: 16, targets: 'all-linear' }, train, validation: heldOut,
      outDir: join(tmp, 'banking'), labels, config: { steps: 100, batchSize: 16, lr: 5e-3, warmupSteps: 10, evalEvery: 100, maxLen: 64, seed: 0 },
    });
    // chance is 1/12 = 0.083; seeds 0-4 gave 0.70-0.83 at 100 steps
    const acc = (r.report.final_eval as { accuracy: number }).accuracy;
    assert.ok(acc >= 0.4, `held-out accuracy ${acc}`);
  });

  it('labelAccuracy scores by the first token when those differ, else by the whole sequence', () => {
    const model = new ak.AdapterModel(ak.loadModel(join(FIX, 'models', 'llama-gqa')).model);
    const ex = [{ head: [1], body: [4, 8], tail: [], completion: [], label: 'a' }];
    assert.equal(labelAccuracy(model, ex, new Map([['a', [5, 9]], ['b', [6, 9]]]), 0).scoring, 'first-token');
    assert.equal(labelAccuracy(model, ex, new Map([['a', [5, 9]], ['b', [5, 10]]]), 0).scoring, 'sequence');
  });
});

describe('collisions', () => {
  const example = (label: string) => ak.toExample({ kind: 'label', text: 'hi', label }, tok);

  it('the first-token error names only the labels that collide', () => {
    const labels = ['card_arrival', 'card_linking', 'exchange_rate', 'exchange_charge', 'atm_support', 'lost_or_stolen_card'];
    assert.throws(() => labelFirstTokens(labels.map(example), labels), (e: Error) => {
      for (const l of labels.slice(0, 4)) assert.ok(e.message.includes(l), `${l} collides: ${e.message}`);
      for (const l of labels.slice(4)) assert.ok(!e.message.includes(l), `${l} does not collide: ${e.message}`);
      return true;
    });
  });

  it('for all 77 BANKING77 intents it shows a few labels of each collision, not all 77', () => {
    const labels = [...new Set(ak.readRecords(join(BANKING, 'dev.tsv'), { format: 'tsv' }).records.map((r) => (r as { label: string }).label))].sort();
    assert.equal(labels.length, 77);
    assert.throws(() => labelFirstTokens(labels.map(example), labels), (e: Error) => {
      const named = labels.filter((l) => new RegExp(`(^|[ (,;])${l}([,;)]| and)`).test(e.message));
      assert.ok(named.length > 0 && named.length <= 30, `${named.length} labels named: ${e.message}`);
      return true;
    });
    // whole sequences tell all 77 apart
    assert.equal(labelSequences(labels.map(example), labels).size, 77);
  });

  it('labels trained on the same tokens are an error naming those two', () => {
    const words = new Map([['a', 'same words'], ['b', 'same words'], ['c', 'other']]);
    const ex = ['a', 'b', 'c'].map((label) => ak.toExample({ kind: 'label', text: 'x', label }, tok, { labelWords: words }));
    assert.throws(() => labelSequences(ex, ['a', 'b', 'c']), /labels "a" and "b" are trained on the same tokens/);
  });
});

describe('label maps', () => {
  it('--label-words FILE (JSON) trains on the words and eval scores by them; a TSV map reads the same', async () => {
    // balanced, so that chance is 0.5
    const spam = smsRecords.filter((x) => x.label === 'spam').slice(0, 350);
    const rs = ak.splitExamples([...spam, ...smsRecords.filter((x) => x.label === 'ham').slice(0, 350)], 100, 1);
    const data = smsFile('sms-train.tsv', rs.train);
    const held = smsFile('sms-held.tsv', rs.validation);
    const map = join(tmp, 'words.json');
    writeFileSync(map, JSON.stringify({ ham: 'a normal message', spam: 'junk offer' }));
    const tsv = join(tmp, 'words.tsv');
    writeFileSync(tsv, 'ham\ta normal message\nspam\t"junk offer"\n');
    assert.deepEqual([...readLabelWords(tsv)], [...readLabelWords(map)]);
    const cols = ['--text-column', 'SMS', '--label-column', 'Label', '--no-quote', '--label-cue', '\nSpam or ham?', '--seq-len', '64'];
    const out = join(tmp, 'words-run');
    const r = await cli('train', '--model', BIN, '--tokenizer', TOK, '--data', data, ...cols, '--label-words', map, '--method', 'lora', '--r', '8',
      '--targets', 'all-linear', '--steps', '40', '--lr', '5e-3', '--warmup', '10', '--val-split', '0', '--out', out, '--json');
    assert.equal(r.code, 0, r.err);
    const saved = JSON.parse(readFileSync(join(out, 'adapter', 'labels.json'), 'utf8'));
    assert.deepEqual(saved.label_words, { ham: 'a normal message', spam: 'junk offer' });
    const evalArgs = ['eval', '--model', BIN, '--tokenizer', TOK, '--adapter', join(out, 'adapter'), '--data', held, ...cols, '--json'];
    // the map saved with the adapter is used by default, the same as passing it
    const byDefault = JSON.parse((await cli(...evalArgs)).out);
    const given = JSON.parse((await cli(...evalArgs, '--label-words', map)).out);
    assert.equal(given.accuracy, byDefault.accuracy);
    assert.ok(given.accuracy >= 0.75, `accuracy ${given.accuracy}`);
    // swapped words turn the predictions around (not exactly: the words' lengths change where
    // long messages are cut): the model learned the words
    const swapped = join(tmp, 'swapped.json');
    writeFileSync(swapped, JSON.stringify({ ham: 'junk offer', spam: 'a normal message' }));
    const sw = JSON.parse((await cli(...evalArgs, '--label-words', swapped)).out);
    assert.ok(sw.accuracy < 0.5, `swapped accuracy ${sw.accuracy}`);
    const missing = await cli('train', '--model', BIN, '--tokenizer', TOK, '--data', data, ...cols, '--label-words', join(tmp, 'nope.json'), '--out', join(tmp, 'x'));
    assert.match(missing.err, /label words .*nope\.json: no such file/);
  });
});

describe('classification head on a decoder', () => {
  it('puts `score` on the last real token, at transformers\' module paths', () => {
    const gpt2 = new CausalLMForSequenceClassification(ak.loadModel(join(FIX, 'models', 'gpt2')).model, 3);
    const names = gpt2.namedParameters().map(([k]) => k);
    assert.ok(names.includes('transformer.h.0.attn.c_attn.weight') && names.includes('score.weight') && !names.some((n) => n.startsWith('lm_head')), names.join(' '));
    const ids = ak.tensor([5, 9, 11, 0, 0, 7, 8, 9, 10, 12], [2, 5], { dtype: 'i32' });
    const mask = ak.tensor([1, 1, 1, 0, 0, 1, 1, 1, 1, 1], [2, 5]);
    const padded = gpt2.forward(ids, { attentionMask: mask }).toArray();
    const alone = gpt2.forward(ak.tensor([5, 9, 11], [1, 3], { dtype: 'i32' })).toArray();
    for (let k = 0; k < 3; k++) assert.ok(Math.abs(padded[k]! - alone[k]!) < 1e-5, `row 0 logit ${k}: ${padded[k]} vs ${alone[k]}`);
    assert.equal(ak.describeModel(gpt2).classifierHead, 'score');
  });

  it('trains on SMS spam, saves the head as modules_to_save "score" (SEQ_CLS), and `adaptkit eval` reloads it to the same accuracy', async () => {
    const spam = smsRecords.filter((r) => r.label === 'spam');
    const ham = smsRecords.filter((r) => r.label === 'ham').slice(0, spam.length);
    const labels = ['ham', 'spam'];
    const { train, validation } = ak.splitExamples([...spam, ...ham], 200, 0);
    const model = new CausalLMForSequenceClassification(stories(), 2);
    const r = ak.runTraining({
      model, tokenizer: tok, method: 'lora', methodOptions: { r: 8, alpha: 16, targets: 'all-linear' },
      train: ak.classificationExamples(train, tok, labels, 64), validation: ak.classificationExamples(validation, tok, labels, 64),
      outDir: join(tmp, 'head'), labels, config: { steps: 40, batchSize: 16, lr: 1e-2, warmupSteps: 5, evalEvery: 40, seed: 0 },
    });
    // balanced classes: chance is 0.5; seeds 0-2 gave 0.84-0.90
    const acc = (r.report.final_eval as { accuracy: number }).accuracy;
    assert.ok(acc >= 0.7, `held-out accuracy ${acc}`);
    const cfg = JSON.parse(readFileSync(join(r.adapterDir, 'adapter_config.json'), 'utf8'));
    assert.equal(cfg.task_type, 'SEQ_CLS');
    assert.deepEqual(cfg.modules_to_save, ['score']);
    const keys = ak.readTensorMap(join(r.adapterDir, 'adapter_model.safetensors'));
    assert.deepEqual(keys.get('base_model.model.score.weight')?.shape, [2, 64]);
    assert.ok([...keys.keys()].some((k) => k.startsWith('base_model.model.model.layers.0.self_attn.q_proj.lora_A')), [...keys.keys()].join(' '));
    const e = await cli('eval', '--model', BIN, '--tokenizer', TOK, '--adapter', r.adapterDir, '--data', smsFile('head-val.tsv', validation),
      '--text-column', 'SMS', '--label-column', 'Label', '--no-quote', '--seq-len', '64', '--batch-size', '32', '--json');
    assert.equal(e.code, 0, e.err);
    assert.equal(JSON.parse(e.out).accuracy, acc);
  });
});

describe('EOS after label words', () => {
  it('a label example\'s completion ends with EOS (and the label map\'s words before it)', () => {
    const e = ak.toExample({ kind: 'label', text: 'see you at 5', label: 'ham' }, tok, { labelCue: '\nSpam or ham?' });
    assert.equal(e.completion[e.completion.length - 1], ak.textEnd(tok));
    assert.equal(tok.decode(e.completion.slice(0, -1)), ' ham');
    const w = ak.toExample({ kind: 'label', text: 'see you at 5', label: 'ham' }, tok, { labelWords: new Map([['ham', 'fine']]) });
    assert.equal(w.completion.at(-1), ak.textEnd(tok));
    assert.equal(tok.decode(w.completion.slice(0, -1)), ' fine');
    assert.notEqual(ak.toExample({ kind: 'label', text: 'x', label: 'ham' }, tok, { eos: false }).completion.at(-1), ak.textEnd(tok));
  });

  it('greedy generation with a demo-style adapter stops right after the label', () => {
    // llama2.c checkpoints end every text with BOS (run.c stops generating at it), so label
    // training ends with BOS and generation stops there
    const endOfText = tok;
    assert.equal(ak.textEnd(tok), tok.bosId);
    const make = (rs: ak.DataRecord[]) => ak.fitExamples(rs.map((r) => ak.toExample(r, endOfText, { labelCue: '\nSpam or ham?' })), 64, true).examples;
    const held = make(smsRecords.slice(0, 20));
    const model = stories();
    const r = ak.runTraining({
      model, tokenizer: endOfText, method: 'lora', methodOptions: { r: 8, alpha: 16, targets: 'all-linear' }, train: make(smsRecords.slice(20)),
      validation: [], outDir: join(tmp, 'eos'), labels: ['ham', 'spam'], config: { steps: 30, batchSize: 16, lr: 5e-3, warmupSteps: 10, maxLen: 64, seed: 0 },
    });
    const am = new ak.AdapterModel(model);
    am.load(r.adapterDir);
    for (const e of held) {
      const g = ak.generate(am, endOfText, [...e.head, ...e.body, ...e.tail], { maxTokens: 8 });
      assert.equal(g.finishReason, 'stop', `"${g.text}" ran to the token limit`);
      assert.ok(g.text === ' ham' || g.text === ' spam', `generated "${g.text}"`);
    }
    // the server's engine stops there too
    am.setActive([]);
    const adapters = join(tmp, 'eos-served');
    cpSync(r.adapterDir, join(adapters, 'sms'), { recursive: true });
    const engine = new Engine(model as never, tok, { maxBatch: 4, kvCacheMb: 2, blockSize: 8, maxLoadedAdapters: 2, maxRank: 8, maxQueue: 8, contextLength: 256, adapterDir: adapters });
    const done: { text: string; finishReason: string }[] = [];
    held.slice(0, 4).forEach((e, i) => engine.submit({ id: String(i), promptIds: [...e.head, ...e.body, ...e.tail], adapter: 'sms', maxTokens: 8, temperature: 0 }, () => {}, (d) => done.push(d), (err) => { throw err; }));
    while (!engine.idle) engine.step();
    engine.store.detach();
    assert.equal(done.length, 4);
    for (const d of done) assert.ok(d.finishReason === 'stop' && (d.text === ' ham' || d.text === ' spam'), `served "${d.text}" (${d.finishReason})`);
  });

  it('cleans up', () => rmSync(tmp, { recursive: true, force: true }));
});
