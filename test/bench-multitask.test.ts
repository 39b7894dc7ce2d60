/**
 * bench multitask without training: the rows a selection pulls in, the order that puts every row
 * after the rows it builds on, and that each default row names a registered preset whose options
 * it reads (the benchmark itself runs from `adaptkit bench multitask`; its results are in
 * docs/methods.md).
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { DEFAULT_ROWS, type Row, orderRows, selectRows } from '../bench/multitask.js';
import { resolvePreset } from '../src/adapters/index.js';
import { dataDir } from '../src/io/data.js';
import { loadModel } from '../src/models/load.js';
import { describeModel } from '../src/nn/index.js';
import { runCli as cli } from './cli-run.js';

const row = (name: string, needs: string[] = []): Row => ({ name, stage: 'target', method: 'lora', lr: 1e-3, needs, about: '' });

describe('bench multitask rows', () => {
  it('a selected row brings the rows it builds on, in the default order', () => {
    assert.deepEqual(selectRows(['mhr-z']).map((r) => r.name), ['mhr', 'mhr-z']);
    const fusion = selectRows(['fusion']).map((r) => r.name);
    assert.deepEqual(fusion, ['bottleneck-pfeiffer', 'bottleneck-pfeiffer-target', 'fusion']);
    assert.throws(() => selectRows(['nope']), /unknown row "nope"/);
  });

  it('orders rows after their dependencies and names a cycle or a missing row', () => {
    assert.deepEqual(orderRows([row('c', ['b']), row('b', ['a']), row('a')]).map((r) => r.name), ['a', 'b', 'c']);
    assert.throws(() => orderRows([row('a', ['b']), row('b', ['a'])]), /need each other/);
    assert.throws(() => orderRows([row('a', ['x'])]), /needs "x", which is not in the list/);
  });

  it('every default row is a registered preset whose options it reads', () => {
    const d = describeModel(loadModel(join(dataDir(), 'models', 'stories260K', 'stories260K.bin')).model);
    for (const r of DEFAULT_ROWS) {
      const { method, preset } = resolvePreset(r.method);
      if (typeof r.options === 'object') {
        const known = new Set((method.options ?? []).map((o) => o.name));
        for (const k of Object.keys(r.options)) assert.ok(known.has(k), `${r.name}: --${k} is not an option of ${r.method}`);
        if (!r.config) assert.ok(preset.config(r.options, d).peft_type, r.name);
      }
      for (const n of r.needs ?? []) assert.ok(DEFAULT_ROWS.some((x) => x.name === n), `${r.name} needs ${n}`);
    }
  });

  it('the CLI refuses an unknown row before loading anything', async () => {
    const r = await cli('bench', 'multitask', '--rows', 'lora,nope');
    assert.notEqual(r.code, 0);
    assert.match(r.err, /--rows: unknown row "nope"/);
  });
});

describe('bench methods --multitask', () => {
  it('refuses the options of the single-task comparison by name', async () => {
    const r = await cli('bench', 'methods', '--multitask', '--tasks', 'sms', '--steps', '3');
    assert.notEqual(r.code, 0);
    assert.match(r.err, /--multitask runs its own rows and tasks; it does not take --tasks, --steps/);
  });
});
