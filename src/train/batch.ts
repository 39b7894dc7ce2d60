/** Examples to padded batches: ids, loss targets (-100 outside completions) and a padding mask. */
import { type Tensor, tensor } from '../tensor/index.js';
import { type Example, exampleLength, promptLength } from './examples.js';

export const IGNORE = -100;

export interface Batch {
  ids: Tensor;
  /** targets[t] is the token after position t, or -100 where no loss applies. */
  targets: Tensor;
  mask: Tensor;
  /** Tokens that carry loss. */
  lossTokens: number;
  tokens: number;
  /** The task of each row (an example's `task`, else 0): routes task-conditioned adapters. */
  taskIds: Int32Array;
  /** Leading prompt tokens of each row (everything before the completion of its first example). */
  promptLengths: Int32Array;
}

/**
 * Right-padded batch; with `pack`, several examples share a row (up to maxLen). A packed row
 * holds examples of one task only, since a row has one task id; its prompt length is that of
 * its first example.
 */
export function collate(examples: readonly Example[], padId: number, opts: { pack?: boolean; maxLen?: number } = {}): Batch {
  const rows: { ids: number[]; loss: boolean[]; task: number; prompt: number }[] = [];
  // the row each task packs into next
  const open = new Map<number, number>();
  for (const e of examples) {
    const ids = [...e.head, ...e.body, ...e.tail, ...e.completion];
    const loss = ids.map((_, i) => i >= ids.length - e.completion.length);
    const task = e.task ?? 0;
    const at = open.get(task);
    const row = at === undefined ? undefined : rows[at];
    if (opts.pack && opts.maxLen && row && row.ids.length + ids.length <= opts.maxLen) {
      row.ids.push(...ids);
      row.loss.push(...loss);
    } else {
      open.set(task, rows.length);
      rows.push({ ids, loss, task, prompt: promptLength(e) });
    }
  }
  const T = Math.max(...rows.map((r) => r.ids.length));
  const B = rows.length;
  const ids = new Int32Array(B * T).fill(padId);
  const targets = new Int32Array(B * T).fill(IGNORE);
  const mask = new Float32Array(B * T);
  let lossTokens = 0;
  let tokens = 0;
  rows.forEach((r, b) => {
    for (let t = 0; t < r.ids.length; t++) {
      ids[b * T + t] = r.ids[t]!;
      mask[b * T + t] = 1;
      if (t + 1 < r.ids.length && r.loss[t + 1]) {
        targets[b * T + t] = r.ids[t + 1]!;
        lossTokens++;
      }
    }
    tokens += r.ids.length;
  });
  return {
    ids: tensor(ids, [B, T]), targets: tensor(targets, [B, T]), mask: tensor(mask, [B, T]), lossTokens, tokens,
    taskIds: Int32Array.from(rows, (r) => r.task), promptLengths: Int32Array.from(rows, (r) => r.prompt),
  };
}

/**
 * Batches of indices for one epoch: shuffled, and with bucketing, grouped by similar length
 * (sorted within windows of 50 batches, then the batches shuffled) to waste less padding.
 */
export function epochBatches(examples: readonly Example[], batchSize: number, order: readonly number[], bucket: boolean): number[][] {
  const idx = [...order];
  if (bucket) {
    const win = batchSize * 50;
    for (let s = 0; s < idx.length; s += win) {
      const part = idx.slice(s, s + win).sort((a, b) => exampleLength(examples[a]!) - exampleLength(examples[b]!));
      idx.splice(s, part.length, ...part);
    }
  }
  const out: number[][] = [];
  for (let s = 0; s + batchSize <= idx.length; s += batchSize) out.push(idx.slice(s, s + batchSize));
  if (out.length === 0 && idx.length > 0) out.push(idx);
  return out;
}
