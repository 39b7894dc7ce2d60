/**
 * Corrupted data streams for continual test-time adaptation. A stream is an ordered list of
 * domains (corruption, severity), each the same fixed set of examples corrupted, presented one
 * domain after another and the whole order repeated for R rounds, as CoTTA (Wang et al., CVPR
 * 2022) and ViDA (Liu et al., ICLR 2024) present CIFAR10-C: its corruptions in a fixed order at
 * severity 5, 10 rounds. Examples keep their order inside a domain and a domain is the same bytes
 * in every round (CIFAR10-C is a fixed file); an example's corruption is seeded by (stream seed,
 * corruption, severity, example index) alone, so any part of a stream can be read in any order
 * and gives the same result.
 *
 * Presets: `continual` (every corruption at one severity, 5 by default) and `gradual` (CoTTA's
 * gradual setting: each corruption at severities 1, 2, 3, 4, 5, 4, 3, 2, 1 before the next).
 */
import { AdaptkitError } from '../tensor/index.js';
import type { RawImage } from '../io/images.js';
import type { ImageSource } from './images.js';
import {
  type CorruptionParameters, IMAGE_CORRUPTIONS, TEXT_CORRUPTIONS, checkSeed, checkSeverity, corruptImage, corruptText,
  corruptionParameters, isImageCorruption, isTextCorruption,
} from './corruptions.js';

export const STREAM_PRESETS = ['continual', 'gradual'] as const;
export type StreamPreset = (typeof STREAM_PRESETS)[number];
export type StreamKind = 'image' | 'text';

/** Rounds of the continual protocol of CoTTA and ViDA on CIFAR10-C. */
export const DEFAULT_ROUNDS = 10;
export const DEFAULT_SEVERITY = 5;
/** The severities each corruption passes through in the gradual preset. */
export const GRADUAL_SEVERITIES = [1, 2, 3, 4, 5, 4, 3, 2, 1] as const;

export interface StreamDomain {
  corruption: string;
  severity: number;
}

const CORRUPTIONS: Record<StreamKind, readonly string[]> = { image: IMAGE_CORRUPTIONS, text: TEXT_CORRUPTIONS };

/** The domains of one round of a preset. */
export function presetDomains(kind: StreamKind, preset: StreamPreset, severity = DEFAULT_SEVERITY): StreamDomain[] {
  if (!(STREAM_PRESETS as readonly string[]).includes(preset)) throw new AdaptkitError(`domains: the preset must be ${STREAM_PRESETS.join(' or ')}, got ${JSON.stringify(preset)}`);
  const names = CORRUPTIONS[kind];
  if (preset === 'continual') {
    checkSeverity(severity);
    return names.map((corruption) => ({ corruption, severity }));
  }
  return names.flatMap((corruption) => GRADUAL_SEVERITIES.map((s) => ({ corruption, severity: s })));
}

function fmix32(h: number): number {
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  return (h ^ (h >>> 16)) >>> 0;
}

function fnv1a(s: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 0x01000193);
  return h >>> 0;
}

/** The seed of one example of one domain: a hash of (stream seed, corruption, severity, index). */
export function exampleSeed(seed: number, domain: StreamDomain, index: number): number {
  let h = fmix32(checkSeed(seed) ^ 0x9e3779b9);
  for (const v of [fnv1a(domain.corruption), domain.severity, index]) h = fmix32((Math.imul(h, 0x01000193) ^ v) >>> 0);
  return h;
}

/** Planar pixels [C, H, W] in [0, 1] of decoded bytes (height x width x channels). */
export function rawToPlanar(img: RawImage): { data: Float32Array; shape: [number, number, number] } {
  const { width: W, height: H, channels: C } = img;
  const n = W * H;
  const data = new Float32Array(C * n);
  for (let i = 0; i < n; i++) for (let k = 0; k < C; k++) data[k * n + i] = img.data[i * C + k]! / 255;
  return { data, shape: [C, H, W] };
}

/** Planar pixels in [0, 1] back to bytes, rounded (corrupted datasets such as CIFAR10-C are stored as bytes). */
export function planarToRaw(data: Float32Array, shape: readonly [number, number, number]): RawImage {
  const [C, H, W] = shape;
  if (C !== 1 && C !== 3) throw new AdaptkitError(`shape [${shape.join(', ')}]: images are grey (1) or RGB (3)`);
  const n = H * W;
  const out = new Uint8Array(C * n);
  for (let i = 0; i < n; i++) for (let k = 0; k < C; k++) out[i * C + k] = Math.round(Math.min(1, Math.max(0, data[k * n + i]!)) * 255);
  return { width: W, height: H, channels: C, data: out };
}

export interface StreamSegment<T> {
  /** Round, from 0. */
  readonly round: number;
  /** The domain's place in a round, from 0. */
  readonly position: number;
  /** round · domains per round + position. */
  readonly step: number;
  readonly corruption: string;
  readonly severity: number;
  readonly count: number;
  item(i: number): T;
  items(): T[];
}

export interface StreamBatch<T> {
  readonly round: number;
  readonly position: number;
  readonly step: number;
  readonly corruption: string;
  readonly severity: number;
  /** Index of the batch's first example within its domain. */
  readonly start: number;
  readonly items: T[];
}

/** What a stream is, for the JSON output of a benchmark. */
export interface StreamManifest {
  kind: StreamKind;
  preset: StreamPreset | 'custom';
  source: string;
  seed: number;
  rounds: number;
  examples_per_domain: number;
  domains_per_round: number;
  examples_per_round: number;
  total_examples: number;
  order: string;
  domains: { position: number; corruption: string; severity: number; parameters: CorruptionParameters }[];
}

export interface StreamOptions {
  /** A preset (default `continual`) or the domains of one round in order. */
  domains?: StreamPreset | readonly StreamDomain[];
  /** The severity of the continual preset (default 5). */
  severity?: number;
  rounds?: number;
  seed?: number;
}

function positiveInt(v: unknown, what: string, max: number): number {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 1 || v > max) throw new AdaptkitError(`${what} must be an integer from 1 to ${max}, got ${String(v)}`);
  return v;
}

function resolveDomains(kind: StreamKind, o: StreamOptions): { preset: StreamPreset | 'custom'; domains: StreamDomain[] } {
  const d = o.domains ?? 'continual';
  if (typeof d === 'string') {
    if (o.severity !== undefined && d !== 'continual') throw new AdaptkitError(`severity sets the continual preset's severity; the ${d} preset has its own severities`);
    return { preset: d as StreamPreset, domains: presetDomains(kind, d as StreamPreset, o.severity ?? DEFAULT_SEVERITY) };
  }
  if (o.severity !== undefined) throw new AdaptkitError('severity sets the continual preset\'s severity; a list of domains gives each its own');
  if (!Array.isArray(d) || d.length === 0) throw new AdaptkitError(`domains must be ${STREAM_PRESETS.join(' or ')} or a non-empty list of { corruption, severity }`);
  const known = kind === 'image' ? isImageCorruption : isTextCorruption;
  const domains = d.map((x: StreamDomain, i) => {
    const c = (x as Partial<StreamDomain> | null)?.corruption;
    if (typeof c !== 'string' || !known(c)) throw new AdaptkitError(`domains[${i}].corruption must be one of ${CORRUPTIONS[kind].join(', ')} for ${kind}s, got ${JSON.stringify(c)}`);
    return { corruption: c, severity: checkSeverity(x.severity, `domains[${i}].severity`) };
  });
  return { preset: 'custom', domains };
}

/** Stream state common to image and text streams; `corrupt` makes example i of a domain from its seed. */
export class CorruptedStream<T> {
  readonly kind: StreamKind;
  readonly preset: StreamPreset | 'custom';
  readonly domains: readonly StreamDomain[];
  readonly rounds: number;
  readonly seed: number;
  /** Examples per domain. */
  readonly count: number;
  readonly source: string;
  private readonly corrupt: (domain: StreamDomain, i: number, seed: number) => T;

  constructor(kind: StreamKind, count: number, source: string, o: StreamOptions, corrupt: (domain: StreamDomain, i: number, seed: number) => T) {
    const { preset, domains } = resolveDomains(kind, o);
    this.kind = kind;
    this.preset = preset;
    this.domains = domains;
    this.rounds = positiveInt(o.rounds ?? DEFAULT_ROUNDS, 'rounds', 1e6);
    this.seed = checkSeed(o.seed ?? 0);
    this.count = count;
    this.source = source;
    this.corrupt = corrupt;
  }

  /** Segments (one domain of one round) in the stream. */
  get length(): number {
    return this.rounds * this.domains.length;
  }

  segment(step: number): StreamSegment<T> {
    if (!Number.isInteger(step) || step < 0 || step >= this.length) throw new AdaptkitError(`step must be an integer from 0 to ${this.length - 1} (${this.rounds} rounds of ${this.domains.length} domains), got ${step}`);
    const position = step % this.domains.length;
    const domain = this.domains[position]!;
    const item = (i: number): T => {
      if (!Number.isInteger(i) || i < 0 || i >= this.count) throw new AdaptkitError(`example index must be an integer from 0 to ${this.count - 1}, got ${i}`);
      return this.corrupt(domain, i, exampleSeed(this.seed, domain, i));
    };
    return {
      round: Math.floor(step / this.domains.length), position, step, corruption: domain.corruption, severity: domain.severity, count: this.count,
      item, items: () => Array.from({ length: this.count }, (_, i) => item(i)),
    };
  }

  *segments(): Generator<StreamSegment<T>> {
    for (let s = 0; s < this.length; s++) yield this.segment(s);
  }

  /** The stream in batches of up to `size` examples; a batch never spans two domains. */
  *batches(size: number): Generator<StreamBatch<T>> {
    positiveInt(size, 'batch size', 1e9);
    for (const seg of this.segments()) {
      for (let start = 0; start < seg.count; start += size) {
        const items = Array.from({ length: Math.min(size, seg.count - start) }, (_, i) => seg.item(start + i));
        yield { round: seg.round, position: seg.position, step: seg.step, corruption: seg.corruption, severity: seg.severity, start, items };
      }
    }
  }

  describe(): StreamManifest {
    const perRound = this.count * this.domains.length;
    return {
      kind: this.kind, preset: this.preset, source: this.source, seed: this.seed, rounds: this.rounds,
      examples_per_domain: this.count, domains_per_round: this.domains.length, examples_per_round: perRound, total_examples: perRound * this.rounds,
      order: 'the domains in the order listed, each one\'s examples in source order; the same order and bytes every round',
      domains: this.domains.map((d, position) => ({ position, ...d, parameters: corruptionParameters(d.corruption, d.severity) })),
    };
  }
}

export type ImageItem = ReturnType<ImageSource['item']>;

export interface ImageStreamOptions extends StreamOptions {
  /** The clean images, e.g. openImageSource('mnist:heldout'). */
  examples: ImageSource;
  /** Items [start, end) of the source (default: all). */
  range?: readonly [number, number];
}

/** Corrupted images: each item as its source gives it, the image corrupted and stored as bytes again. */
export class ImageStream extends CorruptedStream<ImageItem> {
  private readonly base: ImageSource;

  constructor(base: ImageSource, start: number, count: number, o: StreamOptions) {
    super('image', count, `${base.name}[${start}:${start + count}]`, o, (domain, i, seed) => {
      const clean = base.item(start + i);
      const { data, shape } = rawToPlanar(clean.image);
      const out = corruptImage(domain.corruption, data, shape, domain.severity, seed);
      return { image: planarToRaw(out, shape), label: clean.label, source: `${clean.source} ${domain.corruption}/${domain.severity}` };
    });
    this.base = base;
  }

  /** One segment as an image source (its labels and normalization those of the clean one), for imageExamples. */
  segmentSource(step: number): ImageSource {
    const seg = this.segment(step);
    return {
      name: `${this.source} ${seg.corruption}/${seg.severity}`, labels: this.base.labels, count: seg.count,
      defaultMean: this.base.defaultMean, defaultStd: this.base.defaultStd, item: seg.item,
    };
  }
}

export function imageStream(o: ImageStreamOptions): ImageStream {
  const src = o.examples as ImageSource | undefined;
  if (!src || typeof src.item !== 'function' || !Number.isInteger(src.count)) throw new AdaptkitError('examples must be an image source (openImageSource)');
  if (o.range !== undefined && (!Array.isArray(o.range) || o.range.length !== 2)) throw new AdaptkitError(`range must be [start, end), got ${JSON.stringify(o.range)}`);
  const [start, end] = o.range ?? [0, src.count];
  if (!Number.isInteger(start) || !Number.isInteger(end) || start < 0 || start >= end || end > src.count) {
    throw new AdaptkitError(`range must be [start, end) with 0 <= start < end <= ${src.count} (the images of ${src.name}), got [${String(o.range)}]`);
  }
  return new ImageStream(src, start, end - start, o);
}

export interface TextStreamOptions<T extends { text: string }> extends StreamOptions {
  /** The clean examples (e.g. label records); only `text` is corrupted, every other field is kept. */
  examples: readonly T[];
  /** What the examples are, for the manifest. */
  name?: string;
}

export function textStream<T extends { text: string }>(o: TextStreamOptions<T>): CorruptedStream<T> {
  const ex = o.examples;
  if (!Array.isArray(ex) || ex.length === 0) throw new AdaptkitError('examples must be a non-empty list of examples with a text field');
  return new CorruptedStream<T>('text', ex.length, o.name ?? `${ex.length} texts`, o, (domain, i, seed) => {
    const e = ex[i]!;
    if (typeof e?.text !== 'string') throw new AdaptkitError(`examples[${i}].text must be a string, got ${e === null || e === undefined ? String(e) : typeof e.text}`);
    return { ...e, text: corruptText(domain.corruption, e.text, domain.severity, seed) };
  });
}
