/** Evaluation: loss and perplexity on completions, label accuracy, exact match of a final number. */
import { AdaptkitError, type Tensor, concat, crossEntropy, indexSelect, mul, narrow, noGrad, reshape, sum, tensor, tidy } from '../tensor/index.js';
import type { Tokenizer } from '../models/tokenizer.js';
import { generate } from '../models/generate.js';
import { type Batch, IGNORE, collate } from './batch.js';
import type { Example } from './examples.js';

/**
 * Per-row conditioning of a forward: task ids route task-conditioned adapters, prompt lengths
 * mark the instruction of instruction-conditioned ones. Models without adapters ignore them.
 */
export interface RowConditioning {
  taskIds?: ArrayLike<number> | null;
  promptLengths?: ArrayLike<number> | null;
}

/** What training and evaluation need from a model (an AdapterModel, or a bare model). */
export interface TrainableLM {
  forward(ids: Tensor, opts?: { attentionMask?: Tensor | null } & RowConditioning): Tensor;
}

/** Logits for the real positions (prompt tuning puts virtual positions in front). */
export function realLogits(model: TrainableLM, ids: Tensor, mask: Tensor | null, route?: RowConditioning): Tensor {
  const l = model.forward(ids, { attentionMask: mask, ...route });
  const T = ids.shape[1]!;
  return l.shape[1] === T ? l : narrow(l, 1, l.shape[1]! - T, T);
}

/** How a batch's loss averages its counted tokens (see TrainConfig.lossAverage). */
export type LossAverage = 'token' | 'row';
export const LOSS_AVERAGES: readonly LossAverage[] = ['token', 'row'];

/**
 * Cross-entropy of logits [B, T, V] against targets [B, T] (IGNORE not counted): the mean over
 * counted tokens, or with "row" the mean over rows that count any token of each row's mean.
 */
export function tokenLoss(logits: Tensor, targets: Tensor, average: LossAverage = 'token'): Tensor {
  if (average === 'token') return crossEntropy(logits, targets, { ignoreIndex: IGNORE });
  const [B, T] = targets.shape as [number, number];
  const t = targets.toArray() as Int32Array;
  const counts = new Int32Array(B);
  for (let i = 0; i < B * T; i++) if (t[i] !== IGNORE) counts[Math.floor(i / T)]!++;
  const rows = counts.reduce((n, c) => n + (c > 0 ? 1 : 0), 0);
  const w = new Float32Array(B * T);
  for (let i = 0; i < B * T; i++) if (t[i] !== IGNORE) w[i] = 1 / (counts[Math.floor(i / T)]! * rows);
  const per = crossEntropy(logits, targets, { ignoreIndex: IGNORE, reduction: 'none' });
  return sum(mul(per, tensor(w, [B, T])));
}

export function batchLoss(model: TrainableLM, ids: Tensor, targets: Tensor, mask: Tensor | null, route?: RowConditioning, average?: LossAverage): Tensor {
  return tokenLoss(realLogits(model, ids, mask, route), targets, average);
}

/**
 * The routing of an evaluation batch: its prompt lengths, and its task ids only when the
 * examples name their tasks, so that a task-routed adapter evaluated on data of no task says
 * that it needs one instead of quietly acting as task 0.
 */
export function evalRouting(b: Batch, examples: readonly Example[]): RowConditioning {
  return examples.some((e) => e.task !== undefined) ? { taskIds: b.taskIds, promptLengths: b.promptLengths } : { promptLengths: b.promptLengths };
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
    const part = examples.slice(s, s + batchSize);
    const b = collate(part, padId);
    tidy(() => noGrad(() => {
      const l = crossEntropy(realLogits(model, b.ids, b.mask, evalRouting(b, part)), b.targets, { ignoreIndex: IGNORE, reduction: 'sum' });
      total += l.item();
    }));
    count += b.lossTokens;
    for (const t of [b.ids, b.targets, b.mask]) t.dispose();
  }
  const loss = count > 0 ? total / count : NaN;
  return { loss, perplexity: Math.exp(loss), tokens: count };
}

/** A model that continues prompts from a KV cache, at explicit positions (any causal LM here). */
export interface CachedLM {
  forward(ids: Tensor, opts?: { attentionMask?: Tensor | null; cache?: unknown; positions?: Tensor | null } & RowConditioning): Tensor;
}

/**
 * Keys and values of a batch's past positions, per layer, in the form the models' attention
 * appends to. `repeatRows` gives every continuation of a prompt its own copy of the prompt's rows.
 */
class RowCache {
  length = 0;
  /** One object per row standing for its sequence, so repeated rows stay the same sequence to prompt hooks. */
  seqs: object[];
  private k: (Tensor | null)[] = [];
  private v: (Tensor | null)[] = [];

  constructor(rows: number) {
    this.seqs = Array.from({ length: rows }, () => ({}));
  }

  append(layer: number, k: Tensor, v: Tensor): { k: Tensor; v: Tensor } {
    const pk = this.k[layer];
    const pv = this.v[layer];
    const nk = (pk ? concat([pk, k], 2) : k).keep();
    const nv = (pv ? concat([pv, v], 2) : v).keep();
    pk?.dispose();
    pv?.dispose();
    this.k[layer] = nk;
    this.v[layer] = nv;
    return { k: nk, v: nv };
  }

  /** A cache whose row i holds this cache's row rows[i]. */
  repeatRows(rows: Tensor): RowCache {
    const c = new RowCache(0);
    c.seqs = Array.from(rows.toArray() as Int32Array, (i) => this.seqs[i]!);
    c.length = this.length;
    c.k = this.k.map((t) => (t ? indexSelect(t, 0, rows).keep() : null));
    c.v = this.v.map((t) => (t ? indexSelect(t, 0, rows).keep() : null));
    return c;
  }

  dispose(): void {
    for (const t of [...this.k, ...this.v]) t?.dispose();
    this.k = [];
    this.v = [];
  }
}

/** log softmax(row)[target], in float64 over one row of logits. */
function logProbAt(v: ArrayLike<number>, offset: number, vocab: number, target: number): number {
  let m = -Infinity;
  for (let i = 0; i < vocab; i++) if (v[offset + i]! > m) m = v[offset + i]!;
  let s = 0;
  for (let i = 0; i < vocab; i++) s += Math.exp(v[offset + i]! - m);
  return v[offset + target]! - m - Math.log(s);
}

/** Logit values held at once while scoring continuations (bounds memory for large vocabularies). */
const SCORE_LOGIT_BUDGET = 1 << 23;

/**
 * Summed log-probability of each label's whole token sequence after each example's prompt (head +
 * body + tail): out[i * L + l] = sum_j log p(seq_l[j] | prompt_i, seq_l[<j]). Each prompt runs
 * once, into a KV cache; the cache's rows are then repeated for every label and all the labels'
 * tokens run as one batch of continuations against it, so L labels cost one prompt pass plus L
 * short label passes instead of L full passes. Prompts are batched by length and labels grouped
 * by length, so that little of either pass is padding.
 */
export function labelLogProbs(model: CachedLM, examples: readonly Example[], sequences: readonly (readonly number[])[], padId: number, promptBatch = 16): Float64Array {
  const L = sequences.length;
  if (sequences.some((q) => q.length === 0)) throw new AdaptkitError('every label needs at least one token to score');
  const out = new Float64Array(examples.length * L);
  const promptLen = (e: Example) => e.head.length + e.body.length + e.tail.length;
  const order = Array.from(examples.keys()).sort((a, b) => promptLen(examples[a]!) - promptLen(examples[b]!));
  // labels with more than one token, shortest first
  const longer = Array.from(sequences.keys()).filter((l) => sequences[l]!.length > 1).sort((a, b) => sequences[a]!.length - sequences[b]!.length);
  for (let s = 0; s < order.length; s += promptBatch) {
    const idx = order.slice(s, s + promptBatch);
    const part = idx.map((i) => examples[i]!);
    const P = part.length;
    const b = collate(part.map((e) => ({ ...e, completion: [] })), padId);
    const Tp = b.ids.shape[1]!;
    const lens = part.map(promptLen);
    const cache = new RowCache(P);
    try {
      // the prompts: the first label token's log-probability is read at each prompt's last token
      let extra = 0;
      let vocab = 0;
      const first = tidy(() => noGrad(() => {
        const logits = model.forward(b.ids, { attentionMask: b.mask, cache, ...evalRouting(b, part) });
        const Th = logits.shape[1]!;
        vocab = logits.shape[2]!;
        extra = Th - Tp;
        const rows = tensor(lens.map((n, i) => i * Th + extra + n - 1), [P], { dtype: 'i32' });
        return indexSelect(reshape(logits, [P * Th, vocab]), 0, rows).toArray();
      }));
      for (let i = 0; i < P; i++) for (let l = 0; l < L; l++) out[idx[i]! * L + l] = logProbAt(first, i * vocab, vocab, sequences[l]![0]!);
      const Tc = cache.length;
      // the labels' remaining tokens as continuations, in groups whose logits fit the budget
      for (let g = 0; g < longer.length;) {
        let end = g + 1;
        while (end < longer.length && P * (end + 1 - g) * (sequences[longer[end]!]!.length - 1) * vocab <= SCORE_LOGIT_BUDGET) end++;
        const group = longer.slice(g, end);
        g = end;
        const G = group.length;
        const Tl = sequences[group[G - 1]!]!.length - 1;
        const R = P * G;
        const ids = new Int32Array(R * Tl).fill(padId);
        const pos = new Int32Array(R * Tl);
        const mask = new Float32Array(R * (Tc + Tl));
        const src = new Int32Array(R);
        for (let i = 0; i < P; i++) {
          for (let k = 0; k < G; k++) {
            const r = i * G + k;
            const q = sequences[group[k]!]!;
            src[r] = i;
            mask.fill(1, r * (Tc + Tl), r * (Tc + Tl) + extra + lens[i]!);
            for (let j = 0; j < Tl; j++) {
              pos[r * Tl + j] = extra + lens[i]! + j;
              if (j < q.length - 1) {
                ids[r * Tl + j] = q[j]!;
                mask[r * (Tc + Tl) + Tc + j] = 1;
              }
            }
          }
        }
        const rowCache = tidy(() => cache.repeatRows(tensor(src, [R], { dtype: 'i32' })));
        // continuations keep their prompt's task; their prompt is in the cache, so no prompt lengths
        const taskIds = part.some((e) => e.task !== undefined) ? Int32Array.from(src, (i) => part[i]!.task ?? 0) : undefined;
        try {
          const v = tidy(() => noGrad(() => model.forward(tensor(ids, [R, Tl], { dtype: 'i32' }), {
            cache: rowCache, positions: tensor(pos, [R, Tl], { dtype: 'i32' }), attentionMask: tensor(mask, [R, Tc + Tl]), ...(taskIds ? { taskIds } : {}),
          }).toArray()));
          for (let i = 0; i < P; i++) {
            for (let k = 0; k < G; k++) {
              const q = sequences[group[k]!]!;
              let sum = 0;
              for (let j = 0; j + 1 < q.length; j++) sum += logProbAt(v, ((i * G + k) * Tl + j) * vocab, vocab, q[j + 1]!);
              out[idx[i]! * L + group[k]!] += sum;
            }
          }
        } finally {
          rowCache.dispose();
        }
      }
    } finally {
      cache.dispose();
      for (const t of [b.ids, b.targets, b.mask]) t.dispose();
    }
  }
  return out;
}

/** A label's scored tokens: one first token, or its whole sequence (words, then EOS). */
export type LabelTargets = ReadonlyMap<string, number | readonly number[]>;

export interface LabelAccuracyOptions {
  batchSize?: number;
  /**
   * 'auto' (default): the first token when every label's first token differs (what greedy
   * decoding chooses first, from one forward), else the whole sequence; 'sequence' always.
   */
  scoring?: 'auto' | 'first-token' | 'sequence';
}

export interface LabelAccuracy {
  accuracy: number;
  predictions: string[];
  scoring: 'first-token' | 'sequence';
}

/**
 * Accuracy of choosing between label words. By the first token: the label whose first token
 * scores highest right after the prompt. By the sequence: the label whose whole token sequence
 * has the highest summed log-probability given the prompt (labelLogProbs), which tells apart
 * labels that begin alike.
 */
export function labelAccuracy(model: TrainableLM, examples: readonly Example[], labelTokens: LabelTargets, padId: number, o: LabelAccuracyOptions = {}): LabelAccuracy {
  const labels = [...labelTokens.keys()];
  const seqs = labels.map((l) => {
    const t = labelTokens.get(l)!;
    return typeof t === 'number' ? [t] : [...t];
  });
  const firsts = seqs.map((q) => q[0]!);
  const distinct = new Set(firsts).size === firsts.length;
  const mode = o.scoring ?? 'auto';
  if (mode === 'first-token' && !distinct) throw new AdaptkitError(collisionMessage(labels, firsts));
  const scoring = mode === 'sequence' || (mode === 'auto' && !distinct) ? 'sequence' : 'first-token';
  const predictions: string[] = [];
  let right = 0;
  const pick = (score: (k: number) => number, e: Example) => {
    let best = 0;
    for (let k = 1; k < labels.length; k++) if (score(k) > score(best)) best = k;
    predictions.push(labels[best]!);
    if (labels[best] === e.label) right++;
  };
  if (scoring === 'sequence') {
    const lp = labelLogProbs(model as CachedLM, examples, seqs, padId, o.batchSize ?? 16);
    examples.forEach((e, i) => pick((k) => lp[i * labels.length + k]!, e));
  } else {
    const batchSize = o.batchSize ?? 32;
    for (let s = 0; s < examples.length; s += batchSize) {
      const part = examples.slice(s, s + batchSize);
      const b = collate(part.map((e) => ({ ...e, completion: [] })), padId);
      const T = b.ids.shape[1]!;
      const V = tidy(() => noGrad(() => realLogits(model, b.ids, b.mask, evalRouting(b, part)).toArray()));
      const vocab = V.length / (part.length * T);
      part.forEach((e, i) => {
        const at = (i * T + e.head.length + e.body.length + e.tail.length - 1) * vocab;
        pick((k) => V[at + firsts[k]!]!, e);
      });
      for (const t of [b.ids, b.targets, b.mask]) t.dispose();
    }
  }
  return { accuracy: examples.length ? right / examples.length : NaN, predictions, scoring };
}

/**
 * Which labels begin with the same token, naming only those: every group of labels that share
 * a first token, with a few of its labels each.
 */
export function collisionMessage(labels: readonly string[], firsts: readonly number[]): string {
  const groups = new Map<number, string[]>();
  labels.forEach((l, i) => groups.set(firsts[i]!, [...(groups.get(firsts[i]!) ?? []), l]));
  const shared = [...groups.values()].filter((g) => g.length > 1);
  const SHOW_LABELS = 3;
  const SHOW_GROUPS = 8;
  const name = (g: string[]) => `${g.slice(0, SHOW_LABELS).join(', ')}${g.length > SHOW_LABELS ? ` and ${g.length - SHOW_LABELS} more` : ''}`;
  const n = shared.reduce((a, g) => a + g.length, 0);
  const list = shared.slice(0, SHOW_GROUPS).map(name).join('; ');
  const more = shared.length > SHOW_GROUPS ? `; and ${shared.length - SHOW_GROUPS} more groups` : '';
  return `${n} of ${labels.length} labels begin with the same token as another label (${list}${more}); give them label words that differ in their first token, or score whole label sequences`;
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

