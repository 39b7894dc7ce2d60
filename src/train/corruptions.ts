/**
 * Corruptions for robustness and continual test-time adaptation.
 *
 * Images: the corruptions of ImageNet-C / CIFAR-10-C (Hendrycks & Dietterich, ICLR 2019) that
 * make sense for small grey digits, plus rotation, on planar pixels [H, W] or [C, H, W] (C = 1 or
 * 3) with values in [0, 1], before any normalization; every output is clipped to [0, 1].
 * Text: character noise, keyboard typos, casing and word drop on strings (a label is never
 * touched: only text goes in).
 *
 * Each corruption is a pure function of (input, severity 1-5, seed): every random draw comes from
 * an `Rng` seeded with `seed` alone, so a stream seeds each example on its own and can be read in
 * any order. The severity constants are in IMAGE_SEVERITIES and TEXT_SEVERITIES, with where each
 * comes from; spatial ones are in pixels of a 28x28 image and scale with min(H, W) / 28.
 */
import { AdaptkitError, Rng } from '../tensor/index.js';

// ---------------------------------------------------------------------------------------------
// Severity tables

/** The image corruptions, in the order the continual preset presents them. */
export const IMAGE_CORRUPTIONS = [
  'gaussian_noise', 'shot_noise', 'gaussian_blur', 'brightness', 'contrast', 'elastic_transform', 'pixelate', 'rotation',
] as const;
export type ImageCorruption = (typeof IMAGE_CORRUPTIONS)[number];

/** Spatial constants are given for this image side and scale with the real one. */
export const REFERENCE_SIZE = 28;

export type CorruptionParameters = Readonly<Record<string, number>>;

/**
 * The parameters of severities 1..5.
 * - gaussian_noise sigma, shot_noise photons, brightness, contrast and pixelate: ImageNet-C's
 *   tables, which do not depend on image size. CIFAR-10-C softened them (noise sigma up to 0.10)
 *   for low-contrast 32x32 photos; a digit's strokes stand about 1 above a flat black background,
 *   far above a photo's local contrast, so the stronger table is kept.
 * - gaussian_blur sigma: CIFAR-10-C's table (sigma up to 1 px at 32 px, which is also
 *   ImageNet-C's 6 px at 224 px scaled to 28).
 * - elastic_transform: Simard et al. (2003)'s MNIST distortion, a uniform(-1, 1) field smoothed
 *   by a Gaussian of sigma 4 px and scaled by alpha (they used alpha 34); alpha grows with
 *   severity, sigma stays. ImageNet-C's random affine part is left out.
 * - pixelate: the kept fraction of each side (28 px -> 16, 14, 11, 8, 7 blocks).
 * - rotation: not in ImageNet-C and no reference table: +-10 degrees per severity step, the sign
 *   drawn per example.
 */
export const IMAGE_SEVERITIES: Readonly<Record<ImageCorruption, readonly CorruptionParameters[]>> = {
  gaussian_noise: [0.08, 0.12, 0.18, 0.26, 0.38].map((sigma) => ({ sigma })),
  shot_noise: [60, 25, 12, 5, 3].map((photons) => ({ photons })),
  gaussian_blur: [0.4, 0.6, 0.7, 0.8, 1].map((sigma) => ({ sigma })),
  brightness: [0.1, 0.2, 0.3, 0.4, 0.5].map((shift) => ({ shift })),
  contrast: [0.4, 0.3, 0.2, 0.1, 0.05].map((factor) => ({ factor })),
  elastic_transform: [10, 20, 30, 40, 50].map((alpha) => ({ alpha, sigma: 4 })),
  pixelate: [0.6, 0.5, 0.4, 0.3, 0.25].map((fraction) => ({ fraction })),
  rotation: [10, 20, 30, 40, 50].map((degrees) => ({ degrees })),
};

/** The text corruptions, in the order the continual preset presents them. */
export const TEXT_CORRUPTIONS = ['char_noise', 'keyboard_typo', 'casing', 'word_drop'] as const;
export type TextCorruption = (typeof TEXT_CORRUPTIONS)[number];

/**
 * Rates per ASCII letter (char_noise, keyboard_typo, casing flips) or per word (word_drop);
 * casing at severity 5 is all capitals (all_caps 1) rather than a rate. Chosen, as no reference
 * table exists: severity 5 edits about one letter in five, or drops three words in ten.
 */
export const TEXT_SEVERITIES: Readonly<Record<TextCorruption, readonly CorruptionParameters[]>> = {
  char_noise: [0.02, 0.05, 0.1, 0.15, 0.2].map((rate) => ({ rate })),
  keyboard_typo: [0.02, 0.05, 0.1, 0.15, 0.2].map((rate) => ({ rate })),
  casing: [{ rate: 0.05 }, { rate: 0.1 }, { rate: 0.2 }, { rate: 0.35 }, { all_caps: 1 }],
  word_drop: [0.05, 0.1, 0.15, 0.2, 0.3].map((rate) => ({ rate })),
};

export function isImageCorruption(name: string): name is ImageCorruption {
  return (IMAGE_CORRUPTIONS as readonly string[]).includes(name);
}

export function isTextCorruption(name: string): name is TextCorruption {
  return (TEXT_CORRUPTIONS as readonly string[]).includes(name);
}

export function checkSeverity(severity: unknown, what = 'severity'): number {
  if (typeof severity !== 'number' || !Number.isInteger(severity) || severity < 1 || severity > 5) {
    throw new AdaptkitError(`${what} must be an integer from 1 to 5, got ${String(severity)}`);
  }
  return severity;
}

export function checkSeed(seed: unknown, what = 'seed'): number {
  if (typeof seed !== 'number' || !Number.isInteger(seed) || seed < 0 || seed > 0xffffffff) {
    throw new AdaptkitError(`${what} must be an integer from 0 to 2^32-1, got ${String(seed)}`);
  }
  return seed;
}

function checkImageName(name: unknown): ImageCorruption {
  if (typeof name !== 'string' || !isImageCorruption(name)) {
    throw new AdaptkitError(`corruption must be one of ${IMAGE_CORRUPTIONS.join(', ')} for images, got ${JSON.stringify(name)}`);
  }
  return name;
}

function checkTextName(name: unknown): TextCorruption {
  if (typeof name !== 'string' || !isTextCorruption(name)) {
    throw new AdaptkitError(`corruption must be one of ${TEXT_CORRUPTIONS.join(', ')} for text, got ${JSON.stringify(name)}`);
  }
  return name;
}

/** The parameters a corruption uses at a severity (for manifests). */
export function corruptionParameters(name: string, severity: number): CorruptionParameters {
  checkSeverity(severity);
  if (isImageCorruption(name)) return IMAGE_SEVERITIES[name][severity - 1]!;
  if (isTextCorruption(name)) return TEXT_SEVERITIES[name][severity - 1]!;
  throw new AdaptkitError(`corruption must be one of ${[...IMAGE_CORRUPTIONS, ...TEXT_CORRUPTIONS].join(', ')}, got ${JSON.stringify(name)}`);
}

// ---------------------------------------------------------------------------------------------
// Images

interface Dims {
  C: number;
  H: number;
  W: number;
}

/** The planes of a [H, W] or [C, H, W] image, after checking its shape and values. */
function imageDims(data: unknown, shape: readonly number[], what = 'image'): Dims {
  if (!(data instanceof Float32Array)) throw new AdaptkitError(`${what}: pixels must be a Float32Array, got ${Object.prototype.toString.call(data)}`);
  if (!Array.isArray(shape) || (shape.length !== 2 && shape.length !== 3) || !shape.every((d) => Number.isInteger(d) && d > 0)) {
    throw new AdaptkitError(`${what}: shape must be [H, W] or [C, H, W] of positive integers, got [${String(shape)}]`);
  }
  const [C, H, W] = shape.length === 2 ? [1, shape[0]!, shape[1]!] : [shape[0]!, shape[1]!, shape[2]!];
  if (C !== 1 && C !== 3) throw new AdaptkitError(`${what}: shape [${shape.join(', ')}] has ${C} channels; images are grey (1) or RGB (3)`);
  if (data.length !== C * H * W) throw new AdaptkitError(`${what}: shape [${shape.join(', ')}] needs ${C * H * W} pixels, got ${data.length}`);
  for (let i = 0; i < data.length; i++) {
    const v = data[i]!;
    if (!(v >= 0 && v <= 1)) throw new AdaptkitError(`${what}: pixel values must lie in [0, 1] (bytes scaled by 1/255), pixel ${i} is ${v}`);
  }
  return { C, H, W };
}

function clip01(v: number): number {
  return v < 0 ? 0 : v > 1 ? 1 : v;
}

function checkParameter(v: unknown, what: string, min: number, max = Infinity): number {
  if (typeof v !== 'number' || !Number.isFinite(v) || v < min || v > max) {
    throw new AdaptkitError(`${what} must be a number in [${min}, ${max}], got ${String(v)}`);
  }
  return v;
}

/** clip(x + sigma·N(0, 1)), one draw per pixel and channel. */
export function addGaussianNoise(data: Float32Array, shape: readonly number[], sigma: number, seed: number): Float32Array {
  imageDims(data, shape);
  checkParameter(sigma, 'gaussian_noise sigma', 0);
  const rng = new Rng(checkSeed(seed));
  return data.map((x) => clip01(x + sigma * rng.normal()));
}

/** A Poisson(lambda) draw by inverting its CDF; lambda is at most 500, so exp(-lambda) is still a normal double. */
function poisson(lambda: number, rng: Rng): number {
  if (lambda <= 0) return 0;
  const u = rng.uniform();
  let k = 0;
  let p = Math.exp(-lambda);
  let cdf = p;
  // the CDF reaches 1 - 1e-15 long before k passes this bound, and u is at most 1 - 2^-32
  const limit = lambda + 40 * Math.sqrt(lambda) + 40;
  while (u > cdf && k < limit) {
    k++;
    p *= lambda / k;
    cdf += p;
  }
  return k;
}

/** clip(Poisson(x·photons) / photons): the photon-counting noise of a sensor. */
export function addShotNoise(data: Float32Array, shape: readonly number[], photons: number, seed: number): Float32Array {
  imageDims(data, shape);
  checkParameter(photons, 'shot_noise photons', Number.MIN_VALUE, 500);
  const rng = new Rng(checkSeed(seed));
  return data.map((x) => clip01(poisson(x * photons, rng) / photons));
}

/** The normalized 1-D Gaussian kernel of radius floor(truncate·sigma + 0.5) (scipy.ndimage's). */
export function gaussianKernel(sigma: number, truncate = 4): Float64Array {
  checkParameter(sigma, 'sigma', Number.MIN_VALUE);
  const r = Math.floor(truncate * sigma + 0.5);
  const k = new Float64Array(2 * r + 1);
  let sum = 0;
  for (let i = -r; i <= r; i++) sum += k[i + r] = Math.exp((-i * i) / (2 * sigma * sigma));
  for (let i = 0; i < k.length; i++) k[i]! /= sum;
  return k;
}

type Boundary = 'nearest' | 'reflect';

/** An index outside [0, n) brought back in: clamped, or mirrored about the edge pixels' outer sides (scipy's "reflect"). */
function boundaryIndex(i: number, n: number, mode: Boundary): number {
  if (i >= 0 && i < n) return i;
  if (mode === 'nearest') return i < 0 ? 0 : n - 1;
  const m = ((i % (2 * n)) + 2 * n) % (2 * n);
  return m < n ? m : 2 * n - 1 - m;
}

/** A separable convolution of each plane with `k` along rows and columns. */
function convolve2d(src: Float64Array | Float32Array, d: Dims, k: Float64Array, mode: Boundary): Float64Array {
  const { C, H, W } = d;
  const r = (k.length - 1) / 2;
  const tmp = new Float64Array(C * H * W);
  const out = new Float64Array(C * H * W);
  for (let c = 0; c < C; c++) {
    const o = c * H * W;
    for (let y = 0; y < H; y++) {
      for (let x = 0; x < W; x++) {
        let s = 0;
        for (let j = -r; j <= r; j++) s += k[j + r]! * src[o + y * W + boundaryIndex(x + j, W, mode)]!;
        tmp[o + y * W + x] = s;
      }
    }
    for (let y = 0; y < H; y++) {
      for (let x = 0; x < W; x++) {
        let s = 0;
        for (let j = -r; j <= r; j++) s += k[j + r]! * tmp[o + boundaryIndex(y + j, H, mode) * W + x]!;
        out[o + y * W + x] = s;
      }
    }
  }
  return out;
}

/** Gaussian blur of each channel, sigma in pixels, edges extended by their nearest pixel (skimage.filters.gaussian's default). */
export function gaussianBlur(data: Float32Array, shape: readonly number[], sigma: number): Float32Array {
  const d = imageDims(data, shape);
  const out = convolve2d(data, d, gaussianKernel(checkParameter(sigma, 'gaussian_blur sigma', Number.MIN_VALUE)), 'nearest');
  return Float32Array.from(out, clip01);
}

/**
 * Brightness raised by `shift` in HSV value with hue and saturation kept (ImageNet-C). With both
 * kept, RGB scales with V, so V' = min(V + shift, 1) is RGB·V'/V; a black pixel (V = 0, S = 0)
 * becomes grey V'. For one channel this is min(x + shift, 1).
 */
export function shiftBrightness(data: Float32Array, shape: readonly number[], shift: number): Float32Array {
  const { C, H, W } = imageDims(data, shape);
  checkParameter(shift, 'brightness shift', -1, 1);
  if (C === 1) return data.map((x) => clip01(x + shift));
  const n = H * W;
  const out = new Float32Array(data.length);
  for (let i = 0; i < n; i++) {
    const r = data[i]!;
    const g = data[n + i]!;
    const b = data[2 * n + i]!;
    const v = Math.max(r, g, b);
    const v2 = clip01(v + shift);
    const s = v > 0 ? v2 / v : 0;
    out[i] = v > 0 ? clip01(r * s) : v2;
    out[n + i] = v > 0 ? clip01(g * s) : v2;
    out[2 * n + i] = v > 0 ? clip01(b * s) : v2;
  }
  return out;
}

/** (x - mean)·factor + mean, the mean taken per channel over the image (ImageNet-C). */
export function scaleContrast(data: Float32Array, shape: readonly number[], factor: number): Float32Array {
  const { C, H, W } = imageDims(data, shape);
  checkParameter(factor, 'contrast factor', 0);
  const n = H * W;
  const out = new Float32Array(data.length);
  for (let c = 0; c < C; c++) {
    let sum = 0;
    for (let i = 0; i < n; i++) sum += data[c * n + i]!;
    const mean = sum / n;
    for (let i = 0; i < n; i++) out[c * n + i] = clip01((data[c * n + i]! - mean) * factor + mean);
  }
  return out;
}

/**
 * The block of each of n pixels when a side is cut into m blocks: the block whose footprint holds
 * the pixel's centre, as PIL's BOX resize chooses (an integer ratio gives plain k-pixel blocks).
 */
function blockOf(n: number, m: number): Int32Array {
  return Int32Array.from({ length: n }, (_, j) => Math.min(m - 1, Math.floor(((2 * j + 1) * m) / (2 * n))));
}

/**
 * Down to floor(fraction·side) pixels a side by a box filter, then back up by nearest neighbour:
 * every pixel becomes the mean of its block.
 */
export function pixelate(data: Float32Array, shape: readonly number[], fraction: number): Float32Array {
  const { C, H, W } = imageDims(data, shape);
  checkParameter(fraction, 'pixelate fraction', Number.MIN_VALUE, 1);
  const mH = Math.max(1, Math.floor(H * fraction));
  const mW = Math.max(1, Math.floor(W * fraction));
  const by = blockOf(H, mH);
  const bx = blockOf(W, mW);
  const out = new Float32Array(data.length);
  const sum = new Float64Array(mH * mW);
  const count = new Float64Array(mH * mW);
  for (let c = 0; c < C; c++) {
    const o = c * H * W;
    sum.fill(0);
    count.fill(0);
    for (let y = 0; y < H; y++) for (let x = 0; x < W; x++) {
      const b = by[y]! * mW + bx[x]!;
      sum[b]! += data[o + y * W + x]!;
      count[b]!++;
    }
    for (let y = 0; y < H; y++) for (let x = 0; x < W; x++) {
      const b = by[y]! * mW + bx[x]!;
      out[o + y * W + x] = clip01(sum[b]! / count[b]!);
    }
  }
  return out;
}

/** Bilinear sample of a plane at (y, x); `zero` fills outside with 0, else mirrors (scipy "reflect"). */
function sample(src: Float32Array, o: number, H: number, W: number, y: number, x: number, zero: boolean): number {
  const y0 = Math.floor(y);
  const x0 = Math.floor(x);
  const fy = y - y0;
  const fx = x - x0;
  const at = (yy: number, xx: number): number => {
    if (zero) return yy < 0 || yy >= H || xx < 0 || xx >= W ? 0 : src[o + yy * W + xx]!;
    return src[o + boundaryIndex(yy, H, 'reflect') * W + boundaryIndex(xx, W, 'reflect')]!;
  };
  const top = fx === 0 ? at(y0, x0) : at(y0, x0) * (1 - fx) + at(y0, x0 + 1) * fx;
  if (fy === 0) return top;
  const bottom = fx === 0 ? at(y0 + 1, x0) : at(y0 + 1, x0) * (1 - fx) + at(y0 + 1, x0 + 1) * fx;
  return top * (1 - fy) + bottom * fy;
}

/**
 * Rotation by `degrees` counter-clockwise as displayed (PIL's Image.rotate sense) about the image
 * centre, bilinear, zero outside the source.
 */
export function rotateImage(data: Float32Array, shape: readonly number[], degrees: number): Float32Array {
  const { C, H, W } = imageDims(data, shape);
  checkParameter(degrees, 'rotation degrees', -360, 360);
  const t = (degrees * Math.PI) / 180;
  const cos = Math.cos(t);
  const sin = Math.sin(t);
  const cy = (H - 1) / 2;
  const cx = (W - 1) / 2;
  const out = new Float32Array(data.length);
  for (let c = 0; c < C; c++) {
    const o = c * H * W;
    for (let y = 0; y < H; y++) {
      for (let x = 0; x < W; x++) {
        // the source of an output pixel is the pixel rotated back (y points down)
        const u = x - cx;
        const v = y - cy;
        out[o + y * W + x] = clip01(sample(data, o, H, W, cy + sin * u + cos * v, cx + cos * u - sin * v, true));
      }
    }
  }
  return out;
}

/**
 * Elastic distortion: displacement fields dx, dy of uniform(-1, 1) draws per pixel, smoothed by a
 * Gaussian of `sigma` px (truncated at 3 sigma, mirrored edges, as ImageNet-C) and scaled by
 * `alpha` px; out(y, x) = in(y + dy, x + dx), bilinear, mirrored edges. alpha 0 is the identity.
 */
export function elasticTransform(data: Float32Array, shape: readonly number[], alpha: number, sigma: number, seed: number): Float32Array {
  const d = imageDims(data, shape);
  checkParameter(alpha, 'elastic_transform alpha', 0);
  checkParameter(sigma, 'elastic_transform sigma', Number.MIN_VALUE);
  const rng = new Rng(checkSeed(seed));
  const { C, H, W } = d;
  const plane: Dims = { C: 1, H, W };
  const k = gaussianKernel(sigma, 3);
  const field = () => convolve2d(Float64Array.from({ length: H * W }, () => 2 * rng.uniform() - 1), plane, k, 'reflect');
  const dx = field();
  const dy = field();
  const out = new Float32Array(data.length);
  for (let c = 0; c < C; c++) {
    const o = c * H * W;
    for (let y = 0; y < H; y++) for (let x = 0; x < W; x++) {
      const i = y * W + x;
      out[o + i] = clip01(sample(data, o, H, W, y + alpha * dy[i]!, x + alpha * dx[i]!, false));
    }
  }
  return out;
}

/**
 * One image corruption at a severity: pixels [H, W] or [C, H, W] in [0, 1] to new pixels of the
 * same shape. The seed decides every random choice (noise, field, the rotation's sign).
 */
export function corruptImage(name: string, data: Float32Array, shape: readonly number[], severity: number, seed: number): Float32Array {
  const c = checkImageName(name);
  const p = IMAGE_SEVERITIES[c][checkSeverity(severity) - 1]!;
  checkSeed(seed);
  const dims = imageDims(data, shape);
  const scale = Math.min(dims.H, dims.W) / REFERENCE_SIZE;
  switch (c) {
    case 'gaussian_noise': return addGaussianNoise(data, shape, p.sigma!, seed);
    case 'shot_noise': return addShotNoise(data, shape, p.photons!, seed);
    case 'gaussian_blur': return gaussianBlur(data, shape, p.sigma! * scale);
    case 'brightness': return shiftBrightness(data, shape, p.shift!);
    case 'contrast': return scaleContrast(data, shape, p.factor!);
    case 'elastic_transform': return elasticTransform(data, shape, p.alpha! * scale, p.sigma! * scale, seed);
    case 'pixelate': return pixelate(data, shape, p.fraction!);
    case 'rotation': return rotateImage(data, shape, new Rng(seed).uniform() < 0.5 ? -p.degrees! : p.degrees!);
  }
}

// ---------------------------------------------------------------------------------------------
// Text

const LOWER = 'abcdefghijklmnopqrstuvwxyz';

function isAsciiLetter(ch: string | undefined): boolean {
  if (ch === undefined || ch.length !== 1) return false;
  const c = ch.charCodeAt(0) | 0x20;
  return c >= 97 && c <= 122;
}

function isUpper(ch: string): boolean {
  const c = ch.charCodeAt(0);
  return c >= 65 && c <= 90;
}

function withCaseOf(letter: string, model: string): string {
  return isUpper(model) ? letter.toUpperCase() : letter;
}

function checkText(text: unknown, what = 'text'): string {
  if (typeof text !== 'string') throw new AdaptkitError(`${what} must be a string, got ${text === null ? 'null' : typeof text}`);
  return text;
}

function checkRate(rate: unknown, what: string): number {
  return checkParameter(rate, what, 0, 1);
}

export const CHAR_EDITS = ['insert', 'delete', 'substitute', 'swap'] as const;
export type CharEdit = (typeof CHAR_EDITS)[number];

/**
 * Each ASCII letter, with probability `rate`, gets one edit drawn uniformly from `edits` among
 * those that change something: insert a random letter after it, delete it, substitute a different
 * letter, or swap it with the next character when that is a different letter (which is then
 * passed over). Letters keep their case; other characters are never edited or drawn for.
 */
export function charNoise(text: string, rate: number, seed: number, edits: readonly CharEdit[] = CHAR_EDITS): string {
  const s = checkText(text);
  checkRate(rate, 'char_noise rate');
  const rng = new Rng(checkSeed(seed));
  if (!Array.isArray(edits) || edits.length === 0 || !edits.every((e) => (CHAR_EDITS as readonly string[]).includes(e))) {
    throw new AdaptkitError(`char_noise edits must be a non-empty list of ${CHAR_EDITS.join(', ')}, got ${JSON.stringify(edits)}`);
  }
  const out: string[] = [];
  for (let i = 0; i < s.length; i++) {
    const ch = s[i]!;
    if (!isAsciiLetter(ch) || rng.uniform() >= rate) {
      out.push(ch);
      continue;
    }
    const next = s[i + 1];
    const can = edits.filter((e) => e !== 'swap' || (isAsciiLetter(next) && next !== ch));
    if (can.length === 0) {
      out.push(ch);
      continue;
    }
    const edit = can[rng.int(can.length)]!;
    const index = LOWER.indexOf(ch.toLowerCase());
    if (edit === 'insert') out.push(ch, withCaseOf(LOWER[rng.int(26)]!, ch));
    else if (edit === 'substitute') out.push(withCaseOf(LOWER[(index + 1 + rng.int(25)) % 26]!, ch));
    else if (edit === 'swap') {
      out.push(next!, ch);
      i++;
    }
  }
  return out.join('');
}

/** The keys next to each letter on a QWERTY keyboard (rows staggered as on a real one). */
export const QWERTY_NEIGHBOURS: Readonly<Record<string, string>> = (() => {
  const rows = ['qwertyuiop', 'asdfghjkl', 'zxcvbnm'];
  const out: Record<string, string> = {};
  rows.forEach((row, r) => {
    for (let i = 0; i < row.length; i++) {
      // each row sits half a key right of the one above: key i touches keys i and i+1 above, i-1 and i below
      const near = [row[i - 1], row[i + 1], rows[r - 1]?.[i], rows[r - 1]?.[i + 1], rows[r + 1]?.[i - 1], rows[r + 1]?.[i]];
      out[row[i]!] = near.filter((c): c is string => c !== undefined).join('');
    }
  });
  return out;
})();

/** Each ASCII letter, with probability `rate`, replaced by a random QWERTY neighbour of the same case. */
export function keyboardTypo(text: string, rate: number, seed: number): string {
  const s = checkText(text);
  checkRate(rate, 'keyboard_typo rate');
  const rng = new Rng(checkSeed(seed));
  let out = '';
  for (const ch of s) {
    if (!isAsciiLetter(ch) || rng.uniform() >= rate) {
      out += ch;
      continue;
    }
    const near = QWERTY_NEIGHBOURS[ch.toLowerCase()]!;
    out += withCaseOf(near[rng.int(near.length)]!, ch);
  }
  return out;
}

/** Each ASCII letter's case flipped with probability `rate`. */
export function flipCase(text: string, rate: number, seed: number): string {
  const s = checkText(text);
  checkRate(rate, 'casing rate');
  const rng = new Rng(checkSeed(seed));
  let out = '';
  for (const ch of s) out += isAsciiLetter(ch) && rng.uniform() < rate ? (isUpper(ch) ? ch.toLowerCase() : ch.toUpperCase()) : ch;
  return out;
}

/** ASCII letters in capitals (other characters as they are, so the length never changes). */
export function allCaps(text: string): string {
  return checkText(text).replace(/[a-z]/g, (c) => c.toUpperCase());
}

/**
 * Each word (a run of non-space characters) dropped with probability `rate`, with the space
 * before it; when every word would go, the first stays, so no input becomes empty.
 */
export function wordDrop(text: string, rate: number, seed: number): string {
  const s = checkText(text);
  checkRate(rate, 'word_drop rate');
  const rng = new Rng(checkSeed(seed));
  const words = [...s.matchAll(/\S+/g)].map((m) => ({ start: m.index, end: m.index + m[0].length }));
  if (words.length === 0) return s;
  const keep = words.map(() => rng.uniform() >= rate);
  if (!keep.includes(true)) keep[0] = true;
  let out = s.slice(0, words[0]!.start);
  let first = true;
  words.forEach((w, i) => {
    if (!keep[i]) return;
    if (!first) out += s.slice(words[i - 1]!.end, w.start);
    out += s.slice(w.start, w.end);
    first = false;
  });
  return out + s.slice(words[words.length - 1]!.end);
}

/** One text corruption at a severity. */
export function corruptText(name: string, text: string, severity: number, seed: number): string {
  const c = checkTextName(name);
  const p = TEXT_SEVERITIES[c][checkSeverity(severity) - 1]!;
  checkSeed(seed);
  switch (c) {
    case 'char_noise': return charNoise(text, p.rate!, seed);
    case 'keyboard_typo': return keyboardTypo(text, p.rate!, seed);
    case 'casing': return p.all_caps ? allCaps(text) : flipCase(text, p.rate!, seed);
    case 'word_drop': return wordDrop(text, p.rate!, seed);
  }
}
