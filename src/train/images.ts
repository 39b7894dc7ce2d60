/**
 * Image classification data: labelled images from an ImageFolder (one subfolder of PNG/JPEG files
 * per class), an IDX pair (images and labels, as MNIST ships them) or the MNIST test set with its
 * fixed split; each image made into the float pixels a model takes (converted to the model's
 * channels, scaled to [0, 1], resized bilinearly to its image size, normalized per channel) and
 * batched as [B, C, H, W].
 */
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { AdaptkitError, type Tensor, tensor } from '../tensor/index.js';
import { type RawImage, idxImages, readIdx, readImage } from '../io/images.js';
import { dataDir } from '../io/data.js';
import { isObject, preview } from '../io/json.js';
import type { Example } from './examples.js';

/** The pixel input a model takes, published by image models as `imageInput()`. */
export interface ImageInput {
  channels: number;
  height: number;
  width: number;
}

/** The model's pixel input, or null for a model of token ids. */
export function imageInputOf(model: object): ImageInput | null {
  const f = (model as { imageInput?: () => ImageInput }).imageInput;
  return typeof f === 'function' ? f.call(model) : null;
}

/** How bytes become a model's pixels: value·rescale, then (v - mean[c]) / std[c], at height x width. */
export interface ImagePrep extends ImageInput {
  rescale: number;
  mean: number[];
  std: number[];
}

/** MNIST's pixel statistics (over its training set, values in [0, 1]). */
export const MNIST_MEAN = 0.1307;
export const MNIST_STD = 0.3081;
/** ViTImageProcessor's defaults, for images of unknown statistics. */
export const DEFAULT_MEAN = 0.5;
export const DEFAULT_STD = 0.5;

/**
 * Bilinear resize of planar float pixels [C, h, w] to [C, H, W] with half-pixel centres and edge
 * clamping (torch.nn.functional.interpolate, mode "bilinear", align_corners=False), no antialiasing.
 */
export function resizeBilinear(src: Float32Array, c: number, h: number, w: number, H: number, W: number): Float32Array {
  if (h === H && w === W) return src;
  const out = new Float32Array(c * H * W);
  const axis = (n: number, from: number) => {
    const i0 = new Int32Array(n);
    const i1 = new Int32Array(n);
    const f = new Float32Array(n);
    const scale = from / n;
    for (let i = 0; i < n; i++) {
      const s = Math.max(0, (i + 0.5) * scale - 0.5);
      const lo = Math.min(Math.floor(s), from - 1);
      i0[i] = lo;
      i1[i] = Math.min(lo + 1, from - 1);
      f[i] = s - lo;
    }
    return { i0, i1, f };
  };
  const ys = axis(H, h);
  const xs = axis(W, w);
  for (let k = 0; k < c; k++) {
    const plane = k * h * w;
    for (let y = 0; y < H; y++) {
      const r0 = plane + ys.i0[y]! * w;
      const r1 = plane + ys.i1[y]! * w;
      const fy = ys.f[y]!;
      for (let x = 0; x < W; x++) {
        const a = xs.i0[x]!;
        const b = xs.i1[x]!;
        const fx = xs.f[x]!;
        const top = src[r0 + a]! * (1 - fx) + src[r0 + b]! * fx;
        const bottom = src[r1 + a]! * (1 - fx) + src[r1 + b]! * fx;
        out[(k * H + y) * W + x] = top * (1 - fy) + bottom * fy;
      }
    }
  }
  return out;
}

/**
 * A decoded image as a model's pixels [C, H, W]: gray to RGB by repeating the channel, RGB to
 * gray by ITU-R 601-2 luma (PIL's convert("L") weights, unrounded), then rescale, resize,
 * normalize.
 */
export function toPixels(img: RawImage, prep: ImagePrep, source = 'image'): Float32Array {
  const { width: w, height: h } = img;
  const C = prep.channels;
  if (C !== 1 && C !== 3) throw new AdaptkitError(`${source}: images can be made into 1 (gray) or 3 (RGB) channels, the model takes ${C}`);
  const n = w * h;
  const planes = new Float32Array(C * n);
  const d = img.data;
  const s = prep.rescale;
  for (let i = 0; i < n; i++) {
    if (img.channels === C) {
      for (let k = 0; k < C; k++) planes[k * n + i] = d[i * C + k]! * s;
    } else if (C === 3) {
      for (let k = 0; k < 3; k++) planes[k * n + i] = d[i]! * s;
    } else {
      planes[i] = ((d[3 * i]! * 299 + d[3 * i + 1]! * 587 + d[3 * i + 2]! * 114) / 1000) * s;
    }
  }
  // normalized in place: the resize returns a fresh array, or `planes` itself at the same size
  const out = resizeBilinear(planes, C, h, w, prep.height, prep.width);
  const m = prep.height * prep.width;
  for (let k = 0; k < C; k++) {
    const mean = prep.mean[k]!;
    const inv = 1 / prep.std[k]!;
    for (let i = 0; i < m; i++) out[k * m + i] = (out[k * m + i]! - mean) * inv;
  }
  return out;
}

/** A classification example whose input is an image (its token fields are empty). */
export interface ImageExample extends Example {
  /** Normalized pixels [C, H, W]. */
  pixels: Float32Array;
  pixelShape: [number, number, number];
}

export function isImageExample(e: Example): e is ImageExample {
  return (e as Partial<ImageExample>).pixels instanceof Float32Array;
}

/** Examples as one batch of pixels [B, C, H, W]. */
export function imageBatch(examples: readonly Example[]): Tensor {
  const first = examples[0];
  if (!first || !isImageExample(first)) throw new AdaptkitError('an image batch needs image examples');
  const [C, H, W] = first.pixelShape;
  const size = C * H * W;
  const out = new Float32Array(examples.length * size);
  examples.forEach((e, b) => {
    if (!isImageExample(e)) throw new AdaptkitError(`batch row ${b} is a text example among images`);
    if (e.pixels.length !== size) throw new AdaptkitError(`batch row ${b} has pixels [${e.pixelShape.join(', ')}], row 0 [${first.pixelShape.join(', ')}]`);
    out.set(e.pixels, b * size);
  });
  return tensor(out, [examples.length, C, H, W]);
}

// ---------- sources of labelled images ----------

/** Labelled images read one by one, in a fixed order. */
export interface ImageSource {
  /** What the source is, for messages and run identities. */
  readonly name: string;
  /** Every class of the source in head order (not only those of a range). */
  readonly labels: readonly string[];
  readonly count: number;
  /** Normalization for a model that says nothing of its own. */
  readonly defaultMean: number;
  readonly defaultStd: number;
  item(i: number): { image: RawImage; label: string; source: string };
}

/** The fixed split of the MNIST test set (10,000 images): what pretraining sees, and what is kept out of it. */
export const MNIST_SPLITS = { pretrain: [0, 7000], heldout: [7000, 10000], all: [0, 10000] } as const;
export type MnistSplit = keyof typeof MNIST_SPLITS;

const IMAGE_FILE = /\.(png|jpe?g)$/i;

/** The labels file beside an IDX images file, by MNIST's naming (`*-images-idx3-ubyte` → `*-labels-idx1-ubyte`). */
export function idxLabelsPath(imagesPath: string): string {
  const name = basename(imagesPath);
  if (!/images-idx3/.test(name)) throw new AdaptkitError(`${imagesPath}: an IDX images file is named *-images-idx3-ubyte[.gz], so that its labels are found beside it as *-labels-idx1-ubyte[.gz]`);
  const plain = join(dirname(imagesPath), name.replace('images-idx3', 'labels-idx1'));
  const candidates = [plain, plain.endsWith('.gz') ? plain.slice(0, -3) : `${plain}.gz`];
  const found = candidates.find((p) => existsSync(p));
  if (!found) throw new AdaptkitError(`${imagesPath}: no labels file beside it (looked for ${candidates.join(' and ')})`);
  return found;
}

function idxSource(imagesPath: string, labelsPath: string, name: string, mean: number, std: number): ImageSource {
  const images = idxImages(readIdx(imagesPath), imagesPath);
  const lab = readIdx(labelsPath);
  if (lab.shape.length !== 1 || lab.dtype === 'f32' || lab.dtype === 'f64') throw new AdaptkitError(`${labelsPath}: labels must be integers [N], got ${lab.dtype} [${lab.shape.join(', ')}]`);
  if (lab.shape[0] !== images.count) throw new AdaptkitError(`${labelsPath}: ${lab.shape[0]} labels for the ${images.count} images of ${imagesPath}`);
  const values = Array.from(lab.data as ArrayLike<number>);
  const classes = [...new Set(values)].sort((a, b) => a - b).map(String);
  return {
    name, labels: classes, count: images.count, defaultMean: mean, defaultStd: std,
    item: (i) => ({ image: images.image(i), label: String(values[i]), source: `${imagesPath}[${i}]` }),
  };
}

function imageFolderSource(dir: string): ImageSource {
  const classes = readdirSync(dir).filter((d) => !d.startsWith('.') && statSync(join(dir, d)).isDirectory()).sort();
  if (classes.length === 0) throw new AdaptkitError(`${dir}: no class folders (an image folder holds one subfolder of PNG/JPEG files per class)`);
  const files: { path: string; label: string }[] = [];
  for (const c of classes) {
    const own = readdirSync(join(dir, c)).filter((f) => IMAGE_FILE.test(f) && !f.startsWith('.')).sort();
    if (own.length === 0) throw new AdaptkitError(`${join(dir, c)}: no .png, .jpg or .jpeg files for class "${c}"`);
    for (const f of own) files.push({ path: join(dir, c, f), label: c });
  }
  return {
    name: dir, labels: classes, count: files.length, defaultMean: DEFAULT_MEAN, defaultStd: DEFAULT_STD,
    item: (i) => ({ image: readImage(files[i]!.path), label: files[i]!.label, source: files[i]!.path }),
  };
}

/** The MNIST test set's two files in a folder (gzipped or not). */
function mnistFiles(dir: string): { images: string; labels: string } {
  const pick = (stem: string) => [join(dir, `${stem}.gz`), join(dir, stem)].find((p) => existsSync(p));
  const images = pick('t10k-images-idx3-ubyte');
  const labels = pick('t10k-labels-idx1-ubyte');
  if (!images || !labels) throw new AdaptkitError(`${dir}: the MNIST test set is t10k-images-idx3-ubyte[.gz] and t10k-labels-idx1-ubyte[.gz]; ${images ? 'the labels are' : 'the images are'} missing`);
  return { images, labels };
}

/** A source restricted to items [start, end). */
function sliced(s: ImageSource, start: number, end: number, name: string): ImageSource {
  return { ...s, name, count: end - start, item: (i) => s.item(start + i) };
}

/**
 * Where --images points: `mnist[:DIR][:pretrain|heldout|all]` (the MNIST test set in DIR, by
 * default $ADAPTKIT_DATA/datasets/mnist_test, and its fixed split), an IDX images file (labels
 * beside it), or an image folder of class subfolders.
 */
export function openImageSource(spec: string, opts: { dataDir?: string } = {}): ImageSource {
  if (spec === 'mnist' || spec.startsWith('mnist:')) {
    const rest = spec.slice('mnist:'.length);
    const splitAt = rest.lastIndexOf(':');
    let dir = rest;
    let split: MnistSplit = 'all';
    if (Object.hasOwn(MNIST_SPLITS, rest) && !existsSync(rest)) {
      dir = '';
      split = rest as MnistSplit;
    } else if (splitAt >= 0) {
      const s = rest.slice(splitAt + 1);
      if (!Object.hasOwn(MNIST_SPLITS, s)) throw new AdaptkitError(`--images ${spec}: the split must be ${Object.keys(MNIST_SPLITS).join(', ')}, got "${s}"`);
      dir = rest.slice(0, splitAt);
      split = s as MnistSplit;
    }
    const folder = dir || join(dataDir(opts.dataDir), 'datasets', 'mnist_test');
    const f = mnistFiles(folder);
    const all = idxSource(f.images, f.labels, `mnist:${folder}`, MNIST_MEAN, MNIST_STD);
    if (all.count !== 10000) throw new AdaptkitError(`${f.images}: the MNIST test set has 10000 images, this file ${all.count}; its split would not be the documented one`);
    const [a, b] = MNIST_SPLITS[split];
    return sliced(all, a, b, `mnist:${folder}:${split}`);
  }
  if (!existsSync(spec)) throw new AdaptkitError(`--images ${spec}: no such file or folder`);
  if (statSync(spec).isDirectory()) return imageFolderSource(spec);
  return idxSource(spec, idxLabelsPath(spec), spec, DEFAULT_MEAN, DEFAULT_STD);
}

/** `START:END` (END may be left out: to the end) as a half-open range within `count` items. */
export function parseImageRange(v: string, count: number, what = '--image-range'): [number, number] {
  const m = /^(\d+):(\d*)$/.exec(v.trim());
  const start = m ? Number(m[1]) : NaN;
  const end = m ? (m[2] === '' ? count : Number(m[2])) : NaN;
  if (!m || start >= end || end > count) throw new AdaptkitError(`${what} must be START:END with 0 <= START < END <= ${count} (the images of the source), got "${v}"`);
  return [start, end];
}

/** Examples of items [start, end) of a source, labels indexed in `labels` order. */
export function imageExamples(src: ImageSource, prep: ImagePrep, labels: readonly string[], range: [number, number] = [0, src.count]): ImageExample[] {
  const shape: [number, number, number] = [prep.channels, prep.height, prep.width];
  const out: ImageExample[] = [];
  for (let i = range[0]; i < range[1]; i++) {
    const { image, label, source } = src.item(i);
    const labelIndex = labels.indexOf(label);
    if (labelIndex < 0) throw new AdaptkitError(`${source}: label "${label}" is not one of the model's ${labels.length} labels (${labels.slice(0, 5).join(', ')}${labels.length > 5 ? ', ...' : ''})`);
    out.push({ head: [], body: [], tail: [], completion: [], label, labelIndex, pixels: toPixels(image, prep, source), pixelShape: shape });
  }
  return out;
}

// ---------- normalization ----------

/** transformers' image processor file of a model folder. */
export const PREPROCESSOR_FILE = 'preprocessor_config.json';

function perChannel(v: unknown, channels: number, what: string): number[] {
  const list = Array.isArray(v) ? v : [v];
  if (!list.every((x) => typeof x === 'number' && Number.isFinite(x)) || (list.length !== 1 && list.length !== channels)) {
    throw new AdaptkitError(`${what} must be a number or ${channels} numbers (one per channel), got ${preview(v)}`);
  }
  return list.length === 1 ? Array(channels).fill(list[0]) : (list as number[]);
}

/** Mean, std and rescale factor from a model folder's preprocessor_config.json, or null when it has none. */
export function readPreprocessor(modelDir: string, channels: number): { mean: number[]; std: number[]; rescale: number } | null {
  const path = join(modelDir, PREPROCESSOR_FILE);
  if (!existsSync(path)) return null;
  let raw: unknown;
  try {
    raw = JSON.parse(readFileSync(path, 'utf8'));
  } catch (e) {
    throw new AdaptkitError(`${path}: not valid JSON (${(e as Error).message})`);
  }
  if (!isObject(raw)) throw new AdaptkitError(`${path}: must hold a JSON object`);
  const rescale = raw.do_rescale === false ? 1 : raw.rescale_factor ?? 1 / 255;
  if (typeof rescale !== 'number' || !(rescale > 0)) throw new AdaptkitError(`${path}: "rescale_factor" must be a positive number, got ${preview(raw.rescale_factor)}`);
  if (raw.do_normalize === false) return { mean: Array(channels).fill(0), std: Array(channels).fill(1), rescale };
  const mean = perChannel(raw.image_mean ?? DEFAULT_MEAN, channels, `${path}: "image_mean"`);
  const std = perChannel(raw.image_std ?? DEFAULT_STD, channels, `${path}: "image_std"`);
  if (std.some((s) => s <= 0)) throw new AdaptkitError(`${path}: "image_std" must be positive, got ${preview(raw.image_std)}`);
  return { mean, std, rescale };
}

/**
 * The preprocessing of a model on a source: given mean/std (command line) first, then the model
 * folder's preprocessor_config.json, then the source's own statistics.
 */
export function imagePrep(input: ImageInput, o: { modelDir?: string; source: ImageSource; mean?: string; std?: string }): ImagePrep {
  const C = input.channels;
  const saved = o.modelDir ? readPreprocessor(o.modelDir, C) : null;
  const list = (v: string, flag: string) => perChannel(v.split(',').map((x) => (x.trim() === '' ? NaN : Number(x))), C, flag);
  const mean = o.mean !== undefined ? list(o.mean, '--image-mean') : saved?.mean ?? Array(C).fill(o.source.defaultMean);
  const std = o.std !== undefined ? list(o.std, '--image-std') : saved?.std ?? Array(C).fill(o.source.defaultStd);
  if (std.some((s) => !(s > 0))) throw new AdaptkitError(`--image-std must be positive, got ${o.std}`);
  return { ...input, mean, std, rescale: saved?.rescale ?? 1 / 255 };
}

/** A preprocessor_config.json that gives the same pixels to transformers' ViTImageProcessor (up to its resize). */
export function preprocessorJson(prep: ImagePrep): Record<string, unknown> {
  return {
    image_processor_type: 'ViTImageProcessor', do_resize: true, size: { height: prep.height, width: prep.width },
    // 2: PIL's bilinear
    resample: 2, do_rescale: true, rescale_factor: prep.rescale, do_normalize: true, image_mean: prep.mean, image_std: prep.std,
  };
}
