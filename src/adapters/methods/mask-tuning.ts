/**
 * Regularized mask tuning (R-MT; "Regularized Mask Tuning: Uncovering Hidden Knowledge in
 * Pre-trained Vision-Language Models", ICCV 2023). Nothing is added to the model: each targeted
 * linear layer keeps its frozen weight W and learns which of its entries to switch off.
 *   scores S     real-valued, the shape and storage layout of W, all starting at mask_scale
 *   mask M       1[S > mask_threshold]: strictly above, as the authors' Binarizer (≤ τ gives 0), so
 *                a score exactly at τ removes its weight; 1 keeps, 0 removes. With the defaults
 *                (S = 1e-2 > τ = 5e-3) a new adapter keeps every weight: the model is unchanged.
 *   forward      the layer computes x (W ⊙ M)ᵀ + b, written as a correction of the base output,
 *                y' = y + x (W ⊙ (M − 1))ᵀ, so that it stacks with other adapters on the same layer
 *                (their changes add) and is exactly y while M is all ones
 *   backward     straight-through: ∂L/∂S := ∂L/∂M = (∂L/∂W_eff) ⊙ W, whether or not the entry is
 *                masked (M is formed as sg(1[S > τ]) + S − sg(S)); W never gets a gradient
 * W is never written: merging gives W ⊙ M as a new weight, and unmerging puts the original back.
 *
 * Training objective (as the authors' trainer, code/trainers/masktuning.py):
 *   L_a = CE + mask_loss_weight · Σ_targets ‖S‖₂     (the L2 norm of each score tensor, not squared;
 *                                                   it pulls scores toward τ, i.e. toward masking)
 *   gradient dropout regularization (GDR), when `gdr` is on and only inside the training scope:
 *     teacher t  = logits of the original model on the same batch, α-mixed with the student's
 *                  logits s: t' = α·t + (1 − α)·s (gdr_alpha, default 1: the original model alone)
 *     L_b        = mean over the loss positions of −Σ_v softmax(t'/T)·log softmax(s/T) · T²
 *     g_a, g_b   = ∂L_a/∂S and ∂L_b/∂S (two backward passes over one student forward)
 *     per score  P = (sign(g_a)·(g_a + g_b) / (|g_a| + |g_b| + 1e-8) + 1) / 2, U ~ U[0, 1),
 *                g = ((1 − λ) + λ·1[P > U]) · g_a          (λ = gdr_lambda)
 *   P is ~1 where the two gradients agree in sign (the task step also keeps the model near the
 *   original), 1/2 where g_b cancels g_a, and → 0 where g_b opposes and dominates it; a dropped
 *   gradient is zeroed (λ = 1) or scaled by 1 − λ. g_b only gates g_a, it is never added. U comes
 *   from the default generator, which training seeds and checkpoints, so a resumed run draws the
 *   same U; one U is drawn per score in adapter order, whatever its gradient.
 *   The teacher pass runs the model with this adapter's own deltas passing the base output through
 *   (a switch shared by this adapter's deltas only, set for that one forward): an adapter cannot
 *   deactivate itself on its AdapterModel, and this keeps every other module as it is.
 *   The step's backward then sees a surrogate whose value is L_a and whose gradient is the gated g
 *   for every score and g_a for every other trainable parameter of the model (a classifier head
 *   in modules_to_save, say): Σ sum((p − sg(p)) ⊙ g), which is exactly zero.
 *
 * Config, peft_type "MASK_TUNING" (defaults: the authors' configs/trainers/MASK/vit_b16.yaml):
 *   target_modules    default: the attention projections q, k, v, o (the authors mask the image
 *                     encoder's attention weights; on GPT-2's fused c_attn, all of it)
 *   mask_scale        initial score, 1e-2 (INIT "1s", SCALE)
 *   mask_threshold    τ, 5e-3; mask_scale must be above it so training starts from the original model
 *   mask_loss_weight  weight of Σ‖S‖₂, 1e-4 (MASK_LOSS True, LOSS_WEIGHT); 0 turns it off
 *   gdr               true: gradient dropout against the KL to the original model
 *   gdr_lambda        λ, 1 (the authors' script passes 1.0; their README suggests 0.3 for most data sets)
 *   gdr_temperature   T, 1 (GDR_T)
 *   gdr_alpha         α, 1 (FUSE_ALPHA)
 * Preset `mask`, reading --targets, --gdr-lambda (0 turns GDR off) and --mask-loss-weight.
 *
 * Saving. adapter_model.safetensors holds, per target, the mask as float32 0/1 under
 * `base_model.model.<path>.weight_mask`, the shape and layout of the base weight (the name
 * torch.nn.utils.prune gives a pruning mask: the weight in use is weight * weight_mask). Loading
 * sets the scores to mask_scale where the mask is 1 and to 2τ − mask_scale where it is 0 (0 with
 * the defaults): the same masks, so the same outputs, with every score as far from τ as a fresh
 * one. Training checkpoints keep the real-valued scores (checkpointState), so resume is exact.
 * adapter_model.masks holds the same masks at 1 bit per weight. Layout, little-endian:
 *   header   8 bytes magic "AKBITMSK", u32 version (1), u32 tensor count
 *   tensor   u32 name length L, L bytes UTF-8 name (its key in adapter_model.safetensors),
 *            u32 ndim, ndim × u32 dims (the base weight's shape as stored),
 *            ceil(n/8) bytes of mask bits (n = product of dims): element i (row-major) sits in
 *            byte floor(i/8) at bit 7 − (i mod 8), most significant bit first (numpy.packbits'
 *            default order, and the order of the authors' saved masks); 1 keeps the weight, 0
 *            removes it; the unused low bits of the last byte are zero
 * Size = 16 + Σ_tensors (8 + L + 4·ndim + ceil(n/8)) bytes. `readMaskFile` decodes it with errors
 * that name the file and the field; `MaskTuningAdapter.loadMaskFile` puts its masks into an
 * adapter, checking every name and shape against the model.
 */
import { entryHeaderBytes, writeEntryHeader } from '../packed-file.js';
import { readFileSync } from 'node:fs';
import {
  AdaptkitError, type Rng, type Tensor, add, addmm, backward, clone, compare, defaultRng, detach, fromBuffer, full, inference,
  isTraining, logSoftmax, mul, noGrad, parameter, softmax, sqrt, sub, sum, transpose, zeros,
} from '../../tensor/index.js';
import { Linear, Module, type AdapterDescriptor, type TargetSpec } from '../../nn/index.js';
import { baseJson, fail, optBool, optNumber, parseBase } from '../config.js';
import { registerMethod } from '../registry.js';
import { loadInto } from '../state.js';
import { peftKey } from '../files.js';
import { TARGETS, targetsOption } from '../options.js';
import { roleTargets } from '../targets.js';
import type {
  AdapterInstance, AdapterMethod, BaseAdapterConfig, CreateContext, LayerDelta, MethodOption, MethodPreset, PresetOptions,
  RawAdapterConfig, TargetInfo,
} from '../types.js';

/** The packed masks' file name next to adapter_model.safetensors. */
export const MASK_FILE = 'adapter_model.masks';
/** The parameter name of a target's mask in adapter_model.safetensors. */
export const MASK_KEY = 'weight_mask';
const MAGIC = 'AKBITMSK';
const VERSION = 1;
const HEADER_BYTES = 16;
const GDR_EPS = 1e-8;

// ---------- config ----------

export interface MaskTuningConfig extends BaseAdapterConfig {
  mask_scale: number;
  mask_threshold: number;
  mask_loss_weight: number;
  gdr: boolean;
  gdr_lambda: number;
  gdr_temperature: number;
  gdr_alpha: number;
}

export function parseMaskTuningConfig(raw: RawAdapterConfig, source: string): MaskTuningConfig {
  const base = parseBase(raw, 'MASK_TUNING', source);
  const threshold = optNumber(raw, 'mask_threshold', 5e-3, source);
  const scale = optNumber(raw, 'mask_scale', 1e-2, source);
  // compared as the float32 values the forward compares
  if (!(Math.fround(scale) > Math.fround(threshold))) {
    fail(source, 'mask_scale', `must be above "mask_threshold" (${threshold}) so that every weight starts kept, got ${scale}`);
  }
  const lambda = optNumber(raw, 'gdr_lambda', 1, source, 0);
  if (lambda > 1) fail(source, 'gdr_lambda', `must be at most 1, got ${lambda}`);
  const temperature = optNumber(raw, 'gdr_temperature', 1, source);
  if (!(temperature > 0)) fail(source, 'gdr_temperature', `must be above 0, got ${temperature}`);
  const alpha = optNumber(raw, 'gdr_alpha', 1, source, 0);
  if (alpha > 1) fail(source, 'gdr_alpha', `must be at most 1, got ${alpha}`);
  return {
    ...base,
    mask_scale: scale,
    mask_threshold: threshold,
    mask_loss_weight: optNumber(raw, 'mask_loss_weight', 1e-4, source, 0),
    gdr: optBool(raw, 'gdr', true, source),
    gdr_lambda: lambda,
    gdr_temperature: temperature,
    gdr_alpha: alpha,
  };
}

function defaultTargets(model: AdapterDescriptor): TargetSpec | null {
  return roleTargets(model, ['attn.q', 'attn.k', 'attn.v', 'attn.o']);
}

// ---------- the delta ----------

/** Which weights this adapter's deltas use; `original` is on only during the objective's teacher forward. */
interface PassSwitch {
  original: boolean;
}

/** One masked linear layer: y + x (W ⊙ (M − 1))ᵀ with M = 1[S > τ] and a straight-through gradient to S. */
export class MaskDelta extends Module implements LayerDelta {
  readonly #weight: Tensor;
  readonly #pass: PassSwitch;

  constructor(
    readonly adapterName: string,
    public mask_scores: Tensor,
    /** The frozen weight, as stored (kept out of the module tree: it is not this delta's parameter). */
    weight: Tensor,
    readonly fanInFanOut: boolean,
    readonly threshold: number,
    pass: PassSwitch,
  ) {
    super();
    this.#weight = weight;
    this.#pass = pass;
  }

  /** The frozen weight this mask applies to, as stored. */
  get weight(): Tensor {
    return this.#weight;
  }

  /** The binary mask, 1 keeps and 0 removes (no autodiff history). */
  mask(): Tensor {
    return compare('gt', detach(this.mask_scores), this.threshold);
  }

  /** The mask's value with the identity as its gradient to the scores. */
  straightThroughMask(): Tensor {
    const s = this.mask_scores;
    return add(this.mask(), sub(s, detach(s)));
  }

  apply(x: Tensor, y: Tensor): Tensor {
    if (this.#pass.original) return y;
    const removed = mul(this.#weight, add(this.straightThroughMask(), -1));
    return addmm(y, x, this.fanInFanOut ? removed : transpose(removed));
  }

  /** weight + W ⊙ (M − 1): exactly W ⊙ M on the base weight, and additive on a weight other adapters changed. */
  mergeWeight(weight: Tensor): Tensor {
    return noGrad(() => clone(add(weight, mul(this.#weight, add(this.mask(), -1)))));
  }

  mergeBias(bias: Tensor | null): Tensor | null {
    return bias;
  }
}

// ---------- gradient dropout ----------

/**
 * GDR's rule, element by element: P = (sign(a)·(a + b)/(|a| + |b| + 1e-8) + 1)/2, U ~ U[0, 1)
 * from `rng` (one draw per element, in order), result ((1 − λ) + λ·1[P > U])·a. `a` is the task
 * gradient, `b` the gradient of the KL to the original model (null: none reached these scores).
 */
export function gradientDropout(a: ArrayLike<number>, b: ArrayLike<number> | null, lambda: number, rng: Rng): Float32Array {
  if (b && b.length !== a.length) throw new AdaptkitError(`gradientDropout: ${a.length} task gradients but ${b.length} KL gradients`);
  const out = new Float32Array(a.length);
  for (let i = 0; i < a.length; i++) {
    const ga = a[i]!;
    const gb = b ? b[i]! : 0;
    const p = (Math.sign(ga) * (ga + gb) / (Math.abs(ga) + Math.abs(gb) + GDR_EPS) + 1) / 2;
    const keep = p > rng.uniform();
    out[i] = keep ? ga : (1 - lambda) * ga;
  }
  return out;
}

/**
 * The authors' KLLoss on language-model logits: −Σ_v softmax(t'/T)·log softmax(s/T)·T², with
 * t' = α·t + (1 − α)·s, averaged over the positions where `weights` is 1 (all positions without it).
 */
export function distillationLoss(student: Tensor, teacher: Tensor, temperature: number, alpha: number, weights?: Tensor): Tensor {
  const mixed = alpha === 1 ? teacher : add(mul(teacher, alpha), mul(student, 1 - alpha));
  const last = student.ndim - 1;
  const pt = softmax(mul(mixed, 1 / temperature));
  const ls = logSoftmax(mul(student, 1 / temperature));
  const perPosition = sum(mul(pt, ls), last);
  const t2 = temperature * temperature;
  if (weights) {
    const n = Math.max(1, (weights.toArray() as Float32Array).reduce((s, v) => s + v, 0));
    return mul(sum(mul(perPosition, weights)), -t2 / n);
  }
  return mul(sum(perPosition), -t2 / perPosition.size);
}

/**
 * Gradients of `root` for these leaves, leaving their `.grad` as it was (backward accumulates
 * into every leaf it reaches, and a step may already hold gradients of earlier micro-batches).
 * The graph stays usable for another backward.
 */
function gradientsOf(root: Tensor, leaves: readonly Tensor[]): (Tensor | null)[] {
  const held = leaves.map((p) => p.grad);
  for (const p of leaves) p.grad = null;
  try {
    backward(root);
    return leaves.map((p) => p.grad);
  } finally {
    leaves.forEach((p, i) => (p.grad = held[i]!));
  }
}

/** A loss with the value of `value` whose backward gives each parameter exactly its given gradient. */
function withGradients(value: Tensor, grads: readonly [Tensor, Tensor][]): Tensor {
  let out = detach(value);
  for (const [p, g] of grads) out = add(out, sum(mul(sub(p, detach(p)), g)));
  return out;
}

type ObjectiveStep = Parameters<NonNullable<AdapterInstance['objective']>>[0];

// ---------- the packed file ----------

export interface PackedMask {
  /** Its key in adapter_model.safetensors. */
  name: string;
  shape: readonly number[];
  /** One entry per weight, row-major: 1 keeps, 0 removes. */
  bits: Uint8Array;
}

function numel(shape: readonly number[]): number {
  return shape.reduce((p, d) => p * d, 1);
}

/** The packed file's bytes for these masks (layout in the header comment). */
export function packMasks(masks: readonly PackedMask[]): Uint8Array {
  const names = masks.map((m) => Buffer.from(m.name, 'utf8'));
  let size = HEADER_BYTES;
  masks.forEach((m, i) => (size += entryHeaderBytes(names[i]!, m.shape) + Math.ceil(numel(m.shape) / 8)));
  const out = new Uint8Array(size);
  const dv = new DataView(out.buffer);
  out.set(Buffer.from(MAGIC, 'ascii'), 0);
  dv.setUint32(8, VERSION, true);
  dv.setUint32(12, masks.length, true);
  let o = HEADER_BYTES;
  masks.forEach((m, mi) => {
    const n = numel(m.shape);
    if (n !== m.bits.length) throw new AdaptkitError(`packMasks: "${m.name}" has shape [${m.shape.join(', ')}] but ${m.bits.length} mask entries`);
    o = writeEntryHeader(out, dv, o, names[mi]!, m.shape);
    for (let i = 0; i < n; i++) {
      const v = m.bits[i]!;
      if (v !== 0 && v !== 1) throw new AdaptkitError(`packMasks: "${m.name}" entry ${i} is ${v}; a mask holds 0 and 1`);
      if (v) out[o + (i >> 3)] |= 0x80 >> (i & 7);
    }
    o += Math.ceil(n / 8);
  });
  return out;
}

const MAX_NAME_BYTES = 4096;
const MAX_NDIM = 8;

/** Decode a packed mask file's bytes; errors name `source` and the field at fault. */
export function unpackMasks(bytes: Uint8Array, source: string): Map<string, PackedMask> {
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const need = (at: number, n: number, what: string) => {
    if (at + n > bytes.length) throw new AdaptkitError(`${source}: truncated: ${what} needs bytes ${at}..${at + n - 1}, the file has ${bytes.length} bytes`);
  };
  need(0, HEADER_BYTES, 'the header');
  const magic = Buffer.from(bytes.subarray(0, 8)).toString('latin1');
  if (magic !== MAGIC) throw new AdaptkitError(`${source}: bad magic ${JSON.stringify(magic)} (a packed mask file starts with "${MAGIC}")`);
  const version = dv.getUint32(8, true);
  if (version !== VERSION) throw new AdaptkitError(`${source}: "version" is ${version}; this reader knows version ${VERSION}`);
  const count = dv.getUint32(12, true);
  const out = new Map<string, PackedMask>();
  const utf8 = new TextDecoder('utf-8', { fatal: true });
  let o = HEADER_BYTES;
  for (let ti = 0; ti < count; ti++) {
    const label = `tensor ${ti} of ${count}`;
    need(o, 4, `${label} (name length)`);
    const L = dv.getUint32(o, true);
    if (L === 0 || L > MAX_NAME_BYTES) throw new AdaptkitError(`${source}: ${label}: "name length" is ${L}; must be 1..${MAX_NAME_BYTES}`);
    need(o + 4, L, `${label} (name)`);
    let name: string;
    try {
      name = utf8.decode(bytes.subarray(o + 4, o + 4 + L));
    } catch {
      throw new AdaptkitError(`${source}: ${label}: "name" is not valid UTF-8`);
    }
    o += 4 + L;
    const where = `${source}: tensor "${name.slice(0, 200)}"`;
    if (out.has(name)) throw new AdaptkitError(`${where}: the name appears twice`);
    need(o, 4, `tensor "${name}" (ndim)`);
    const ndim = dv.getUint32(o, true);
    if (ndim === 0 || ndim > MAX_NDIM) throw new AdaptkitError(`${where}: "ndim" is ${ndim}; must be 1..${MAX_NDIM}`);
    need(o + 4, 4 * ndim, `tensor "${name}" (shape)`);
    const shape: number[] = [];
    for (let d = 0; d < ndim; d++) shape.push(dv.getUint32(o + 4 + 4 * d, true));
    o += 4 + 4 * ndim;
    const n = numel(shape);
    const nb = Math.ceil(n / 8);
    if (!(o + nb <= bytes.length)) {
      throw new AdaptkitError(`${where}: "shape" [${shape.join(', ')}] holds ${n} mask bits, ${nb} bytes, but only ${bytes.length - o} bytes remain (truncated, or the shape disagrees with the data)`);
    }
    const used = n % 8;
    if (used !== 0 && (bytes[o + nb - 1]! & (0xff >> used)) !== 0) {
      throw new AdaptkitError(`${where}: the unused bits of the last mask byte are not zero: the data holds more than the ${n} bits of "shape" [${shape.join(', ')}]`);
    }
    const bits = new Uint8Array(n);
    for (let i = 0; i < n; i++) bits[i] = (bytes[o + (i >> 3)]! >> (7 - (i & 7))) & 1;
    o += nb;
    out.set(name, { name, shape, bits });
  }
  if (o !== bytes.length) throw new AdaptkitError(`${source}: ${bytes.length - o} bytes after the last of ${count} tensors: the sizes disagree with the shapes (or "tensor count" is wrong)`);
  return out;
}

/** Read a packed mask file (adapter_model.masks). */
export function readMaskFile(path: string): Map<string, PackedMask> {
  let bytes: Buffer;
  try {
    bytes = readFileSync(path);
  } catch (e) {
    throw new AdaptkitError(`${path}: cannot read the packed mask file (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
  }
  return unpackMasks(bytes, path);
}

// ---------- the adapter ----------

export class MaskTuningAdapter implements AdapterInstance {
  readonly method = MASK_TUNING;
  readonly deltas = new Map<string, MaskDelta>();
  readonly objective?: (step: ObjectiveStep) => Tensor;
  readonly #pass: PassSwitch;
  readonly #model: Module;

  constructor(
    readonly name: string,
    readonly config: MaskTuningConfig,
    /** The resolved default targets, written into the saved config when it names none. */
    private readonly targetsForSave: TargetSpec | null,
    model: Module,
    pass: PassSwitch,
  ) {
    this.#model = model;
    this.#pass = pass;
    // with neither term a step is the plain single pass, so no objective is offered then
    if (config.gdr || config.mask_loss_weight > 0) this.objective = (step) => this.step(step);
  }

  parameters(): Tensor[] {
    return [...this.deltas.values()].map((d) => d.mask_scores);
  }

  /** The binary masks under their saved keys (float 0/1, the base weights' shapes). */
  stateDict(): Map<string, Tensor> {
    return noGrad(() => new Map([...this.deltas].map(([path, d]) => [peftKey(path, MASK_KEY), d.mask()])));
  }

  /** Saved masks as scores: mask_scale where kept, 2τ − mask_scale where removed. */
  loadStateDict(tensors: Map<string, Tensor>, source: string): void {
    const into = new Map<string, Tensor>();
    for (const [path, d] of this.deltas) into.set(peftKey(path, MASK_KEY), zeros(d.mask_scores.shape));
    loadInto(into, tensors, source);
    const masks = new Map<string, Uint8Array>();
    for (const [key, t] of into) {
      const v = t.toArray() as Float32Array;
      const bits = new Uint8Array(v.length);
      for (let i = 0; i < v.length; i++) {
        if (v[i] !== 0 && v[i] !== 1) throw new AdaptkitError(`${source}: "${key}" holds ${v[i]} at index ${i}; a weight mask holds only 0 (removed) and 1 (kept)`);
        bits[i] = v[i]!;
      }
      masks.set(key, bits);
      t.dispose();
    }
    this.setMasks(masks);
  }

  /** Put these masks (by saved key, all of this adapter's) into the scores. */
  private setMasks(masks: Map<string, Uint8Array>): void {
    const keep = Math.fround(this.config.mask_scale);
    const drop = Math.fround(2 * this.config.mask_threshold - this.config.mask_scale);
    noGrad(() => {
      for (const [path, d] of this.deltas) {
        const bits = masks.get(peftKey(path, MASK_KEY))!;
        const s = d.mask_scores;
        const data = (s.storage.data as Float32Array).subarray(s.offset, s.offset + s.size);
        for (let i = 0; i < bits.length; i++) data[i] = bits[i] ? keep : drop;
      }
    });
  }

  /** Masks from a packed file's contents: every target once, with the base weight's shape. */
  loadPackedMasks(packed: Map<string, PackedMask>, source: string): void {
    const expected = new Map([...this.deltas].map(([path, d]) => [peftKey(path, MASK_KEY), d.mask_scores.shape] as const));
    const missing = [...expected.keys()].filter((k) => !packed.has(k));
    const unexpected = [...packed.keys()].filter((k) => !expected.has(k));
    if (missing.length || unexpected.length) {
      const show = (l: string[]) => (l.length > 8 ? `${l.slice(0, 8).join(', ')} and ${l.length - 8} more` : l.join(', '));
      throw new AdaptkitError(
        `${source}: the masks do not match the adapter's targets` +
        (missing.length ? `; missing: ${show(missing)}` : '') + (unexpected.length ? `; unexpected: ${show(unexpected)}` : ''),
      );
    }
    for (const [key, shape] of expected) {
      const m = packed.get(key)!;
      if (m.shape.length !== shape.length || m.shape.some((d, i) => d !== shape[i])) {
        throw new AdaptkitError(`${source}: tensor "${key}": "shape" is [${m.shape.join(', ')}], the model's weight there is [${shape.join(', ')}]`);
      }
    }
    this.setMasks(new Map([...packed].map(([k, m]) => [k, m.bits])));
  }

  /** Load the masks of a packed file (adapter_model.masks) into this adapter. */
  loadMaskFile(path: string): void {
    this.loadPackedMasks(readMaskFile(path), path);
  }

  /** The fraction of the targeted weights the masks keep. */
  density(): number {
    let kept = 0;
    let total = 0;
    for (const m of this.stateDict().values()) {
      for (const v of m.toArray()) kept += v;
      total += m.size;
      m.dispose();
    }
    return total > 0 ? kept / total : 1;
  }

  configJson(): RawAdapterConfig {
    const c = this.config;
    return {
      ...baseJson(c),
      target_modules: c.target_modules ?? this.targetsForSave,
      mask_scale: c.mask_scale,
      mask_threshold: c.mask_threshold,
      mask_loss_weight: c.mask_loss_weight,
      gdr: c.gdr,
      gdr_lambda: c.gdr_lambda,
      gdr_temperature: c.gdr_temperature,
      gdr_alpha: c.gdr_alpha,
    };
  }

  extraFiles(): Map<string, Uint8Array> {
    const masks = [...this.stateDict()].map(([name, t]) => {
      const bits = Uint8Array.from(t.toArray() as Float32Array);
      const packed = { name, shape: t.shape, bits };
      t.dispose();
      return packed;
    });
    return new Map([[MASK_FILE, packMasks(masks)]]);
  }

  checkpointState(): Map<string, Tensor> {
    return new Map([...this.deltas].map(([path, d]) => [peftKey(path, 'mask_scores'), d.mask_scores]));
  }

  loadCheckpointState(tensors: Map<string, Tensor>, source: string): void {
    loadInto(this.checkpointState(), tensors, source);
  }

  /** The sum over targets of each score tensor's L2 norm. */
  private scoreNorm(): Tensor {
    let total: Tensor | null = null;
    for (const d of this.deltas.values()) {
      const n = sqrt(sum(mul(d.mask_scores, d.mask_scores)));
      total = total ? add(total, n) : n;
    }
    return total!;
  }

  /** The model's logits on the step's batch with every mask of this adapter off (no autodiff, no dropout). */
  private originalLogits(step: ObjectiveStep): Tensor {
    this.#pass.original = true;
    try {
      return inference(() => noGrad(() => step.logits()));
    } finally {
      this.#pass.original = false;
    }
  }

  private step(step: ObjectiveStep): Tensor {
    const c = this.config;
    const logits = step.logits();
    const ce = step.loss(logits);
    const lossA = c.mask_loss_weight > 0 ? add(ce, mul(this.scoreNorm(), c.mask_loss_weight)) : ce;
    if (!c.gdr || !isTraining()) return lossA;
    const lossB = distillationLoss(logits, this.originalLogits(step), c.gdr_temperature, c.gdr_alpha, step.weights);
    const scores = this.parameters();
    const others = this.#model.trainableParameters().filter((p) => !scores.includes(p));
    const leaves = [...scores, ...others];
    const gb = gradientsOf(lossB, leaves);
    for (const g of gb.slice(scores.length)) g?.dispose();
    const ga = gradientsOf(lossA, leaves);
    const grads: [Tensor, Tensor][] = [];
    scores.forEach((p, i) => {
      const a = ga[i];
      const b = gb[i];
      if (a) grads.push([p, fromBuffer(gradientDropout(a.toArray(), b ? b.toArray() : null, c.gdr_lambda, defaultRng), p.shape)]);
      a?.dispose();
      b?.dispose();
    });
    others.forEach((p, j) => {
      const g = ga[scores.length + j];
      if (!g) return;
      // freed with the step's other tensors once its backward has used it
      g.kept = false;
      grads.push([p, g]);
    });
    return withGradients(lossA, grads);
  }
}

function create(name: string, cfg: BaseAdapterConfig, targets: TargetInfo[], ctx: CreateContext): AdapterInstance {
  const c = cfg as MaskTuningConfig;
  const pass: PassSwitch = { original: false };
  const inst = new MaskTuningAdapter(name, c, defaultTargets(ctx.descriptor), ctx.model, pass);
  for (const t of targets) {
    if (!(t.module instanceof Linear)) throw new AdaptkitError(`MASK_TUNING masks the weights of linear layers; "${t.path}" is a ${t.module.constructor.name}`);
    const w = t.module.weight;
    const scores = parameter(full(w.shape, c.mask_scale), `${t.path}.mask_scores`);
    inst.deltas.set(t.path, new MaskDelta(name, scores, w, t.module.fanInFanOut, c.mask_threshold, pass));
  }
  return inst;
}

const GDR_LAMBDA: MethodOption = {
  name: 'gdr-lambda', type: 'number', min: 0, max: 1,
  description: 'mask tuning: how much of a dropped gradient GDR removes (1: all, the default; 0 turns GDR off)',
};
const MASK_LOSS_WEIGHT: MethodOption = {
  name: 'mask-loss-weight', type: 'number', min: 0,
  description: 'mask tuning: weight of the L2 norm of the mask scores in the loss (default 1e-4)',
};

const PRESET: MethodPreset = {
  name: 'mask',
  description: 'regularized mask tuning (R-MT): learned binary masks over the frozen attention weights, with gradient dropout against the KL to the original model',
  config: (o: PresetOptions) => {
    const lambda = o['gdr-lambda'];
    const w = o['mask-loss-weight'];
    return {
      peft_type: 'MASK_TUNING',
      ...(typeof lambda === 'number' ? (lambda === 0 ? { gdr: false } : { gdr_lambda: lambda }) : {}),
      ...(typeof w === 'number' ? { mask_loss_weight: w } : {}),
      ...targetsOption(o, undefined),
    };
  },
};

export const MASK_TUNING: AdapterMethod = {
  peftType: 'MASK_TUNING',
  description: 'regularized mask tuning (R-MT): binary masks over frozen weights, straight-through training, gradient dropout regularization, 1-bit storage',
  kind: 'tuner',
  parseConfig: parseMaskTuningConfig,
  defaultTargets: (model) => defaultTargets(model),
  create,
  countParameters: (_cfg, targets) => targets.reduce((n, t) => n + (t.module instanceof Linear ? t.module.weight.size : 0), 0),
  presets: [PRESET],
  options: [TARGETS, GDR_LAMBDA, MASK_LOSS_WEIGHT],
  floatKeys: ['mask_scale', 'mask_threshold', 'mask_loss_weight', 'gdr_lambda', 'gdr_temperature', 'gdr_alpha'],
  // every weight starts kept, so a new adapter is the identity
  startsAsIdentity: true,
  straightThrough: true,
  mergeable: true,
  summary(cfg) {
    const c = cfg as MaskTuningConfig;
    return {
      mask_scale: c.mask_scale, mask_threshold: c.mask_threshold, mask_loss_weight: c.mask_loss_weight,
      gdr: c.gdr, gdr_lambda: c.gdr_lambda, gdr_temperature: c.gdr_temperature, gdr_alpha: c.gdr_alpha,
    };
  },
};

registerMethod(MASK_TUNING);
