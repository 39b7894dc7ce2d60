/** Evaluation: loss and perplexity on completions, label accuracy, exact match of a final number. */
import { type Tensor, crossEntropy, narrow, noGrad, tidy } from '../tensor/index.js';
import type { Tokenizer } from '../models/tokenizer.js';
import { generate } from '../models/generate.js';
import { IGNORE, collate } from './batch.js';
import type { Example } from './examples.js';

/** What training and evaluation need from a model (an AdapterModel, or a bare model). */
export interface TrainableLM {
  forward(ids: Tensor, opts?: { attentionMask?: Tensor | null }): Tensor;
}

/** Logits for the real positions (prompt tuning puts virtual positions in front). */
export function realLogits(model: TrainableLM, ids: Tensor, mask: Tensor | null): Tensor {
  const l = model.forward(ids, { attentionMask: mask });
  const T = ids.shape[1]!;
  return l.shape[1] === T ? l : narrow(l, 1, l.shape[1]! - T, T);
}

export function batchLoss(model: TrainableLM, ids: Tensor, targets: Tensor, mask: Tensor | null): Tensor {
  return crossEntropy(realLogits(model, ids, mask), targets, { ignoreIndex: IGNORE });
}

export interface LossResult {
  loss: number;
  perplexity: number;
  tokens: number;
}

/** Mean NLL per completion token over examples. */
export function evaluateLoss(model: TrainableLM, examples: readonly Example[], padId: number, batchSize = 16): LossResult {
  let total = 0;
  let count = 0;
  for (let s = 0; s < examples.length; s += batchSize) {
    const b = collate(examples.slice(s, s + batchSize), padId);
    tidy(() => noGrad(() => {
      const l = crossEntropy(realLogits(model, b.ids, b.mask), b.targets, { ignoreIndex: IGNORE, reduction: 'sum' });
      total += l.item();
    }));
    count += b.lossTokens;
    for (const t of [b.ids, b.targets, b.mask]) t.dispose();
  }
  const loss = count > 0 ? total / count : NaN;
  return { loss, perplexity: Math.exp(loss), tokens: count };
}

/**
 * Accuracy of choosing between label words: the label whose first completion token scores highest
 * right after the prompt. Labels must differ in their first token.
 */
export function labelAccuracy(model: TrainableLM, examples: readonly Example[], labelTokens: Map<string, number>, padId: number, batchSize = 32): { accuracy: number; predictions: string[] } {
  const labels = [...labelTokens.keys()];
  const firsts = labels.map((l) => labelTokens.get(l)!);
  let right = 0;
  const predictions: string[] = [];
  for (let s = 0; s < examples.length; s += batchSize) {
    const part = examples.slice(s, s + batchSize);
    const prompts = part.map((e) => ({ ...e, completion: [] }));
    const b = collate(prompts, padId);
    const T = b.ids.shape[1]!;
    const V = tidy(() => noGrad(() => realLogits(model, b.ids, b.mask).toArray()));
    const vocab = V.length / (part.length * T);
    part.forEach((e, i) => {
      const pos = e.head.length + e.body.length + e.tail.length - 1;
      let best = 0;
      for (let k = 1; k < firsts.length; k++) if (V[(i * T + pos) * vocab + firsts[k]!]! > V[(i * T + pos) * vocab + firsts[best]!]!) best = k;
      predictions.push(labels[best]!);
      if (labels[best] === e.label) right++;
    });
    for (const t of [b.ids, b.targets, b.mask]) t.dispose();
  }
  return { accuracy: examples.length ? right / examples.length : NaN, predictions };
}

/** The number an answer ends with ("#### 42" in GSM8K, else the last number in the text). */
export function finalNumber(text: string): string | null {
  const marked = /####\s*(-?[\d,]*\.?\d+)/.exec(text);
  const m = marked ?? [...text.matchAll(/-?[\d,]*\.?\d+/g)].pop();
  if (!m) return null;
  const v = Number((marked ? m[1]! : m[0]).replace(/,/g, ''));
  return Number.isFinite(v) ? String(v) : null;
}

/** Exact match of the final number of greedy generations against the references. */
export function exactMatch(
  model: Parameters<typeof generate>[0], tok: Tokenizer, items: readonly { prompt: string; answer: string }[], maxTokens = 64,
): number {
  let right = 0;
  for (const it of items) {
    const out = generate(model, tok, tok.encode(it.prompt, { bos: true }), { maxTokens });
    const want = finalNumber(it.answer);
    if (want !== null && finalNumber(out.text) === want) right++;
  }
  return items.length ? right / items.length : NaN;
}

