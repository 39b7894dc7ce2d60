/** BERT encoder (post-LayerNorm blocks, exact GELU) with the sequence-classification head. */
import {
  AdaptkitError, type Tensor, add, attention, concat, gelu, geluTanh, narrow, permute, reshape, shapeStr, squeeze, tanh, tensor, zeros,
} from '../../tensor/index.js';
import { type AdapterDescriptor, Embedding, type EmbeddingLike, LayerNorm, Linear, type LinearLike, Module } from '../../nn/index.js';
import { keyMaskFor } from '../mask.js';
import { ConfigReader, type RawConfig } from '../config.js';
import type { WeightMap } from '../weights.js';

export interface BertConfig {
  vocabSize: number;
  hiddenSize: number;
  numLayers: number;
  numHeads: number;
  intermediateSize: number;
  maxPositions: number;
  typeVocabSize: number;
  layerNormEps: number;
  hiddenAct: string;
  numLabels: number;
  raw: RawConfig;
}

export function parseBertConfig(raw: RawConfig, source = 'config.json'): BertConfig {
  const c = new ConfigReader(raw, source);
  const hidden = c.positive('hidden_size');
  const heads = c.positive('num_attention_heads');
  if (hidden % heads !== 0) throw new AdaptkitError(`${source}: hidden_size (${hidden}) must be a multiple of num_attention_heads (${heads})`);
  const act = c.oneOf('hidden_act', ['gelu', 'gelu_new', 'relu'], 'gelu');
  const id2label = c.object('id2label');
  return {
    vocabSize: c.positive('vocab_size'),
    hiddenSize: hidden,
    numLayers: c.int('num_hidden_layers'),
    numHeads: heads,
    intermediateSize: c.positive('intermediate_size'),
    maxPositions: c.positive('max_position_embeddings', 512),
    typeVocabSize: c.positive('type_vocab_size', 2),
    layerNormEps: c.num('layer_norm_eps', 1e-12),
    hiddenAct: act,
    numLabels: c.positive('num_labels', id2label && Object.keys(id2label).length > 0 ? Object.keys(id2label).length : 2),
    raw,
  };
}

export class BertSelfAttention extends Module {
  constructor(public query: LinearLike, public key: LinearLike, public value: LinearLike, readonly numHeads: number) {
    super();
  }

  forward(x: Tensor, keyMask: Tensor | null): Tensor {
    const [B, T, H] = x.shape as [number, number, number];
    const split = (t: Tensor) => permute(reshape(t, [B, T, this.numHeads, H / this.numHeads]), [0, 2, 1, 3]);
    const o = attention(split(this.query.forward(x)), split(this.key.forward(x)), split(this.value.forward(x)), { keyMask });
    return reshape(permute(o, [0, 2, 1, 3]), [B, T, H]);
  }
}

export class BertSelfOutput extends Module {
  constructor(public dense: LinearLike, public LayerNorm: LayerNorm) {
    super();
  }

  forward(h: Tensor, input: Tensor): Tensor {
    return this.LayerNorm.forward(add(this.dense.forward(h), input));
  }
}

export class BertAttention extends Module {
  constructor(public self: BertSelfAttention, public output: BertSelfOutput) {
    super();
  }

  forward(x: Tensor, keyMask: Tensor | null): Tensor {
    return this.output.forward(this.self.forward(x, keyMask), x);
  }
}

export class BertIntermediate extends Module {
  constructor(public dense: LinearLike, readonly act: string) {
    super();
  }

  forward(x: Tensor): Tensor {
    const h = this.dense.forward(x);
    return this.act === 'relu' ? h.relu() : this.act === 'gelu_new' ? geluTanh(h) : gelu(h);
  }
}

export class BertLayer extends Module {
  constructor(public attention: BertAttention, public intermediate: BertIntermediate, public output: BertSelfOutput) {
    super();
  }

  forward(x: Tensor, keyMask: Tensor | null): Tensor {
    const a = this.attention.forward(x, keyMask);
    return this.output.forward(this.intermediate.forward(a), a);
  }
}

export class BertEmbeddings extends Module {
  constructor(
    public word_embeddings: EmbeddingLike,
    public position_embeddings: Embedding,
    public token_type_embeddings: Embedding,
    public LayerNorm: LayerNorm,
  ) {
    super();
  }

  forward(ids: Tensor, tokenTypes: Tensor | null): Tensor {
    const B = ids.shape[0]!;
    const words = this.word_embeddings.forward(ids, 0);
    const T = words.shape[1]!;
    const extra = T - ids.shape[1]!;
    const pos = tensor(Array.from({ length: T }, (_, i) => i), [T], { dtype: 'i32' });
    let types = tokenTypes ?? zeros([B, ids.shape[1]!], { dtype: 'i32' });
    if (extra > 0) types = concat([zeros([B, extra], { dtype: 'i32' }), types], 1);
    const e = add(add(words, this.position_embeddings.forward(pos)), this.token_type_embeddings.forward(types));
    return this.LayerNorm.forward(e);
  }
}

export class BertEncoder extends Module {
  constructor(public layer: BertLayer[]) {
    super();
  }
}

export class BertPooler extends Module {
  constructor(public dense: LinearLike) {
    super();
  }

  forward(h: Tensor): Tensor {
    return tanh(this.dense.forward(squeeze(narrow(h, 1, 0, 1), 1)));
  }
}

export class BertModel extends Module {
  constructor(public embeddings: BertEmbeddings, public encoder: BertEncoder, public pooler: BertPooler | null) {
    super();
  }
}

export interface EncoderInputs {
  /** [B, T] f32, 1 for tokens, 0 for padding. */
  attentionMask?: Tensor | null;
  tokenTypeIds?: Tensor | null;
}

export class BertForSequenceClassification extends Module {
  constructor(public bert: BertModel, public classifier: LinearLike, readonly config: BertConfig) {
    super();
  }

  adapterDescriptor(): AdapterDescriptor {
    return {
      family: 'bert',
      task: 'sequence-classification',
      roles: {
        'attn.q': ['query'], 'attn.k': ['key'], 'attn.v': ['value'], 'attn.o': '.*attention\\.output\\.dense',
        'mlp.up': ['intermediate.dense'], 'mlp.down': '.*layer\\.\\d+\\.output\\.dense',
        // PEFT's IA3 default for BERT scales the inputs of both output.dense layers
        'ffn.in': ['output.dense'],
        'block.attn_out': '.*attention\\.output\\.dense', 'block.ffn_out': '.*layer\\.\\d+\\.output\\.dense', 'block.ffn': '.*intermediate\\.dense',
      },
      defaultTargets: ['query', 'value'],
      layersPattern: ['layer'],
      fanInFanOut: false,
      embedding: { path: 'bert.embeddings.word_embeddings', dim: this.config.hiddenSize },
      heads: ['classifier'],
      attention: null,
      classifierHead: 'classifier',
    };
  }

  /** Replace the head with a freshly initialized one for `n` labels (the checkpoint's had others). */
  resizeClassifier(n: number): void {
    if (n === this.config.numLabels) return;
    this.classifier = Linear.init(this.config.hiddenSize, n);
    (this.config as { numLabels: number }).numLabels = n;
  }

  /** Last hidden states [B, T, H]. */
  hidden(ids: Tensor, opts: EncoderInputs = {}): Tensor {
    if (ids.dtype !== 'i32' || ids.ndim !== 2) throw new AdaptkitError(`BERT: ids must be i32 [B, T], got ${ids.dtype} ${shapeStr(ids.shape)}`);
    if (ids.shape[1]! > this.config.maxPositions) throw new AdaptkitError(`BERT supports ${this.config.maxPositions} positions, got ${ids.shape[1]}`);
    let h = this.bert.embeddings.forward(ids, opts.tokenTypeIds ?? null);
    const keyMask = keyMaskFor(opts.attentionMask, ids.shape[0]!, 0, ids.shape[1]!, h.shape[1]! - ids.shape[1]!);
    for (const layer of this.bert.encoder.layer) h = layer.forward(h, keyMask);
    return h;
  }

  /** Class logits [B, numLabels]. */
  forward(ids: Tensor, opts: EncoderInputs = {}): Tensor {
    const h = this.hidden(ids, opts);
    if (!this.bert.pooler) throw new AdaptkitError('BERT: this checkpoint has no pooler, so it has no classification head');
    return this.classifier.forward(this.bert.pooler.forward(h));
  }
}

export function buildBert(c: BertConfig, w: WeightMap): BertForSequenceClassification {
  const H = c.hiddenSize;
  const p = w.has('bert.embeddings.word_embeddings.weight') ? 'bert.' : '';
  const lin = (name: string, out: number, inp: number) => new Linear(w.get(`${name}.weight`, [out, inp]), w.get(`${name}.bias`, [out]));
  const ln = (name: string) => new LayerNorm(w.get(`${name}.weight`, [H]), w.get(`${name}.bias`, [H]), c.layerNormEps);
  const emb = (name: string, n: number) => new Embedding(w.get(`${name}.weight`, [n, H]));
  const layers: BertLayer[] = [];
  for (let l = 0; l < c.numLayers; l++) {
    const b = `${p}encoder.layer.${l}`;
    layers.push(new BertLayer(
      new BertAttention(
        new BertSelfAttention(lin(`${b}.attention.self.query`, H, H), lin(`${b}.attention.self.key`, H, H), lin(`${b}.attention.self.value`, H, H), c.numHeads),
        new BertSelfOutput(lin(`${b}.attention.output.dense`, H, H), ln(`${b}.attention.output.LayerNorm`)),
      ),
      new BertIntermediate(lin(`${b}.intermediate.dense`, c.intermediateSize, H), c.hiddenAct),
      new BertSelfOutput(lin(`${b}.output.dense`, H, c.intermediateSize), ln(`${b}.output.LayerNorm`)),
    ));
  }
  const bert = new BertModel(
    new BertEmbeddings(emb(`${p}embeddings.word_embeddings`, c.vocabSize), emb(`${p}embeddings.position_embeddings`, c.maxPositions),
      emb(`${p}embeddings.token_type_embeddings`, c.typeVocabSize), ln(`${p}embeddings.LayerNorm`)),
    new BertEncoder(layers),
    w.has(`${p}pooler.dense.weight`) ? new BertPooler(lin(`${p}pooler.dense`, H, H)) : null,
  );
  const classifier = w.has('classifier.weight') ? lin('classifier', c.numLabels, H) : Linear.init(H, c.numLabels);
  return new BertForSequenceClassification(bert, classifier, c);
}
