/**
 * AdapterFusion (Pfeiffer et al. 2021, as AdapterHub's Fuse block computes it): at each location
 * of a set of frozen single-task source adapters, attention over the sources' up-projection
 * outputs u_i (source-adapters.ts), with the query taken from the state the sources read there
 * (the layer output before any adapter; the layer input for parallel sources):
 *   s_i = (Q q)·(K u_i),  p = softmax(dropout(s) / T),  h = Σ_i p_i (V u_i) + y
 * Q and K are d×d with bias (initialized N(0, 0.02²), bias 0), V is d×d without bias,
 * initialized to I (off-diagonal 1e-6) when value_initialized. "dynamic" (AdapterHub's default)
 * learns Q, K and V and adds 0.01·‖I − V‖²_F per layer to the training objective; "static" has no V
 * and no regularization.
 *
 * Config (peft_type "FUSION"): AdapterHub's AdapterFusionConfig fields with its "dynamic"
 * defaults, beside the source fields of source-adapters.ts:
 *   query, key, value (true): learn that projection (false: identity; not all three false, where
 *       AdapterHub adds a dense layer its forward never uses);
 *   value_before_softmax (true): V on each u_i (false: on the weighted sum, equal by linearity);
 *   value_initialized (true): V starts at the identity;
 *   regularization (true): the ‖I − V‖ term (only with a value). AdapterHub's trainer back-
 *       propagates it after each optimizer step, into gradients zeroed just before, where the
 *       next step adds its data gradient: the same as adding it to every step's loss except the
 *       very first of a run, so here it is simply part of each step's objective;
 *   residual_before (false): add y to the sources' outputs before attention (keys and values,
 *       as AdapterHub's in-place add on the one tensor it passes as both) instead of after;
 *   temperature (false): T starts at 50 and falls by 50/1000 per training forward down to 1;
 *       unlike AdapterHub, evaluation forwards do not anneal (inference is deterministic) and T
 *       is saved with the adapter (key base_model.model.adapter_fusion_temperature);
 *   dropout_prob (null): dropout on the attention scores in training (null: none; AdapterHub
 *       then takes the model's attention dropout, which adaptkit's models do not have);
 *   query_before_ln (false): only false, since no LayerNorm of the model lies between an adapted
 *       layer and its adapters here.
 * Keys: base_model.model.<path>.adapter_fusion.{query,key,value}.{weight,bias} beside the sources'.
 *
 * AdapterHub interop (exportAdapterHubFusion / loadAdapterHubFusion): adapter_fusion_config.json
 * ({"config": {...the fields above}, "hidden_size", "model_name", "model_type", "name": "a,b,c"},
 * sorted keys, indent 2) and model_adapter_fusion.safetensors with keys
 * <location>.adapter_fusion_layer.<a,b,c>.{query,key,value}.{weight,bias}. The location of a
 * target is AdapterHub's module holding that layer's adapters: "layer" (default, AdapterHub's
 * decoder models such as Llama and GPT-2) is the transformer layer's `output_adapters` (feed-
 * forward output, parallel placement) or `attention_adapters` (attention output), e.g.
 * model.layers.3.mlp.down_proj -> model.layers.3.output_adapters; "module" (AdapterHub's BERT
 * family) is the adapted layer's parent, e.g. bert.encoder.layer.3.output.dense ->
 * bert.encoder.layer.3.output. Loading accepts either. The source adapters themselves are
 * adaptkit BOTTLENECK folders, named in the fusion name's order.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import {
  AdaptkitError, type Tensor, add, div, dropout, fromBuffer, isTraining, mul, noGrad, parameter, randn, softmax, square, sub, sum, tensor, unsqueeze, zeros,
} from '../../tensor/index.js';
import { type AdapterDescriptor, Linear, Module, describeModel } from '../../nn/index.js';
import { writeFileAtomic } from '../../io/atomic.js';
import { SafetensorsFile, serializeSafetensors } from '../../io/safetensors.js';
import { AdapterConfigError, baseJson, optBool, optNumber } from '../config.js';
import { registerMethod } from '../registry.js';
import { loadInto } from '../state.js';
import { MAX_CONFIG_BYTES, PEFT_MODEL_PREFIX, deltaStateDict, regularFileSize } from '../files.js';
import { pythonJson } from '../pyjson.js';
import { matches } from '../targets.js';
import { type BottleneckDelta, placementTargets, targetWidth } from './bottleneck.js';
import { SOURCE_ADAPTERS, type SourceSet, type SourcesConfig, createSources, parseSources, sourceInput, sourcesOption, stackOutputs, upOutput } from './source-adapters.js';
import type { AdapterInstance, AdapterMethod, RawAdapterConfig, LayerDelta, TargetInfo } from '../types.js';
import type { AdapterModel } from '../adapter-model.js';

/** AdapterHub's AdapterFusionConfig fields. */
export interface FusionFields {
  key: boolean;
  query: boolean;
  value: boolean;
  query_before_ln: boolean;
  regularization: boolean;
  residual_before: boolean;
  temperature: boolean;
  value_before_softmax: boolean;
  value_initialized: boolean;
  dropout_prob: number | null;
}

export interface FusionConfig extends SourcesConfig, FusionFields {}

export const FUSION_FIELDS = ['key', 'query', 'value', 'query_before_ln', 'regularization', 'residual_before', 'temperature', 'value_before_softmax', 'value_initialized', 'dropout_prob'] as const;

/** AdapterHub's "static" and "dynamic" fusion configs. */
export const FUSION_CONFIGS: Readonly<Record<'static' | 'dynamic', FusionFields>> = {
  static: {
    key: true, query: true, value: false, query_before_ln: false, regularization: false, residual_before: false, temperature: false,
    value_before_softmax: true, value_initialized: false, dropout_prob: null,
  },
  dynamic: {
    key: true, query: true, value: true, query_before_ln: false, regularization: true, residual_before: false, temperature: false,
    value_before_softmax: true, value_initialized: true, dropout_prob: null,
  },
};

export const REGULARIZATION_WEIGHT = 0.01;
const T_START = 50;
export const TEMPERATURE_KEY = `${PEFT_MODEL_PREFIX}adapter_fusion_temperature`;
export const ADAPTERHUB_FUSION_CONFIG = 'adapter_fusion_config.json';
export const ADAPTERHUB_FUSION_WEIGHTS = 'model_adapter_fusion.safetensors';

export function parseFusionFields(raw: RawAdapterConfig, source: string): FusionFields {
  const d = FUSION_CONFIGS.dynamic;
  const b = (k: Exclude<(typeof FUSION_FIELDS)[number], 'dropout_prob'>) => optBool(raw, k, d[k], source);
  const f: FusionFields = {
    key: b('key'), query: b('query'), value: b('value'), query_before_ln: b('query_before_ln'), regularization: b('regularization'),
    residual_before: b('residual_before'), temperature: b('temperature'), value_before_softmax: b('value_before_softmax'),
    value_initialized: b('value_initialized'),
    dropout_prob: raw.dropout_prob === undefined || raw.dropout_prob === null ? null : optNumber(raw, 'dropout_prob', 0, source, 0),
  };
  if (f.dropout_prob !== null && f.dropout_prob >= 1) throw new AdapterConfigError(`${source}: "dropout_prob" must be below 1, got ${f.dropout_prob}`);
  if (!f.key && !f.query && !f.value) throw new AdapterConfigError(`${source}: "query", "key" and "value" are all false; learn at least one of them`);
  if (f.query_before_ln) throw new AdapterConfigError(`${source}: "query_before_ln" must be false: no LayerNorm of the model lies between an adapted layer and its adapters`);
  return f;
}

export function parseFusion(raw: RawAdapterConfig, source: string): FusionConfig {
  return { ...parseSources(raw, source, 'FUSION'), ...parseFusionFields(raw, source) };
}

/** Q, K and V of one location, under AdapterHub's names. */
export class FusionLayer extends Module {
  constructor(public query: Linear | null, public key: Linear | null, public value: Linear | null) {
    super();
  }
}

/** The temperature every location of one adapter uses (they anneal together). */
interface Temperature {
  t: number;
}

export class FusionDelta extends Module implements LayerDelta {
  readonly #temperature: Temperature;

  constructor(
    readonly adapterName: string,
    public adapter_fusion: FusionLayer,
    public sources: BottleneckDelta[],
    readonly config: FusionConfig,
    temperature: Temperature,
  ) {
    super();
    this.#temperature = temperature;
  }

  apply(x: Tensor, y: Tensor): Tensor {
    const c = this.config;
    const f = this.adapter_fusion;
    const q0 = sourceInput(this.sources[0]!.config.adapter_type, x, y);
    let kv = stackOutputs(this.sources.map((s) => upOutput(s, x, y)));
    if (c.residual_before) kv = add(kv, unsqueeze(y, y.ndim - 1));
    const q = f.query ? f.query.forward(q0) : q0;
    const k = f.key ? f.key.forward(kv) : kv;
    const v = f.value && c.value_before_softmax ? f.value.forward(kv) : kv;
    let scores = sum(mul(unsqueeze(q, q.ndim - 1), k), k.ndim - 1);
    if (c.dropout_prob && isTraining()) scores = dropout(scores, c.dropout_prob);
    const t = this.#temperature.t;
    const p = softmax(t === 1 ? scores : div(scores, t));
    let h = sum(mul(unsqueeze(p, p.ndim), v), v.ndim - 2);
    if (f.value && !c.value_before_softmax) h = f.value.forward(h);
    return c.residual_before ? h : add(h, y);
  }
}

type ObjectiveStep = Parameters<NonNullable<AdapterInstance['objective']>>[0];

function eye(d: number, off = 0): Float32Array {
  const a = new Float32Array(d * d).fill(off);
  for (let i = 0; i < d; i++) a[i * d + i] = 1;
  return a;
}

class FusionAdapter implements AdapterInstance {
  readonly method = FUSION;
  readonly deltas = new Map<string, FusionDelta>();
  readonly temperature: Temperature;
  objective?: (step: ObjectiveStep) => Tensor;

  constructor(readonly name: string, readonly config: FusionConfig, readonly sources: SourceSet) {
    this.temperature = { t: config.temperature ? T_START : 1 };
    // a plain single pass needs no objective of its own
    if ((config.regularization && config.value) || config.temperature) this.objective = (step) => this.step(step);
  }

  private step(step: ObjectiveStep): Tensor {
    let loss = step.loss(step.logits());
    const reg = this.regularization();
    if (reg) loss = add(loss, reg);
    if (this.config.temperature) this.temperature.t = Math.max(this.temperature.t - T_START / 1000, 1);
    return loss;
  }

  /** 0.01·Σ_layers ‖I − V‖²_F, or null when the config has no such term. */
  regularization(): Tensor | null {
    if (!this.config.regularization || !this.config.value) return null;
    let r: Tensor | null = null;
    for (const d of this.deltas.values()) {
      const v = d.adapter_fusion.value!.weight;
      const term = sum(square(sub(fromBuffer(eye(v.shape[0]!), v.shape), v)));
      r = r ? add(r, term) : term;
    }
    return r ? mul(r, REGULARIZATION_WEIGHT) : null;
  }

  parameters(): Tensor[] {
    return [...this.deltas.values()].flatMap((d) => d.adapter_fusion.parameters());
  }

  stateDict(): Map<string, Tensor> {
    const out = deltaStateDict(this.deltas);
    if (this.config.temperature) out.set(TEMPERATURE_KEY, tensor([this.temperature.t], [1]));
    return out;
  }

  loadStateDict(tensors: Map<string, Tensor>, source: string): void {
    const want = this.stateDict();
    const t = want.get(TEMPERATURE_KEY);
    loadInto(want, tensors, source);
    if (t) {
      const v = t.toArray()[0]!;
      if (!(v >= 1 && v <= T_START)) throw new AdaptkitError(`${source}: "${TEMPERATURE_KEY}" is ${v}, outside 1..${T_START}`);
      this.temperature.t = v;
      t.dispose();
    }
  }

  configJson(): RawAdapterConfig {
    const c = this.config;
    return { ...baseJson(c), ...this.sources.configJson(), ...fusionFields(c) };
  }
}

function fusionFields(c: FusionFields): FusionFields {
  return Object.fromEntries(FUSION_FIELDS.map((k) => [k, c[k]])) as unknown as FusionFields;
}

function perLocation(c: FusionFields, d: number): number {
  return (c.query ? d * d + d : 0) + (c.key ? d * d + d : 0) + (c.value ? d * d : 0);
}

export const FUSION: AdapterMethod = {
  peftType: 'FUSION',
  description: 'AdapterFusion: attention over frozen source bottleneck adapters\' outputs (AdapterHub layout)',
  kind: 'tuner',
  presets: [
    {
      name: 'fusion',
      description: 'AdapterFusion "dynamic" (query, key, value, ‖I−V‖ regularization) over frozen --source-adapters',
      config: (o) => ({ peft_type: 'FUSION', ...FUSION_CONFIGS.dynamic, ...sourcesOption(o) }),
    },
    {
      name: 'fusion-static',
      description: 'AdapterFusion "static" (query and key only) over frozen --source-adapters',
      config: (o) => ({ peft_type: 'FUSION', ...FUSION_CONFIGS.static, ...sourcesOption(o) }),
    },
  ],
  options: [SOURCE_ADAPTERS],
  floatKeys: ['scaling', 'dropout_prob'],
  startsAsIdentity: false,
  summary: (cfg) => {
    const c = cfg as FusionConfig;
    return { sources: c.sources.map((s) => s.name), ...fusionFields(c) };
  },
  parseConfig: (raw, source) => parseFusion(raw, source),
  defaultTargets: (model, cfg) => placementTargets(model, (cfg as FusionConfig).sources[0]!.config.adapter_type),
  create(name, cfg, targets, ctx) {
    const c = cfg as FusionConfig;
    const sources = createSources(name, c, targets, ctx);
    const inst = new FusionAdapter(name, c, sources);
    for (const t of targets) {
      const d = targetWidth(t);
      const key = (k: string) => `${t.path}.adapter_fusion.${k}`;
      const qk = (k: string) => new Linear(parameter(randn([d, d], { std: 0.02, rng: ctx.rng }), `${key(k)}.weight`), parameter(zeros([d]), `${key(k)}.bias`));
      const query = c.query ? qk('query') : null;
      const k = c.key ? qk('key') : null;
      let value: Linear | null = null;
      if (c.value) {
        const w = randn([d, d], { std: 0.02, rng: ctx.rng });
        if (c.value_initialized) noGrad(() => (w.storage.data as Float32Array).set(eye(d, 1e-6), w.offset));
        value = new Linear(parameter(w, `${key('value')}.weight`));
      }
      inst.deltas.set(t.path, new FusionDelta(name, new FusionLayer(query, k, value), sources.at(t.path), c, inst.temperature));
    }
    return inst;
  },
  countParameters: (cfg, targets: TargetInfo[]) => targets.reduce((n, t) => n + perLocation(cfg as FusionConfig, targetWidth(t)), 0),
};

registerMethod(FUSION);

// ---------------------------------------------------------------------------------------------
// AdapterHub's fusion files

/** Which AdapterHub module holds a target's adapters (see the file comment). */
export type AdapterHubLocation = 'layer' | 'module';

/** AdapterHub's module path for a target path. */
export function adapterHubLocation(path: string, model: AdapterDescriptor, location: AdapterHubLocation = 'layer'): string {
  if (location === 'module') return path.split('.').slice(0, -1).join('.');
  for (const p of model.layersPattern) {
    const m = new RegExp(`^(.*?(?:^|\\.)${p.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}\\.\\d+)(?:\\.|$)`).exec(path);
    if (!m) continue;
    const attn = model.roles['block.attn_out'];
    return `${m[1]}.${attn && matches(attn, path) !== null ? 'attention_adapters' : 'output_adapters'}`;
  }
  throw new AdaptkitError(`"${path}" is not inside a numbered transformer layer, so it has no AdapterHub adapter location`);
}

function fusionAdapter(am: AdapterModel, name: string): FusionAdapter {
  const inst = am.adapters.get(name);
  if (!inst) throw new AdaptkitError(`no adapter named "${name}"`);
  if (!(inst instanceof FusionAdapter)) throw new AdaptkitError(`adapter "${name}" is ${inst.method.peftType}, not an AdapterFusion (FUSION) adapter`);
  return inst;
}

/**
 * Write a FUSION adapter as AdapterHub saves a fusion (`save_adapter_fusion`): its config file
 * and its Q/K/V weights. The sources stay adaptkit BOTTLENECK folders.
 */
export function exportAdapterHubFusion(am: AdapterModel, name: string, dir: string, o: { location?: AdapterHubLocation } = {}): void {
  const inst = fusionAdapter(am, name);
  const model = describeModel(am.model);
  const fname = inst.sources.names.join(',');
  const tensors: Record<string, Tensor> = {};
  let hidden = 0;
  for (const [path, d] of inst.deltas) {
    const at = `${adapterHubLocation(path, model, o.location)}.adapter_fusion_layer.${fname}`;
    for (const [k, t] of d.adapter_fusion.namedParameters()) tensors[`${at}.${k}`] = t;
    hidden = d.sources[0]!.adapter_up.weight.shape[0]!;
  }
  const config = {
    config: fusionFields(inst.config),
    hidden_size: hidden,
    model_name: inst.config.base_model_name_or_path,
    model_type: model.family,
    name: fname,
  };
  writeFileAtomic(join(dir, ADAPTERHUB_FUSION_WEIGHTS), serializeSafetensors(tensors));
  writeFileAtomic(join(dir, ADAPTERHUB_FUSION_CONFIG), Buffer.from(pythonJson(config, ['dropout_prob'])));
}

function readFusionConfig(dir: string): { fields: RawAdapterConfig; names: string[]; file: string } {
  const file = join(dir, ADAPTERHUB_FUSION_CONFIG);
  const size = regularFileSize(file, ADAPTERHUB_FUSION_CONFIG);
  if (size > MAX_CONFIG_BYTES) throw new AdaptkitError(`${file}: ${size} bytes, more than the ${MAX_CONFIG_BYTES} a fusion config may have`);
  let v: unknown;
  try {
    v = JSON.parse(readFileSync(file, 'utf8'));
  } catch (e) {
    throw new AdaptkitError(`${file}: not valid JSON (${(e as Error).message})`);
  }
  const obj = v as { config?: unknown; name?: unknown } | null;
  if (!obj || typeof obj !== 'object' || Array.isArray(obj)) throw new AdaptkitError(`${file}: must be a JSON object`);
  if (!obj.config || typeof obj.config !== 'object' || Array.isArray(obj.config)) throw new AdaptkitError(`${file}: "config" must be the fusion's AdapterFusionConfig object`);
  if (typeof obj.name !== 'string' || !obj.name) throw new AdaptkitError(`${file}: "name" must be the fusion's name (its adapters' names joined by ",")`);
  const fields = obj.config as RawAdapterConfig;
  const unknown = Object.keys(fields).filter((k) => !(FUSION_FIELDS as readonly string[]).includes(k));
  if (unknown.length) throw new AdaptkitError(`${file}: "config" has fields AdapterFusion does not define: ${unknown.join(', ')}`);
  return { fields, names: obj.name.split(','), file };
}

/**
 * Load an AdapterHub fusion folder (adapter_fusion_config.json, model_adapter_fusion.safetensors)
 * as a FUSION adapter over the given BOTTLENECK source folders, one per name of the fusion, in
 * its order. Every Q/K/V weight of every location must be in the file and every tensor used.
 */
export function loadAdapterHubFusion(am: AdapterModel, dir: string, sources: readonly string[], name = 'default'): AdapterInstance {
  const { fields, names, file: cfgFile } = readFusionConfig(dir);
  if (names.length !== sources.length) {
    throw new AdaptkitError(`${cfgFile}: the fusion "${names.join(',')}" combines ${names.length} adapters, but ${sources.length} source folders are given`);
  }
  const wfile = join(dir, ADAPTERHUB_FUSION_WEIGHTS);
  regularFileSize(wfile, ADAPTERHUB_FUSION_WEIGHTS);
  const inst = fusionAdapter(am, am.add(name, { peft_type: 'FUSION', ...fields, source_adapters: [...sources], source_names: names }, { source: cfgFile }).name);
  const model = describeModel(am.model);
  const fname = names.join(',');
  const f = new SafetensorsFile(wfile);
  const tensors = new Map<string, Tensor>();
  try {
    const keys = new Set(f.keys());
    const want = new Map<string, Tensor>();
    for (const [path, d] of inst.deltas) {
      const own = d.adapter_fusion.namedParameters();
      const at = (['layer', 'module'] as const)
        .map((l) => `${adapterHubLocation(path, model, l)}.adapter_fusion_layer.${fname}`)
        .find((p) => own.some(([k]) => keys.has(`${p}.${k}`))) ?? `${adapterHubLocation(path, model)}.adapter_fusion_layer.${fname}`;
      for (const [k, t] of own) want.set(`${at}.${k}`, t);
    }
    for (const k of keys) tensors.set(k, f.read(k));
    loadInto(want, tensors, wfile);
  } catch (e) {
    am.delete(name);
    throw e;
  } finally {
    f.close();
    for (const t of tensors.values()) t.dispose();
  }
  return inst;
}
