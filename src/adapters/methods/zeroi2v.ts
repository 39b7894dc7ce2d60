/**
 * ZeroI2V-style linear adapters (Li et al., ECCV'24): bottlenecks without a non-linearity,
 * M = I + s·U·D with D [r, d] and U [d, r] (U starts at zero), at up to four places of every block:
 *   attn_in  — on the common input of the q/k/v projections (GPT-2: the fused c_attn),
 *   attn_out — on the output of the attention output projection,
 *   mlp_in   — on the common input of the gate/up projections,
 *   mlp_out  — on the output of the down projection.
 * One adapter per place and block is shared by every projection of that place; each projection
 * applies it to its own input (so q, k and v recompute the same small product) or output.
 * Because M is linear it folds into the neighbouring projections after training, leaving no
 * added parameters or FLOPs: input side W' = W·M (b unchanged), output side W' = M·W, b' = M·b.
 * The weight change is also exactly a LoRA (see `zeroi2vToLora`).
 *
 * Places are found by model roles (attn.q/k/v, attn.o, mlp.gate/up, mlp.down), so the config
 * takes `places`, not target_modules; layers_to_transform and exclude_modules still narrow it.
 * Not a PEFT method: peft_type "ZEROI2V"; keys `<block>.zeroi2v_<place>.down.weight` [r, d] and
 * `<block>.zeroi2v_<place>.up.weight` [d, r], where <block> is the block's path
 * (`model.layers.0`, `transformer.h.0`), or the projection's parent module in a model without
 * numbered layers.
 */
import { join } from 'node:path';
import {
  AdaptkitError, type Tensor, add, addmm, clone, concat, dropout, linear, matmul, mul, noGrad, parameter, rand, reshape, transpose, zeros,
} from '../../tensor/index.js';
import { type AdapterDescriptor, Linear, Module, type TargetRole, type TargetSpec } from '../../nn/index.js';
import { writeFileAtomic } from '../../io/atomic.js';
import { serializeSafetensors } from '../../io/safetensors.js';
import { baseJson, fail, optInt, optNumber, parseBase, showValue } from '../config.js';
import { registerMethod } from '../registry.js';
import { loadInto } from '../state.js';
import { peftKey } from '../files.js';
import { pythonJson } from '../pyjson.js';
import { DROPOUT, RANK, num } from '../options.js';
import { matches, roleTargets } from '../targets.js';
import { search } from '../patterns.js';
import type {
  AdapterInstance, AdapterMethod, BaseAdapterConfig, CreateContext, LayerDelta, MethodOption, RawAdapterConfig, TargetInfo,
} from '../types.js';
import type { AdapterModel } from '../adapter-model.js';

export const PLACES = ['attn_in', 'attn_out', 'mlp_in', 'mlp_out'] as const;
export type Place = (typeof PLACES)[number];

interface PlaceSpec {
  side: 'input' | 'output';
  /** Roles whose layers this place touches. */
  roles: readonly TargetRole[];
  /** Roles a model must publish for the place to exist on it. */
  required: readonly TargetRole[];
}

const PLACE_SPECS: Record<Place, PlaceSpec> = {
  attn_in: { side: 'input', roles: ['attn.q', 'attn.k', 'attn.v'], required: ['attn.q', 'attn.k', 'attn.v'] },
  attn_out: { side: 'output', roles: ['attn.o'], required: ['attn.o'] },
  // GPT-2 and BERT have no gate: their MLP input is the up projection alone
  mlp_in: { side: 'input', roles: ['mlp.gate', 'mlp.up'], required: ['mlp.up'] },
  mlp_out: { side: 'output', roles: ['mlp.down'], required: ['mlp.down'] },
};

export interface ZeroI2VConfig extends BaseAdapterConfig {
  r: number;
  /** s in M = I + s·U·D. */
  scale: number;
  /** Dropout on D·x, in training only (ZeroI2V uses 0.1 on video). */
  dropout: number;
  places: Place[];
}

function parsePlaces(raw: RawAdapterConfig, source: string): Place[] {
  const v = raw.places;
  if (v === undefined || v === null) return [...PLACES];
  const known = PLACES.map((p) => JSON.stringify(p)).join(', ');
  if (!Array.isArray(v) || v.length === 0) fail(source, 'places', `must be a non-empty list of ${known}, got ${showValue(v)}`);
  for (const p of v) if (!PLACES.includes(p as Place)) fail(source, 'places', `has unknown place ${showValue(p)} (known: ${known})`);
  // canonical order, so equal configs write equal files
  return PLACES.filter((p) => v.includes(p));
}

function parse(raw: RawAdapterConfig, source: string): ZeroI2VConfig {
  const base = parseBase(raw, 'ZEROI2V', source);
  if (base.target_modules !== null) {
    fail(source, 'target_modules', `does not apply to ZEROI2V, which places its adapters by model roles: choose them with "places" (${PLACES.join(', ')})`);
  }
  const p = optNumber(raw, 'dropout', 0, source, 0);
  if (p >= 1) fail(source, 'dropout', `must be below 1, got ${p}`);
  return { ...base, r: optInt(raw, 'r', 8, source, 1), scale: optNumber(raw, 'scale', 0.5, source), dropout: p, places: parsePlaces(raw, source) };
}

/** The layers of the configured places, or an error naming the place a model cannot host. */
function placeTargets(d: AdapterDescriptor, places: readonly Place[]): TargetSpec | null {
  for (const p of places) {
    const missing = PLACE_SPECS[p].required.filter((r) => d.roles[r] === undefined);
    if (missing.length) {
      throw new AdaptkitError(`"places": "${p}" needs the model's ${missing.join(', ')} role${missing.length > 1 ? 's' : ''}, which the ${d.family} model does not publish; leave "${p}" out of "places"`);
    }
  }
  return roleTargets(d, places.flatMap((p) => PLACE_SPECS[p].roles));
}

/** Where a place's shared adapter lives: the block holding the layer (`model.layers.3`), else the layer's parent. */
function blockPath(path: string, c: BaseAdapterConfig, d: AdapterDescriptor): string {
  const pats = c.layers_pattern === null ? d.layersPattern : typeof c.layers_pattern === 'string' ? [c.layers_pattern] : c.layers_pattern;
  for (const p of pats) {
    const m = search(`^(.*?(?:^|\\.)(?:${p})\\.\\d+)(?:\\.|$)`, path, 'layers_pattern');
    if (m) return m[1]!;
  }
  const at = path.lastIndexOf('.');
  return at < 0 ? '' : path.slice(0, at);
}

function placeOf(path: string, side: PlaceSpec['side'], c: ZeroI2VConfig, d: AdapterDescriptor): Place | null {
  const found = c.places.filter((p) => PLACE_SPECS[p].side === side && PLACE_SPECS[p].roles.some((r) => {
    const spec = d.roles[r];
    return spec !== undefined && matches(spec, path, 'roles') !== null;
  }));
  if (found.length > 1) throw new AdaptkitError(`"${path}" has the roles of both ${found.join(' and ')}, so two ${side} adapters would share it`);
  return found[0] ?? null;
}

interface Group {
  /** Module path the parameter keys hang under (`model.layers.0.zeroi2v_attn_in`). */
  key: string;
  place: Place;
  width: number;
  paths: string[];
}

interface Plan {
  groups: Map<string, Group>;
  /** The input- and output-side group of every target. */
  byTarget: Map<string, { layer: Linear; input: Group | null; output: Group | null }>;
}

/** Which shared adapter every target projection uses, and each adapter's width. */
function plan(c: ZeroI2VConfig, targets: readonly TargetInfo[], d: AdapterDescriptor): Plan {
  const groups = new Map<string, Group>();
  const byTarget: Plan['byTarget'] = new Map();
  const groupFor = (t: TargetInfo, place: Place, width: number): Group => {
    const block = blockPath(t.path, c, d);
    const key = `${block ? `${block}.` : ''}zeroi2v_${place}`;
    let g = groups.get(key);
    if (!g) groups.set(key, (g = { key, place, width, paths: [] }));
    if (g.width !== width) {
      throw new AdaptkitError(`"${t.path}" ${PLACE_SPECS[place].side === 'input' ? 'reads' : 'writes'} ${width} features, but ${g.paths[0]} of the same ${place} adapter ${g.width}`);
    }
    g.paths.push(t.path);
    return g;
  };
  for (const t of targets) {
    if (!(t.module instanceof Linear)) throw new AdaptkitError(`ZEROI2V folds into linear layers; "${t.path}" is a ${t.module.constructor.name}`);
    const inPlace = placeOf(t.path, 'input', c, d);
    const outPlace = placeOf(t.path, 'output', c, d);
    if (!inPlace && !outPlace) continue;
    byTarget.set(t.path, {
      layer: t.module,
      input: inPlace ? groupFor(t, inPlace, t.module.inFeatures) : null,
      output: outPlace ? groupFor(t, outPlace, t.module.outFeatures) : null,
    });
  }
  return { groups, byTarget };
}

/** One linear bottleneck M = I + s·U·D, shared by the projections of one place in one block. */
export class LinearBottleneck {
  constructor(readonly key: string, readonly place: Place, public down: Tensor, public up: Tensor, readonly scale: number, readonly dropoutP: number) {}

  /** M applied to every feature vector of x (its last axis): x + s·(x·Dᵀ)·Uᵀ. */
  forward(x: Tensor): Tensor {
    const h = linear(x, this.down);
    return addmm(x, mul(this.dropoutP > 0 ? dropout(h, this.dropoutP) : h, this.scale), transpose(this.up));
  }

  /** M·m for m [d, n]. */
  left(m: Tensor): Tensor {
    return add(m, mul(matmul(this.up, matmul(this.down, m)), this.scale));
  }

  /** m·M for m [n, d]. */
  right(m: Tensor): Tensor {
    return add(m, mul(matmul(matmul(m, this.up), this.down), this.scale));
  }
}

/** A projection with the adapter on its input (W·M) and/or on its output (M·W). */
export class ZeroI2VDelta extends Module implements LayerDelta {
  // private, so the shared adapters are neither parameters of every delta nor saved per layer
  readonly #base: Linear;
  readonly #input: LinearBottleneck | null;
  readonly #output: LinearBottleneck | null;

  constructor(readonly adapterName: string, base: Linear, input: LinearBottleneck | null, output: LinearBottleneck | null) {
    super();
    this.#base = base;
    this.#input = input;
    this.#output = output;
  }

  get base(): Linear {
    return this.#base;
  }

  get input(): LinearBottleneck | null {
    return this.#input;
  }

  get output(): LinearBottleneck | null {
    return this.#output;
  }

  transformInput(x: Tensor): Tensor {
    return this.#input ? this.#input.forward(x) : x;
  }

  apply(_x: Tensor, y: Tensor): Tensor {
    return this.#output ? this.#output.forward(y) : y;
  }

  mergeWeight(weight: Tensor): Tensor {
    return noGrad(() => {
      const fifo = this.#base.fanInFanOut;
      let w = fifo ? transpose(weight) : weight;
      if (this.#input) w = this.#input.right(w);
      if (this.#output) w = this.#output.left(w);
      return clone(fifo ? transpose(w) : w);
    });
  }

  mergeBias(bias: Tensor | null): Tensor | null {
    if (!bias || !this.#output) return bias;
    return noGrad(() => clone(reshape(this.#output!.left(reshape(bias, [-1, 1])), [-1])));
  }
}

export class ZeroI2VAdapter implements AdapterInstance {
  readonly method = ZEROI2V;
  readonly deltas = new Map<string, ZeroI2VDelta>();
  readonly adapters = new Map<string, LinearBottleneck>();

  constructor(readonly name: string, readonly config: ZeroI2VConfig) {}

  parameters(): Tensor[] {
    return [...this.adapters.values()].flatMap((a) => [a.down, a.up]);
  }

  stateDict(): Map<string, Tensor> {
    const out = new Map<string, Tensor>();
    for (const [key, a] of this.adapters) {
      out.set(peftKey(key, 'down.weight'), a.down);
      out.set(peftKey(key, 'up.weight'), a.up);
    }
    return out;
  }

  loadStateDict(tensors: Map<string, Tensor>, source: string): void {
    loadInto(this.stateDict(), tensors, source);
  }

  configJson(): RawAdapterConfig {
    const c = this.config;
    return { ...baseJson(c), dropout: c.dropout, places: [...c.places], r: c.r, scale: c.scale };
  }
}

function create(name: string, cfg: BaseAdapterConfig, targets: TargetInfo[], ctx: CreateContext): AdapterInstance {
  const c = cfg as ZeroI2VConfig;
  const inst = new ZeroI2VAdapter(name, c);
  const { groups, byTarget } = plan(c, targets, ctx.descriptor);
  for (const g of groups.values()) {
    // D as LoRA's A (Kaiming-uniform), U at zero: a new adapter is the identity
    const bound = 1 / Math.sqrt(g.width);
    const down = parameter(rand([c.r, g.width], { low: -bound, high: bound, rng: ctx.rng }), `${g.key}.down.weight`);
    const up = parameter(zeros([g.width, c.r]), `${g.key}.up.weight`);
    inst.adapters.set(g.key, new LinearBottleneck(g.key, g.place, down, up, c.scale, c.dropout));
  }
  for (const [path, t] of byTarget) {
    const adapter = (g: Group | null) => (g ? inst.adapters.get(g.key)! : null);
    inst.deltas.set(path, new ZeroI2VDelta(name, t.layer, adapter(t.input), adapter(t.output)));
  }
  return inst;
}

const PLACES_OPTION: MethodOption = {
  name: 'places', type: 'list', description: `where ZeroI2V linear adapters go: comma-separated ${PLACES.join(', ')} (default all)`,
};

export const ZEROI2V: AdapterMethod = {
  exports: { LORA: (am, name) => zeroi2vToLora(am, name) },
  peftType: 'ZEROI2V',
  description: 'linear bottleneck adapters at attention and MLP inputs and outputs, folded into the projections after training (ZeroI2V, Li et al. 2024)',
  kind: 'tuner',
  parseConfig: parse,
  defaultTargets: (model, cfg) => placeTargets(model, (cfg as ZeroI2VConfig).places),
  create,
  countParameters(cfg, targets, model) {
    const c = cfg as ZeroI2VConfig;
    let n = 0;
    for (const g of plan(c, targets, model).groups.values()) n += 2 * c.r * g.width;
    return n;
  },
  presets: [{
    name: 'zeroi2v',
    description: 'ZeroI2V linear adapters at the attention and MLP inputs and outputs of every block (r 8, scale 0.5); merging folds them away',
    config: (o) => ({ peft_type: 'ZEROI2V', r: num(o, 'r', 8), dropout: num(o, 'dropout', 0), ...(o.places === undefined ? {} : { places: [o.places].flat() }) }),
  }],
  // no --targets: the places are found by model roles
  options: [RANK, DROPOUT, PLACES_OPTION],
  floatKeys: ['scale', 'dropout'],
  mergeable: true,
  summary: (cfg) => ({ r: (cfg as ZeroI2VConfig).r, scale: (cfg as ZeroI2VConfig).scale, places: (cfg as ZeroI2VConfig).places }),
};

registerMethod(ZEROI2V);

/** Weight as [out, in] whatever the layer's storage layout. */
function outIn(layer: Linear): Tensor {
  return layer.fanInFanOut ? transpose(layer.weight) : layer.weight;
}

/**
 * A ZEROI2V adapter's weight change as an exact PEFT LoRA (scaling 1: lora_alpha = r). Per target
 * with W [out, in]:
 *   input side  W' − W = s·W·U·D:  B = s·W·U [out, r], A = D [r, in];
 *   output side W' − W = s·U·D·W:  B = s·U [out, r],   A = D·W [r, in];
 *   both        W' − W = M_o·s·W·U_i·D_i + s·U_o·D_o·W: B = [M_o·s·W·U_i, s·U_o], A = [D_i; D_o·W],
 *               rank 2r (rank_pattern / alpha_pattern say so).
 * An output-side adapter also changes the bias (b' = M·b): then bias is "lora_only" and every
 * target carries its folded bias as `<path>.base_layer.bias` (the base bias, or zeros where the
 * layer has none). Base weights are the ones the adapter was created on, whatever is active.
 */
export function zeroi2vToLora(am: AdapterModel, name: string): { config: RawAdapterConfig; tensors: Map<string, Tensor> } {
  const inst = am.adapters.get(name);
  if (!inst) throw new AdaptkitError(`no adapter named "${name}" (have: ${[...am.adapters.keys()].join(', ') || 'none'})`);
  if (!(inst instanceof ZeroI2VAdapter)) throw new AdaptkitError(`adapter "${name}" is a ${inst.method.peftType} adapter, not ZEROI2V`);
  const c = inst.config;
  const paths = [...inst.deltas.keys()];
  const layouts = new Set([...inst.deltas.values()].map((d) => d.base.fanInFanOut));
  if (layouts.size > 1) throw new AdaptkitError(`adapter "${name}": its layers mix [out, in] and [in, out] weight layouts, which one LoRA config cannot describe`);
  const biasChanges = [...inst.deltas.values()].some((d) => d.output && d.base.bias);
  const tensors = new Map<string, Tensor>();
  const rankPattern: Record<string, number> = {};
  noGrad(() => {
    for (const [path, d] of inst.deltas) {
      const w = outIn(d.base);
      const i = d.input;
      const o = d.output;
      let A: Tensor;
      let B: Tensor;
      if (i && o) {
        A = concat([i.down, matmul(o.down, w)], 0);
        B = concat([o.left(mul(matmul(w, i.up), i.scale)), mul(o.up, o.scale)], 1);
        rankPattern[path] = 2 * c.r;
      } else if (i) {
        A = i.down;
        B = mul(matmul(w, i.up), i.scale);
      } else {
        A = matmul(o!.down, w);
        B = mul(o!.up, o!.scale);
      }
      tensors.set(peftKey(path, 'lora_A.weight'), clone(A));
      tensors.set(peftKey(path, 'lora_B.weight'), clone(B));
      if (biasChanges) {
        const b = d.base.bias;
        tensors.set(peftKey(path, 'base_layer.bias'), !b ? zeros([d.base.outFeatures]) : d.output ? d.mergeBias(b)! : clone(b));
      }
    }
    // trained copies of modules_to_save travel with the LoRA, as a saved adapter carries them
    for (const [path, m] of am.saved.get(name) ?? []) for (const [k, t] of m.namedParameters()) tensors.set(peftKey(path, k), clone(t));
  });
  const config: RawAdapterConfig = {
    ...baseJson(c),
    peft_type: 'LORA',
    target_modules: paths,
    alpha_pattern: { ...rankPattern },
    bias: biasChanges ? 'lora_only' : 'none',
    fan_in_fan_out: [...layouts][0] ?? false,
    init_lora_weights: true,
    layer_replication: null,
    // target_modules lists full paths, so the layer selection is already in it
    layers_pattern: null,
    layers_to_transform: null,
    exclude_modules: null,
    loftq_config: {},
    lora_alpha: c.r,
    lora_dropout: 0,
    megatron_config: null,
    megatron_core: 'megatron.core',
    r: c.r,
    rank_pattern: rankPattern,
    use_dora: false,
    use_rslora: false,
  };
  return { config, tensors };
}

/** `zeroi2vToLora` written as a PEFT LoRA folder (adapter_config.json + adapter_model.safetensors). */
export function saveZeroi2vAsLora(am: AdapterModel, name: string, dir: string): void {
  const { config, tensors } = zeroi2vToLora(am, name);
  try {
    writeFileAtomic(join(dir, 'adapter_model.safetensors'), serializeSafetensors(Object.fromEntries(tensors), { metadata: { format: 'pt' } }));
    writeFileAtomic(join(dir, 'adapter_config.json'), Buffer.from(pythonJson(config, ['lora_alpha', 'lora_dropout'])));
  } finally {
    for (const t of tensors.values()) t.dispose();
  }
}
