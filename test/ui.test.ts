/** What a user sees: the progress line fits the terminal and keeps evaluation results; curves have no negative axis for losses. */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { makeProgress } from '../src/train/progress.js';
import { plotMetrics } from '../src/train/plot.js';

function fakeTty(columns: number): NodeJS.WriteStream & { text: string } {
  const w = new Writable({ write(chunk, _enc, cb) { (w as unknown as { text: string }).text += String(chunk); cb(); } }) as unknown as NodeJS.WriteStream & { text: string };
  Object.assign(w, { isTTY: true, columns, text: '', cursorTo: () => true, clearLine: () => true, moveCursor: () => true });
  return w;
}

describe('what a user sees', () => {
  it('the progress bar fits a 60-column terminal and evaluation results get their own line', () => {
    const tty = fakeTty(60);
    const p = makeProgress(100, { stream: tty });
    p.step({ kind: 'train', step: 10, loss: 1.2345, lr: 1e-3, grad_norm: 1, tokens: 100, tokens_per_s: 1234, elapsed_s: 1 } as never);
    p.eval({ kind: 'eval', step: 10, loss: 0.5, perplexity: 1.6487, accuracy: 0.975, exact_match: 0.25 } as never);
    p.step({ kind: 'train', step: 20, loss: 1.1, lr: 1e-3, grad_norm: 1, tokens: 100, tokens_per_s: 1234, elapsed_s: 2 } as never);
    p.stop();
    // eslint-disable-next-line no-control-regex
    const lines = tty.text.split(/\r|\n/).map((l) => l.replace(/\x1b\[[0-9;?]*[A-Za-z]|\x1b[78]/g, '')).filter(Boolean);
    const bars = lines.filter((l) => l.includes('/100'));
    assert.ok(bars.length > 0);
    for (const l of bars) assert.ok(l.length <= 60, `a ${l.length}-character progress line: ${l}`);
    assert.ok(lines.some((l) => l.includes('eval at step 10') && l.includes('accuracy 0.9750') && l.includes('exact_match 0.2500')), tty.text);
  });

  it('the loss curve has no negative axis, also for a flat loss', () => {
    const dir = mkdtempSync(join(tmpdir(), 'adaptkit-plot-'));
    try {
      for (const losses of [[0.02, 0.01, 0.005], [0.5, 0.5, 0.5]]) {
        const file = join(dir, 'metrics.jsonl');
        writeFileSync(file, losses.map((l, i) => JSON.stringify({ kind: 'train', step: i + 1, loss: l, lr: 1e-3 })).join('\n') + '\n');
        const svg = plotMetrics(file);
        const labels = [...svg.matchAll(/<text[^>]*>(-?[0-9.e+-]+)<\/text>/g)].map((m) => Number(m[1]));
        assert.ok(labels.length > 0, 'axis labels');
        assert.ok(labels.every((v) => v >= 0), `axis labels ${labels.join(', ')}`);
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
