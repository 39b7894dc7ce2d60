/**
 * LoRA training throughput and peak memory on a GPT-2-small-shaped model (124M parameters, random
 * weights; seq 256, batch 8, r=8 on attention and MLP projections), next to the same step in
 * PyTorch (bench/baselines/train_torch.py) in the same invocation. Each implementation runs in its
 * own process so its peak RSS is its own. One JSON object per line.
 */
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { AdapterModel } from '../src/adapters/index.js';
import { nativeBackend, tensor, tidy, crossEntropy, Rng, getBackend } from '../src/index.js';
import { AdamW } from '../src/train/optim.js';
import { GPT2_SMALL, gpt2Random } from './models.js';
import { gpt2RandomQuantized } from './quantized.js';
import { emit } from './timing.js';

export interface TrainBenchShape {
  vocab: number;
  hidden: number;
  layers: number;
  heads: number;
  positions: number;
  batch: number;
  seq: number;
  r: number;
  steps: number;
  warmup: number;
  /** Quantize the base's linear layers (built one at a time, so the f32 model never exists). */
  quantize?: string;
}

export const TRAIN_SHAPE: TrainBenchShape = { ...GPT2_SMALL, batch: 8, seq: 256, r: 8, steps: 5, warmup: 2 };

/** The measurement itself (run in a child process). */
export function trainWorker(s: TrainBenchShape): Record<string, unknown> {
  getBackend();
  const model = s.quantize ? gpt2RandomQuantized(s, s.quantize) : gpt2Random(s);
  const am = new AdapterModel(model);
  am.add('bench', { peft_type: 'LORA', r: s.r, lora_alpha: 2 * s.r, fan_in_fan_out: true, target_modules: ['c_attn', 'c_proj', 'c_fc'] });
  const params = am.trainableParameters();
  const opt = new AdamW(params, { lr: 1e-4, weightDecay: 0 });
  const rng = new Rng(1);
  const n = s.batch * s.seq;
  const ids = tensor(Array.from({ length: n }, () => rng.int(s.vocab)), [s.batch, s.seq], { dtype: 'i32' }).keep();
  const tgt = tensor(Array.from({ length: n }, () => rng.int(s.vocab)), [s.batch, s.seq], { dtype: 'i32' }).keep();
  const times: number[] = [];
  for (let i = 0; i < s.warmup + s.steps; i++) {
    const t0 = process.hrtime.bigint();
    tidy(() => {
      const loss = crossEntropy(am.forward(ids), tgt);
      loss.backward();
    });
    opt.step();
    opt.zeroGrad();
    if (i >= s.warmup) times.push(Number(process.hrtime.bigint() - t0) / 1e9);
  }
  times.sort((a, b) => a - b);
  const med = times[Math.floor(times.length / 2)]!;
  return {
    bench: 'train', impl: 'adaptkit', base: s.quantize ?? 'f32', threads: nativeBackend()?.threads() ?? 1, tokens_per_s: Math.round(n / med),
    step_s: Number(med.toFixed(3)), peak_rss_mb: Math.round(process.resourceUsage().maxRSS / 1024), trainable_parameters: am.numTrainable(),
  };
}

export function runTrainBench(opts: { pytorch?: boolean; shape?: Partial<TrainBenchShape> } = {}): void {
  const s = { ...TRAIN_SHAPE, ...opts.shape };
  const self = fileURLToPath(import.meta.url);
  const child = spawnSync(process.execPath, [...process.execArgv, self, '--worker', JSON.stringify(s)], { encoding: 'utf8', maxBuffer: 1 << 24 });
  if (child.status !== 0) throw new Error(`train bench worker failed: ${child.stderr.trim().split('\n').pop()}`);
  const ours = JSON.parse(child.stdout.trim().split('\n').pop()!) as { tokens_per_s: number; peak_rss_mb: number; threads: number };
  emit({ ...ours, shape: `gpt2-small b${s.batch} t${s.seq} r${s.r}` });
  // the PyTorch baseline has an f32 base
  if (opts.pytorch === false || s.quantize) return;
  const script = self.replace(/\/dist\/bench\/train\.js$/, '/bench/baselines/train_torch.py').replace(/\/bench\/train\.ts$/, '/bench/baselines/train_torch.py');
  if (!existsSync(script) || !existsSync('/usr/bin/python3')) {
    emit({ bench: 'train', impl: 'pytorch', error: 'python3-torch not available' });
    return;
  }
  const env = { ...process.env };
  delete env.OPENBLAS_CORETYPE;
  delete env.OPENBLAS_L2_SIZE;
  let best: { tokens_per_s: number; peak_rss_mb: number } | null = null;
  for (const t of [...new Set([1, ours.threads])]) {
    const r = spawnSync('/usr/bin/python3', [script, JSON.stringify({ ...s, threads: t })], { env, encoding: 'utf8' });
    if (r.status !== 0) {
      emit({ bench: 'train', impl: 'pytorch', threads: t, error: r.stderr.trim().split('\n').pop() });
      continue;
    }
    const row = JSON.parse(r.stdout.trim().split('\n').pop()!) as { tokens_per_s: number; peak_rss_mb: number };
    emit({ ...row, tokens_per_s: Math.round(row.tokens_per_s), peak_rss_mb: Math.round(row.peak_rss_mb) });
    if (!best || row.tokens_per_s > best.tokens_per_s) best = row;
  }
  if (best) {
    emit({
      bench: 'train', ratio_tokens_per_s_vs_best_pytorch: Number((ours.tokens_per_s / best.tokens_per_s).toFixed(2)),
      ratio_peak_rss_vs_that_pytorch: Number((ours.peak_rss_mb / best.peak_rss_mb).toFixed(2)),
    });
  }
}

if (process.argv[2] === '--worker') {
  process.stdout.write(`${JSON.stringify(trainWorker(JSON.parse(process.argv[3]!) as TrainBenchShape))}\n`);
}
