/**
 * Vision Transformers: parity with a PyTorch reference forward (scripts/gen_vit_fixtures.py),
 * weight-map and config errors, image files (IDX, PNG, JPEG, image folders) and preprocessing,
 * random initialization of any family (`adaptkit init`), adapters placed by the ViT descriptor,
 * and training / evaluation from the command line on MNIST.
 */
import { describe, it, after } from 'node:test';
import assert from 'node:assert/strict';
import { cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { gunzipSync, gzipSync } from 'node:zlib';
import pngjs from 'pngjs';
import jpeg from 'jpeg-js';
import * as ak from '../src/index.js';
import { AdapterModel, readTensorMap } from '../src/adapters/index.js';
import { loadAnyModel } from '../src/models/load.js';
import { WeightMap } from '../src/models/weights.js';
import { initModel, initModelFolder } from '../src/models/init.js';
import { parseViTConfig } from '../src/models/vit/config.js';
import { ViTForImageClassification } from '../src/models/vit/model.js';
import { buildViT } from '../src/models/vit/weights.js';
import { decodeImage, idxImages, parseIdx, readIdx } from '../src/io/images.js';
import { type ImagePrep, imageBatch, imageExamples, openImageSource, resizeBilinear, toPixels } from '../src/train/images.js';
import { classificationLoss } from '../src/train/classify.js';
import { AdamW } from '../src/train/optim.js';
import { describeModel } from '../src/nn/index.js';
import { assertClose, backends } from './helpers.js';
import { runCli } from './cli-run.js';

const FIX = fileURLToPath(new URL('./fixtures/models/', import.meta.url));
const TINY = join(FIX, 'vit-tiny');
const MNIST = join(ak.dataDir(), 'datasets', 'mnist_test');
const tmp = mkdtempSync(join(tmpdir(), 'adaptkit-vit-'));
after(() => rmSync(tmp, { recursive: true, force: true }));

interface Expected {
  pixel_values: number[];
  pixel_shape: number[];
  hidden: number[];
  hidden_shape: number[];
  logits?: number[];
  logits_shape?: number[];
}

const expected = (name: string) => JSON.parse(readFileSync(join(FIX, name, 'expected.json'), 'utf8')) as Expected;
const vit = (dir = TINY) => loadAnyModel(dir).model as unknown as ViTForImageClassification;
const values = (t: ak.Tensor) => Array.from(t.toArray());

/** A fixed batch of pixels for the tiny model: 4 images [3, 16, 16]. */
const PIXELS = ak.tensor(Array.from({ length: 4 * 3 * 16 * 16 }, (_, i) => Math.sin(0.37 * i) + 0.3 * Math.cos(1.3 * i)), [4, 3, 16, 16]).keep();
const LABELS = [3, 7, 1, 3];

function logits(m: { forward(x: ak.Tensor): ak.Tensor }, px = PIXELS): number[] {
  return ak.tidy(() => ak.noGrad(() => values(m.forward(px))));
}

for (const backend of backends()) {
  describe(`ViT parity with PyTorch on ${backend}`, () => {
    it('vit-tiny: logits and final hidden states within 1e-4, every weight used', () => {
      ak.setBackend(backend);
      const { model, unused } = loadAnyModel(TINY);
      assert.deepEqual(unused, []);
      assert.ok(model instanceof ViTForImageClassification);
      const e = expected('vit-tiny');
      ak.tidy(() => ak.noGrad(() => {
        const px = ak.tensor(e.pixel_values, e.pixel_shape);
        const h = model.hidden(px);
        assert.deepEqual(h.shape, e.hidden_shape);
        assertClose(h.toArray(), e.hidden, 'vit-tiny hidden', 1e-4, 1e-4);
        const l = model.forward(px);
        assert.deepEqual(l.shape, e.logits_shape);
        assertClose(l.toArray(), e.logits!, 'vit-tiny logits', 1e-4, 1e-4);
      }));
    });

    it('vit-backbone: a bare ViTModel (no prefix, gray non-square images with patch remainders, no q/k/v bias) matches; its pooler is ignored', () => {
      ak.setBackend(backend);
      const { model, unused } = loadAnyModel(join(FIX, 'vit-backbone'));
      // the pooler is known to the family as unused, so it is not reported
      assert.deepEqual(unused, []);
      const e = expected('vit-backbone');
      ak.tidy(() => ak.noGrad(() => {
        const h = (model as unknown as ViTForImageClassification).hidden(ak.tensor(e.pixel_values, e.pixel_shape));
        assertClose(h.toArray(), e.hidden, 'vit-backbone hidden', 1e-4, 1e-4);
      }));
    });
  });
}

describe('ViT weights and config', () => {
  const raw = JSON.parse(readFileSync(join(TINY, 'config.json'), 'utf8')) as Record<string, unknown>;
  const weights = () => readTensorMap(join(TINY, 'model.safetensors'));

  it('reads the config: unknown keys ignored, labels from id2label', () => {
    const c = parseViTConfig(raw);
    assert.equal(c.numLabels, 10);
    assert.deepEqual(c.imageSize, [16, 16]);
    assert.equal(c.id2label!['3'], 'class_3');
    assert.deepEqual(vit().imageInput(), { channels: 3, height: 16, width: 16 });
  });

  it('a missing weight is named', () => {
    const w = weights();
    w.delete('vit.encoder.layer.1.output.dense.bias');
    assert.throws(() => buildViT(parseViTConfig(raw), WeightMap.fromMap(w, 'ckpt')), /ckpt: missing weight "vit\.encoder\.layer\.1\.output\.dense\.bias" \(expected \[32\]\)/);
  });

  it('a mis-shaped weight is named with both shapes', () => {
    const w = weights();
    w.set('vit.embeddings.position_embeddings', ak.zeros([1, 5, 32]));
    assert.throws(() => buildViT(parseViTConfig(raw), WeightMap.fromMap(w, 'ckpt')), /weight "vit\.embeddings\.position_embeddings" has shape \[1, 5, 32\], expected \[1, 17, 32\]/);
    const k = weights();
    k.set('vit.embeddings.patch_embeddings.projection.weight', ak.zeros([32, 1, 4, 4]));
    assert.throws(() => buildViT(parseViTConfig(raw), WeightMap.fromMap(k, 'ckpt')), /projection\.weight" has shape \[32, 1, 4, 4\], expected \[32, 3, 4, 4\]/);
  });

  it('bad config values name the file and field', () => {
    const dir = join(tmp, 'bad-config');
    cpSync(TINY, dir, { recursive: true });
    writeFileSync(join(dir, 'config.json'), JSON.stringify({ ...raw, num_attention_heads: 5 }));
    assert.throws(() => loadAnyModel(dir), /config\.json: hidden_size \(32\) must be a multiple of num_attention_heads \(5\)/);
    writeFileSync(join(dir, 'config.json'), JSON.stringify({ ...raw, image_size: [16] }));
    assert.throws(() => loadAnyModel(dir), /"image_size" must be a size or a pair \[height, width\]/);
    writeFileSync(join(dir, 'config.json'), JSON.stringify({ ...raw, hidden_act: 'swish' }));
    assert.throws(() => loadAnyModel(dir), /"hidden_act" "swish" is not supported/);
  });

  it('pixels of the wrong shape are refused with the shape the config wants', () => {
    assert.throws(() => vit().forward(ak.zeros([2, 1, 16, 16])), /pixel_values must be f32 \[B, 3, 16, 16\].*got f32 \[2, 1, 16, 16\]/);
    assert.throws(() => vit().forward(PIXELS, { attentionMask: ak.ones([4, 17]) }), /images have no padding/);
  });
});

describe('ViT gradients', () => {
  it('full fine-tuning: gradients of the CLS token, positions, patch kernel and a layer norm match central differences', () => {
    ak.setBackend('js');
    const m = vit();
    m.unfreeze();
    const y = ak.tensor(LABELS, [4], { dtype: 'i32' }).keep();
    const loss = () => ak.crossEntropy(m.forward(PIXELS), y);
    ak.training(() => ak.tidy(() => loss().backward()));
    const e = m.vit.embeddings;
    const patch = (e.patch_embeddings as unknown as { projection: { weight: ak.Tensor } }).projection.weight;
    const checked: [string, ak.Tensor][] = [['cls_token', e.cls_token], ['position_embeddings', e.position_embeddings], ['projection.weight', patch],
      ['layernorm_after.weight', m.vit.encoder.layer[1]!.layernorm_after.weight]];
    for (const [name, p] of checked) {
      const g = p.grad!.toArray();
      const d = p.storage.data as Float32Array;
      for (const i of [0, 5, Math.floor(p.size / 2), p.size - 1]) {
        const at = p.offset + i;
        const x0 = d[at]!;
        const h = 1e-2;
        d[at] = x0 + h;
        const up = ak.tidy(() => ak.noGrad(() => loss().item()));
        d[at] = x0 - h;
        const down = ak.tidy(() => ak.noGrad(() => loss().item()));
        d[at] = x0;
        const fd = (up - down) / (2 * h);
        assert.ok(Math.abs(fd - g[i]!) <= 2e-4 + 0.01 * Math.abs(fd), `${name}[${i}]: autodiff ${g[i]}, finite differences ${fd}`);
      }
    }
  });
});

describe('IDX files', () => {
  /** Big-endian IDX bytes of an i16 array, written here by hand. */
  function idxI16(shape: number[], vals: number[]): Uint8Array {
    const b = Buffer.alloc(4 + 4 * shape.length + 2 * vals.length);
    b[2] = 0x0b;
    b[3] = shape.length;
    shape.forEach((n, i) => b.writeUInt32BE(n, 4 + 4 * i));
    vals.forEach((v, i) => b.writeInt16BE(v, 4 + 4 * shape.length + 2 * i));
    return b;
  }

  it('parses big-endian values, plain and gzipped', () => {
    const vals = [1, -2, 300, -32768, 32767, 0];
    for (const bytes of [idxI16([2, 3], vals), gzipSync(idxI16([2, 3], vals))]) {
      const a = parseIdx(bytes, 'x.idx');
      assert.equal(a.dtype, 'i16');
      assert.deepEqual(a.shape, [2, 3]);
      assert.deepEqual(Array.from(a.data), vals);
    }
  });

  it('refuses malformed files by name', () => {
    assert.throws(() => parseIdx(idxI16([2, 3], [1, 2, 3, 4, 5, 6]).subarray(0, 20), 'cut.idx'), /cut\.idx: IDX shape \[2, 3\] of i16 needs 24 bytes, the file has 20 \(truncated\)/);
    assert.throws(() => parseIdx(Buffer.from([1, 0, 8, 1, 0, 0, 0, 0]), 'bad.idx'), /bad\.idx: not an IDX file/);
    assert.throws(() => parseIdx(Buffer.from([0, 0, 7, 1, 0, 0, 0, 0]), 'odd.idx'), /odd\.idx: unknown IDX type code 0x07/);
    assert.throws(() => parseIdx(Buffer.from([0x1f, 0x8b, 1, 2, 3]), 'z.gz'), /z\.gz: not a readable gzip file/);
    assert.throws(() => readIdx(join(tmp, 'none.idx')), /none\.idx: cannot read the IDX file \(ENOENT\)/);
  });

  it('reads the MNIST test set: header magic, counts, the first labels 7 2 1 0 4', () => {
    const imgPath = join(MNIST, 't10k-images-idx3-ubyte.gz');
    const labPath = join(MNIST, 't10k-labels-idx1-ubyte.gz');
    const rawImg = gunzipSync(readFileSync(imgPath));
    const rawLab = gunzipSync(readFileSync(labPath));
    assert.equal(rawImg.readUInt32BE(0), 0x803);
    assert.equal(rawLab.readUInt32BE(0), 0x801);
    assert.deepEqual([rawImg.readUInt32BE(4), rawImg.readUInt32BE(8), rawImg.readUInt32BE(12)], [10000, 28, 28]);
    const labels = readIdx(labPath);
    assert.equal(labels.dtype, 'u8');
    assert.deepEqual(labels.shape, [10000]);
    assert.deepEqual(Array.from(labels.data.subarray(0, 5)), [7, 2, 1, 0, 4]);
    const images = readIdx(imgPath);
    assert.deepEqual(images.shape, [10000, 28, 28]);
    // the header is 16 bytes, then the pixels in order
    const last = idxImages(images).image(9999);
    assert.deepEqual(Array.from(last.data), Array.from(rawImg.subarray(16 + 9999 * 784, 16 + 10000 * 784)));
  });

  it('splits MNIST into the first 7,000 images for pretraining and the other 3,000 held out', () => {
    const pre = openImageSource(`mnist:${MNIST}:pretrain`);
    const held = openImageSource('mnist:heldout', {});
    const all = openImageSource(`mnist:${MNIST}`);
    assert.equal(pre.count, 7000);
    assert.equal(held.count, 3000);
    assert.equal(all.count, 10000);
    assert.deepEqual(held.labels, ['0', '1', '2', '3', '4', '5', '6', '7', '8', '9']);
    assert.deepEqual(Array.from(held.item(0).image.data), Array.from(all.item(7000).image.data));
    assert.equal(pre.item(0).label, '7');
    assert.throws(() => openImageSource(`mnist:${MNIST}:test`), /the split must be pretrain, heldout, all, got "test"/);
  });
});

describe('PNG and JPEG images', () => {
  const W = 16;
  const H = 8;
  /** RGBA bytes: a left half of one colour and a right half of another, so every 8x8 JPEG block is flat. */
  function halves(left: number[], right: number[], alpha = 255): Buffer {
    const b = Buffer.alloc(W * H * 4);
    for (let i = 0; i < W * H; i++) {
      const c = i % W < 8 ? left : right;
      b.set([c[0]!, c[1]!, c[2]!, alpha], 4 * i);
    }
    return b;
  }

  it('decodes an RGB PNG exactly, alpha dropped', () => {
    const rgba = Buffer.alloc(5 * 3 * 4);
    for (let i = 0; i < rgba.length; i++) rgba[i] = (i * 37 + 11) % 256;
    const file = pngjs.PNG.sync.write(Object.assign(new pngjs.PNG({ width: 5, height: 3 }), { data: rgba }), { colorType: 6 });
    const img = decodeImage(file, 'a.png');
    assert.equal(img.channels, 3);
    assert.deepEqual([img.width, img.height], [5, 3]);
    const rgb = Array.from({ length: 15 * 3 }, (_, i) => rgba[4 * Math.floor(i / 3) + (i % 3)]!);
    assert.deepEqual(Array.from(img.data), rgb);
  });

  it('decodes a grayscale PNG as one channel, exactly', () => {
    const gray = Buffer.from(Array.from({ length: 6 * 4 }, (_, i) => (i * 19) % 256));
    const file = pngjs.PNG.sync.write(Object.assign(new pngjs.PNG({ width: 6, height: 4 }), { data: gray }), { colorType: 0, inputColorType: 0 });
    const img = decodeImage(file, 'g.png');
    assert.equal(img.channels, 1);
    assert.deepEqual(Array.from(img.data), Array.from(gray));
  });

  it('decodes a JPEG close to what was encoded (lossy, flat blocks)', () => {
    const file = jpeg.encode({ width: W, height: H, data: halves([200, 30, 90], [10, 240, 120]) }, 100).data;
    const img = decodeImage(file, 'a.jpg');
    assert.equal(img.channels, 3);
    for (let i = 0; i < W * H; i++) {
      const want = i % W < 8 ? [200, 30, 90] : [10, 240, 120];
      for (let k = 0; k < 3; k++) assert.ok(Math.abs(img.data[3 * i + k]! - want[k]!) <= 3, `pixel ${i} channel ${k}: ${img.data[3 * i + k]} vs ${want[k]}`);
    }
  });

  it('refuses what is neither, and broken files, by name', () => {
    assert.throws(() => decodeImage(Buffer.from('GIF89a....'), 'x.gif'), /x\.gif: neither a PNG nor a JPEG file/);
    const png = pngjs.PNG.sync.write(Object.assign(new pngjs.PNG({ width: 2, height: 2 }), { data: Buffer.alloc(16, 7) }));
    assert.throws(() => decodeImage(png.subarray(0, 40), 'cut.png'), /cut\.png: not a readable PNG file/);
  });

  it('makes pixels: gray ↔ RGB, scale, normalization, as computed by hand', () => {
    const rgb = { width: 2, height: 1, channels: 3 as const, data: Uint8Array.from([255, 0, 0, 10, 20, 30]) };
    const prep1: ImagePrep = { channels: 1, height: 1, width: 2, rescale: 1 / 255, mean: [0.1307], std: [0.3081] };
    const gray = toPixels(rgb, prep1);
    const luma = (r: number, g: number, b: number) => ((r * 299 + g * 587 + b * 114) / 1000 / 255 - 0.1307) / 0.3081;
    assertClose(gray, [luma(255, 0, 0), luma(10, 20, 30)], 'RGB to gray', 1e-6, 1e-6);
    const g = { width: 2, height: 1, channels: 1 as const, data: Uint8Array.from([51, 204]) };
    const prep3: ImagePrep = { channels: 3, height: 1, width: 2, rescale: 1 / 255, mean: [0.5, 0.4, 0.3], std: [0.5, 0.25, 0.2] };
    const want: number[] = [];
    for (let c = 0; c < 3; c++) for (const v of [51, 204]) want.push((v / 255 - prep3.mean[c]!) / prep3.std[c]!);
    assertClose(toPixels(g, prep3), want, 'gray to RGB, planar', 1e-6, 1e-6);
  });

  it('resizes bilinearly as torch interpolate (align_corners=False), up and down', () => {
    const cases = JSON.parse(readFileSync(join(TINY, 'resize.json'), 'utf8')) as { from: number[]; to: number[]; input: number[]; output: number[] }[];
    for (const c of cases) {
      const [ch, h, w] = c.from as [number, number, number];
      const out = resizeBilinear(Float32Array.from(c.input), ch, h, w, c.to[0]!, c.to[1]!);
      assertClose(out, c.output, `resize ${c.from} to ${c.to}`, 1e-6, 1e-5);
    }
  });

  it('reads an image folder: classes from subfolders, PNG and JPEG, other files ignored', () => {
    const dir = join(tmp, 'folder');
    mkdirSync(join(dir, 'cat'), { recursive: true });
    mkdirSync(join(dir, 'dog'), { recursive: true });
    writeFileSync(join(dir, 'cat', 'b.png'), pngjs.PNG.sync.write(Object.assign(new pngjs.PNG({ width: W, height: H }), { data: halves([0, 0, 0], [255, 255, 255]) })));
    writeFileSync(join(dir, 'cat', 'a.jpg'), jpeg.encode({ width: W, height: H, data: halves([90, 90, 90], [90, 90, 90]) }, 95).data);
    writeFileSync(join(dir, 'cat', 'notes.txt'), 'not an image');
    writeFileSync(join(dir, 'dog', 'c.jpeg'), jpeg.encode({ width: W, height: H, data: halves([255, 255, 255], [0, 0, 0]) }, 95).data);
    const src = openImageSource(dir);
    assert.deepEqual(src.labels, ['cat', 'dog']);
    assert.equal(src.count, 3);
    const prep: ImagePrep = { channels: 1, height: 4, width: 4, rescale: 1 / 255, mean: [0], std: [1] };
    const ex = imageExamples(src, prep, src.labels);
    assert.deepEqual(ex.map((e) => [e.label, e.labelIndex]), [['cat', 0], ['cat', 0], ['dog', 1]]);
    // b.png (black | white) downsampled to 4x4: the left two columns black, the right two white
    assertClose(Array.from(ex[1]!.pixels.subarray(0, 4)), [0, 0, 1, 1], 'b.png resized', 1e-6, 0);
    const batch = imageBatch(ex);
    assert.deepEqual(batch.shape, [3, 1, 4, 4]);
    mkdirSync(join(dir, 'empty'));
    assert.throws(() => openImageSource(dir), /empty: no \.png, \.jpg or \.jpeg files for class "empty"/);
  });
});

describe('adaptkit init: random models of any family', () => {
  it('the written folder loads to the in-memory model: same logits, same bytes for the same seed', () => {
    const cfg = join(TINY, 'config.json');
    const raw = JSON.parse(readFileSync(cfg, 'utf8')) as Record<string, unknown>;
    const mem = initModel(raw, { seed: 3 }) as unknown as ViTForImageClassification;
    const out = join(tmp, 'init-vit');
    initModelFolder(cfg, out, { seed: 3 });
    const { model, unused } = loadAnyModel(out);
    assert.deepEqual(unused, []);
    assert.deepEqual(logits(model as unknown as ViTForImageClassification), logits(mem));
    initModelFolder(cfg, join(tmp, 'init-vit-again'), { seed: 3 });
    initModelFolder(cfg, join(tmp, 'init-vit-other'), { seed: 4 });
    const bytes = (d: string) => readFileSync(join(d, 'model.safetensors'));
    assert.deepEqual(bytes(join(tmp, 'init-vit-again')), bytes(out));
    assert.notDeepEqual(bytes(join(tmp, 'init-vit-other')), bytes(out));
  });

  it('initializes as transformers does: norms 1, biases 0, the rest N(0, initializer_range)', () => {
    const raw = JSON.parse(readFileSync(join(TINY, 'config.json'), 'utf8')) as Record<string, unknown>;
    const m = initModel({ ...raw, initializer_range: 0.05 }, { seed: 9 });
    for (const [name, t] of m.namedParameters()) {
      const v = values(t);
      if (name.endsWith('bias')) assert.ok(v.every((x) => x === 0), name);
      else if (/layernorm/.test(name)) assert.ok(v.every((x) => x === 1), name);
      else if (v.length >= 512) {
        const mean = v.reduce((s, x) => s + x, 0) / v.length;
        const std = Math.sqrt(v.reduce((s, x) => s + (x - mean) ** 2, 0) / v.length);
        assert.ok(Math.abs(std - 0.05) < 0.005 && Math.abs(mean) < 0.01, `${name}: mean ${mean}, std ${std}`);
      }
    }
  });

  for (const family of ['llama-gqa', 'gpt2', 'bert']) {
    it(`${family}: a fresh folder loads with every weight used and the in-memory logits`, () => {
      const cfg = join(FIX, family, 'config.json');
      const mem = initModel(JSON.parse(readFileSync(cfg, 'utf8')) as Record<string, unknown>, { seed: 1 }) as unknown as { forward(x: ak.Tensor): ak.Tensor };
      const out = join(tmp, `init-${family}`);
      initModelFolder(cfg, out, { seed: 1 });
      const { model, unused } = loadAnyModel(out);
      assert.deepEqual(unused, []);
      const ids = ak.tensor([1, 5, 9, 2, 7, 3], [2, 3], { dtype: 'i32' }).keep();
      assert.deepEqual(logits(model as unknown as { forward(x: ak.Tensor): ak.Tensor }, ids), logits(mem, ids));
    });
  }

  it('refuses configs without a known model_type and folders that hold files, leaving nothing behind', () => {
    const bad = join(tmp, 'no-type.json');
    writeFileSync(bad, JSON.stringify({ hidden_size: 8 }));
    assert.throws(() => initModelFolder(bad, join(tmp, 'never')), /no-type\.json: "model_type" is required/);
    writeFileSync(bad, JSON.stringify({ model_type: 'resnet' }));
    assert.throws(() => initModelFolder(bad, join(tmp, 'never')), /model_type "resnet" is not supported \(supported: .*vit/);
    writeFileSync(bad, JSON.stringify({ model_type: 'vit', hidden_size: 30, num_attention_heads: 4 }));
    assert.throws(() => initModelFolder(bad, join(tmp, 'never')), /no-type\.json: hidden_size \(30\) must be a multiple/);
    assert.equal(existsSync(join(tmp, 'never')), false);
    assert.throws(() => initModelFolder(join(TINY, 'config.json'), TINY), /is not empty \(pass --overwrite/);
  });
});

describe('adapters on ViT, placed by its descriptor', () => {
  const train = (am: AdapterModel, steps: number) => {
    const ex = LABELS.map((y, b) => ({ head: [], body: [], tail: [], completion: [], label: String(y), labelIndex: y, pixels: PIXELS.narrow(0, b, 1).toArray() as Float32Array, pixelShape: [3, 16, 16] as [number, number, number] }));
    const opt = new AdamW(am.trainableParameters(), { lr: 0.02 });
    const losses: number[] = [];
    for (let s = 0; s < steps; s++) {
      losses.push(ak.training(() => ak.tidy(() => {
        const l = classificationLoss(am as unknown as { forward(x: ak.Tensor): ak.Tensor }, ex, 0);
        l.backward();
        return l.item();
      })));
      opt.step();
      opt.zeroGrad();
    }
    return losses;
  };

  it('zero-initialized LoRA on the default targets (query, value) gives the base logits', () => {
    const am = new AdapterModel(vit());
    const base = logits(am);
    const inst = am.add('a', { peft_type: 'LORA', r: 4, lora_alpha: 8 });
    assert.deepEqual([...inst.deltas.keys()].sort(), [0, 1].flatMap((l) => ['query', 'value'].map((m) => `vit.encoder.layer.${l}.attention.attention.${m}`)).sort());
    assertClose(logits(am), base, 'zero LoRA', 0, 0);
  });

  it('roles: IA3 scales keys, values and the feed-forward down projection (not the attention output)', () => {
    const am = new AdapterModel(vit());
    const inst = am.add('a', { peft_type: 'IA3' });
    const paths = [...inst.deltas.keys()].filter((p) => p.includes('layer.0.'));
    assert.deepEqual(paths.sort(), ['vit.encoder.layer.0.attention.attention.key', 'vit.encoder.layer.0.attention.attention.value', 'vit.encoder.layer.0.output.dense']);
  });

  it('prompt tuning puts its virtual tokens right after the CLS token, without positions', () => {
    const m = vit();
    const am = new AdapterModel(m);
    const base = ak.noGrad(() => values(m.vit.embeddings.forward(PIXELS)));
    const inst = am.add('p', { peft_type: 'PROMPT_TUNING', num_virtual_tokens: 3, prompt_tuning_init: 'SAMPLE_VOCAB' });
    ak.noGrad(() => {
      const e = m.vit.embeddings.forward(PIXELS);
      assert.deepEqual(e.shape, [4, 1 + 3 + 16, 32]);
      const prompt = values(inst.stateDict().get('prompt_embeddings')!);
      const rows = (t: ak.Tensor, b: number, from: number, n: number) => values(t.narrow(0, b, 1).narrow(1, from, n));
      for (let b = 0; b < 4; b++) {
        assert.deepEqual(rows(e, b, 1, 3), prompt);
        // CLS and the patches are as without the prompt
        assert.deepEqual(rows(e, b, 0, 1), base.slice(b * 17 * 32, b * 17 * 32 + 32));
        assert.deepEqual(rows(e, b, 4, 16), base.slice(b * 17 * 32 + 32, (b + 1) * 17 * 32));
      }
    });
    assert.deepEqual(m.hidden(PIXELS).shape, [4, 20, 32]);
  });

  const cases: [string, Record<string, unknown>][] = [
    ['LoRA', { peft_type: 'LORA', r: 4, lora_alpha: 8, target_modules: 'all-linear' }],
    ['bottleneck', { peft_type: 'BOTTLENECK', adapter_type: 'houlsby', reduction_factor: 4 }],
    ['IA3', { peft_type: 'IA3' }],
    ['prompt tuning', { peft_type: 'PROMPT_TUNING', num_virtual_tokens: 3, prompt_tuning_init: 'SAMPLE_VOCAB' }],
    ['prefix tuning', { peft_type: 'PREFIX_TUNING', num_virtual_tokens: 3 }],
  ];
  for (const [name, config] of cases) {
    it(`${name}: trains a few steps (with the head as modules_to_save), changes the logits, saves and loads exactly`, () => {
      const am = new AdapterModel(vit());
      const base = logits(am);
      am.add('a', { ...config, modules_to_save: ['classifier'] }, { seed: 5 });
      const losses = train(am, 8);
      assert.ok(losses[losses.length - 1]! < losses[0]!, `${name}: loss ${losses[0]} → ${losses[losses.length - 1]}`);
      const adapted = logits(am);
      assert.ok(adapted.some((v, i) => Math.abs(v - base[i]!) > 1e-3), 'the adapter changes the output');
      am.setActive([]);
      assert.deepEqual(logits(am), base);
      am.setActive(['a']);
      const dir = join(tmp, `adapter-${name.replace(/ /g, '-')}`);
      am.save(dir, 'a');
      const fresh = new AdapterModel(vit());
      fresh.load(dir, 'b');
      assert.deepEqual(logits(fresh), adapted);
    });
  }

  it('a mixed batch (a LoRA row, an IA3 row, a base row) equals each row run alone', () => {
    const am = new AdapterModel(vit());
    am.add('a', { peft_type: 'LORA', r: 4, lora_alpha: 8 }, { seed: 1 });
    am.add('b', { peft_type: 'IA3' }, { seed: 2 });
    const rng = new ak.Rng(7);
    for (const n of ['a', 'b']) for (const p of am.adapters.get(n)!.parameters()) (p.storage.data as Float32Array).forEach((v, i, d) => { d[i] = v + 0.2 * rng.normal(); });
    const px = PIXELS.narrow(0, 0, 3);
    const mixed = ak.tidy(() => ak.noGrad(() => values(am.forwardMixed(px, ['a', 'b', null]))));
    const alone = (name: string | null, row: number) => {
      am.setActive(name ? [name] : []);
      return logits(am, px).slice(row * 10, (row + 1) * 10);
    };
    assertClose(mixed, [...alone('a', 0), ...alone('b', 1), ...alone(null, 2)], 'mixed batch', 1e-5, 1e-4);
  });

  it('prefix tuning reaches every attention layer through its kv_prefix hook', () => {
    const m = vit();
    const d = describeModel(m);
    assert.deepEqual(d.attention!.layers.map((l) => l.path), ['vit.encoder.layer.0.attention.attention', 'vit.encoder.layer.1.attention.attention']);
    const am = new AdapterModel(m);
    am.add('a', { peft_type: 'PREFIX_TUNING', num_virtual_tokens: 2 });
    assert.ok(m.vit.encoder.layer.every((l) => l.attention.attention.kv_prefix !== null));
    am.setActive([]);
    assert.ok(m.vit.encoder.layer.every((l) => l.attention.attention.kv_prefix === null));
  });
});

describe('adaptkit init, train and eval on MNIST images', () => {
  it('pretrains a fresh ViT on 64 images, evaluates it, trains LoRA on it and evaluates that', async () => {
    const cfg = join(tmp, 'mnist-vit.json');
    writeFileSync(cfg, JSON.stringify({
      model_type: 'vit', hidden_size: 16, num_hidden_layers: 1, num_attention_heads: 2, intermediate_size: 32,
      image_size: 28, patch_size: 7, num_channels: 1, num_labels: 10, unused_setting: true,
    }));
    const init = join(tmp, 'mnist-init');
    let r = await runCli('init', '--config', cfg, '--out', init, '--seed', '2');
    assert.equal(r.code, 0, r.err);
    assert.match(r.out, /wrote .*mnist-init \(vit, \d+ parameters\)/);
    const pre = join(tmp, 'mnist-pre');
    r = await runCli('train', '--model', init, '--images', `mnist:${MNIST}:pretrain`, '--image-range', '0:64', '--method', 'full',
      '--steps', '4', '--batch-size', '16', '--val-split', '16', '--checkpoint-every', '0', '--out', pre, '--json');
    assert.equal(r.code, 0, r.err);
    const report = JSON.parse(readFileSync(join(pre, 'training_report.json'), 'utf8'));
    assert.equal(report.train_examples, 48);
    assert.equal(report.validation_examples, 16);
    assert.equal(typeof report.final_eval.accuracy, 'number');
    const saved = JSON.parse(readFileSync(join(pre, 'model', 'config.json'), 'utf8'));
    assert.equal(saved.model_type, 'vit');
    assert.equal(saved.id2label['7'], '7');
    assert.deepEqual(JSON.parse(readFileSync(join(pre, 'model', 'preprocessor_config.json'), 'utf8')).image_mean, [0.1307]);
    r = await runCli('eval', '--model', join(pre, 'model'), '--images', `mnist:${MNIST}:heldout`, '--limit', '64', '--json');
    assert.equal(r.code, 0, r.err);
    const ev = JSON.parse(r.out.trim().split('\n').pop()!);
    assert.equal(ev.examples, 64);
    assert.ok(ev.accuracy >= 0 && ev.accuracy <= 1);
    const lora = join(tmp, 'mnist-lora');
    r = await runCli('train', '--model', join(pre, 'model'), '--images', `mnist:${MNIST}:heldout`, '--image-range', '0:64', '--method', 'lora', '--r', '2',
      '--steps', '3', '--batch-size', '16', '--val-split', '0', '--checkpoint-every', '0', '--out', lora, '--json');
    assert.equal(r.code, 0, r.err);
    const adapterCfg = JSON.parse(readFileSync(join(lora, 'adapter', 'adapter_config.json'), 'utf8'));
    assert.deepEqual(adapterCfg.modules_to_save, ['classifier']);
    r = await runCli('eval', '--model', join(pre, 'model'), '--adapter', join(lora, 'adapter'), '--images', `mnist:${MNIST}:heldout`, '--image-range', '64:128', '--json');
    assert.equal(r.code, 0, r.err);
    assert.equal(JSON.parse(r.out.trim().split('\n').pop()!).examples, 64);
  });

  it('refuses image data for a text model, text data for images, and text-only options', async () => {
    let r = await runCli('train', '--model', join(FIX, 'gpt2'), '--images', `mnist:${MNIST}:heldout`, '--out', join(tmp, 'never-run'));
    assert.notEqual(r.code, 0);
    assert.match(r.err, /--images needs a model of images \(ViT\); this is a gpt2 model of tokens/);
    r = await runCli('train', '--model', TINY, '--images', `mnist:${MNIST}:heldout`, '--pack', '--out', join(tmp, 'never-run'));
    assert.match(r.err, /--pack is for text data/);
    r = await runCli('eval', '--model', TINY);
    assert.match(r.err, /eval needs data: --data FILE \(text\) or --images SOURCE/);
    r = await runCli('eval', '--model', TINY, '--data', join(tmp, 'text.jsonl'));
    assert.match(r.err, /this vit model takes images, not text: give --images SOURCE instead of --data/);
    r = await runCli('eval', '--model', join(tmp, 'mnist-pre', 'model'), '--images', `mnist:${MNIST}:heldout`, '--image-range', '10:5');
    assert.match(r.err, /--image-range must be START:END with 0 <= START < END <= 3000/);
    // the tiny fixture takes 3 channels of 16x16: MNIST images are converted and resized to it
    r = await runCli('eval', '--model', TINY, '--images', `mnist:${MNIST}:heldout`, '--limit', '8', '--json');
    assert.equal(r.code, 0, r.err);
    assert.equal(JSON.parse(r.out.trim().split('\n').pop()!).examples, 8);
  });
});
