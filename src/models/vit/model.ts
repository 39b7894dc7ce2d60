/**
 * Vision Transformer (Dosovitskiy et al. 2021) in the module layout of transformers'
 * ViTForImageClassification: a strided patch convolution, a CLS token, learned position
 * embeddings, pre-LayerNorm blocks, a final LayerNorm and a linear classifier on the CLS token.
 * Module paths are the checkpoint's weight names, so adapters trained here have PEFT's keys.
 */
import {
  AdaptkitError, Rng, type Tensor, add, attention, concat, expand, gelu, geluTanh, linear, narrow, parameter, permute, randn, reshape, shapeStr,
  squeeze, transpose, zeros,
} from '../../tensor/index.js';
import { type AdapterDescriptor, type KVPrefixHook, LayerNorm, Linear, type LinearLike, Module } from '../../nn/index.js';
import { withKVPrefix } from '../prefix.js';
import { type ViTConfig, patchGrid } from './config.js';

/** transformers' default `initializer_range`: the std of a fresh classifier's weights. */
const HEAD_INIT_STD = 0.02;

/**
 * The patch embedding's Conv2d (kernel = stride = patch size), computed as an unfold of the image
 * into one row per patch and a single matmul with the kernel flattened to [hidden, C·ph·pw].
 */
export class ViTPatchProjection extends Module {
  constructor(public weight: Tensor, public bias: Tensor | null) {
    super();
  }

  /** pixels [B, C, H, W] → [B, gh·gw, hidden], patches in row-major grid order (as conv + flatten). */
  forward(pixels: Tensor): Tensor {
    const [D, C, ph, pw] = this.weight.shape as [number, number, number, number];
    const [B, , H, W] = pixels.shape as [number, number, number, number];
    const gh = Math.floor(H / ph);
    const gw = Math.floor(W / pw);
    let x = pixels;
    // a strided convolution never reads the rows and columns past the last whole patch
    if (gh * ph !== H) x = narrow(x, 2, 0, gh * ph);
    if (gw * pw !== W) x = narrow(x, 3, 0, gw * pw);
    x = permute(reshape(x, [B, C, gh, ph, gw, pw]), [0, 2, 4, 1, 3, 5]);
    return linear(reshape(x, [B, gh * gw, C * ph * pw]), reshape(this.weight, [D, C * ph * pw]), this.bias);
  }
}

/**
 * The model's input embedding as adapters see it (prompt-learning hooks wrap it): images in,
 * patch vectors [B, N, hidden] out, before the CLS token and positions are added.
 */
export class ViTPatchEmbeddings extends Module {
  constructor(public projection: ViTPatchProjection, readonly config: ViTConfig) {
    super();
  }

  /**
   * The projection as a [C·ph·pw, hidden] table, row i being what input value i of a patch adds:
   * the "vocabulary" that prompt tuning's SAMPLE_VOCAB and TEXT inits draw virtual tokens from.
   */
  get weight(): Tensor {
    const [D] = this.projection.weight.shape as [number];
    return transpose(reshape(this.projection.weight, [D, -1]));
  }

  forward(pixels: Tensor, _start = 0): Tensor {
    const c = this.config;
    const want = [pixels.shape[0] ?? 0, c.numChannels, c.imageSize[0], c.imageSize[1]];
    if (pixels.dtype !== 'f32' || pixels.ndim !== 4 || pixels.shape.some((n, i) => n !== want[i])) {
      throw new AdaptkitError(`ViT: pixel_values must be f32 [B, ${c.numChannels}, ${c.imageSize[0]}, ${c.imageSize[1]}] (num_channels, image_size of the config), got ${pixels.dtype} ${shapeStr(pixels.shape)}`);
    }
    return this.projection.forward(pixels);
  }
}

export class ViTEmbeddings extends Module {
  constructor(
    public cls_token: Tensor,
    /** The patch embedding; a prompt hook may put virtual tokens before its patch vectors. */
    public patch_embeddings: Module & { forward(pixels: Tensor, start?: number): Tensor },
    public position_embeddings: Tensor,
    readonly numPatches: number,
  ) {
    super();
  }

  /**
   * [CLS + pos 0, virtual tokens, patches + pos 1..N]: virtual tokens a prompt hook puts in
   * front of the patch vectors land after the CLS token and get no position (VPT's layout).
   */
  forward(pixels: Tensor): Tensor {
    const e = this.patch_embeddings.forward(pixels, 0);
    const [B, T, D] = e.shape as [number, number, number];
    const N = this.numPatches;
    const extra = T - N;
    const patches = add(narrow(e, 1, extra, N), narrow(this.position_embeddings, 1, 1, N));
    const cls = expand(add(this.cls_token, narrow(this.position_embeddings, 1, 0, 1)), [B, 1, D]);
    return concat(extra > 0 ? [cls, narrow(e, 1, 0, extra), patches] : [cls, patches], 1);
  }
}

export class ViTSelfAttention extends Module {
  /** Hook slot for keys/values put before the layer's own (prefix tuning). */
  kv_prefix: KVPrefixHook | null = null;

  constructor(public query: LinearLike, public key: LinearLike, public value: LinearLike, readonly numHeads: number, readonly layerIndex: number) {
    super();
  }

  private heads(t: Tensor): Tensor {
    const [B, T, H] = t.shape as [number, number, number];
    return permute(reshape(t, [B, T, this.numHeads, H / this.numHeads]), [0, 2, 1, 3]);
  }

  /** Keys and values [B, heads, P, headDim] of vectors h [B, P, hidden] through this layer's projections. */
  projectKV(h: Tensor): { k: Tensor; v: Tensor } {
    return { k: this.heads(this.key.forward(h)), v: this.heads(this.value.forward(h)) };
  }

  forward(x: Tensor): Tensor {
    const [B, T, H] = x.shape as [number, number, number];
    let k = this.heads(this.key.forward(x));
    let v = this.heads(this.value.forward(x));
    let keyMask: Tensor | null = null;
    if (this.kv_prefix) {
      ({ k, v, keyMask } = withKVPrefix(this.kv_prefix, this.layerIndex, k, v, { x, keyMask, start: 0, cache: null, project: (h) => this.projectKV(h) }));
    }
    const o = attention(this.heads(this.query.forward(x)), k, v, { keyMask });
    return reshape(permute(o, [0, 2, 1, 3]), [B, T, H]);
  }
}

export class ViTSelfOutput extends Module {
  constructor(public dense: LinearLike) {
    super();
  }

  forward(h: Tensor): Tensor {
    return this.dense.forward(h);
  }
}

export class ViTAttention extends Module {
  constructor(public attention: ViTSelfAttention, public output: ViTSelfOutput) {
    super();
  }

  forward(x: Tensor): Tensor {
    return this.output.forward(this.attention.forward(x));
  }
}

export class ViTIntermediate extends Module {
  constructor(public dense: LinearLike, readonly act: string) {
    super();
  }

  forward(x: Tensor): Tensor {
    const h = this.dense.forward(x);
    return this.act === 'relu' ? h.relu() : this.act === 'gelu' ? gelu(h) : geluTanh(h);
  }
}

export class ViTOutput extends Module {
  constructor(public dense: LinearLike) {
    super();
  }

  forward(h: Tensor, residual: Tensor): Tensor {
    return add(this.dense.forward(h), residual);
  }
}

export class ViTLayer extends Module {
  constructor(
    public attention: ViTAttention, public intermediate: ViTIntermediate, public output: ViTOutput,
    public layernorm_before: LayerNorm, public layernorm_after: LayerNorm,
  ) {
    super();
  }

  forward(h: Tensor): Tensor {
    const a = add(this.attention.forward(this.layernorm_before.forward(h)), h);
    return this.output.forward(this.intermediate.forward(this.layernorm_after.forward(a)), a);
  }
}

export class ViTEncoder extends Module {
  constructor(public layer: ViTLayer[]) {
    super();
  }
}

export class ViTModel extends Module {
  constructor(public embeddings: ViTEmbeddings, public encoder: ViTEncoder, public layernorm: LayerNorm) {
    super();
  }
}

export class ViTForImageClassification extends Module {
  constructor(public vit: ViTModel, public classifier: LinearLike, readonly config: ViTConfig) {
    super();
  }

  adapterDescriptor(): AdapterDescriptor {
    const c = this.config;
    // `output.dense` alone would also name attention.output.dense: the regexes keep the two apart
    const ffnOut = '.*layer\\.\\d+\\.output\\.dense';
    const attnOut = '.*attention\\.output\\.dense';
    return {
      family: 'vit',
      task: 'sequence-classification',
      roles: {
        'attn.q': ['query'], 'attn.k': ['key'], 'attn.v': ['value'], 'attn.o': attnOut,
        'mlp.up': ['intermediate.dense'], 'mlp.down': ffnOut,
        'ffn.in': ffnOut, 'block.attn_out': attnOut, 'block.ffn_out': ffnOut,
        'block.input_norm': ['layernorm_before'],
      },
      // PEFT's LoRA default for ViT
      defaultTargets: ['query', 'value'],
      layersPattern: ['layer'],
      fanInFanOut: false,
      embedding: { path: 'vit.embeddings.patch_embeddings', dim: c.hiddenSize },
      heads: ['classifier'],
      attention: {
        layers: this.vit.encoder.layer.map((_, l) => ({ path: `vit.encoder.layer.${l}.attention.attention`, layer: l })),
        kvHeads: c.numHeads,
        headDim: c.hiddenSize / c.numHeads,
      },
      classifierHead: 'classifier',
    };
  }

  /** The pixel input forward takes: [B, channels, height, width]. */
  imageInput(): { channels: number; height: number; width: number } {
    const c = this.config;
    return { channels: c.numChannels, height: c.imageSize[0], width: c.imageSize[1] };
  }

  /** Replace the head with a freshly initialized one for `n` labels (the checkpoint's had others). */
  resizeClassifier(n: number, rng?: Rng): void {
    if (n === this.config.numLabels) return;
    this.classifier = freshClassifier(this.config.hiddenSize, n, rng);
    this.config.numLabels = n;
    // the old label names no longer describe the head's rows
    this.config.id2label = null;
  }

  /** Final hidden states [B, 1 + virtual tokens + patches, hidden] (after the last LayerNorm). */
  hidden(pixels: Tensor): Tensor {
    let h = this.vit.embeddings.forward(pixels);
    for (const layer of this.vit.encoder.layer) h = layer.forward(h);
    return this.vit.layernorm.forward(h);
  }

  /** Class logits [B, numLabels] from the CLS token; pixels [B, C, H, W] are already normalized. */
  forward(pixels: Tensor, opts: { attentionMask?: Tensor | null } = {}): Tensor {
    if (opts.attentionMask) throw new AdaptkitError('ViT: images have no padding, so an attentionMask does not apply');
    return this.classifier.forward(squeeze(narrow(this.hidden(pixels), 1, 0, 1), 1));
  }
}

/** A classifier as transformers initializes one: weights N(0, 0.02), zero bias. */
export function freshClassifier(hidden: number, n: number, rng?: Rng): Linear {
  return new Linear(parameter(randn([n, hidden], { std: HEAD_INIT_STD, rng: rng ?? new Rng(0) })), parameter(zeros([n])));
}

/** Patches per image under this config. */
export function numPatches(c: ViTConfig): number {
  const [gh, gw] = patchGrid(c);
  return gh * gw;
}
