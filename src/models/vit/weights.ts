/**
 * ViT weights by their transformers names (ViTForImageClassification: `vit.*` and `classifier.*`;
 * a bare ViTModel checkpoint has no `vit.` prefix), each read with the shape the config implies.
 */
import { LayerNorm, Linear } from '../../nn/index.js';
import type { WeightMap } from '../weights.js';
import { type ViTConfig } from './config.js';
import {
  ViTAttention, ViTEmbeddings, ViTEncoder, ViTForImageClassification, ViTIntermediate, ViTLayer, ViTModel, ViTOutput, ViTPatchEmbeddings, ViTPatchProjection,
  ViTSelfAttention, ViTSelfOutput, freshClassifier, numPatches,
} from './model.js';

/** Checkpoint entries the classifier does not use: the pooler of ViTModel, the mask token of masked-image pretraining. */
export function vitIgnoresWeight(name: string): boolean {
  return /^(vit\.)?pooler\./.test(name) || /^(vit\.)?embeddings\.mask_token$/.test(name);
}

export function buildViT(c: ViTConfig, w: WeightMap): ViTForImageClassification {
  const H = c.hiddenSize;
  const I = c.intermediateSize;
  const p = w.has('vit.embeddings.cls_token') ? 'vit.' : '';
  const lin = (name: string, out: number, inp: number, bias = true) => new Linear(w.get(`${name}.weight`, [out, inp]), bias ? w.get(`${name}.bias`, [out]) : null);
  const ln = (name: string) => new LayerNorm(w.get(`${name}.weight`, [H]), w.get(`${name}.bias`, [H]), c.layerNormEps);
  const layers: ViTLayer[] = [];
  for (let l = 0; l < c.numLayers; l++) {
    const b = `${p}encoder.layer.${l}`;
    const a = `${b}.attention.attention`;
    layers.push(new ViTLayer(
      new ViTAttention(
        new ViTSelfAttention(lin(`${a}.query`, H, H, c.qkvBias), lin(`${a}.key`, H, H, c.qkvBias), lin(`${a}.value`, H, H, c.qkvBias), c.numHeads, l),
        new ViTSelfOutput(lin(`${b}.attention.output.dense`, H, H)),
      ),
      new ViTIntermediate(lin(`${b}.intermediate.dense`, I, H), c.hiddenAct),
      new ViTOutput(lin(`${b}.output.dense`, H, I)),
      ln(`${b}.layernorm_before`),
      ln(`${b}.layernorm_after`),
    ));
  }
  const [ph, pw] = c.patchSize;
  const proj = `${p}embeddings.patch_embeddings.projection`;
  const N = numPatches(c);
  const embeddings = new ViTEmbeddings(
    w.get(`${p}embeddings.cls_token`, [1, 1, H]),
    new ViTPatchEmbeddings(new ViTPatchProjection(w.get(`${proj}.weight`, [H, c.numChannels, ph, pw]), w.get(`${proj}.bias`, [H])), c),
    w.get(`${p}embeddings.position_embeddings`, [1, N + 1, H]),
    N,
  );
  const vit = new ViTModel(embeddings, new ViTEncoder(layers), ln(`${p}layernorm`));
  // a backbone without a head (a bare ViTModel) gets a fresh one, as transformers gives it
  const classifier = w.has('classifier.weight') ? lin('classifier', c.numLabels, H) : freshClassifier(H, c.numLabels);
  return new ViTForImageClassification(vit, classifier, c);
}
