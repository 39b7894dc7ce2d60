/**
 * A causal language model with a sequence-classification head, built the way transformers builds
 * LlamaForSequenceClassification and GPT2ForSequenceClassification: the decoder's modules at
 * their usual paths (`model.*` for the Llama family, `transformer.*` for GPT-2), no LM head, and
 * `score`, a linear layer without bias over the hidden state of each row's last real token. The
 * module paths, and so the PEFT keys of adapters trained on it (`base_model.model.score.weight`
 * for the head), are those of the transformers classes.
 */
import { AdaptkitError, Rng, type Tensor, indexSelect, parameter, randn, reshape, shapeStr, tensor } from '../tensor/index.js';
import { type AdapterDescriptor, type DescribedModel, Linear, type LinearLike, Module, describeModel } from '../nn/index.js';

/** What the head needs from a decoder: its final hidden states (after the last norm). */
export interface HiddenStatesModel extends DescribedModel {
  readonly config: { hiddenSize: number; vocabSize: number };
  hidden(ids: Tensor, opts?: { attentionMask?: Tensor | null }): Tensor;
}

/** transformers' name for the head of decoder sequence classifiers. */
export const DECODER_CLASSIFIER_HEAD = 'score';

/** transformers' default `initializer_range`, the std of the head's initial weights. */
const HEAD_INIT_STD = 0.02;

export class CausalLMForSequenceClassification extends Module {
  /** The decoder whose `hidden()` runs; its modules are also this module's children (shared). */
  readonly #decoder: HiddenStatesModel;
  declare score: LinearLike;
  readonly config: HiddenStatesModel['config'] & { numLabels: number };

  constructor(decoder: HiddenStatesModel, numLabels: number, rng?: Rng) {
    super();
    const d = describeModel(decoder);
    if (d.task !== 'causal-lm') throw new AdaptkitError(`a classification head goes on a causal language model, not on a ${d.family} ${d.task} model`);
    if (typeof decoder.hidden !== 'function') throw new AdaptkitError(`${decoder.constructor.name} gives no hidden states to put a classification head on`);
    this.#decoder = decoder;
    // the decoder's children under their own names, so that adapters placed by path reach the
    // very modules the decoder's forward runs; the LM head is left out, as transformers does
    const self = this as unknown as Record<string, unknown>;
    for (const [k, v] of Object.entries(decoder)) if (v instanceof Module && !d.heads.includes(k)) self[k] = v;
    this.config = { ...decoder.config, numLabels };
    this.score = headInit(decoder.config.hiddenSize, numLabels, rng);
  }

  adapterDescriptor(): AdapterDescriptor {
    const d = describeModel(this.#decoder);
    return { ...d, task: 'sequence-classification', heads: [DECODER_CLASSIFIER_HEAD], classifierHead: DECODER_CLASSIFIER_HEAD };
  }

  /** Replace the head with a freshly initialized one for `n` labels. */
  resizeClassifier(n: number, rng?: Rng): void {
    if (n === this.config.numLabels) return;
    this.score = headInit(this.config.hiddenSize, n, rng);
    this.config.numLabels = n;
  }

  /** Final hidden states [B, T, hidden] (T counts virtual tokens a prompt adapter puts in front). */
  hidden(ids: Tensor, opts: { attentionMask?: Tensor | null } = {}): Tensor {
    return this.#decoder.hidden(ids, { attentionMask: opts.attentionMask ?? null });
  }

  /** Class logits [B, numLabels] from each row's last real (mask 1, right-padded) token. */
  forward(ids: Tensor, opts: { attentionMask?: Tensor | null } = {}): Tensor {
    if (ids.dtype !== 'i32' || ids.ndim !== 2) throw new AdaptkitError(`${this.constructor.name}: ids must be i32 [B, T], got ${ids.dtype} ${shapeStr(ids.shape)}`);
    const [B, T] = ids.shape as [number, number];
    const mask = opts.attentionMask ?? null;
    const h = this.hidden(ids, { attentionMask: mask });
    const [, Th, H] = h.shape as [number, number, number];
    const extra = Th - T;
    const m = mask ? mask.toArray() : null;
    const rows = new Int32Array(B);
    for (let b = 0; b < B; b++) {
      let n = T;
      if (m) {
        n = 0;
        for (let t = 0; t < T; t++) if (m[b * T + t]! > 0) n = t + 1;
      }
      if (n === 0) throw new AdaptkitError(`row ${b} of the batch has no tokens to classify`);
      rows[b] = b * Th + extra + n - 1;
    }
    const last = indexSelect(reshape(h, [B * Th, H]), 0, tensor(rows, [B], { dtype: 'i32' }));
    return this.score.forward(last);
  }
}

function headInit(hidden: number, n: number, rng?: Rng): Linear {
  return new Linear(parameter(randn([n, hidden], { std: HEAD_INIT_STD, rng: rng ?? new Rng(0) })), null);
}
