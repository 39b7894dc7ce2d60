/**
 * A method is one file: this file defines a new adapter method entirely inside itself (a scaled
 * identity: one vector g per target layer, y' = y ⊙ (1 + g)), registers it, and runs it through
 * the contract suite, `adaptkit train` (as a plugin, in a child process), save and load, merge,
 * a mixed batch and the HTTP server (whose worker imports it as a plugin), with no other source
 * file knowing of it. Imported as a plugin (ADAPTKIT_PLUGIN_ONLY, or in a worker thread) it only
 * registers the method.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { isMainThread } from 'node:worker_threads';
import * as ak from '../src/index.js';
import { AdapterModel } from '../src/adapters/index.js';
import { startServer } from '../src/serve/http.js';
import { assertClose } from './helpers.js';
import { contractSuite, registryCases } from './contract.js';
import {
  AdaptkitError, type Tensor, add, clone, indexSelect, mul, noGrad, parameter, reshape, transpose, zeros,
} from '../src/tensor/index.js';
import { Linear, Module } from '../src/nn/index.js';
import {
  type AdapterInstance, type AdapterMethod, type BaseAdapterConfig, type LayerDelta, type RawAdapterConfig, type RowBatchedForm,
  RowRouting, baseJson, deltaStateDict, loadInto, parseBase, registerMethod,
} from '../src/adapters/index.js';

class ScaleDelta extends Module implements LayerDelta {
  constructor(readonly adapterName: string, public scale_g: Tensor, readonly fanInFanOut: boolean) {
    super();
  }

  apply(_x: Tensor, y: Tensor): Tensor {
    return mul(y, add(this.scale_g, 1));
  }

  mergeWeight(weight: Tensor): Tensor {
    return noGrad(() => {
      const w = this.fanInFanOut ? transpose(weight) : weight;
      const m = mul(w, reshape(add(this.scale_g, 1), [-1, 1]));
      return clone(this.fanInFanOut ? transpose(m) : m);
    });
  }

  mergeBias(bias: Tensor | null): Tensor | null {
    return bias ? noGrad(() => clone(mul(bias, add(this.scale_g, 1)))) : null;
  }
}

class ScaleAdapter implements AdapterInstance {
  readonly method = SCALE;
  readonly deltas = new Map<string, ScaleDelta>();
  constructor(readonly name: string, readonly config: BaseAdapterConfig) {}
  parameters(): Tensor[] {
    return [...this.deltas.values()].map((d) => d.scale_g);
  }
  stateDict(): Map<string, Tensor> {
    return deltaStateDict(this.deltas);
  }
  loadStateDict(t: Map<string, Tensor>, source: string): void {
    loadInto(this.stateDict(), t, source);
  }
  configJson(): RawAdapterConfig {
    return baseJson(this.config);
  }
}

class RowScaleDelta extends Module implements LayerDelta {
  readonly adapterName = '*rows*';
  constructor(readonly g: Tensor, readonly routing: RowRouting) {
    super();
  }
  apply(_x: Tensor, y: Tensor): Tensor {
    const g = indexSelect(this.g, 0, this.routing.rows!);
    return mul(y, add(reshape(g, y.ndim === 3 ? [y.shape[0]!, 1, -1] : [y.shape[0]!, -1]), 1));
  }
}

const ROWS: RowBatchedForm = {
  key: () => 'scale',
  sizes: () => ({}),
  limits: () => ({}),
  layout: (layer) => ({ g: { shape: [layer.outFeatures], identity: 0 } }),
  write: (inst, path, slot) => slot.g!.set((inst as ScaleAdapter).deltas.get(path)!.scale_g.toArray() as Float32Array),
  delta: (_layer, stacks, routing) => new RowScaleDelta(stacks.g!, routing),
};

export const SCALE: AdapterMethod = {
  peftType: 'SCALE_IDENTITY',
  description: 'one learned scale per output of each target layer',
  kind: 'tuner',
  parseConfig: (raw, source) => parseBase(raw, 'SCALE_IDENTITY', source),
  create(name, config, targets) {
    const inst = new ScaleAdapter(name, config);
    for (const t of targets) {
      if (!(t.module instanceof Linear)) throw new AdaptkitError(`"${t.path}" is not a linear layer`);
      inst.deltas.set(t.path, new ScaleDelta(name, parameter(zeros([t.module.outFeatures]), `${t.path}.scale_g`), t.module.fanInFanOut));
    }
    return inst;
  },
  countParameters: (_c, targets) => targets.reduce((n, t) => n + (t.module as Linear).outFeatures, 0),
  presets: [{ name: 'scaleid', description: 'a scale per output of every linear layer', config: () => ({ peft_type: 'SCALE_IDENTITY', target_modules: 'all-linear' }) }],
  mergeable: true,
  rowBatched: ROWS,
};

registerMethod(SCALE);

if (isMainThread && !process.env.ADAPTKIT_PLUGIN_ONLY) defineTests();

function defineTests(): void {
  const SELF = fileURLToPath(import.meta.url);
  const ROOT = fileURLToPath(new URL('..', import.meta.url));
  const D = join(ak.dataDir(), 'models', 'stories260K');
  const tmp = mkdtempSync(join(tmpdir(), 'adaptkit-one-file-'));

  contractSuite(registryCases().filter((c) => c.config.peft_type === SCALE.peftType));

  describe('a method defined in a test file', () => {
    it('trains through the CLI as a plugin, saves, loads, merges, mixes and is served like any method', async () => {
      const data = join(tmp, 'stories.jsonl');
      const lines = Array.from({ length: 24 }, (_, i) => JSON.stringify({ text: `Once upon a time there was a ${['cat', 'dog', 'bird'][i % 3]} who liked to ${['run', 'play', 'sing'][i % 3]}.` }));
      writeFileSync(data, `${lines.join('\n')}\n`);
      const out = join(tmp, 'run');
      const r = spawnSync(process.execPath, [
        '--import', 'tsx', join(ROOT, 'src/cli/bin.ts'), '--plugin', SELF, 'train', '--model', join(D, 'stories260K.bin'), '--tokenizer', join(D, 'tok512.bin'),
        '--data', data, '--method', 'scaleid', '--steps', '6', '--batch-size', '8', '--lr', '0.05', '--val-split', '0', '--out', out, '--json',
      ], { cwd: ROOT, env: { ...process.env, ADAPTKIT_PLUGIN_ONLY: '1' }, encoding: 'utf8' });
      assert.equal(r.status, 0, r.stderr);
      const cfg = JSON.parse(readFileSync(join(out, 'adapter', 'adapter_config.json'), 'utf8'));
      assert.equal(cfg.peft_type, 'SCALE_IDENTITY');
      const am = new AdapterModel(ak.loadModel(join(D, 'stories260K.bin')).model);
      const inst = am.load(join(out, 'adapter'), 'scale');
      assert.ok(inst.parameters().some((p) => (p.toArray() as Float32Array).some((v) => v !== 0)), 'training moved the scales');
      const ids = ak.tensor([1, 403, 407, 261, 378], [1, 5], { dtype: 'i32' });
      const adapted = ak.tidy(() => ak.noGrad(() => am.forward(ids).toArray() as Float32Array));
      am.merge();
      assertClose(ak.tidy(() => ak.noGrad(() => am.forward(ids).toArray() as Float32Array)), adapted, 'merged', 1e-4, 1e-4);
      am.unmerge();
      const tok = ak.loadTokenizer(join(D, 'stories260K.bin'), join(D, 'tok512.bin'), 512);
      const prompt = tok.encode('Once upon a time', { bos: true });
      const expected = ak.generate(am, tok, prompt, { maxTokens: 24 }).text;
      const adapters = join(tmp, 'adapters');
      cpSync(join(out, 'adapter'), join(adapters, 'scale'), { recursive: true });
      const server = await startServer({
        model: join(D, 'stories260K.bin'), tokenizer: join(D, 'tok512.bin'), servedModelName: 'base', plugins: [SELF],
        maxTokensLimit: 64, maxPromptTokens: 64,
        engine: { maxBatch: 8, kvCacheMb: 4, blockSize: 8, maxLoadedAdapters: 4, maxRank: 8, maxQueue: 64, contextLength: 256, adapterDir: adapters },
      }, { port: 0, host: '127.0.0.1' });
      try {
        const ask = async (model: string) => {
          const res = await fetch(`${server.url}/v1/completions`, {
            method: 'POST', headers: { 'content-type': 'application/json' },
            body: JSON.stringify({ model, prompt: 'Once upon a time', max_tokens: 24, temperature: 0 }),
          });
          assert.equal(res.status, 200);
          return ((await res.json()) as { choices: { text: string }[] }).choices[0]!.text;
        };
        const [served, base] = await Promise.all([ask('scale'), ask('base')]);
        assert.equal(served, expected);
        am.setActive([]);
        assert.equal(base, ak.generate(am, tok, prompt, { maxTokens: 24 }).text);
        assert.notEqual(served, base, 'the adapter changes the greedy text');
      } finally {
        await server.close();
      }
    });

    it('cleans up', () => rmSync(tmp, { recursive: true, force: true }));
  });
}
