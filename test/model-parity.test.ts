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
