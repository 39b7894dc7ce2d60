/** PEFT-format adapters written by PyTorch (scripts/gen_adapter_fixtures.py) load and give its logits. */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { cpSync, readFileSync, readdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as ak from '../src/index.js';
import { AdapterModel } from '../src/adapters/index.js';
import { SafetensorsFile } from '../src/io/safetensors.js';
import { loadModel } from '../src/models/load.js';
import { assertClose, backends } from './helpers.js';

const FIX = fileURLToPath(new URL('./fixtures/', import.meta.url));
const NAMES = readdirSync(join(FIX, 'adapters')).sort();

for (const backend of backends()) {
  describe(`PEFT adapters from PyTorch on ${backend}`, () => {
    for (const name of NAMES) {
      it(`${name}: logits within 1e-4 of the reference; merged too; re-saved with the same keys`, () => {
        ak.setBackend(backend);
        const dir = join(FIX, 'adapters', name);
        const exp = JSON.parse(readFileSync(join(dir, 'expected.json'), 'utf8')) as { model: string; ids: number[][]; logits: number[] };
        const am = new AdapterModel(loadModel(join(FIX, 'models', exp.model)).model);
        am.load(dir);
        const ids = ak.tensor(exp.ids.flat(), [exp.ids.length, exp.ids[0]!.length], { dtype: 'i32' });
        const run = () => ak.tidy(() => ak.noGrad(() => (am.model as any).forward(ids).toArray()));
        assertClose(run(), exp.logits, `${name} logits`, 1e-4, 1e-4);
        am.merge();
        assertClose(run(), exp.logits, `${name} merged logits`, 1e-4, 1e-4);
        am.unmerge();
        const out = mkdtempSync(join(tmpdir(), 'adaptkit-peft-'));
        am.save(out);
        const keys = (p: string) => { const f = new SafetensorsFile(p); const k = f.keys().sort(); f.close(); return k; };
        assert.deepEqual(keys(join(out, 'adapter_model.safetensors')), keys(join(dir, 'adapter_model.safetensors')));
      });
    }
  });
}

describe('dropout only in training', () => {
  it('a PEFT LoRA with lora_dropout 0.1 gives the same logits on every inference call, equal to the reference; inside training() it drops', () => {
    const src = join(FIX, 'adapters', 'lora-llama');
    const dir = mkdtempSync(join(tmpdir(), 'adaptkit-dropout-'));
    cpSync(src, dir, { recursive: true });
    const cfg = JSON.parse(readFileSync(join(dir, 'adapter_config.json'), 'utf8'));
    cfg.lora_dropout = 0.1;
    writeFileSync(join(dir, 'adapter_config.json'), JSON.stringify(cfg));
    const exp = JSON.parse(readFileSync(join(src, 'expected.json'), 'utf8')) as { model: string; ids: number[][]; logits: number[] };
    const am = new AdapterModel(loadModel(join(FIX, 'models', exp.model)).model);
    am.load(dir);
    const ids = ak.tensor(exp.ids.flat(), [exp.ids.length, exp.ids[0]!.length], { dtype: 'i32' });
    const run = () => ak.tidy(() => ak.noGrad(() => am.forward(ids).toArray() as Float32Array));
    const a = run();
    assert.deepEqual(run(), a, 'two inference calls agree');
    assertClose(a, exp.logits, 'equals the no-dropout reference', 1e-4, 1e-4);
    const trained = ak.training(run);
    assert.ok(trained.some((v, i) => Math.abs(v - a[i]!) > 1e-4), 'dropout is active inside a training scope');
  });
});
