/**
 * MixDA ("Mixture-of-Domain-Adapters: Decoupling and Injecting Domain Knowledge to Pre-trained
 * Language Models' Memories"): knowledge adapters beside the feed-forward output projection W2,
 * mixed with the original projection by a softmax gate, trained in two stages.
 *
 * At a down projection (input a = the feed-forward intermediate, d_ff wide; output y = W2 a):
 *   KA_i(a) = W_up,i GELU(W_down,i a + b_down,i) + b_up,i        (d_ff → m → d)
 *   g = softmax(G(a*))  over k + 1 entries, k = the knowledge adapters at this layer
 *   o = Σ_{i<k} g_i KA_i(a) + g_k · y                            (residual false, the reference)
 *   o = y + Σ_{i<k} g_i KA_i(a)                                   (residual true)
 * G is Dropout → Linear(d_ff, h) → [ReLU → Dropout → Linear(h, h)] × gate_depth → ReLU → Dropout
 * → Linear(h, k + 1); dropout runs only inside the training scope. The gate is per sequence: a*
 * is a at the last real position of each row (gate_position "last"). The authors read the last
 * position, which under right padding is a pad token; here the forward's attention mask (see
 * PaddingMask) picks the last position that is not padding, and a row with none in the chunk, or
 * a forward without a mask, uses the last position. With a KV cache the gate of each decoding step
 * reads that step's token, so generation does not repeat the gate a full forward of the same text
 * uses, and in a causal LM every position's output depends (through g) on the sequence's last
 * token: gate_position "token" gates each position from its own a instead, which keeps the model
 * causal and generation consistent with a full forward. Packed rows are gated as one sequence.
 * A "last" gate cannot train on padded batches under gradient checkpointing (an error says so):
 * a block's recomputation in backward runs after the forward has returned, without its mask.
 * With the task adapter (stage 2) a series bottleneck follows on every target:
 * o' = o + up(act(down(o))), as AdapterHub's Pfeiffer adapter after the feed-forward output.
 *
 * Stage 1 (preset `mixda`): one new knowledge adapter and its gate train on
 *   L = knowledge_weight · CE(domain rows) + preserve_weight · mean over adapted layers of
 *       MSE(o, y) over the real positions of the general-text rows,
 * the reference's 0.5 · knowledge loss + sample loss. Rows of task `preserve_task` are general
 * text and carry only the MSE term, the others only the CE term (null: every row carries both).
 * The MSE compares a layer's mixture with the base projection of the same input, so each layer
 * is held to the original function of what reaches it. The term reads each adapted layer's
 * output of the step's forward, which gradient checkpointing discards (an error says so).
 * Stage 2 (preset `mixda-task`): the knowledge adapters of stage-1 folders (`domain_adapters`)
 * load frozen (plain tensors: no gradient, no optimizer state), a fresh gate over them and the
 * original trains again, with a task adapter on every target, on the plain data loss.
 *
 * Config (peft_type "MIXDA"; neither PEFT nor AdapterHub has MixDA):
 *   target_modules        default: the model's down projections (role mlp.down).
 *   adapter_layers        layer indices that get knowledge adapters and a gate (default: the last
 *                         two target layers; the authors use 7 and 11 of 24). Stage 2 takes the
 *                         domain adapters' layers.
 *   reduction_factor      m = floor(d_ff / this), default 16 (the authors' adapter_down_scale);
 *   bottleneck_size       or m itself. Stage 2 takes both (and residual) from the first domain
 *                         adapter.
 *   trainable_domains     new knowledge adapters to train (default 1).
 *   domain_adapters       MIXDA folders whose knowledge adapters load frozen, in this order
 *                         (read when the adapter is created).
 *   frozen_domains        how many frozen knowledge adapters the adapter file holds: a saved
 *                         adapter writes this (and no folders), so it reloads from its own file.
 *   gate_hidden           h, default min(768, hidden size): the authors' 768 for a 1024-wide
 *                         model; a 64-wide model gets a 64-wide gate.
 *   gate_depth            hidden-to-hidden gate layers, default 2 (as the authors').
 *   gate_dropout          default 0.2; gate_position "last" (default) or "token".
 *   residual              false (default): the authors' convex mixture, which at creation scales
 *                         y by g_k (about 1/(k+1)), so a new adapter changes the model; true: the
 *                         identity-preserving form above, for which a new adapter is the identity.
 *   task_adapter          add the stage-2 task adapter (default false), reduction factor
 *                         task_reduction_factor (16) and task_non_linearity ("silu", the swish of
 *                         the authors' stage-2 script).
 *   knowledge_weight      0.5, preserve_weight 1, preserve_task null: the objective above; with
 *                         knowledge_weight 1, preserve_weight 0 and preserve_task null the adapter
 *                         trains on the plain data loss.
 * Presets: `mixda` (stage 1) reads --reduction-factor (of d_ff, default 16), --adapter-layers,
 * --gate-hidden, --knowledge-weight and --preserve-task (a task id, default 1: the second
 * --data NAME=FILE; "all": both terms on every row, for a run on one dataset); `mixda-task`
 * (stage 2) reads --domain-adapters, --gate-hidden and --reduction-factor, there the task
 * adapter's (of the hidden size, default 16). Without --domain-adapters `mixda-task` is the
 * task adapter alone: the baseline the domain adapters are measured against.
 * Initialization: knowledge down-projections uniform ±1/sqrt(d_ff) (kaiming uniform with a = √5,
 * as LoRA's A), up-projections and biases zero; gate layers PyTorch's Linear default; the task
 * adapter as bottleneck.ts (down N(0, 0.02²), up zero).
 *
 * Saved keys (adapter_model.safetensors, under base_model.model.<path>.):
 *   mixda_domain.<i>.down.{weight [m, d_ff], bias [m]}, mixda_domain.<i>.up.{weight [d, m], bias [d]}
 *     i < frozen_domains: the frozen ones, in domain_adapters order; then the trained ones;
 *   mixda_gate.<j>.{weight, bias}, j = 0 .. gate_depth + 1 (Linear layout [out, in]);
 *   mixda_task.adapter_down.{weight, bias}, mixda_task.adapter_up.{weight, bias}.
 * Not implemented: the authors' per-example loss reweighting and the base model's dropout on y.
 */
import { join } from 'node:path';
import {
  AdaptkitError, type Tensor, add, dropout, gelu, indexSelect, isGradEnabled, isTraining, mul, narrow, parameter, rand, randn, relu, reshape, shapeStr, softmax,
  square, sub, sum, tensor, zeros,
} from '../../tensor/index.js';
import { type AdapterDescriptor, Linear, Module, isLinearLayer, type LinearLayer } from '../../nn/index.js';
import { AdapterConfigError, baseJson, fail, optBool, optInt, optNumber, optString, parseBase, showValue } from '../config.js';
import { registerMethod } from '../registry.js';
import { loadInto } from '../state.js';
import { PEFT_MODEL_PREFIX, adapterWeightsFile, deltaStateDict, readAdapterConfig, readTensorMap } from '../files.js';
import { REDUCTION_FACTOR, num } from '../options.js';
import { roleTargets } from '../targets.js';
import { type Activation, BottleneckDelta, bottleneckSize, parseBottleneck } from './bottleneck.js';
import {
  type AdapterInstance, type AdapterMethod, type BaseAdapterConfig, type LayerDelta, type MethodOption, type PresetOptions, type RawAdapterConfig,
  type TargetInfo, PaddingMask, type TaskRouting,
} from '../types.js';

export type GatePosition = 'last' | 'token';

export interface MixdaConfig extends BaseAdapterConfig {
  adapter_layers: number[] | null;
  reduction_factor: number;
  bottleneck_size: number | null;
  trainable_domains: number;
  frozen_domains: number;
  domain_adapters: string[];
  gate_hidden: number | null;
  gate_depth: number;
  gate_dropout: number;
  gate_position: GatePosition;
  residual: boolean;
  task_adapter: boolean;
  task_reduction_factor: number;
  task_non_linearity: Activation;
  knowledge_weight: number;
  preserve_weight: number;
  preserve_task: number | null;
}

/** Layers that get knowledge adapters when a config names none. */
const DEFAULT_LAYERS = 2;
const GATE_WIDTH = 768;
const KEY = /^(.+)\.mixda_domain\.(\d+)\.(down|up)\.(weight|bias)$/;

function intList(raw: RawAdapterConfig, key: string, source: string): number[] | null {
  const v = raw[key];
  if (v === undefined || v === null) return null;
  const list = Number.isInteger(v) ? [v as number] : v;
  if (!Array.isArray(list) || list.length === 0 || !list.every((x) => Number.isInteger(x) && x >= 0)) fail(source, key, `must be a layer index or a non-empty list of them, got ${showValue(v)}`);
  return [...new Set(list as number[])].sort((a, b) => a - b);
}

function stringList(raw: RawAdapterConfig, key: string, source: string): string[] {
  const v = raw[key];
  if (v === undefined || v === null) return [];
  if (!Array.isArray(v) || !v.every((x) => typeof x === 'string' && x !== '')) fail(source, key, `must be a list of adapter folders, got ${showValue(v)}`);
  return v as string[];
}

/** A stage-1 (or any saved) MIXDA adapter's config, for the frozen knowledge adapters it provides. */
function domainConfig(dir: string, source: string): MixdaConfig {
  const cfgPath = join(dir, 'adapter_config.json');
  try {
    const raw = readAdapterConfig(dir);
    if (raw.peft_type !== 'MIXDA') throw new AdaptkitError(`${cfgPath}: peft_type is ${showValue(raw.peft_type)}; a domain adapter is a saved MIXDA adapter`);
    const c = parseMixda(raw, cfgPath, false);
    if (c.domain_adapters.length) throw new AdaptkitError(`${cfgPath}: names domain_adapters itself; give the folder of a saved MIXDA adapter`);
    if (c.frozen_domains + c.trainable_domains === 0) throw new AdaptkitError(`${cfgPath}: holds no knowledge adapter`);
    return c;
  } catch (e) {
    if (e instanceof AdaptkitError) throw new AdapterConfigError(`${source}: "domain_adapters": ${e.message}`, { cause: e });
    throw e;
  }
}

/**
 * The config; with `domain_adapters` (and `resolve`), the frozen count, knowledge-adapter width
 * and layers come from those folders' configs, and a different explicit value is an error.
 */
export function parseMixda(raw: RawAdapterConfig, source: string, resolve = true): MixdaConfig {
  const base = parseBase(raw, 'MIXDA', source);
  const bs = raw.bottleneck_size;
  const pt = raw.preserve_task;
  const c: MixdaConfig = {
    ...base,
    adapter_layers: intList(raw, 'adapter_layers', source),
    reduction_factor: optNumber(raw, 'reduction_factor', 16, source, 1),
    bottleneck_size: bs === undefined || bs === null ? null : optInt(raw, 'bottleneck_size', 1, source, 1),
    trainable_domains: optInt(raw, 'trainable_domains', 1, source, 0),
    frozen_domains: optInt(raw, 'frozen_domains', 0, source, 0),
    domain_adapters: stringList(raw, 'domain_adapters', source),
    gate_hidden: raw.gate_hidden === undefined || raw.gate_hidden === null ? null : optInt(raw, 'gate_hidden', 1, source, 1),
    gate_depth: optInt(raw, 'gate_depth', 2, source, 0),
    gate_dropout: optNumber(raw, 'gate_dropout', 0.2, source, 0),
    gate_position: optString(raw, 'gate_position', 'last', ['last', 'token'] as const, source),
    residual: optBool(raw, 'residual', false, source),
    task_adapter: optBool(raw, 'task_adapter', false, source),
    task_reduction_factor: optNumber(raw, 'task_reduction_factor', 16, source, 1),
    task_non_linearity: optString(raw, 'task_non_linearity', 'silu', ['relu', 'gelu', 'silu', 'tanh'] as const, source),
    knowledge_weight: optNumber(raw, 'knowledge_weight', 0.5, source, 0),
    preserve_weight: optNumber(raw, 'preserve_weight', 1, source, 0),
    preserve_task: pt === undefined || pt === null ? null : optInt(raw, 'preserve_task', 0, source, 0),
  };
  if (c.gate_dropout >= 1) fail(source, 'gate_dropout', `must be below 1, got ${c.gate_dropout}`);
  if (resolve && c.domain_adapters.length) {
    if (raw.frozen_domains !== undefined && raw.frozen_domains !== null) {
      fail(source, 'frozen_domains', 'counts the frozen knowledge adapters of a saved adapter\'s own file; with "domain_adapters" they come from those folders');
    }
    const domains = c.domain_adapters.map((d) => domainConfig(d, source));
    c.frozen_domains = domains.reduce((n, d) => n + d.frozen_domains + d.trainable_domains, 0);
    const first = domains[0]!;
    // the knowledge adapters learned their function inside this width, these layers and this mixture form
    const adopt = <K extends 'reduction_factor' | 'bottleneck_size' | 'adapter_layers' | 'residual'>(key: K): void => {
      const given = raw[key] !== undefined && raw[key] !== null;
      if (given && JSON.stringify(c[key]) !== JSON.stringify(first[key])) {
        fail(source, key, `is ${JSON.stringify(c[key])}, but the domain adapter ${c.domain_adapters[0]} has ${JSON.stringify(first[key])}; leave it out to use the domain adapters' value`);
      }
      c[key] = first[key];
    };
    adopt('reduction_factor');
    adopt('bottleneck_size');
    adopt('adapter_layers');
    adopt('residual');
  }
  if (c.trainable_domains + c.frozen_domains === 0 && !c.task_adapter) {
    fail(source, 'trainable_domains', 'is 0 with no domain_adapters, frozen_domains or task_adapter: the adapter would have nothing to train');
  }
  return c;
}

/** Whether training uses the stage-1 objective rather than the plain data loss. */
function usesObjective(c: MixdaConfig): boolean {
  return c.preserve_weight > 0 || c.knowledge_weight !== 1 || c.preserve_task !== null;
}

function linearOf(t: TargetInfo): LinearLayer {
  if (!isLinearLayer(t.module)) throw new AdaptkitError(`MIXDA goes on linear down projections; "${t.path}" is not a linear layer`);
  return t.module;
}

/** The targets that get knowledge adapters, with the config's adapter_layers filled in. */
function knowledgeTargets(c: MixdaConfig, targets: readonly TargetInfo[]): TargetInfo[] {
  if (c.trainable_domains + c.frozen_domains === 0) return [];
  const present = [...new Set(targets.map((t) => t.layerIndex).filter((l): l is number => l !== null))].sort((a, b) => a - b);
  if (present.length === 0) throw new AdapterConfigError(`"adapter_layers": none of the targets (${targets.slice(0, 3).map((t) => t.path).join(', ')}) is in a numbered layer`);
  const layers = c.adapter_layers ?? present.slice(-DEFAULT_LAYERS);
  const missing = layers.filter((l) => !present.includes(l));
  if (missing.length) throw new AdapterConfigError(`"adapter_layers" ${JSON.stringify(missing)}: no target in ${missing.length === 1 ? 'that layer' : 'those layers'} (target layers: ${present.join(', ')})`);
  c.adapter_layers = layers;
  return targets.filter((t) => t.layerIndex !== null && layers.includes(t.layerIndex));
}

interface Sizes {
  /** d_ff (the down projection's input) and d (its output). */
  inF: number;
  outF: number;
  /** Knowledge-adapter bottleneck, gate width and task-adapter bottleneck. */
  m: number;
  h: number;
  mt: number;
}

function sizes(c: MixdaConfig, t: TargetInfo): Sizes {
  const l = linearOf(t);
  return {
    inF: l.inFeatures, outF: l.outFeatures,
    m: bottleneckSize(c, l.inFeatures), h: c.gate_hidden ?? Math.min(GATE_WIDTH, l.outFeatures),
    mt: bottleneckSize({ bottleneck_size: null, reduction_factor: c.task_reduction_factor }, l.outFeatures),
  };
}

function parameterCount(c: MixdaConfig, targets: readonly TargetInfo[]): number {
  const withKa = new Set(knowledgeTargets({ ...c }, targets).map((t) => t.path));
  const k = c.trainable_domains + c.frozen_domains;
  let n = 0;
  for (const t of targets) {
    const s = sizes(c, t);
    if (withKa.has(t.path)) {
      n += c.trainable_domains * (s.m * s.inF + s.m + s.outF * s.m + s.outF);
      n += s.inF * s.h + s.h + c.gate_depth * (s.h * s.h + s.h) + s.h * (k + 1) + k + 1;
    }
    if (c.task_adapter) n += 2 * s.mt * s.outF + s.mt + s.outF;
  }
  return n;
}

/** One knowledge adapter: up(GELU(down(a))). */
export class KnowledgeAdapter extends Module {
  constructor(public down: Linear, public up: Linear) {
    super();
  }

  forward(a: Tensor): Tensor {
    return this.up.forward(gelu(this.down.forward(a)));
  }
}

/** A layer's mixture output minus its base output in one forward, and which of its positions are real. */
interface Tap {
  diff: Tensor;
  real: Float32Array | null;
}

/**
 * Where the deltas of one adapter put their layer outputs while the objective's forward runs:
 * the objective needs each adapted layer's output, which the model does not return. Recording
 * observes the forward; it never changes what a layer computes.
 */
class Probe {
  taps: Tap[] | null = null;
}

/**
 * Per row, the position of its last real token in a chunk of T positions. Mask column j + W - T
 * belongs to position j (W mask columns: with a KV cache they cover the cached positions first;
 * positions the mask does not cover, prompt tuning's virtual tokens in front, count as real).
 */
export function lastRealPositions(mask: Tensor | null, B: number, T: number): Int32Array {
  const out = new Int32Array(B).fill(T - 1);
  if (!mask) return out;
  const real = realPositions(mask, B, T);
  for (let b = 0; b < B; b++) {
    for (let t = T - 1; t >= 0; t--) {
      if (real[b * T + t]) {
        out[b] = t;
        break;
      }
    }
  }
  return out;
}

function realPositions(mask: Tensor | null, B: number, T: number): Float32Array {
  const out = new Float32Array(B * T).fill(1);
  if (!mask) return out;
  if (mask.ndim !== 2 || mask.shape[0] !== B) throw new AdaptkitError(`MIXDA: the attention mask is ${shapeStr(mask.shape)}, the batch has ${B} rows`);
  const W = mask.shape[1]!;
  const m = mask.toArray();
  for (let b = 0; b < B; b++) {
    for (let t = 0; t < T; t++) {
      const col = t + W - T;
      if (col >= 0 && m[b * W + col] === 0) out[b * T + t] = 0;
    }
  }
  return out;
}

export class MixdaDelta extends Module implements LayerDelta {
  mixda_task: BottleneckDelta | null;

  constructor(
    readonly adapterName: string,
    /** Frozen ones first, then the trained ones. */
    public mixda_domain: KnowledgeAdapter[],
    /** Empty where the layer has no knowledge adapter. */
    public mixda_gate: Linear[],
    task: BottleneckDelta | null,
    readonly config: MixdaConfig,
    private readonly padding: PaddingMask,
    private readonly probe: Probe,
    /** Whether the base model checkpoints its blocks, which the gate cannot follow on padded batches. */
    private readonly checkpointing: () => boolean,
  ) {
    super();
    this.mixda_task = task;
  }

  /** The gate's k + 1 weights: [B, 1, k + 1] from each row's last real position, or [..., k + 1] per position. */
  gate(a: Tensor): Tensor {
    let x = a;
    if (this.config.gate_position === 'last') {
      if (a.ndim !== 3) throw new AdaptkitError(`MIXDA: the gate reads each sequence's last token and needs [batch, positions, features] inputs, got ${shapeStr(a.shape)}`);
      const [B, T, F] = a.shape as [number, number, number];
      const last = lastRealPositions(this.padding.mask, B, T);
      if (isTraining() && this.checkpointing() && !isGradEnabled() && last.some((t) => t !== T - 1)) {
        // the first pass of a checkpointed block: its recomputation in backward runs after the
        // forward has returned, without the mask, and would gate from a pad token
        throw new AdaptkitError('MIXDA: the gate reads each row\'s last real token from the forward\'s attention mask, which a block recomputed by gradient checkpointing no longer has; train without --gradient-checkpointing or with gate_position "token"');
      }
      const rows = tensor(Int32Array.from(last, (t, b) => b * T + t), [B], { dtype: 'i32' });
      x = reshape(indexSelect(reshape(a, [B * T, F]), 0, rows), [B, 1, F]);
    }
    const p = this.config.gate_dropout;
    let h = this.mixda_gate[0]!.forward(dropout(x, p));
    for (let i = 1; i < this.mixda_gate.length; i++) h = this.mixda_gate[i]!.forward(dropout(relu(h), p));
    return softmax(h);
  }

  /** The layer output with the knowledge adapters mixed in (y where the layer has none). */
  mix(a: Tensor, y: Tensor): Tensor {
    const k = this.mixda_domain.length;
    if (k === 0) return y;
    const g = this.gate(a);
    const last = g.ndim - 1;
    let out = this.config.residual ? y : mul(y, narrow(g, last, k, 1));
    for (let i = 0; i < k; i++) out = add(out, mul(this.mixda_domain[i]!.forward(a), narrow(g, last, i, 1)));
    return out;
  }

  apply(x: Tensor, y: Tensor): Tensor {
    const o = this.mix(x, y);
    const taps = this.probe.taps;
    if (taps && this.mixda_domain.length) {
      if (o.ndim !== 3) throw new AdaptkitError(`MIXDA: the preservation term needs [batch, positions, features] layer outputs, got ${shapeStr(o.shape)}`);
      taps.push({ diff: sub(o, y), real: this.padding.mask ? realPositions(this.padding.mask, o.shape[0]!, o.shape[1]!) : null });
    }
    return this.mixda_task ? this.mixda_task.apply(x, o) : o;
  }
}

type ObjectiveStep = Parameters<NonNullable<AdapterInstance['objective']>>[0] & { taskIds?: ArrayLike<number> | null };

/** Which rows of a batch are domain rows (CE) and which general-text rows (MSE). */
function rowRoles(c: MixdaConfig, B: number, ids: ArrayLike<number> | null): { domain: Uint8Array; general: Uint8Array } {
  if (c.preserve_task === null) return { domain: new Uint8Array(B).fill(1), general: new Uint8Array(B).fill(1) };
  if (!ids) throw new AdaptkitError(`MIXDA: preserve_task ${c.preserve_task} picks the general-text rows by task, but the step has no task ids (train on several datasets, e.g. --data domain=FILE --data general=FILE, or set preserve_task null)`);
  if (ids.length !== 1 && ids.length !== B) throw new AdaptkitError(`MIXDA: ${ids.length} task ids for a batch of ${B} rows`);
  const general = Uint8Array.from({ length: B }, (_, b) => (ids.length === 1 ? ids[0] : ids[b]) === c.preserve_task ? 1 : 0);
  return { domain: general.map((g) => 1 - g), general };
}

/** knowledge_weight · CE over the domain rows + preserve_weight · the layers' mean MSE over the general rows. */
function mixdaObjective(inst: MixdaAdapter, step: ObjectiveStep): Tensor {
  const c = inst.config;
  const taps: Tap[] = [];
  inst.probe.taps = taps;
  let logits: Tensor;
  try {
    logits = step.logits();
  } finally {
    inst.probe.taps = null;
  }
  if (taps.some((t) => t.diff.isDisposed)) {
    throw new AdaptkitError('MIXDA: the preservation term reads every adapted layer\'s output of the step\'s forward, which gradient checkpointing discards; train MIXDA without --gradient-checkpointing');
  }
  if (logits.ndim !== 3) throw new AdaptkitError(`MIXDA: the objective needs logits [batch, positions, vocabulary], got ${shapeStr(logits.shape)}`);
  const [B, T, V] = logits.shape as [number, number, number];
  const { domain, general } = rowRoles(c, B, step.taskIds ?? inst.tasks.ids);
  const terms: Tensor[] = [];
  const nDomain = domain.reduce((s, v) => s + v, 0);
  if (c.knowledge_weight > 0 && nDomain > 0) {
    if (nDomain === B) {
      terms.push(mul(step.loss(logits), c.knowledge_weight));
    } else {
      if (!step.weights) throw new AdaptkitError('MIXDA: a batch of domain and general rows needs the step\'s loss weights to split the loss');
      const w = step.weights.toArray();
      let n = 0;
      let nGeneral = 0;
      for (let b = 0; b < B; b++) {
        for (let t = 0; t < T; t++) {
          n += w[b * T + t]!;
          if (general[b]) nGeneral += w[b * T + t]!;
        }
      }
      if (n > nGeneral) {
        // The step gives the loss only as a mean over all counted positions. General rows get
        // uniform logits, so each of their counted positions adds exactly log V, which is taken
        // out again, and no gradient reaches them through this term.
        const keep = tensor(Float32Array.from(domain), [B, 1, 1]);
        const mean = step.loss(mul(logits, keep));
        terms.push(mul(sub(mul(mean, n), nGeneral * Math.log(V)), c.knowledge_weight / (n - nGeneral)));
      }
    }
  }
  if (c.preserve_weight > 0) {
    const layers: Tensor[] = [];
    for (const tap of taps) {
      const [Bt, Tt, D] = tap.diff.shape as [number, number, number];
      const w = new Float32Array(Bt * Tt);
      let count = 0;
      for (let b = 0; b < Bt; b++) {
        for (let t = 0; t < Tt; t++) {
          if (general[b] && (!tap.real || tap.real[b * Tt + t])) {
            w[b * Tt + t] = 1;
            count++;
          }
        }
      }
      if (count > 0) layers.push(mul(sum(mul(square(tap.diff), tensor(w, [Bt, Tt, 1]))), 1 / (count * D)));
    }
    if (layers.length) terms.push(mul(layers.reduce((s, l) => add(s, l)), c.preserve_weight / layers.length));
  }
  // a batch with nothing to learn from still gives backward a graph (of zero gradients)
  if (terms.length === 0) return mul(step.loss(logits), 0);
  return terms.reduce((s, t) => add(s, t));
}

class MixdaAdapter implements AdapterInstance {
  readonly method = MIXDA;
  readonly deltas = new Map<string, MixdaDelta>();
  readonly probe = new Probe();
  objective?: (step: ObjectiveStep) => Tensor;

  constructor(readonly name: string, readonly config: MixdaConfig, readonly tasks: TaskRouting) {
    if (usesObjective(config)) this.objective = (step) => mixdaObjective(this, step);
  }

  /** The trained tensors; the frozen knowledge adapters are plain tensors and not among them. */
  parameters(): Tensor[] {
    return [...this.deltas.values()].flatMap((d) => d.parameters().filter((p) => p.requiresGrad));
  }

  /** Every tensor, the frozen knowledge adapters included, so that a saved adapter is whole. */
  stateDict(): Map<string, Tensor> {
    return deltaStateDict(this.deltas);
  }

  loadStateDict(tensors: Map<string, Tensor>, source: string): void {
    loadInto(this.stateDict(), tensors, source);
  }

  configJson(): RawAdapterConfig {
    const c = this.config;
    return {
      ...baseJson(c), adapter_layers: c.adapter_layers, bottleneck_size: c.bottleneck_size, domain_adapters: [], frozen_domains: c.frozen_domains,
      gate_depth: c.gate_depth, gate_dropout: c.gate_dropout, gate_hidden: c.gate_hidden, gate_position: c.gate_position, knowledge_weight: c.knowledge_weight,
      preserve_task: c.preserve_task, preserve_weight: c.preserve_weight, reduction_factor: c.reduction_factor, residual: c.residual, task_adapter: c.task_adapter,
      task_non_linearity: c.task_non_linearity, task_reduction_factor: c.task_reduction_factor, trainable_domains: c.trainable_domains,
    };
  }
}

type DomainTensors = Map<string, Map<number, Map<string, Tensor>>>;

/** The knowledge adapters of a saved MIXDA folder by target path and index; its other tensors are dropped. */
function readDomainTensors(dir: string): { file: string; experts: DomainTensors } {
  const file = adapterWeightsFile(dir);
  const experts: DomainTensors = new Map();
  for (const [key, t] of readTensorMap(file)) {
    const m = key.startsWith(PEFT_MODEL_PREFIX) ? KEY.exec(key.slice(PEFT_MODEL_PREFIX.length)) : null;
    if (!m) {
      t.dispose();
      continue;
    }
    const [, path, i, part, field] = m as unknown as [string, string, string, string, string];
    if (!experts.has(path)) experts.set(path, new Map());
    const byIndex = experts.get(path)!;
    if (!byIndex.has(Number(i))) byIndex.set(Number(i), new Map());
    byIndex.get(Number(i))!.set(`${part}.${field}`, t.keep());
  }
  return { file, experts };
}

/** The frozen knowledge adapters of the domain folders at each path, checked against this model and config. */
function frozenFromFolders(c: MixdaConfig, kaTargets: readonly TargetInfo[], source: string): Map<string, KnowledgeAdapter[]> {
  const out = new Map<string, KnowledgeAdapter[]>(kaTargets.map((t) => [t.path, []]));
  const want = kaTargets.map((t) => t.path).sort();
  for (const dir of c.domain_adapters) {
    const own = domainConfig(dir, source);
    const { file, experts } = readDomainTensors(dir);
    const paths = [...experts.keys()].sort();
    if (JSON.stringify(paths) !== JSON.stringify(want)) {
      throw new AdaptkitError(`${file}: its knowledge adapters sit at ${paths.join(', ') || 'no layer'}, this adapter's at ${want.join(', ')} (layers ${JSON.stringify(c.adapter_layers)}); domain adapters must come from this base model with the same adapter_layers`);
    }
    for (const t of kaTargets) {
      const s = sizes(c, t);
      const byIndex = experts.get(t.path)!;
      const expected = own.frozen_domains + own.trainable_domains;
      if (byIndex.size !== expected) throw new AdaptkitError(`${file}: ${byIndex.size} knowledge adapters at ${t.path}, but its config (frozen_domains + trainable_domains) says ${expected}`);
      for (let i = 0; i < byIndex.size; i++) {
        const parts = byIndex.get(i);
        const expect: Record<string, number[]> = { 'down.weight': [s.m, s.inF], 'down.bias': [s.m], 'up.weight': [s.outF, s.m], 'up.bias': [s.outF] };
        const key = (p: string) => `${PEFT_MODEL_PREFIX}${t.path}.mixda_domain.${i}.${p}`;
        for (const [p, shape] of Object.entries(expect)) {
          const got = parts?.get(p);
          if (!got) throw new AdaptkitError(`${file}: "${key(p)}" is missing`);
          if (got.dtype !== 'f32') throw new AdaptkitError(`${file}: "${key(p)}" is ${got.dtype}; knowledge adapters are f32`);
          if (got.shape.length === shape.length && got.shape.every((v, j) => v === shape[j])) continue;
          const why = p === 'down.weight' && got.shape[1] !== s.inF
            ? `${t.path} of this model takes ${s.inF} inputs (d_ff): the domain adapter was trained on another model`
            : p.startsWith('up') && got.shape[0] !== s.outF
            ? `${t.path} of this model has ${s.outF} outputs: the domain adapter was trained on another model`
            : `this adapter's knowledge adapters are ${s.m} wide (reduction_factor ${c.reduction_factor}, bottleneck_size ${c.bottleneck_size}, taken from the first domain adapter)`;
          throw new AdaptkitError(`${file}: "${key(p)}" is [${got.shape.join(', ')}], expected [${shape.join(', ')}]: ${why}`);
        }
        out.get(t.path)!.push(new KnowledgeAdapter(new Linear(parts!.get('down.weight')!, parts!.get('down.bias')!), new Linear(parts!.get('up.weight')!, parts!.get('up.bias')!)));
      }
    }
  }
  return out;
}

/** Frozen slots a saved adapter's own file fills (its loadStateDict runs next). */
function frozenSlots(c: MixdaConfig, t: TargetInfo): KnowledgeAdapter[] {
  const s = sizes(c, t);
  const slot = (shape: number[], name: string) => {
    const z = zeros(shape).keep();
    z.name = `${t.path}.${name}`;
    return z;
  };
  return Array.from({ length: c.frozen_domains }, (_, i) => new KnowledgeAdapter(
    new Linear(slot([s.m, s.inF], `mixda_domain.${i}.down.weight`), slot([s.m], `mixda_domain.${i}.down.bias`)),
    new Linear(slot([s.outF, s.m], `mixda_domain.${i}.up.weight`), slot([s.outF], `mixda_domain.${i}.up.bias`)),
  ));
}

const DOMAIN_ADAPTERS: MethodOption = { name: 'domain-adapters', type: 'list', description: 'MIXDA: comma-separated stage-1 adapter folders whose knowledge adapters load frozen (mixda-task)' };
const ADAPTER_LAYERS: MethodOption = { name: 'adapter-layers', type: 'list', description: 'MIXDA: comma-separated layer indices that get knowledge adapters (default: the last two)' };
const GATE_HIDDEN: MethodOption = { name: 'gate-hidden', type: 'int', min: 1, description: 'MIXDA: width of the gate\'s hidden layers (default min(768, hidden size))' };
const KNOWLEDGE_WEIGHT: MethodOption = { name: 'knowledge-weight', type: 'number', min: 0, description: 'MIXDA stage 1: weight of the domain CE beside the preservation MSE (default 0.5)' };
const PRESERVE_TASK: MethodOption = { name: 'preserve-task', type: 'string', description: 'MIXDA stage 1: task id of the general-text rows (MSE only; default 1, the second --data), or "all" for both terms on every row' };

function layersOption(o: PresetOptions): { adapter_layers?: number[] } {
  const v = o['adapter-layers'];
  if (v === undefined) return {};
  const list = (Array.isArray(v) ? v : [String(v)]).map((s) => Number(s));
  if (!list.every((x) => Number.isInteger(x) && x >= 0)) throw new AdaptkitError(`--adapter-layers must be comma-separated layer indices, got ${JSON.stringify(v)}`);
  return { adapter_layers: list };
}

function preserveTaskOption(o: PresetOptions): number | null {
  const v = o['preserve-task'];
  if (v === undefined) return 1;
  if (v === 'all') return null;
  const n = Number(v);
  if (!Number.isInteger(n) || n < 0) throw new AdaptkitError(`--preserve-task must be a task id (0, 1, ...) or "all", got ${JSON.stringify(v)}`);
  return n;
}

function gateOption(o: PresetOptions): { gate_hidden?: number } {
  return o['gate-hidden'] === undefined ? {} : { gate_hidden: num(o, 'gate-hidden', 1) };
}

export const MIXDA: AdapterMethod = {
  peftType: 'MIXDA',
  description: 'MixDA: gated knowledge adapters beside the feed-forward output projection, trained in two stages (domain knowledge, then a task adapter)',
  kind: 'tuner',
  presets: [
    {
      name: 'mixda',
      description: 'MixDA stage 1: a new knowledge adapter with its gate beside the down projection of the last two layers (--adapter-layers), reduction factor 16 (--reduction-factor), trained on 0.5 x domain CE (--knowledge-weight) + MSE to the original layer outputs on the general-text rows of task 1 (--preserve-task)',
      config: (o) => ({
        peft_type: 'MIXDA', reduction_factor: num(o, 'reduction-factor', 16), trainable_domains: 1, residual: false,
        knowledge_weight: num(o, 'knowledge-weight', 0.5), preserve_weight: 1, preserve_task: preserveTaskOption(o), ...layersOption(o), ...gateOption(o),
      }),
    },
    {
      name: 'mixda-task',
      description: 'MixDA stage 2: the knowledge adapters of stage-1 folders frozen (--domain-adapters), a new gate, and a Pfeiffer task adapter (swish, reduction factor 16: --reduction-factor) after every down projection, on the plain data loss',
      config: (o) => ({
        peft_type: 'MIXDA', domain_adapters: Array.isArray(o['domain-adapters']) ? o['domain-adapters'] : o['domain-adapters'] === undefined ? [] : [String(o['domain-adapters'])],
        trainable_domains: 0, task_adapter: true, task_reduction_factor: num(o, 'reduction-factor', 16), task_non_linearity: 'silu',
        knowledge_weight: 1, preserve_weight: 0, preserve_task: null, ...layersOption(o), ...gateOption(o),
      }),
    },
  ],
  options: [REDUCTION_FACTOR, DOMAIN_ADAPTERS, ADAPTER_LAYERS, GATE_HIDDEN, KNOWLEDGE_WEIGHT, PRESERVE_TASK],
  floatKeys: ['gate_dropout', 'knowledge_weight', 'preserve_weight'],
  // the reference's convex mixture scales each adapted layer's output by the gate at creation
  startsAsIdentity: false,
  summary: (cfg) => {
    const c = cfg as MixdaConfig;
    return {
      adapter_layers: c.adapter_layers, reduction_factor: c.reduction_factor, trainable_domains: c.trainable_domains, frozen_domains: c.frozen_domains,
      gate_position: c.gate_position, residual: c.residual, task_adapter: c.task_adapter,
    };
  },
  parseConfig: (raw, source) => parseMixda(raw, source),
  defaultTargets: (model: AdapterDescriptor) => roleTargets(model, ['mlp.down']),
  create(name, cfg, targets, ctx) {
    const c = { ...(cfg as MixdaConfig) };
    const kaTargets = knowledgeTargets(c, targets);
    const inst = new MixdaAdapter(name, c, ctx.tasks);
    const padding = ctx.padding ?? new PaddingMask();
    const frozen = c.domain_adapters.length ? frozenFromFolders(c, kaTargets, `adapter "${name}" config`) : null;
    const k = c.frozen_domains + c.trainable_domains;
    const task = c.task_adapter ? parseBottleneck({ peft_type: 'BOTTLENECK', adapter_type: 'pfeiffer', non_linearity: c.task_non_linearity, reduction_factor: c.task_reduction_factor }, `adapter "${name}" task adapter`) : null;
    const model = ctx.model as unknown as { gradientCheckpointing?: boolean };
    const checkpointing = () => model.gradientCheckpointing === true;
    const uniform = (shape: number[], fanIn: number, key: string) => parameter(rand(shape, { low: -1 / Math.sqrt(fanIn), high: 1 / Math.sqrt(fanIn), rng: ctx.rng }), key);
    for (const t of targets) {
      const s = sizes(c, t);
      let domains: KnowledgeAdapter[] = [];
      let gate: Linear[] = [];
      if (kaTargets.includes(t)) {
        domains = frozen ? frozen.get(t.path)! : frozenSlots(c, t);
        for (let i = c.frozen_domains; i < k; i++) {
          const p = `${t.path}.mixda_domain.${i}`;
          domains.push(new KnowledgeAdapter(
            new Linear(uniform([s.m, s.inF], s.inF, `${p}.down.weight`), parameter(zeros([s.m]), `${p}.down.bias`)),
            new Linear(parameter(zeros([s.outF, s.m]), `${p}.up.weight`), parameter(zeros([s.outF]), `${p}.up.bias`)),
          ));
        }
        const widths = [s.inF, ...Array<number>(c.gate_depth + 1).fill(s.h), k + 1];
        gate = widths.slice(1).map((out, j) => new Linear(uniform([out, widths[j]!], widths[j]!, `${t.path}.mixda_gate.${j}.weight`), uniform([out], widths[j]!, `${t.path}.mixda_gate.${j}.bias`)));
      }
      let taskDelta: BottleneckDelta | null = null;
      if (task) {
        const p = `${t.path}.mixda_task`;
        const down = new Linear(parameter(randn([s.mt, s.outF], { std: 0.02, rng: ctx.rng }), `${p}.adapter_down.weight`), parameter(zeros([s.mt]), `${p}.adapter_down.bias`));
        const up = new Linear(parameter(zeros([s.outF, s.mt]), `${p}.adapter_up.weight`), parameter(zeros([s.outF]), `${p}.adapter_up.bias`));
        taskDelta = new BottleneckDelta(name, down, up, task, null);
      }
      if (domains.length === 0 && !taskDelta) continue;
      inst.deltas.set(t.path, new MixdaDelta(name, domains, gate, taskDelta, c, padding, inst.probe, checkpointing));
    }
    return inst;
  },
  countParameters: (cfg, targets) => parameterCount(cfg as MixdaConfig, targets),
};

registerMethod(MIXDA);
