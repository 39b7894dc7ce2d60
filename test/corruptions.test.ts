/**
 * Image and text corruptions and the corrupted streams of continual test-time adaptation, against
 * closed forms (noise moments, contrast and brightness formulas), hand computations with plain
 * loops (a blurred delta, block means, a rotation by 90 degrees as a transpose and flip, a
 * keyboard's neighbours), sampled rates, and the order and bytes of the presets' streams.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { AdaptkitError, Rng } from '../src/tensor/index.js';
import { dataDir } from '../src/io/data.js';
import type { RawImage } from '../src/io/images.js';
import { type ImageSource, imageExamples, imagePrep, openImageSource } from '../src/train/images.js';
import { readRecords } from '../src/train/data.js';
import { shuffleInPlace } from '../src/train/examples.js';
import {
  IMAGE_CORRUPTIONS, IMAGE_SEVERITIES, TEXT_CORRUPTIONS, TEXT_SEVERITIES, QWERTY_NEIGHBOURS, addGaussianNoise, addShotNoise, allCaps, charNoise,
  corruptImage, corruptText, elasticTransform, flipCase, gaussianBlur, keyboardTypo, pixelate, rotateImage, scaleContrast, shiftBrightness, wordDrop,
} from '../src/train/corruptions.js';
import { GRADUAL_SEVERITIES, exampleSeed, imageStream, planarToRaw, rawToPlanar, textStream } from '../src/train/tta-streams.js';

const MNIST = join(dataDir(), 'datasets', 'mnist_test');
const SMS = join(dataDir(), 'datasets', 'sms_spam', 'SMSSpamCollection');

function constant(n: number, v: number): Float32Array {
  return new Float32Array(n).fill(v);
}

function random(n: number, seed: number): Float32Array {
  const rng = new Rng(seed);
  return Float32Array.from({ length: n }, () => rng.uniform());
}

function moments(a: ArrayLike<number>, from = 0, to = a.length): { mean: number; variance: number } {
  let s = 0;
  for (let i = from; i < to; i++) s += a[i]!;
  const mean = s / (to - from);
  let v = 0;
  for (let i = from; i < to; i++) v += (a[i]! - mean) ** 2;
  return { mean, variance: v / (to - from - 1) };
}

function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  assert.equal(a.length, b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  return m;
}

function bytes(a: Float32Array): Buffer {
  return Buffer.from(a.buffer, a.byteOffset, a.byteLength);
}

/** E[g(Z)] for a standard normal Z, by the trapezoid rule on [-12, 12]. */
function normalExpectation(g: (z: number) => number): number {
  const n = 240000;
  const h = 24 / n;
  let s = 0;
  for (let i = 0; i <= n; i++) {
    const z = -12 + i * h;
    s += (i === 0 || i === n ? 0.5 : 1) * g(z) * Math.exp((-z * z) / 2);
  }
  return (s * h) / Math.sqrt(2 * Math.PI);
}

const clip = (v: number) => Math.min(1, Math.max(0, v));

describe('image corruptions: closed forms', () => {
  it('gaussian noise has the moments of clip(x + sigma·Z) on a mid-grey image (sigma² where clipping is rare)', () => {
    const n = 128 * 128;
    IMAGE_SEVERITIES.gaussian_noise.forEach((p, s) => {
      const sigma = p.sigma!;
      const out = corruptImage('gaussian_noise', constant(n, 0.5), [128, 128], s + 1, 11 + s);
      const m = moments(out);
      const mean = normalExpectation((z) => clip(0.5 + sigma * z));
      const variance = normalExpectation((z) => clip(0.5 + sigma * z) ** 2) - mean ** 2;
      assert.ok(Math.abs(m.mean - mean) < 4 * sigma / Math.sqrt(n), `severity ${s + 1}: mean ${m.mean} vs ${mean}`);
      assert.ok(Math.abs(m.variance / variance - 1) < 0.05, `severity ${s + 1}: variance ${m.variance} vs ${variance}`);
      // below 0.5 / sigma = 2.7 standard deviations clipping takes less than 2% of the variance
      if (sigma <= 0.18) assert.ok(Math.abs(m.variance / (sigma * sigma) - 1) < 0.06, `severity ${s + 1}: variance ${m.variance} vs sigma² ${sigma * sigma}`);
    });
    const exact = addGaussianNoise(constant(n, 0.5), [n, 1], 0.05, 3);
    assert.ok(Math.abs(moments(exact).variance / 0.0025 - 1) < 0.05);
  });

  it('shot noise has the moments of clip(Poisson(x·c) / c): mean x and variance x / c before clipping', () => {
    const n = 128 * 128;
    for (const x of [0.2, 0.5]) {
      IMAGE_SEVERITIES.shot_noise.forEach((p, s) => {
        const c = p.photons!;
        const out = corruptImage('shot_noise', constant(n, x), [128, 128], s + 1, 5 * s + Math.round(x * 10));
        // the pmf of K ~ Poisson(x·c), summed far past its mass
        let mean = 0;
        let second = 0;
        let pk = Math.exp(-x * c);
        for (let k = 0; k < 400; k++) {
          if (k > 0) pk *= (x * c) / k;
          mean += pk * clip(k / c);
          second += pk * clip(k / c) ** 2;
        }
        const variance = second - mean * mean;
        const m = moments(out);
        assert.ok(Math.abs(m.mean - mean) < 4 * Math.sqrt(variance / n), `x ${x} severity ${s + 1}: mean ${m.mean} vs ${mean}`);
        assert.ok(Math.abs(m.variance / variance - 1) < 0.06, `x ${x} severity ${s + 1}: variance ${m.variance} vs ${variance}`);
        if (c >= 25) assert.ok(Math.abs(m.variance / (x / c) - 1) < 0.06, `x ${x} severity ${s + 1}: variance ${m.variance} vs x/c ${x / c}`);
      });
    }
    // a black pixel has no photons to count
    assert.deepEqual([...addShotNoise(constant(50, 0), [5, 10], 3, 1)], Array(50).fill(0));
  });

  it('gaussian blur of a delta is the outer product of the normalized, symmetric kernel exp(-i²/2σ²), radius floor(4σ + 0.5)', () => {
    IMAGE_SEVERITIES.gaussian_blur.forEach((p, s) => {
      const sigma = p.sigma!;
      const delta = constant(28 * 28, 0);
      delta[14 * 28 + 14] = 1;
      const out = corruptImage('gaussian_blur', delta, [28, 28], s + 1, 0);
      const r = Math.floor(4 * sigma + 0.5);
      const k: number[] = [];
      for (let i = -r; i <= r; i++) k.push(Math.exp((-i * i) / (2 * sigma * sigma)));
      const total = k.reduce((a, b) => a + b, 0);
      const want = new Float32Array(28 * 28);
      for (let y = -r; y <= r; y++) for (let x = -r; x <= r; x++) want[(14 + y) * 28 + 14 + x] = (k[y + r]! / total) * (k[x + r]! / total);
      assert.ok(maxAbsDiff(out, want) < 1e-7, `severity ${s + 1}`);
      assert.ok(Math.abs(out.reduce((a, b) => a + b, 0) - 1) < 1e-5, 'the kernel sums to 1');
      for (let y = 0; y < 28; y++) for (let x = 0; x < 28; x++) {
        if (y >= 1 && x >= 1) {
          assert.ok(Math.abs(out[y * 28 + x]! - out[(28 - y) * 28 + x]!) < 1e-9, 'symmetric in y');
          assert.ok(Math.abs(out[y * 28 + x]! - out[y * 28 + 28 - x]!) < 1e-9, 'symmetric in x');
          assert.ok(Math.abs(out[y * 28 + x]! - out[x * 28 + y]!) < 1e-9, 'the same along both axes');
        }
      }
    });
  });

  it('gaussian blur equals the direct 2-D convolution with edge pixels extended, on every channel', () => {
    const [C, H, W] = [3, 10, 12];
    const img = random(C * H * W, 4);
    const sigma = 1.3;
    const out = gaussianBlur(img, [C, H, W], sigma);
    const r = Math.floor(4 * sigma + 0.5);
    const want = new Float32Array(C * H * W);
    let norm = 0;
    for (let i = -r; i <= r; i++) for (let j = -r; j <= r; j++) norm += Math.exp((-(i * i) - j * j) / (2 * sigma * sigma));
    const at = (c: number, y: number, x: number) => img[c * H * W + Math.min(H - 1, Math.max(0, y)) * W + Math.min(W - 1, Math.max(0, x))]!;
    for (let c = 0; c < C; c++) for (let y = 0; y < H; y++) for (let x = 0; x < W; x++) {
      let s = 0;
      for (let i = -r; i <= r; i++) for (let j = -r; j <= r; j++) s += Math.exp((-(i * i) - j * j) / (2 * sigma * sigma)) * at(c, y + i, x + j);
      want[c * H * W + y * W + x] = s / norm;
    }
    assert.ok(maxAbsDiff(out, want) < 1e-6);
  });

  it('contrast keeps each channel\'s mean and scales its standard deviation by c', () => {
    for (const shape of [[28, 28], [3, 16, 20]]) {
      const n = shape.reduce((a, b) => a * b, 1);
      const img = random(n, 9);
      IMAGE_SEVERITIES.contrast.forEach((p, s) => {
        const c = p.factor!;
        const out = corruptImage('contrast', img, shape, s + 1, 0);
        const planes = shape.length === 3 ? shape[0]! : 1;
        const m = n / planes;
        for (let k = 0; k < planes; k++) {
          const a = moments(img, k * m, (k + 1) * m);
          const b = moments(out, k * m, (k + 1) * m);
          assert.ok(Math.abs(a.mean - b.mean) < 1e-6, `mean kept (severity ${s + 1})`);
          assert.ok(Math.abs(Math.sqrt(b.variance / a.variance) - c) < 1e-5, `std scaled by ${c}`);
          for (let i = k * m; i < (k + 1) * m; i++) assert.ok(Math.abs(out[i]! - ((img[i]! - a.mean) * c + a.mean)) < 1e-6);
        }
      });
    }
    assert.ok(maxAbsDiff(scaleContrast(random(100, 2), [10, 10], 1), random(100, 2)) < 1e-7, 'factor 1 is the identity');
  });

  it('brightness adds c to grey pixels (clipped at 1) and to the HSV value of RGB pixels, hue and saturation kept', () => {
    const grey = random(28 * 28, 3);
    IMAGE_SEVERITIES.brightness.forEach((p, s) => {
      const out = corruptImage('brightness', grey, [28, 28], s + 1, 0);
      for (let i = 0; i < grey.length; i++) assert.ok(Math.abs(out[i]! - Math.min(1, grey[i]! + p.shift!)) < 1e-6);
    });
    const hsv = (r: number, g: number, b: number) => {
      const v = Math.max(r, g, b);
      const d = v - Math.min(r, g, b);
      let h = 0;
      if (d > 0) h = v === r ? ((g - b) / d + 6) % 6 : v === g ? (b - r) / d + 2 : (r - g) / d + 4;
      return { h: h / 6, s: v === 0 ? 0 : d / v, v };
    };
    const n = 64;
    const rgb = random(3 * n, 8);
    rgb.fill(0, 0, 1);
    rgb[n] = 0;
    rgb[2 * n] = 0;
    const shift = 0.3;
    const out = shiftBrightness(rgb, [3, 8, 8], shift);
    for (let i = 0; i < n; i++) {
      const a = hsv(rgb[i]!, rgb[n + i]!, rgb[2 * n + i]!);
      const b = hsv(out[i]!, out[n + i]!, out[2 * n + i]!);
      assert.ok(Math.abs(b.v - Math.min(1, a.v + shift)) < 1e-6, `pixel ${i}: value`);
      if (a.v === 0) {
        assert.ok(b.s === 0 && Math.abs(b.v - shift) < 1e-6, 'black becomes grey');
        continue;
      }
      assert.ok(Math.abs(b.s - a.s) < 1e-5, `pixel ${i}: saturation`);
      if (a.s > 1e-3) assert.ok(Math.min(Math.abs(b.h - a.h), 1 - Math.abs(b.h - a.h)) < 1e-4, `pixel ${i}: hue`);
    }
  });

  it('pixelate keeps an image that is constant on its blocks and replaces each block by its mean', () => {
    // 28 px: severity 2 keeps 14 blocks (2 px each), severity 5 keeps 7 (4 px each)
    for (const [severity, size] of [[2, 2], [5, 4]] as const) {
      const values = random((28 / size) ** 2, severity);
      const blocky = new Float32Array(28 * 28);
      for (let y = 0; y < 28; y++) for (let x = 0; x < 28; x++) blocky[y * 28 + x] = values[Math.floor(y / size) * (28 / size) + Math.floor(x / size)]!;
      assert.deepEqual(bytes(corruptImage('pixelate', blocky, [28, 28], severity, 0)), bytes(blocky), `severity ${severity}`);
      const img = random(28 * 28, 10 + severity);
      const out = corruptImage('pixelate', img, [1, 28, 28], severity, 0);
      for (let y = 0; y < 28; y++) for (let x = 0; x < 28; x++) {
        let s = 0;
        const y0 = y - (y % size);
        const x0 = x - (x % size);
        for (let i = 0; i < size; i++) for (let j = 0; j < size; j++) s += img[(y0 + i) * 28 + x0 + j]!;
        assert.ok(Math.abs(out[y * 28 + x]! - s / (size * size)) < 1e-6);
      }
    }
    // at any fraction the result is made of blocks already, so pixelating it again changes nothing
    const img = random(3 * 21 * 26, 1);
    for (let s = 1; s <= 5; s++) {
      const once = corruptImage('pixelate', img, [3, 21, 26], s, 0);
      assert.ok(maxAbsDiff(corruptImage('pixelate', once, [3, 21, 26], s, 0), once) < 1e-6, `severity ${s}`);
    }
    const lines = pixelate(random(6 * 5, 2), [6, 5], 0.2);
    const rows = moments(random(6 * 5, 2));
    assert.ok(maxAbsDiff(lines, constant(30, rows.mean)) < 1e-6, 'one block of the whole image is its mean');
  });

  it('rotation by 0 is the identity, by ±90 and 180 degrees a transpose and flip', () => {
    for (const n of [9, 28]) {
      const img = random(n * n, n);
      assert.deepEqual(bytes(rotateImage(img, [n, n], 0)), bytes(img));
      const at = (y: number, x: number) => img[y * n + x]!;
      const ccw = new Float32Array(n * n);
      const cw = new Float32Array(n * n);
      const half = new Float32Array(n * n);
      for (let y = 0; y < n; y++) for (let x = 0; x < n; x++) {
        ccw[y * n + x] = at(x, n - 1 - y);
        cw[y * n + x] = at(n - 1 - x, y);
        half[y * n + x] = at(n - 1 - y, n - 1 - x);
      }
      assert.ok(maxAbsDiff(rotateImage(img, [n, n], 90), ccw) < 1e-6, `${n}x${n} by 90`);
      assert.ok(maxAbsDiff(rotateImage(img, [n, n], -90), cw) < 1e-6, `${n}x${n} by -90`);
      assert.ok(maxAbsDiff(rotateImage(img, [1, n, n], 180), half) < 1e-6, `${n}x${n} by 180`);
    }
    // outside the source is black: the corners of a white square turned by 45 degrees
    const turned = rotateImage(constant(28 * 28, 1), [28, 28], 45);
    assert.equal(turned[0], 0);
    assert.equal(turned[28 * 28 - 1], 0);
    assert.ok(Math.abs(turned[14 * 28 + 14]! - 1) < 1e-6);
  });

  it('rotation at a severity turns by plus or minus its angle, the sign drawn from the seed', () => {
    const img = random(28 * 28, 6);
    IMAGE_SEVERITIES.rotation.forEach((p, s) => {
      const signs = new Set<number>();
      for (let seed = 0; seed < 16; seed++) {
        const out = bytes(corruptImage('rotation', img, [28, 28], s + 1, seed));
        const plus = out.equals(bytes(rotateImage(img, [28, 28], p.degrees!)));
        const minus = out.equals(bytes(rotateImage(img, [28, 28], -p.degrees!)));
        assert.ok(plus !== minus, `severity ${s + 1}, seed ${seed}`);
        signs.add(plus ? 1 : -1);
      }
      assert.equal(signs.size, 2, 'both directions occur');
    });
  });

  it('elastic transform with amplitude 0 is the identity; a larger amplitude moves more', () => {
    const img = random(3 * 28 * 28, 12);
    for (const sigma of [1, 4]) assert.deepEqual(bytes(elasticTransform(img, [3, 28, 28], 0, sigma, 5)), bytes(img));
    const change = (alpha: number) => {
      const out = elasticTransform(img, [3, 28, 28], alpha, 4, 5);
      return out.reduce((a, v, i) => a + Math.abs(v - img[i]!), 0);
    };
    assert.ok(change(5) > 0 && change(5) < change(20) && change(20) < change(60));
  });
});

describe('image corruptions: determinism, severity and inputs', () => {
  it('the same seed gives the same bytes; a different seed different noise and fields; the other corruptions ignore it', () => {
    const img = random(28 * 28, 21);
    for (const c of IMAGE_CORRUPTIONS) {
      for (let s = 1; s <= 5; s++) {
        const a = bytes(corruptImage(c, img, [28, 28], s, 1234));
        assert.ok(a.equals(bytes(corruptImage(c, img, [28, 28], s, 1234))), `${c} ${s}`);
        const b = bytes(corruptImage(c, img, [28, 28], s, 1235));
        if (c === 'gaussian_noise' || c === 'shot_noise' || c === 'elastic_transform') assert.ok(!a.equals(b), `${c} ${s} depends on the seed`);
        if (c === 'gaussian_blur' || c === 'brightness' || c === 'contrast' || c === 'pixelate') assert.ok(a.equals(b), `${c} ${s} has no randomness`);
      }
    }
  });

  it('damage grows with severity for every corruption, on 100 held-out MNIST digits', () => {
    const src = openImageSource(`mnist:${MNIST}:heldout`);
    const clean = Array.from({ length: 100 }, (_, i) => rawToPlanar(src.item(i).image));
    for (const c of IMAGE_CORRUPTIONS) {
      const damage = [1, 2, 3, 4, 5].map((s) => {
        let total = 0;
        clean.forEach((im, i) => {
          const out = corruptImage(c, im.data, im.shape, s, exampleSeed(0, { corruption: c, severity: s }, i));
          for (let k = 0; k < out.length; k++) total += Math.abs(out[k]! - im.data[k]!);
        });
        return total / (100 * 28 * 28);
      });
      for (let s = 1; s < 5; s++) assert.ok(damage[s]! > damage[s - 1]!, `${c}: mean absolute change ${damage.map((d) => d.toFixed(4)).join(' < ')}`);
      assert.ok(damage[0]! > 0.002, `${c} changes digits at severity 1 (${damage[0]})`);
    }
  });

  it('refuses a bad severity, corruption name, shape, pixel value or seed, naming it', () => {
    const img = constant(28 * 28, 0.5);
    const bad = (f: () => unknown, re: RegExp) => assert.throws(f, (e: unknown) => e instanceof AdaptkitError && re.test(e.message));
    for (const s of [0, 6, 2.5, Number.NaN, '3']) bad(() => corruptImage('contrast', img, [28, 28], s as number, 0), /severity must be an integer from 1 to 5/);
    bad(() => corruptImage('snow', img, [28, 28], 1, 0), /corruption must be one of gaussian_noise, .* got "snow"/);
    bad(() => corruptImage('contrast', img, [2, 28, 14], 1, 0), /2 channels; images are grey \(1\) or RGB \(3\)/);
    bad(() => corruptImage('contrast', img, [27, 28], 1, 0), /shape \[27, 28\] needs 756 pixels, got 784/);
    bad(() => corruptImage('contrast', img, [1, 1, 28, 28], 1, 0), /shape must be \[H, W\] or \[C, H, W\]/);
    bad(() => corruptImage('contrast', Array.from(img) as unknown as Float32Array, [28, 28], 1, 0), /pixels must be a Float32Array/);
    const bright = img.slice();
    bright[3] = 255;
    bad(() => corruptImage('gaussian_noise', bright, [28, 28], 1, 0), /pixel values must lie in \[0, 1\].*pixel 3 is 255/);
    bad(() => corruptImage('gaussian_noise', img, [28, 28], 1, -1), /seed must be an integer/);
    bad(() => rotateImage(img, [28, 28], Number.NaN), /rotation degrees must be a number/);
    bad(() => pixelate(img, [28, 28], 0), /pixelate fraction must be a number in/);
    bad(() => addShotNoise(img, [28, 28], 600, 0), /shot_noise photons must be a number in \[.*, 500\], got 600/);
  });
});

/** A small image source of random grey pictures, labelled by parity. */
function syntheticSource(count: number): ImageSource {
  return {
    name: 'synthetic', labels: ['even', 'odd'], count, defaultMean: 0.5, defaultStd: 0.5,
    item: (i) => {
      const rng = new Rng(100 + i);
      const data = Uint8Array.from({ length: 12 * 10 }, () => rng.int(256));
      return { image: { width: 10, height: 12, channels: 1, data } as RawImage, label: i % 2 ? 'odd' : 'even', source: `synthetic[${i}]` };
    },
  };
}

describe('image streams', () => {
  const ORDER = ['gaussian_noise', 'shot_noise', 'gaussian_blur', 'brightness', 'contrast', 'elastic_transform', 'pixelate', 'rotation'];

  it('the continual preset: the eight corruptions in CIFAR10-C order at severity 5, ten rounds, the same examples every domain', () => {
    const s = imageStream({ examples: syntheticSource(6) });
    const m = s.describe();
    assert.deepEqual(m.domains.map((d) => [d.corruption, d.severity]), ORDER.map((c) => [c, 5]));
    assert.deepEqual(m.domains[0]!.parameters, { sigma: 0.38 });
    assert.equal(m.preset, 'continual');
    assert.equal(m.rounds, 10);
    assert.equal(m.examples_per_domain, 6);
    assert.equal(m.domains_per_round, 8);
    assert.equal(m.total_examples, 10 * 8 * 6);
    assert.equal(JSON.parse(JSON.stringify(m)).domains.length, 8, 'the manifest is JSON');
    const seen = [...s.segments()].map((g) => [g.round, g.position, g.step, g.corruption, g.severity, g.count]);
    assert.deepEqual(seen, Array.from({ length: 80 }, (_, k) => [Math.floor(k / 8), k % 8, k, ORDER[k % 8], 5, 6]));
    const three = imageStream({ examples: syntheticSource(6), severity: 3, rounds: 2 });
    assert.deepEqual(three.describe().domains.map((d) => d.severity), Array(8).fill(3));
    assert.equal(three.length, 16);
  });

  it('the gradual preset: each corruption at severities 1..5..1 before the next', () => {
    const s = imageStream({ examples: syntheticSource(2), domains: 'gradual', rounds: 3 });
    const m = s.describe();
    assert.deepEqual([...GRADUAL_SEVERITIES], [1, 2, 3, 4, 5, 4, 3, 2, 1]);
    assert.deepEqual(m.domains.map((d) => [d.corruption, d.severity]), ORDER.flatMap((c) => [1, 2, 3, 4, 5, 4, 3, 2, 1].map((v) => [c, v])));
    assert.equal(m.total_examples, 3 * 72 * 2);
    assert.equal(s.segment(72 + 9).corruption, 'shot_noise');
    assert.equal(s.segment(72 + 9).round, 1);
  });

  it('an item is its clean image corrupted with its own seed and stored as bytes, the same in every round and in any reading order', () => {
    const src = syntheticSource(5);
    const s = imageStream({ examples: src, rounds: 3, seed: 77 });
    for (let p = 0; p < 8; p++) {
      const seg = s.segment(p);
      const forward = seg.items();
      const backward = [4, 3, 2, 1, 0].map((i) => s.segment(16 + p).item(i)).reverse();
      for (let i = 0; i < 5; i++) {
        const clean = src.item(i).image;
        const planar = Float32Array.from(clean.data, (b) => b / 255);
        const want = corruptImage(seg.corruption, planar, [12, 10], 5, exampleSeed(77, { corruption: seg.corruption, severity: 5 }, i));
        const wantBytes = Uint8Array.from(want, (v) => Math.round(v * 255));
        assert.deepEqual(forward[i]!.image.data, wantBytes, `${seg.corruption} item ${i}`);
        assert.deepEqual(backward[i]!.image.data, wantBytes, 'round 3, read backwards');
        assert.equal(forward[i]!.label, i % 2 ? 'odd' : 'even');
      }
    }
    const other = imageStream({ examples: src, seed: 78 });
    assert.notDeepEqual(other.segment(0).item(0).image.data, s.segment(0).item(0).image.data, 'another stream seed, other noise');
    assert.notEqual(exampleSeed(77, { corruption: 'contrast', severity: 5 }, 0), exampleSeed(77, { corruption: 'contrast', severity: 4 }, 0));
    assert.notEqual(exampleSeed(77, { corruption: 'contrast', severity: 5 }, 0), exampleSeed(77, { corruption: 'contrast', severity: 5 }, 1));
  });

  it('batches stay inside a domain and cover the stream in order; a segment is an image source for imageExamples', () => {
    const s = imageStream({ examples: syntheticSource(10), rounds: 2, domains: [{ corruption: 'contrast', severity: 2 }, { corruption: 'rotation', severity: 4 }] });
    const batches = [...s.batches(4)];
    assert.deepEqual(batches.map((b) => [b.step, b.corruption, b.severity, b.start, b.items.length]), [0, 1, 2, 3].flatMap((k) => [0, 4, 8].map((st) => [k, k % 2 ? 'rotation' : 'contrast', k % 2 ? 4 : 2, st, st === 8 ? 2 : 4])));
    assert.equal(s.describe().preset, 'custom');
    assert.deepEqual(batches[1]!.items[0]!.image.data, s.segment(0).item(4).image.data);
    const source = s.segmentSource(1);
    const prep = imagePrep({ channels: 1, height: 12, width: 10 }, { source });
    const ex = imageExamples(source, prep, source.labels);
    assert.equal(ex.length, 10);
    assert.deepEqual(ex.map((e) => e.labelIndex), Array.from({ length: 10 }, (_, i) => i % 2));
    const raw = s.segment(1).item(3).image.data;
    assert.ok(Math.abs(ex[3]!.pixels[7]! - (raw[7]! / 255 - 0.5) / 0.5) < 1e-6, 'normalized as the clean source is');
  });

  it('round-trips bytes through planar pixels, RGB included', () => {
    const img: RawImage = { width: 3, height: 2, channels: 3, data: Uint8Array.from({ length: 18 }, (_, i) => i * 14) };
    const p = rawToPlanar(img);
    assert.deepEqual(p.shape, [3, 2, 3]);
    assert.equal(p.data[1 * 6 + 0], Math.fround(14 / 255), 'channel 1 of pixel 0');
    assert.deepEqual(planarToRaw(p.data, p.shape), img);
  });

  it('refuses a bad preset, domain, rounds, range or step, naming it', () => {
    const src = syntheticSource(4);
    const bad = (f: () => unknown, re: RegExp) => assert.throws(f, (e: unknown) => e instanceof AdaptkitError && re.test(e.message));
    bad(() => imageStream({ examples: src, domains: 'random' as 'gradual' }), /the preset must be continual or gradual, got "random"/);
    bad(() => imageStream({ examples: src, domains: [] }), /domains must be/);
    bad(() => imageStream({ examples: src, domains: [{ corruption: 'snow', severity: 1 }] }), /domains\[0\]\.corruption must be one of .* got "snow"/);
    bad(() => imageStream({ examples: src, domains: [{ corruption: 'contrast', severity: 1 }, { corruption: 'char_noise', severity: 2 }] }), /domains\[1\]\.corruption/);
    bad(() => imageStream({ examples: src, domains: [{ corruption: 'contrast', severity: 7 }] }), /domains\[0\]\.severity must be an integer from 1 to 5/);
    bad(() => imageStream({ examples: src, domains: 'gradual', severity: 3 }), /severity sets the continual preset's severity/);
    bad(() => imageStream({ examples: src, severity: 9 }), /severity must be an integer from 1 to 5, got 9/);
    bad(() => imageStream({ examples: src, rounds: 0 }), /rounds must be an integer from 1/);
    bad(() => imageStream({ examples: src, seed: 1.5 }), /seed must be an integer/);
    bad(() => imageStream({ examples: src, range: [2, 9] }), /range must be \[start, end\) with 0 <= start < end <= 4/);
    bad(() => imageStream({ examples: src, range: 3 as unknown as [number, number] }), /range must be \[start, end\), got 3/);
    bad(() => imageStream({ examples: undefined as unknown as ImageSource }), /examples must be an image source/);
    const s = imageStream({ examples: src, rounds: 1 });
    bad(() => s.segment(8), /step must be an integer from 0 to 7/);
    bad(() => s.segment(0).item(4), /example index must be an integer from 0 to 3/);
    bad(() => s.batches(0).next(), /batch size must be an integer/);
  });
});

// ---------------------------------------------------------------------------------------------
// Text

/** Words of random lower-case letters, with no letter next to an equal one. */
function randomWords(words: number, seed: number, upper = 0): string {
  const rng = new Rng(seed);
  const out: string[] = [];
  for (let w = 0; w < words; w++) {
    let word = '';
    const len = 3 + rng.int(6);
    while (word.length < len) {
      let ch = String.fromCharCode(97 + rng.int(26));
      if (rng.uniform() < upper) ch = ch.toUpperCase();
      if (word.length === 0 || word[word.length - 1]!.toLowerCase() !== ch.toLowerCase()) word += ch;
    }
    out.push(word);
  }
  return out.join(' ') + '.';
}

const letterCount = (s: string) => [...s].filter((c) => /[A-Za-z]/.test(c)).length;
const within = (got: number, p: number, n: number) => Math.abs(got - p) < 4 * Math.sqrt((p * (1 - p)) / n) + 1e-3;

describe('text corruptions', () => {
  const text = randomWords(4000, 1, 0.3);
  const letters = letterCount(text);

  it('character insertions, deletions and substitutions each hit letters at rate p, keeping every other character', () => {
    const p = 0.1;
    const ins = charNoise(text, p, 3, ['insert']);
    assert.ok(within((ins.length - text.length) / letters, p, letters), `insert rate ${(ins.length - text.length) / letters}`);
    const del = charNoise(text, p, 3, ['delete']);
    assert.ok(within((text.length - del.length) / letters, p, letters), `delete rate ${(text.length - del.length) / letters}`);
    const sub = charNoise(text, p, 3, ['substitute']);
    assert.equal(sub.length, text.length);
    let changed = 0;
    for (let i = 0; i < text.length; i++) {
      if (sub[i] === text[i]) continue;
      changed++;
      assert.ok(/[A-Za-z]/.test(text[i]!) && /[A-Za-z]/.test(sub[i]!), 'only letters change, into letters');
      assert.equal(sub[i] === sub[i]!.toUpperCase(), text[i] === text[i]!.toUpperCase(), 'case kept');
    }
    assert.ok(within(changed / letters, p, letters), `substitution rate ${changed / letters}`);
    for (const noisy of [ins, del, sub, charNoise(text, 0.2, 4)]) assert.equal(noisy.replace(/[A-Za-z]/g, ''), text.replace(/[A-Za-z]/g, ''), 'spaces and punctuation stay');
  });

  it('swaps exchange a letter with the next one at rate p per drawn letter (p / (1 + p) per letter, as a swap passes over its partner)', () => {
    const run = randomWords(3000, 2).replace(/[ .]/g, '').replace(/(.)\1/g, '$1');
    const p = 0.15;
    const out = charNoise(run, p, 8, ['swap']);
    assert.equal(out.length, run.length);
    let swaps = 0;
    for (let i = 0; i < run.length; i++) {
      if (out[i] === run[i]) continue;
      assert.ok(out[i] === run[i + 1] && out[i + 1] === run[i], `position ${i} is half of a swap`);
      swaps++;
      i++;
    }
    const want = p / (1 + p);
    assert.ok(within(swaps / run.length, want, run.length), `swap rate ${swaps / run.length} vs ${want}`);
  });

  it('keyboard typos replace letters at rate p by a neighbouring QWERTY key of the same case', () => {
    const keyboard: Record<string, string> = {
      q: 'wa', w: 'qeas', e: 'wrsd', r: 'etdf', t: 'ryfg', y: 'tugh', u: 'yihj', i: 'uojk', o: 'ipkl', p: 'ol',
      a: 'sqwz', s: 'adwezx', d: 'sferxc', f: 'dgrtcv', g: 'fhtyvb', h: 'gjyubn', j: 'hkuinm', k: 'jliom', l: 'kop',
      z: 'xas', x: 'zcsd', c: 'xvdf', v: 'cbfg', b: 'vngh', n: 'bmhj', m: 'njk',
    };
    assert.deepEqual(Object.fromEntries(Object.entries(QWERTY_NEIGHBOURS).map(([k, v]) => [k, [...v].sort().join('')])), Object.fromEntries(Object.entries(keyboard).map(([k, v]) => [k, [...v].sort().join('')])));
    const p = 0.15;
    const out = keyboardTypo(text, p, 5);
    assert.equal(out.length, text.length);
    let changed = 0;
    for (let i = 0; i < text.length; i++) {
      if (out[i] === text[i]) continue;
      changed++;
      assert.ok(keyboard[text[i]!.toLowerCase()]!.includes(out[i]!.toLowerCase()), `${text[i]} -> ${out[i]}`);
      assert.equal(out[i] === out[i]!.toUpperCase(), text[i] === text[i]!.toUpperCase(), 'case kept');
    }
    assert.ok(within(changed / letters, p, letters), `typo rate ${changed / letters}`);
  });

  it('casing flips letters at the severity\'s rate and writes all capitals at severity 5', () => {
    for (let s = 1; s <= 4; s++) {
      const p = TEXT_SEVERITIES.casing[s - 1]!.rate!;
      const out = corruptText('casing', text, s, 40 + s);
      assert.equal(out.toLowerCase(), text.toLowerCase());
      const flipped = [...out].filter((c, i) => c !== text[i]).length;
      assert.ok(within(flipped / letters, p, letters), `severity ${s}: ${flipped / letters} vs ${p}`);
    }
    const mixed = 'Free entry! Wkly comp 2 win FA Cup final tkts 21st May 2005. Öl über';
    let caps = '';
    for (const c of mixed) caps += c >= 'a' && c <= 'z' ? String.fromCharCode(c.charCodeAt(0) - 32) : c;
    assert.equal(corruptText('casing', mixed, 5, 0), caps);
    assert.equal(allCaps(mixed), caps);
    assert.equal(flipCase(mixed, 1, 0), [...mixed].map((c) => (/[a-z]/.test(c) ? c.toUpperCase() : /[A-Z]/.test(c) ? c.toLowerCase() : c)).join(''));
  });

  it('word drop removes each word with probability p, keeps the others in order, and never empties a text', () => {
    const words = Array.from({ length: 5000 }, (_, i) => `w${i}`);
    for (let s = 1; s <= 5; s++) {
      const p = TEXT_SEVERITIES.word_drop[s - 1]!.rate!;
      const out = corruptText('word_drop', words.join(' '), s, 60 + s).split(' ');
      const kept = out.map((w) => Number(w.slice(1)));
      assert.ok(kept.every((k, i) => i === 0 || k > kept[i - 1]!), 'the kept words in their order');
      assert.ok(within(1 - out.length / words.length, p, words.length), `severity ${s}: dropped ${1 - out.length / words.length} vs ${p}`);
    }
    assert.equal(wordDrop('only', 1, 0), 'only');
    assert.equal(wordDrop('  two words\n', 1, 0), '  two\n');
    assert.equal(wordDrop('a  b\tc', 0, 0), 'a  b\tc');
  });

  it('is deterministic per seed and draws differently for another seed', () => {
    for (const c of TEXT_CORRUPTIONS) {
      for (let s = 1; s <= 5; s++) {
        const a = corruptText(c, text, s, 99);
        assert.equal(a, corruptText(c, text, s, 99), `${c} ${s}`);
        assert.notEqual(a, text, `${c} ${s} changes the text`);
        if (!(c === 'casing' && s === 5)) assert.notEqual(a, corruptText(c, text, s, 100), `${c} ${s} depends on the seed`);
      }
    }
  });

  it('refuses an unknown corruption, a bad severity, rate or text', () => {
    const bad = (f: () => unknown, re: RegExp) => assert.throws(f, (e: unknown) => e instanceof AdaptkitError && re.test(e.message));
    bad(() => corruptText('contrast', 'hi', 1, 0), /corruption must be one of char_noise, keyboard_typo, casing, word_drop for text, got "contrast"/);
    bad(() => corruptText('casing', 'hi', 0, 0), /severity must be an integer from 1 to 5, got 0/);
    bad(() => corruptText('casing', 42 as unknown as string, 1, 0), /text must be a string, got number/);
    bad(() => charNoise('hi', 1.5, 0), /char_noise rate must be a number in \[0, 1\]/);
    bad(() => charNoise('hi', 0.1, 0, ['twist' as 'swap']), /char_noise edits must be a non-empty list of insert, delete, substitute, swap/);
  });
});

describe('text streams', () => {
  // the held-out SMS messages of bench/methods.ts: shuffled with seed 0, the first 1,000
  const sms = shuffleInPlace(readRecords(SMS, { format: 'tsv', quote: false, textColumn: 'SMS', labelColumn: 'Label' }).records.slice(), 0)
    .slice(0, 200)
    .map((r) => r as { kind: 'label'; text: string; label: string });

  it('the continual preset corrupts only the text of each record, in the documented order, every round alike', () => {
    const s = textStream({ examples: sms, rounds: 3, seed: 4, name: 'sms held-out' });
    const m = s.describe();
    assert.equal(m.kind, 'text');
    assert.equal(m.source, 'sms held-out');
    assert.deepEqual(m.domains.map((d) => [d.corruption, d.severity]), [['char_noise', 5], ['keyboard_typo', 5], ['casing', 5], ['word_drop', 5]]);
    assert.equal(m.total_examples, 3 * 4 * 200);
    for (const seg of s.segments()) {
      const items = seg.items();
      assert.equal(items.length, 200);
      items.forEach((it, i) => {
        assert.equal(it.label, sms[i]!.label);
        assert.equal(it.kind, 'label');
        assert.equal(it.text, corruptText(seg.corruption, sms[i]!.text, 5, exampleSeed(4, { corruption: seg.corruption, severity: 5 }, i)));
      });
      if (seg.round === 2) assert.deepEqual(items, s.segment(seg.position).items(), 'round 3 is round 1 again');
    }
    assert.equal(sms.filter((r, i) => s.segment(0).item(i).text !== r.text).length > 150, true, 'severity 5 character noise changes most messages');
    const gradual = textStream({ examples: sms.slice(0, 3), domains: 'gradual', rounds: 1 });
    assert.deepEqual(gradual.describe().domains.map((d) => d.severity), TEXT_CORRUPTIONS.flatMap(() => [1, 2, 3, 4, 5, 4, 3, 2, 1]));
  });

  it('refuses an empty list, image domains and examples without text', () => {
    const bad = (f: () => unknown, re: RegExp) => assert.throws(f, (e: unknown) => e instanceof AdaptkitError && re.test(e.message));
    bad(() => textStream({ examples: [] }), /examples must be a non-empty list/);
    bad(() => textStream({ examples: sms, domains: [{ corruption: 'rotation', severity: 1 }] }), /domains\[0\]\.corruption must be one of char_noise/);
    const s = textStream({ examples: [{ text: 'ok' }, { prompt: 'x' } as unknown as { text: string }] });
    assert.equal(s.segment(0).item(0).text.length > 0, true);
    bad(() => s.segment(0).item(1), /examples\[1\]\.text must be a string, got undefined/);
  });
});
