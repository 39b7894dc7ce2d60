/**
 * Sequence classification with a classification head (encoders such as BERT, and decoders with
 * the `score` head of CausalLMForSequenceClassification): the input is the text alone, the loss is
 * cross-entropy of the head's logits against the label's index.
 */
import { AdaptkitError, type Tensor, crossEntropy, noGrad, tensor, tidy } from '../tensor/index.js';
import type { Tokenizer } from '../models/tokenizer.js';
import type { DataRecord } from './data.js';
import type { Example } from './examples.js';
import { imageBatch, isImageExample } from './images.js';

export interface Classifier {
  forward(ids: Tensor, opts?: { attentionMask?: Tensor | null }): Tensor;
}

/** Label records as classification examples (labels indexed in the given order). */
export function classificationExamples(records: readonly DataRecord[], tok: Tokenizer, labels: readonly string[], maxLen: number): Example[] {
  return records.map((r, i) => {
    if (r.kind !== 'label') throw new AdaptkitError(`record ${i + 1} has no label: classification needs {"text", "label"} records`);
    const idx = labels.indexOf(r.label);
    if (idx < 0) throw new AdaptkitError(`label "${r.label}" of record ${i + 1} is not one of the ${labels.length} labels (${labels.slice(0, 5).join(', ')}${labels.length > 5 ? ', ...' : ''})`);
    const ids = tok.encode(r.text, { bos: true });
    return { head: [], body: ids.slice(0, maxLen), tail: [], completion: [], label: r.label, labelIndex: idx };
  });
}

/** Text as right-padded ids with their mask; images as one pixel batch, which has no padding. */
function collateInputs(examples: readonly Example[], padId: number): { ids: Tensor; mask: Tensor | null } {
  if (examples.some(isImageExample)) return { ids: imageBatch(examples), mask: null };
  const T = Math.max(...examples.map((e) => e.body.length));
  const ids = new Int32Array(examples.length * T).fill(padId);
  const mask = new Float32Array(examples.length * T);
  examples.forEach((e, b) => e.body.forEach((t, i) => {
    ids[b * T + i] = t;
    mask[b * T + i] = 1;
  }));
  return { ids: tensor(ids, [examples.length, T]), mask: tensor(mask, [examples.length, T]) };
}

/** What a batch counts as tokens: text tokens, or one per image. */
export function classificationTokens(examples: readonly Example[]): number {
  return examples.reduce((n, e) => n + (isImageExample(e) ? 1 : e.body.length), 0);
}

export function classificationLoss(model: Classifier, examples: readonly Example[], padId: number): Tensor {
  const { ids, mask } = collateInputs(examples, padId);
  const y = tensor(examples.map((e) => e.labelIndex!), [examples.length], { dtype: 'i32' });
  return crossEntropy(model.forward(ids, { attentionMask: mask }), y);
}

export function classificationAccuracy(model: Classifier, examples: readonly Example[], padId: number, batchSize = 32): { accuracy: number; loss: number } {
  let right = 0;
  let loss = 0;
  for (let s = 0; s < examples.length; s += batchSize) {
    const part = examples.slice(s, s + batchSize);
    tidy(() => noGrad(() => {
      const { ids, mask } = collateInputs(part, padId);
      const logits = model.forward(ids, { attentionMask: mask });
      const y = tensor(part.map((e) => e.labelIndex!), [part.length], { dtype: 'i32' });
      loss += crossEntropy(logits, y, { reduction: 'sum' }).item();
      const L = logits.shape[1]!;
      const v = logits.toArray();
      part.forEach((e, i) => {
        let best = 0;
        for (let k = 1; k < L; k++) if (v[i * L + k]! > v[i * L + best]!) best = k;
        if (best === e.labelIndex) right++;
      });
    }));
  }
  return { accuracy: right / examples.length, loss: loss / examples.length };
}
