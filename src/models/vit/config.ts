/** The config.json of a Hugging Face ViT (`model_type: "vit"`); keys it does not use are ignored. */
import { AdaptkitError } from '../../tensor/index.js';
import { preview } from '../../io/json.js';
import { ConfigReader, type RawConfig } from '../config.js';

export interface ViTConfig {
  hiddenSize: number;
  numLayers: number;
  numHeads: number;
  intermediateSize: number;
  hiddenAct: string;
  layerNormEps: number;
  /** [height, width] of the images the position embeddings were made for. */
  imageSize: [number, number];
  /** [height, width] of one patch (the stride of the patch embedding). */
  patchSize: [number, number];
  numChannels: number;
  qkvBias: boolean;
  numLabels: number;
  /** Class index to label name, when the config names its labels. */
  id2label: Record<string, string> | null;
  raw: RawConfig;
}

/** An int, or a pair [height, width] as transformers also accepts for image_size and patch_size. */
function pair(c: ConfigReader, key: string, fallback: number): [number, number] {
  const v = c.raw[key];
  if (Array.isArray(v)) {
    if (v.length !== 2 || !v.every((x) => Number.isSafeInteger(x) && (x as number) >= 1)) c.fail(key, `must be a size or a pair [height, width] of sizes, got ${preview(v)}`);
    return [v[0] as number, v[1] as number];
  }
  const n = c.positive(key, fallback);
  return [n, n];
}

export function parseViTConfig(raw: RawConfig, source = 'config.json'): ViTConfig {
  const c = new ConfigReader(raw, source);
  const hidden = c.positive('hidden_size', 768);
  const heads = c.positive('num_attention_heads', 12);
  if (hidden % heads !== 0) throw new AdaptkitError(`${source}: hidden_size (${hidden}) must be a multiple of num_attention_heads (${heads})`);
  const imageSize = pair(c, 'image_size', 224);
  const patchSize = pair(c, 'patch_size', 16);
  if (patchSize[0] > imageSize[0] || patchSize[1] > imageSize[1]) {
    throw new AdaptkitError(`${source}: patch_size ${preview(raw.patch_size)} is larger than image_size ${preview(raw.image_size)}`);
  }
  const id2label = c.object('id2label');
  const labels = id2label ? Object.fromEntries(Object.entries(id2label).map(([k, v]) => [k, String(v)])) : null;
  return {
    hiddenSize: hidden,
    numLayers: c.int('num_hidden_layers', 12),
    numHeads: heads,
    intermediateSize: c.positive('intermediate_size', 3072),
    hiddenAct: c.oneOf('hidden_act', ['gelu', 'gelu_new', 'gelu_pytorch_tanh', 'relu'], 'gelu'),
    layerNormEps: c.num('layer_norm_eps', 1e-12),
    imageSize,
    patchSize,
    numChannels: c.positive('num_channels', 3),
    qkvBias: c.bool('qkv_bias', true),
    numLabels: c.positive('num_labels', labels && Object.keys(labels).length > 0 ? Object.keys(labels).length : 2),
    id2label: labels,
    raw,
  };
}

/** Patches per image: a grid of (height / patch) x (width / patch), remainders cut as a strided convolution does. */
export function patchGrid(c: ViTConfig): [number, number] {
  return [Math.floor(c.imageSize[0] / c.patchSize[0]), Math.floor(c.imageSize[1] / c.patchSize[1])];
}
