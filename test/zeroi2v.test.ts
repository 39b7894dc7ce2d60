/**
 * ZeroI2V-style linear adapters: the contract, exact folding into the neighbouring projections
 * (each place alone and all four, on Llama with GQA, GPT-2's fused Conv1D c_attn and Qwen2's
 * q/k/v biases), the exact PEFT LoRA export and its ranks, shared parameters, config errors, and
 * CLI training as a plugin followed by `adaptkit merge`.
 */
import '../src/adapters/methods/zeroi2v.js';
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as ak from '../src/index.js';
import { AdapterModel, AdaptedLayer, readTensorMap } from '../src/adapters/index.js';
import { PLACES, type Place, ZeroI2VAdapter, saveZeroi2vAsLora, zeroi2vToLora } from '../src/adapters/methods/zeroi2v.js';
import { type AdapterDescriptor, Linear, type Module } from '../src/nn/index.js';
import { loadModel } from '../src/models/load.js';
import { FIX, contractSuite, logits, perturb, registryCases } from './contract.js';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const PLUGIN = join(ROOT, 'src/adapters/methods/zeroi2v.ts');
const tmp = mkdtempSync(join(tmpdir(), 'adaptkit-zeroi2v-'));

type Fixture = 'llama-gqa' | 'gpt2' | 'qwen2-bias';

function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  assert.equal(a.length, b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  return m;
}

/**
 * Equal within 1e-5 of the logits' scale (1e-5 absolute for logits up to 1): folding reorders
 * float32 sums, which moves a logit of 18 by a few ulps (2e-6 each) whatever the fold's precision.
 */
function assertSame(actual: ArrayLike<number>, expected: ArrayLike<number>, what: string, rel = 1e-5): void {
  let scale = 1;
  for (let i = 0; i < expected.length; i++) scale = Math.max(scale, Math.abs(expected[i]!));
  const d = maxAbsDiff(actual, expected);
  assert.ok(d <= rel * scale, `${what}: max |Δlogit| ${d} > ${rel} x ${scale}`);
}

/** A model whose descriptor is changed by `edit` (the roles it publishes). */
function withDescriptor(model: Module, edit: (d: AdapterDescriptor) => AdapterDescriptor): Module {
  const own = (model as unknown as { adapterDescriptor(): AdapterDescriptor }).adapterDescriptor.bind(model);
  Object.assign(model, { adapterDescriptor: () => edit(own()) });
  return model;
}

/**
 * Perturb, then check: merging gives a plain model of the base's size with the same logits, and
 * the exported LoRA loaded into a fresh base does too. Returns the exported config.
 */
function checkFolds(fixture: Fixture, config: Record<string, unknown>, label: string, model?: Module): Record<string, unknown> {
  const m = model ?? loadModel(join(FIX, fixture)).model;
  const am = new AdapterModel(m);
  const before = logits(am);
  const baseSize = am.model.numParameters();
  am.add('z', config, { seed: 1 });
  assertSame(logits(am), before, `${label} zero-init`, 0);
  perturb(am, 2);
  const adapted = logits(am);
  assert.ok(maxAbsDiff(adapted, before) > 1e-3, `${label}: the perturbed adapter changes the logits`);

  const dir = join(tmp, `lora-${label}`);
  saveZeroi2vAsLora(am, 'z', dir);
  const cfg = JSON.parse(readFileSync(join(dir, 'adapter_config.json'), 'utf8')) as Record<string, unknown>;
  const tensors = readTensorMap(join(dir, 'adapter_model.safetensors'));
  const r = config.r as number;
  const pattern = cfg.rank_pattern as Record<string, number>;
  for (const path of cfg.target_modules as string[]) {
    const rank = pattern[path] ?? r;
    const A = tensors.get(`base_model.model.${path}.lora_A.weight`)!;
    const B = tensors.get(`base_model.model.${path}.lora_B.weight`)!;
    assert.equal(A.shape[0], rank, `${label} ${path}: rank of A`);
    assert.equal(B.shape[1], rank, `${label} ${path}: rank of B`);
  }
  const fresh = new AdapterModel(loadModel(join(FIX, fixture)).model);
  fresh.load(dir, 'lora');
  assertSame(logits(fresh), adapted, `${label} exported LoRA`);

  const merged = am.merge();
  assert.ok(merged.namedModules().every(([, x]) => !(x instanceof AdaptedLayer)), `${label}: the merged model is plain`);
  assert.equal(merged.numParameters(), baseSize, `${label}: folding adds no parameters`);
  assertSame(logits(am), adapted, `${label} merged`);
  am.unmerge();
  assertSame(logits(am), adapted, `${label} unmerged`, 0);
  return cfg;
}

contractSuite(registryCases().filter((c) => c.config.peft_type === 'ZEROI2V'));

describe('ZeroI2V linear adapters', () => {
  for (const fixture of ['llama-gqa', 'gpt2', 'qwen2-bias'] as const) {
    it(`${fixture}: all four places fold exactly, and the exported PEFT LoRA has rank r per projection and the same logits`, () => {
      const cfg = checkFolds(fixture, { peft_type: 'ZEROI2V', r: 4 }, `all-${fixture}`);
      assert.equal(cfg.peft_type, 'LORA');
      assert.equal(cfg.r, 4);
      assert.equal(cfg.lora_alpha, 4);
      assert.deepEqual(cfg.rank_pattern, {}, 'the four places never put two adapters on one projection');
      const targets = cfg.target_modules as string[];
      if (fixture === 'gpt2') {
        assert.equal(cfg.fan_in_fan_out, true);
        // the fused q/k/v projection takes the attention-input adapter as a whole; c_proj biases change
        assert.ok(targets.includes('transformer.h.0.attn.c_attn'));
        assert.equal(cfg.bias, 'lora_only');
        assert.equal(targets.length, 2 * 4);
      } else {
        assert.equal(cfg.fan_in_fan_out, false);
        // q/k/v biases (Qwen2) stay as they are: the adapters before them do not touch biases
        assert.equal(cfg.bias, 'none');
        assert.equal(targets.length, 2 * 7);
      }
    });
  }

  for (const place of PLACES) {
    for (const fixture of ['llama-gqa', 'gpt2'] as const) {
      it(`${place} alone on ${fixture} folds exactly, into its projections only`, () => {
        const cfg = checkFolds(fixture, { peft_type: 'ZEROI2V', r: 3, scale: 0.7, places: [place] }, `${place}-${fixture}`);
        const names = new Set((cfg.target_modules as string[]).map((p) => p.split('.').slice(-2).join('.')));
        const expected: Record<Place, Record<'llama-gqa' | 'gpt2', string[]>> = {
          attn_in: { 'llama-gqa': ['self_attn.q_proj', 'self_attn.k_proj', 'self_attn.v_proj'], gpt2: ['attn.c_attn'] },
          attn_out: { 'llama-gqa': ['self_attn.o_proj'], gpt2: ['attn.c_proj'] },
          mlp_in: { 'llama-gqa': ['mlp.gate_proj', 'mlp.up_proj'], gpt2: ['mlp.c_fc'] },
          mlp_out: { 'llama-gqa': ['mlp.down_proj'], gpt2: ['mlp.c_proj'] },
        };
        assert.deepEqual([...names].sort(), [...expected[place][fixture]].sort());
      });
    }
  }

  it('shares one adapter per place and block: counted, saved and trained once, under block keys', () => {
    const am = new AdapterModel(loadModel(join(FIX, 'llama-gqa')).model);
    const inst = am.add('z', { peft_type: 'ZEROI2V', r: 4 }, { seed: 1 }) as ZeroI2VAdapter;
    const params = inst.parameters();
    assert.equal(new Set(params).size, params.length, 'no parameter twice');
    // 2 blocks x 4 places x (D [4, 32] + U [32, 4])
    assert.equal(am.numTrainable('z'), 2 * 4 * 2 * 4 * 32);
    assert.deepEqual([...inst.stateDict().keys()].sort(), [0, 1].flatMap((l) => PLACES.flatMap((p) => [
      `base_model.model.model.layers.${l}.zeroi2v_${p}.down.weight`, `base_model.model.model.layers.${l}.zeroi2v_${p}.up.weight`,
    ])).sort());
    const q = inst.deltas.get('model.layers.1.self_attn.q_proj')!;
    assert.equal(q.input, inst.deltas.get('model.layers.1.self_attn.v_proj')!.input, 'q and v read through one adapter');
    assert.equal(q.input, inst.adapters.get('model.layers.1.zeroi2v_attn_in'));
    assert.equal(q.output, null);
    // the shared tensors belong to the instance, not to each delta, so the module tree does not repeat them
    assert.equal(q.parameters().length, 0);
    perturb(am, 5);
    // the shared D gets the gradient of all three reading projections: zero it for k and v only and the gradient changes
    const ids = ak.tensor([5, 17, 3, 44], [1, 4], { dtype: 'i32' });
    const grad = () => {
      for (const p of am.trainableParameters()) p.grad = null;
      ak.tidy(() => ak.sum(am.forward(ids)).backward());
      return q.input!.down.grad!.toArray() as Float32Array;
    };
    const all = Float32Array.from(grad());
    am.model.replace('model.layers.1.self_attn.k_proj', (am.model.get('model.layers.1.self_attn.k_proj') as AdaptedLayer).base_layer as Linear);
    am.model.replace('model.layers.1.self_attn.v_proj', (am.model.get('model.layers.1.self_attn.v_proj') as AdaptedLayer).base_layer as Linear);
    assert.ok(maxAbsDiff(grad(), all) > 1e-6, 'k and v contribute to the shared adapter\'s gradient');
  });

  it('a projection with adapters on both sides exports the combined rank-2r LoRA exactly', () => {
    // a descriptor that puts o_proj under mlp.up too: its input gets the mlp_in adapter, its output attn_out
    const model = withDescriptor(loadModel(join(FIX, 'llama-gqa')).model, (d) => ({ ...d, roles: { ...d.roles, 'mlp.up': ['up_proj', 'o_proj'] } }));
    const cfg = checkFolds('llama-gqa', { peft_type: 'ZEROI2V', r: 2, places: ['attn_out', 'mlp_in'] }, 'both-sides', model);
    assert.deepEqual(cfg.rank_pattern, { 'model.layers.0.self_attn.o_proj': 4, 'model.layers.1.self_attn.o_proj': 4 });
    assert.deepEqual(cfg.alpha_pattern, cfg.rank_pattern, 'scaling stays 1 at rank 2r');
  });

  it('the export refuses other methods and unknown names', () => {
    const am = new AdapterModel(loadModel(join(FIX, 'llama-gqa')).model);
    am.add('l', { peft_type: 'LORA', r: 2, target_modules: ['q_proj'] });
    assert.throws(() => zeroi2vToLora(am, 'l'), /adapter "l" is a LORA adapter, not ZEROI2V/);
    assert.throws(() => zeroi2vToLora(am, 'nope'), /no adapter named "nope"/);
  });

  it('refuses bad configs with errors that name the field', () => {
    const am = new AdapterModel(loadModel(join(FIX, 'llama-gqa')).model);
    const bad = (extra: Record<string, unknown>, re: RegExp) => assert.throws(() => am.add('z', { peft_type: 'ZEROI2V', ...extra }), re);
    bad({ places: ['attn_in', 'ffn_in'] }, /"places" has unknown place "ffn_in" \(known: "attn_in", "attn_out", "mlp_in", "mlp_out"\)/);
    bad({ places: [] }, /"places" must be a non-empty list/);
    bad({ places: 'attn_in' }, /"places" must be a non-empty list/);
    bad({ r: 0 }, /"r" must be a number >= 1, got 0/);
    bad({ r: 2.5 }, /"r" must be an integer/);
    bad({ scale: 'big' }, /"scale" must be a number/);
    bad({ dropout: 1 }, /"dropout" must be below 1/);
    bad({ target_modules: ['q_proj'] }, /"target_modules" does not apply to ZEROI2V.*"places"/);
    assert.equal(am.adapters.size, 0);

    // a model that does not say where its MLP input is
    const noMlp = withDescriptor(loadModel(join(FIX, 'llama-gqa')).model, (d) => {
      const roles = { ...d.roles };
      delete roles['mlp.up'];
      delete roles['mlp.gate'];
      return { ...d, roles };
    });
    const am2 = new AdapterModel(noMlp);
    assert.throws(() => am2.add('z', { peft_type: 'ZEROI2V' }), /"places": "mlp_in" needs the model's mlp\.up role, which the llama model does not publish/);
    const ok = am2.add('z', { peft_type: 'ZEROI2V', r: 2, places: ['attn_in', 'attn_out', 'mlp_out'] });
    assert.equal(ok.parameters().length, 2 * 3 * 2);
  });

  it('trains through the CLI as a plugin; merge and the LoRA export give the adapter\'s logits', () => {
    const D = join(ak.dataDir(), 'models', 'stories260K');
    const bin = join(D, 'stories260K.bin');
    const data = join(tmp, 'stories.jsonl');
    const lines = Array.from({ length: 16 }, (_, i) => JSON.stringify({ text: `Once upon a time there was a ${['cat', 'dog'][i % 2]} who liked to ${['run', 'sing'][i % 2]}.` }));
    writeFileSync(data, `${lines.join('\n')}\n`);
    const cli = (args: string[]) => spawnSync(process.execPath, ['--import', 'tsx', join(ROOT, 'src/cli/bin.ts'), '--plugin', PLUGIN, ...args], { cwd: ROOT, encoding: 'utf8' });
    const out = join(tmp, 'run');
    const trainArgs = ['train', '--model', bin, '--tokenizer', join(D, 'tok512.bin'), '--data', data, '--method', 'zeroi2v', '--r', '4',
      '--steps', '4', '--batch-size', '8', '--lr', '0.05', '--val-split', '0', '--out', out, '--json'];

    const refused = cli([...trainArgs, '--targets', 'q_proj']);
    assert.notEqual(refused.status, 0);
    assert.match(refused.stderr, /--targets does not apply to --method zeroi2v/);

    const trained = cli(trainArgs);
    assert.equal(trained.status, 0, trained.stderr);
    const cfg = JSON.parse(readFileSync(join(out, 'adapter', 'adapter_config.json'), 'utf8'));
    assert.equal(cfg.peft_type, 'ZEROI2V');
    assert.deepEqual(cfg.places, [...PLACES]);
    assert.equal(cfg.target_modules, null);

    const am = new AdapterModel(ak.loadModel(bin).model);
    const inst = am.load(join(out, 'adapter'), 'z') as ZeroI2VAdapter;
    assert.ok([...inst.adapters.values()].some((a) => (a.up.toArray() as Float32Array).some((v) => v !== 0)), 'training moved U');
    const ids = ak.tensor([1, 403, 407, 261, 378, 300, 12], [1, 7], { dtype: 'i32' });
    const adapted = logits(am, ids);

    const mergedDir = join(tmp, 'merged');
    const merged = cli(['merge', '--model', bin, '--adapter', join(out, 'adapter'), '--out', mergedDir]);
    assert.equal(merged.status, 0, merged.stderr);
    const plain = ak.loadModel(mergedDir).model;
    assert.equal(plain.numParameters(), ak.loadModel(bin).model.numParameters(), 'the merged checkpoint has the base size');
    assertSame(logits(new AdapterModel(plain), ids), adapted, 'merged by the CLI');

    saveZeroi2vAsLora(am, 'z', join(tmp, 'stories-lora'));
    const fresh = new AdapterModel(ak.loadModel(bin).model);
    fresh.load(join(tmp, 'stories-lora'), 'lora');
    assertSame(logits(fresh, ids), adapted, 'exported LoRA');

    // the same export through `adaptkit merge --as lora`, and a method that has no such export
    const asLora = cli(['merge', '--model', bin, '--adapter', join(out, 'adapter'), '--as', 'lora', '--out', join(tmp, 'cli-lora')]);
    assert.equal(asLora.status, 0, asLora.stderr);
    const viaCli = new AdapterModel(ak.loadModel(bin).model);
    viaCli.load(join(tmp, 'cli-lora'), 'lora');
    assertSame(logits(viaCli, ids), adapted, 'exported by the CLI');
    const refusedExport = cli(['merge', '--model', bin, '--adapter', join(tmp, 'cli-lora'), '--as', 'ia3', '--out', join(tmp, 'no')]);
    assert.equal(refusedExport.status, 1);
    assert.match(refusedExport.stderr, /\(LORA\) cannot be written as IA3/);
  });

  it('cleans up', () => rmSync(tmp, { recursive: true, force: true }));
});
