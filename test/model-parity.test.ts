/** Logit parity with reference forwards written in PyTorch (scripts/gen_model_fixtures.py). */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import * as ak from '../src/index.js';
import { loadAnyModel } from '../src/models/load.js';
import { BertForSequenceClassification } from '../src/models/bert/model.js';
import { assertClose, backends } from './helpers.js';

const FIX = fileURLToPath(new URL('./fixtures/models/', import.meta.url));

interface Expected {
  ids: number[][];
  attention_mask: number[][];
  token_type_ids?: number[][];
  logits: number[];
  shape: number[];
  hidden?: number[];
}

function load(name: string) {
  const expected = JSON.parse(readFileSync(`${FIX}${name}/expected.json`, 'utf8')) as Expected;
  const { model, unused } = loadAnyModel(`${FIX}${name}`);
  return { model, unused, expected };
}

const ids2 = (rows: number[][]) => ak.tensor(rows.flat(), [rows.length, rows[0]!.length], { dtype: 'i32' });

/** Keep values at positions whose mask is 1 (rows of width `width`). */
function masked(values: ArrayLike<number>, mask: number[][], width: number): number[] {
  const out: number[] = [];
  mask.flat().forEach((m, pos) => {
    if (m) for (let j = 0; j < width; j++) out.push(values[pos * width + j]!);
  });
  return out;
}

for (const backend of backends()) {
  describe(`model parity with PyTorch on ${backend}`, () => {
    for (const name of ['llama-gqa', 'qwen2-bias', 'llama-rope-llama3', 'llama-rope-linear', 'gpt2']) {
      it(`${name}: batched, right-padded logits within 1e-4`, () => {
        ak.setBackend(backend);
        const { model, unused, expected } = load(name);
        assert.deepEqual(unused, []);
        ak.tidy(() => ak.noGrad(() => {
          const logits = (model as any).forward(ids2(expected.ids), { attentionMask: ak.tensor(expected.attention_mask.flat(), [expected.ids.length, expected.ids[0]!.length]) }) as ak.Tensor;
          assert.deepEqual(logits.shape, expected.shape);
          const V = expected.shape[2]!;
          assertClose(masked(logits.toArray(), expected.attention_mask, V), masked(expected.logits, expected.attention_mask, V), `${name} logits`, 1e-4, 1e-4);
        }));
      });
    }

    for (const name of ['llama-gqa', 'gpt2']) {
      it(`${name}: decoding with the KV cache gives the full forward's logits`, () => {
        ak.setBackend(backend);
        const { model, expected } = load(name);
        const m = model as any;
        const row = expected.ids[0]!;
        ak.tidy(() => ak.noGrad(() => {
          const full = m.forward(ids2([row])).toArray() as Float32Array;
          const cache = m.newCache();
          const parts: number[] = [];
          const first = m.forward(ids2([row.slice(0, 3)]), { cache }).toArray();
          parts.push(...first);
          for (let t = 3; t < row.length; t++) parts.push(...m.forward(ids2([[row[t]!]]), { cache }).toArray());
          cache.dispose();
          assertClose(parts, full, `${name} cached vs full`, 1e-5, 1e-4);
        }));
      });
    }

    it('bert: classification logits and hidden states within 1e-4', () => {
      ak.setBackend(backend);
      const { model, unused, expected } = load('bert');
      assert.deepEqual(unused, []);
      assert.ok(model instanceof BertForSequenceClassification);
      ak.tidy(() => ak.noGrad(() => {
        const opts = {
          attentionMask: ak.tensor(expected.attention_mask.flat(), [3, 7]),
          tokenTypeIds: ids2(expected.token_type_ids!),
        };
        assertClose(model.forward(ids2(expected.ids), opts).toArray(), expected.logits, 'bert logits', 1e-4, 1e-4);
        const h = model.hidden(ids2(expected.ids), opts).toArray();
        assertClose(masked(h, expected.attention_mask, 32), masked(expected.hidden!, expected.attention_mask, 32), 'bert hidden', 1e-4, 1e-4);
      }));
    });
  });
}

import { mkdtempSync, writeFileSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { writeSafetensors, readSafetensors } from '../src/io/safetensors.js';
import { loadModel } from '../src/models/load.js';

describe('bad model folders', () => {
  const tmp = mkdtempSync(join(tmpdir(), 'adaptkit-bad-'));
  const src = `${FIX}llama-gqa`;
  const variant = (name: string, edit: (cfg: Record<string, unknown>, w: Record<string, ak.Tensor>) => void) => {
    const dir = join(tmp, name);
    mkdirSync(dir, { recursive: true });
    const cfg = JSON.parse(readFileSync(join(src, 'config.json'), 'utf8')) as Record<string, unknown>;
    const { tensors } = readSafetensors(join(src, 'model.safetensors'));
    edit(cfg, tensors);
    writeFileSync(join(dir, 'config.json'), JSON.stringify(cfg));
    writeSafetensors(join(dir, 'model.safetensors'), tensors);
    return dir;
  };
  ak.getBackend();

  it('names a missing tensor and its expected shape', () => {
    const dir = variant('missing', (_c, w) => delete w['model.layers.1.mlp.up_proj.weight']);
    assert.throws(() => loadModel(dir), new RegExp(`${dir}: missing weight "model.layers.1.mlp.up_proj.weight" \\(expected \\[48, 32\\]\\)`));
  });

  it('names a tensor whose shape disagrees with the config', () => {
    const dir = variant('shape', (c) => (c.intermediate_size = 40));
    assert.throws(() => loadModel(dir), /weight "model.layers.0.mlp.gate_proj.weight" has shape \[48, 32\], expected \[40, 32\]/);
  });

  it('names a missing required config key and an unsupported architecture', () => {
    assert.throws(() => loadModel(variant('nokey', (c) => delete c.hidden_size)), /config.json: "hidden_size" is required/);
    assert.throws(() => loadModel(variant('arch', (c) => (c.model_type = 'mamba'))), /model_type "mamba" is not supported/);
    assert.throws(() => loadModel(variant('rope', (c) => (c.rope_scaling = { rope_type: 'longrope', factor: 2 }))), /rope_scaling type "longrope" is not supported/);
  });

  it('rejects a truncated llama2.c checkpoint and a missing model', () => {
    const bin = join(tmp, 'cut.bin');
    const full = readFileSync(join(dataDir(), 'models', 'stories260K', 'stories260K.bin'));
    writeFileSync(bin, full.subarray(0, 100_000));
    assert.throws(() => loadModel(bin), /not a valid llama2.c checkpoint: truncated: 100000 bytes/);
    writeFileSync(bin, Buffer.alloc(28, 0xff));
    assert.throws(() => loadModel(bin), /implausible header/);
    assert.throws(() => loadModel(join(tmp, 'nothing-here')), /model not found/);
  });

  it('loads a folder with extra config keys (unknown keys are ignored)', () => {
    const dir = variant('extra', (c) => (c.some_new_field = [1, 2, 3]));
    assert.ok(loadModel(dir).model);
  });
});

import { dataDir } from '../src/io/data.js';
