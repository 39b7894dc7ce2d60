/**
 * Quantized bases, measured (one JSON line per case, each naming the machine):
 *  - quality: stories260K with its linear layers in int8 (LLM.int8()), NF4 (with and without
 *    double quantization), FP4, bf16 and f16 against the f32 model on GSM8K test questions, text
 *    the model never saw (the data folder holds no held-out TinyStories text): NLL per token, the
 *    largest and mean absolute logit error, and the bytes of the linear weights;
 *  - qlora-sms: the demo recipe (LoRA r 8 on every linear layer, SMS spam as label words, 1,000
 *    held-out messages) on the f32 base and on an NF4 base, over seeds;
 *  - train-rss: peak RSS and tokens/s of LoRA training on a GPT-2-small-shaped random model with
 *    an f32 and an NF4 base, each in its own process (bench/train.ts); the NF4 model is built one
 *    layer at a time, so the f32 model never exists in that process.
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { AdaptkitError, type Tensor, Rng, logSoftmax, noGrad, ones, randn, tensor, tidy, zeros } from '../src/tensor/index.js';
import { type QuantizedTensor, quantize } from '../src/backend/quant/index.js';
import { getBackend } from '../src/backend/index.js';
import { type GPT2LMHeadModel, buildGPT2, parseGPT2Config } from '../src/models/gpt2/model.js';
import { WeightMap } from '../src/models/weights.js';
import { installPacked } from '../src/models/bnb.js';
import { loadModel, loadTokenizer } from '../src/models/load.js';
import { type QuantizeModelOptions, quantizeModel } from '../src/models/quantize.js';
import { readRecords } from '../src/train/data.js';
import { runDemo } from '../src/train/demo.js';
import { dataDir } from '../src/io/data.js';
import { GPT2_SMALL } from './models.js';
import { emit } from './timing.js';

/** A GPT-2-shaped model with random weights whose linear layers are quantized as they are made. */
export function gpt2RandomQuantized(shape = GPT2_SMALL, format: string, seed = 0): GPT2LMHeadModel {
  const rng = new Rng(seed);
  const H = shape.hidden;
  const w = new Map<string, Tensor>();
  const packed = new Map<string, QuantizedTensor>();
  const r = (name: string, s: number[]) => w.set(name, randn(s, { rng, std: 0.02 }).keep());
  // one f32 weight at a time, quantized at once: [out, in], as a quantized Conv1D weight is held
  const lin = (name: string, out: number, inp: number) => {
    const data = new Float32Array(out * inp);
    for (let i = 0; i < data.length; i++) data[i] = 0.02 * rng.normal();
    packed.set(name, quantize(format, data, [out, inp], { name, ...(format === 'nf4' || format === 'fp4' ? { doubleQuant: true } : {}) }));
  };
  r('transformer.wte.weight', [shape.vocab, H]);
  r('transformer.wpe.weight', [shape.positions, H]);
  for (let l = 0; l < shape.layers; l++) {
    const p = `transformer.h.${l}`;
    for (const ln of ['ln_1', 'ln_2']) {
      w.set(`${p}.${ln}.weight`, ones([H]).keep());
      w.set(`${p}.${ln}.bias`, zeros([H]).keep());
    }
    lin(`${p}.attn.c_attn.weight`, 3 * H, H);
    w.set(`${p}.attn.c_attn.bias`, zeros([3 * H]).keep());
    lin(`${p}.attn.c_proj.weight`, H, H);
    w.set(`${p}.attn.c_proj.bias`, zeros([H]).keep());
    lin(`${p}.mlp.c_fc.weight`, 4 * H, H);
    w.set(`${p}.mlp.c_fc.bias`, zeros([4 * H]).keep());
    lin(`${p}.mlp.c_proj.weight`, H, 4 * H);
    w.set(`${p}.mlp.c_proj.bias`, zeros([H]).keep());
  }
  w.set('transformer.ln_f.weight', ones([H]).keep());
  w.set('transformer.ln_f.bias', zeros([H]).keep());
  const config = parseGPT2Config({
    model_type: 'gpt2', n_embd: H, n_head: shape.heads, n_layer: shape.layers, n_positions: shape.positions,
    vocab_size: shape.vocab, activation_function: 'gelu_new',
  }, 'gpt2-small-random');
  const map = new WeightMap((n) => w.get(n), [...w.keys(), ...packed.keys()], 'gpt2-small-random', packed);
  const model = buildGPT2(config, map);
  installPacked(model, map, 6);
  return model;
}

// ---------------------------------------------------------------- quality on stories260K

const QUALITY_CASES: { name: string; format: string; opts?: QuantizeModelOptions }[] = [
  { name: 'int8', format: 'int8' },
  { name: 'nf4', format: 'nf4' },
  { name: 'nf4-no-double-quant', format: 'nf4', opts: { doubleQuant: false } },
  { name: 'fp4', format: 'fp4' },
  { name: 'bf16', format: 'bf16' },
  { name: 'f16', format: 'f16' },
];

interface Scored {
  nll: number;
  tokens: number;
  logits: Float32Array[];
}

function score(model: { forward(ids: Tensor): Tensor }, texts: number[][], keepLogits: boolean): Scored {
  let nll = 0;
  let tokens = 0;
  const logits: Float32Array[] = [];
  for (const ids of texts) {
    tidy(() => noGrad(() => {
      const l = model.forward(tensor(ids, [1, ids.length], { dtype: 'i32' }));
      const V = l.shape[2]!;
      const lp = logSoftmax(l).toArray() as Float32Array;
      for (let t = 0; t + 1 < ids.length; t++) nll -= lp[t * V + ids[t + 1]!]!;
      tokens += ids.length - 1;
      if (keepLogits) logits.push(l.toArray() as Float32Array);
    }));
  }
  return { nll: nll / tokens, tokens, logits };
}

function linearBytes(model: { namedModules(): [string, unknown][] }): number {
  let n = 0;
  for (const [, m] of model.namedModules()) {
    const q = m as { bytes?: () => number; weight?: { size?: number }; bias?: { size: number } | null; inFeatures?: number };
    if (typeof q.bytes === 'function') n += q.bytes();
    else if (q.inFeatures !== undefined && q.weight?.size !== undefined) n += (q.weight.size + (q.bias?.size ?? 0)) * 4;
  }
  return n;
}

export function runQuality(o: { dataDir?: string; texts?: number }): void {
  const root = dataDir(o.dataDir);
  const bin = join(root, 'models', 'stories260K', 'stories260K.bin');
  const tok = loadTokenizer(bin, join(root, 'models', 'stories260K', 'tok512.bin'), 512);
  const questions = readRecords(join(root, 'datasets', 'gsm8k', 'test.jsonl'), { format: 'jsonl' }).records
    .flatMap((r) => (r.kind === 'completion' ? [r.prompt.trim()] : [])).slice(0, o.texts ?? 200);
  const texts = questions.map((q) => tok.encode(q, { bos: true }).slice(0, 256));
  const f32 = loadModel(bin).model;
  const ref = score(f32, texts, true);
  emit({ bench: 'quantized', case: 'quality', format: 'f32', text: 'gsm8k test questions', texts: texts.length, tokens: ref.tokens, nll: Number(ref.nll.toFixed(4)), linear_bytes: linearBytes(f32) });
  for (const c of QUALITY_CASES) {
    const { model } = loadModel(bin);
    const report = quantizeModel(model, c.format, c.opts);
    const got = score(model, texts, true);
    let maxErr = 0;
    let sumErr = 0;
    let count = 0;
    got.logits.forEach((l, i) => {
      const r = ref.logits[i]!;
      for (let j = 0; j < l.length; j++) {
        const e = Math.abs(l[j]! - r[j]!);
        maxErr = Math.max(maxErr, e);
        sumErr += e;
        count++;
      }
    });
    emit({
      bench: 'quantized', case: 'quality', format: c.name, text: 'gsm8k test questions', texts: texts.length, tokens: got.tokens,
      nll: Number(got.nll.toFixed(4)), nll_f32: Number(ref.nll.toFixed(4)), nll_delta: Number((got.nll - ref.nll).toFixed(4)),
      max_logit_error: Number(maxErr.toFixed(4)), mean_abs_logit_error: Number((sumErr / count).toExponential(3)),
      linear_bytes: report.layerBytesAfter, linear_bytes_f32: report.layerBytesBefore, compression: Number((report.layerBytesBefore / report.layerBytesAfter).toFixed(2)),
    });
  }
}

// ---------------------------------------------------------------- QLoRA against LoRA on the demo task

export function runQloraSms(o: { dataDir?: string; seeds: number; steps: number; formats: string[] }): void {
  const tmp = mkdtempSync(join(tmpdir(), 'adaptkit-bench-qlora-'));
  try {
    for (let seed = 0; seed < o.seeds; seed++) {
      for (const format of ['f32', ...o.formats]) {
        const r = runDemo({ task: 'sms', dataDir: o.dataDir, outDir: join(tmp, `${format}-${seed}`), steps: o.steps, seed, quantize: format === 'f32' ? undefined : format, overwrite: true });
        emit({
          bench: 'quantized', case: 'qlora-sms', base: format, seed, steps: o.steps, held_out: r.eval_examples,
          accuracy_before: Number(r.before.toFixed(4)), accuracy_after: Number(r.after.toFixed(4)), seconds: Number(r.seconds.toFixed(1)),
        });
      }
    }
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
}

// ---------------------------------------------------------------- peak RSS of LoRA training

export function runTrainRss(o: { batch: number; seq: number; steps: number }): void {
  const script = fileURLToPath(new URL('./train.js', import.meta.url)).replace(/\.js$/, import.meta.url.endsWith('.ts') ? '.ts' : '.js');
  const rows: Record<string, number>[] = [];
  for (const quantized of [undefined, 'nf4']) {
    const shape = { ...GPT2_SMALL, batch: o.batch, seq: o.seq, r: 8, steps: o.steps, warmup: 1, ...(quantized ? { quantize: quantized } : {}) };
    const child = spawnSync(process.execPath, [...process.execArgv, script, '--worker', JSON.stringify(shape)], { encoding: 'utf8', maxBuffer: 1 << 24 });
    if (child.status !== 0) throw new AdaptkitError(`train worker (${quantized ?? 'f32'}) failed: ${child.stderr.trim().split('\n').pop()}`);
    const row = JSON.parse(child.stdout.trim().split('\n').pop()!) as Record<string, number>;
    rows.push(row);
    emit({ ...row, bench: 'quantized', case: 'train-rss', base: quantized ?? 'f32', shape: `gpt2-small b${o.batch} t${o.seq} r8` });
  }
  emit({
    bench: 'quantized', case: 'train-rss', ratio_peak_rss_nf4_vs_f32: Number((rows[1]!.peak_rss_mb! / rows[0]!.peak_rss_mb!).toFixed(2)),
    ratio_tokens_per_s_nf4_vs_f32: Number((rows[1]!.tokens_per_s! / rows[0]!.tokens_per_s!).toFixed(2)),
  });
}

export const QUANTIZED_CASES = ['quality', 'qlora-sms', 'train-rss'] as const;

export async function runQuantizedCli(o: Record<string, string | boolean | undefined>): Promise<void> {
  getBackend();
  const str = (k: string) => (typeof o[k] === 'string' ? (o[k] as string) : undefined);
  const count = (flag: string, k: string, fallback: number) => {
    const v = str(k);
    if (v === undefined) return fallback;
    const n = Number(v);
    if (!Number.isInteger(n) || n < 1) throw new AdaptkitError(`${flag} must be a positive integer, got "${v}"`);
    return n;
  };
  const cases = str('cases')?.split(',').map((x) => x.trim()).filter(Boolean) ?? [...QUANTIZED_CASES];
  for (const c of cases) if (!(QUANTIZED_CASES as readonly string[]).includes(c)) throw new AdaptkitError(`--cases: unknown case "${c}" (cases: ${QUANTIZED_CASES.join(', ')})`);
  const quick = o.quick === true;
  const dir = str('dataDir');
  if (cases.includes('quality')) runQuality({ dataDir: dir, texts: quick ? 20 : count('--texts', 'texts', 200) });
  if (cases.includes('qlora-sms')) {
    runQloraSms({ dataDir: dir, seeds: quick ? 1 : count('--seeds', 'seeds', 3), steps: quick ? 5 : count('--steps', 'steps', 150), formats: ['nf4'] });
  }
  if (cases.includes('train-rss')) runTrainRss(quick ? { batch: 1, seq: 16, steps: 1 } : { batch: count('--batch', 'batch', 4), seq: count('--seq', 'seq', 128), steps: count('--rss-steps', 'rssSteps', 2) });
}
