/**
 * `--quantize <format>` for every command that loads a base model: the option, its check (before
 * anything is loaded), and the line on stderr saying what was quantized and what it takes.
 */
import { Rng, type Tensor, noGrad, tensor, tidy } from '../tensor/index.js';
import type { LoadOptions, LoadedModel } from '../models/load.js';
import { QUANTIZE_FORMATS, checkQuantizeFormat, describeQuantization } from '../models/quantize.js';

export const QUANTIZE_HELP = `quantize the base model's linear layers as it loads: ${QUANTIZE_FORMATS.join(', ')} ` +
  '(int8: LLM.int8() with outlier threshold 6; nf4/fp4: QLoRA\'s 4-bit blocks of 64 with double quantization; bf16/f16: 16-bit storage); ' +
  'the output head and embeddings stay float';

/** The load options of a --quantize value (checked here, so a typo fails before the model loads). */
export function quantizeLoadOptions(v: unknown): LoadOptions {
  return v === undefined || v === null ? {} : { quantize: checkQuantizeFormat(String(v)) };
}

/** Say on stderr what quantization the loaded model carries (nothing for a float model). */
export function reportQuantization(r: Pick<LoadedModel<unknown>, 'quantized' | 'bnb'>): void {
  if (r.quantized) process.stderr.write(`adaptkit: ${describeQuantization(r.quantized)}\n`);
  if (r.bnb) process.stderr.write(`adaptkit: read ${r.bnb.layers} bitsandbytes ${r.bnb.bits}-bit linear layers, kept packed\n`);
}

/** A fixed batch of token ids to compare logits on: 2 rows of 16 ids spread over the vocabulary. */
function probeBatch(vocab: number): Tensor {
  const rng = new Rng(0);
  return tensor(Array.from({ length: 32 }, () => rng.int(vocab)), [2, 16], { dtype: 'i32' });
}

/**
 * Merge the active adapters of a model with quantized layers (dequantize, add, requantize) and say
 * on stderr what requantizing changed: the largest weight change against the exact merge, and the
 * largest logit difference against the unmerged adapter on a probe batch.
 */
export function mergeAndReport<M>(am: { forward(ids: Tensor): Tensor; merge(o: { onRequantize(path: string, change: number): void }): M }, vocab: number): M {
  const ids = probeBatch(vocab);
  const logits = () => tidy(() => noGrad(() => am.forward(ids).toArray() as Float32Array));
  const before = logits();
  let worst = { path: '', change: 0 };
  let layers = 0;
  const merged = am.merge({
    onRequantize(path, change) {
      layers++;
      if (change >= worst.change) worst = { path, change };
    },
  });
  if (layers === 0) return merged;
  const after = logits();
  let diff = 0;
  for (let i = 0; i < after.length; i++) diff = Math.max(diff, Math.abs(after[i]! - before[i]!));
  process.stderr.write(`adaptkit: merged into ${layers} quantized layers and requantized them: largest weight change against the exact merge ${worst.change.toPrecision(3)} (${worst.path}); largest logit difference against the unmerged adapter on a probe batch ${diff.toPrecision(3)}\n`);
  return merged;
}
