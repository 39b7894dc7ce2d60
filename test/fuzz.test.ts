/**
 * Loader fuzz test: seeded mutants of safetensors, GGUF, llama2.c, config.json, adapter_config.json
 * and tokenizer.json files. Every load must succeed or fail with an AdaptkitError that names the
 * file, within a time and a memory limit, without crashing. The named reproducer cases of earlier
 * fuzz runs are part of each format's list.
 *
 * Reproduce one finding:  node --import tsx test/fuzz/child.ts <format> <index> [base seed]
 * Other seeds / more mutants:  ADAPTKIT_FUZZ_SEED=7 ADAPTKIT_FUZZ_SCALE=4 node --import tsx --test test/fuzz.test.ts
 * Only some formats:  ADAPTKIT_FUZZ_ONLY=gguf,tokenizer.json
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { FORMATS } from './fuzz/formats.js';
import { DEFAULT_SEED } from './fuzz/mutate.js';
import { type RunOptions, describeReport, runFormat } from './fuzz/runner.js';

const BASE = Number(process.env.ADAPTKIT_FUZZ_SEED ?? DEFAULT_SEED);
const SCALE = Number(process.env.ADAPTKIT_FUZZ_SCALE ?? 1);
const ONLY = process.env.ADAPTKIT_FUZZ_ONLY?.split(',').map((s) => s.trim());

// A load of these files takes under 50 ms; 4 s leaves room for a machine busy with other work and
// still tells a hang (a loop that never ends, a regex that backtracks for minutes) from a slow load.
const TIMEOUT_MS = Number(process.env.ADAPTKIT_FUZZ_TIMEOUT_MS ?? 4000);
// A child idles at about 150-200 MB (Node, tsx, the tokenizer library, the seeds). The largest
// legitimate input is stories260K (1 MB on disk, 4 MB as tensors), so 512 MB can only be reached
// by allocating from a length or count field instead of from the data actually in the file.
const RSS_LIMIT_MB = 512;

const options = (count: number, extra: Partial<RunOptions> = {}): RunOptions => ({
  base: BASE, count, timeoutMs: TIMEOUT_MS, rssLimitMb: RSS_LIMIT_MB, heapMb: 448, startupMs: 60000, maxKills: 25, ...extra,
});

describe('loader fuzz', { concurrency: 2 }, () => {
  it('the harness records each kind of failure, and carries on after a hang, a crash or a memory kill', async (t) => {
    const r = await runFormat('harness-selftest', options(0, { timeoutMs: 3000, rssLimitMb: 320, heapMb: 256 }));
    for (const line of describeReport(r)) t.diagnostic(line);
    const kinds = Object.fromEntries(r.findings.map((f) => [f.id.replace(/^.*fixed "(.*)"$/, '$1'), f.kind]));
    assert.deepEqual(kinds, {
      'raw TypeError': 'unclear', 'unnamed AdaptkitError': 'unclear', 'wrapped raw error': 'unclear', 'bad output': 'bad-output',
      hang: 'hang', crash: 'crash', memory: 'memory',
    });
    assert.equal(r.counts.ok, 2, 'ok and "after a hang" loaded');
    assert.equal(r.counts.clear, 1);
  });

  for (const f of FORMATS.filter((x) => x.name !== 'harness-selftest' && (!ONLY || ONLY.includes(x.name)))) {
    it(`${f.name}: every mutant loads or fails with an AdaptkitError naming the file, in time and memory`, { timeout: 600_000 }, async (t) => {
      const r = await runFormat(f.name, options(Math.round(f.count * SCALE)));
      const lines = describeReport(r);
      for (const line of lines) t.diagnostic(line);
      assert.ok(r.total > 0);
      if (r.findings.length > 0) assert.fail(`${r.findings.length} of ${r.total} mutants failed (seed ${BASE}):\n${lines.join('\n')}`);
    });
  }
});
