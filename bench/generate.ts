/**
 * Prefill and decode tokens/s with a KV cache (greedy), adaptkit next to the same models and shapes
 * in PyTorch (bench/baselines/generate_torch.py) in the same run. One JSON object per line.
 */
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { nativeBackend, noGrad, narrow, tensor, tidy, type Tensor } from '../src/index.js';
import { dataDir } from '../src/io/data.js';
import { loadModel } from '../src/models/load.js';
import type { KVCache } from '../src/models/cache.js';
import { GPT2_SMALL, gpt2Random } from './models.js';
import { emit } from './timing.js';

interface LM {
  forward(ids: Tensor, opts?: { cache?: KVCache | null }): Tensor;
  newCache(): KVCache;
}

function argmaxLast(logits: Tensor): number {
  const T = logits.shape[1]!;
  const row = narrow(logits, 1, T - 1, 1).toArray();
  let best = 0;
  for (let i = 1; i < row.length; i++) if (row[i]! > row[best]!) best = i;
  return best;
}

function measure(model: LM, prefill: number, decode: number, reps: number): { prefill: number; decode: number } {
  const ids = Array.from({ length: prefill }, (_, i) => (i * 7919) % 256);
  const p: number[] = [];
  const d: number[] = [];
  for (let r = 0; r < reps + 1; r++) {
    const cache = model.newCache();
    noGrad(() => {
      const t0 = process.hrtime.bigint();
      let next = tidy(() => argmaxLast(model.forward(tensor(ids, [1, prefill], { dtype: 'i32' }), { cache })));
      const t1 = process.hrtime.bigint();
      for (let i = 0; i < decode; i++) next = tidy(() => argmaxLast(model.forward(tensor([next], [1, 1], { dtype: 'i32' }), { cache })));
      const t2 = process.hrtime.bigint();
      if (r > 0) {
        p.push(prefill / (Number(t1 - t0) / 1e9));
        d.push(decode / (Number(t2 - t1) / 1e9));
      }
    });
    cache.dispose();
  }
  const med = (a: number[]) => a.sort((x, y) => x - y)[Math.floor(a.length / 2)]!;
  return { prefill: med(p), decode: med(d) };
}

export function runGenerateBench(opts: { pytorch?: boolean; reps?: number } = {}): void {
  const threads = nativeBackend()?.threads() ?? 1;
  const reps = opts.reps ?? 3;
  const stories = join(dataDir(), 'models', 'stories260K', 'stories260K.bin');
  const cases: { name: string; make: () => LM; prefill: number; decode: number; reps: number; torch: Record<string, unknown> }[] = [];
  if (existsSync(stories)) {
    cases.push({
      name: 'stories260K', make: () => loadModel(stories).model, prefill: 128, decode: 128, reps: reps * 4,
      torch: { kind: 'llama2c', path: stories },
    });
  }
  cases.push({
    name: 'gpt2-small-random', make: () => gpt2Random(), prefill: 128, decode: 32, reps,
    torch: { kind: 'gpt2', config: GPT2_SMALL },
  });
  const ours = new Map<string, { prefill: number; decode: number }>();
  for (const c of cases) {
    const model = c.make();
    const r = measure(model, c.prefill, c.decode, c.reps);
    (model as unknown as { dispose(): void }).dispose();
    ours.set(c.name, r);
    emit({ bench: 'generate', impl: 'adaptkit', model: c.name, threads, prefill_tokens: c.prefill, decode_tokens: c.decode, prefill_tokens_per_s: round(r.prefill), decode_tokens_per_s: round(r.decode) });
  }
  if (opts.pytorch === false) return;
  const script = fileURLToPath(new URL('../../bench/baselines/generate_torch.py', import.meta.url).href.replace('/dist/bench/', '/bench/'));
  const scriptPath = existsSync(script) ? script : fileURLToPath(new URL('./baselines/generate_torch.py', import.meta.url));
  const env = { ...process.env };
  delete env.OPENBLAS_CORETYPE;
  delete env.OPENBLAS_L2_SIZE;
  // PyTorch runs at 1 thread and at adaptkit's thread count; ratios are taken against its faster run
  const best = new Map<string, { prefill: number; decode: number }>();
  for (const t of [...new Set([1, threads])]) {
    const arg = { threads: t, models: cases.map((c) => ({ name: c.name, prefill: c.prefill, decode: c.decode, reps: c.reps, ...c.torch })) };
    const res = spawnSync('/usr/bin/python3', [scriptPath, JSON.stringify(arg)], { env, encoding: 'utf8' });
    if (res.status !== 0) {
      emit({ bench: 'generate', impl: 'pytorch', error: (res.stderr || res.error?.message || 'python3-torch not available').trim().split('\n').pop() });
      return;
    }
    for (const line of res.stdout.trim().split('\n')) {
      const r = JSON.parse(line) as { model: string; prefill_tokens_per_s: number; decode_tokens_per_s: number };
      emit({ ...r, prefill_tokens_per_s: round(r.prefill_tokens_per_s), decode_tokens_per_s: round(r.decode_tokens_per_s) });
      const b = best.get(r.model) ?? { prefill: 0, decode: 0 };
      best.set(r.model, { prefill: Math.max(b.prefill, r.prefill_tokens_per_s), decode: Math.max(b.decode, r.decode_tokens_per_s) });
    }
  }
  for (const [model, b] of best) {
    const o = ours.get(model)!;
    emit({ bench: 'generate', model, prefill_ratio_vs_best_pytorch: round(o.prefill / b.prefill, 2), decode_ratio_vs_best_pytorch: round(o.decode / b.decode, 2) });
  }
}

function round(x: number, digits = 1): number {
  const f = 10 ** digits;
  return Math.round(x * f) / f;
}
