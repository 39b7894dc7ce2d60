/**
 * Frozen source adapters for methods that combine single-task bottleneck adapters (AdapterFusion,
 * ScaLearn): reading them from their adapter folders, checking that they can be combined,
 * running them, and keeping them inside the combining adapter's own files.
 *
 * At every location the sources share, each source i gives its up-projection output without its
 * residual, u_i = s_i·up_i(act_i(down_i(z_i))), from the input its placement reads: the base
 * layer's output y for series placements (after the source's own layer norm with layer_norm
 * "before"), the layer's input x for the parallel placement. The combining method adds the
 * residual y once, after it has combined the u_i.
 *
 * Config fields (shared by FUSION and SCALEARN):
 *   source_adapters  list of BOTTLENECK adapter folders (what training reads; MoSA adapters save
 *                    as BOTTLENECK and qualify). Never written back: the saved adapter carries
 *                    the sources itself, so a copied folder loads without them.
 *   source_configs   the sources' adapter configs, as BOTTLENECK writes them (what a saved
 *                    adapter holds instead of folders; their weights are in its safetensors).
 *   source_names     a name per source (default: each folder's name, or that of the run folder
 *                    holding an `adapter` folder); AdapterFusion's fusion name joins them by ",".
 *   num_sources      with neither list: that many (default 2) fresh Pfeiffer GELU sources drawn at
 *                    random from the seed, for tests of the combination alone.
 * The sources must all have the same placement and adapt the same layers; layer_norm "after"
 * and residual false are refused (a post-norm or a missing residual of one source has no place
 * in a combination of up-projection outputs). The combining adapter's target_modules,
 * layers_to_transform and layers_pattern default to the first source's.
 *
 * Saved keys: base_model.model.<path>.sources.<i>.<bottleneck key> (adapter_down.weight, ...),
 * beside the combining method's own. The sources are constants: no gradient, no optimizer state,
 * not in parameters(); gradients pass through them to the layers below.
 */
import { basename, dirname, join } from 'node:path';
import { AdaptkitError, type Tensor, concat, layerNorm, mul, noGrad, randn, reshape } from '../../tensor/index.js';
import { Module } from '../../nn/index.js';
import { AdapterConfigError, fail, optInt, parseBase, showValue } from '../config.js';
import { PEFT_MODEL_PREFIX, adapterWeightsFile, readAdapterConfig, readTensorMap } from '../files.js';
import { defaultTargetsFor, findTargets, matches } from '../targets.js';
import { BOTTLENECK, type BottleneckConfig, type BottleneckDelta, type Placement, activate, parseBottleneck, targetWidth } from './bottleneck.js';
import type { AdapterInstance, BaseAdapterConfig, CreateContext, MethodOption, PresetOptions, RawAdapterConfig, TargetInfo } from '../types.js';

export const SOURCE_ADAPTERS: MethodOption = {
  name: 'source-adapters', type: 'list',
  description: 'frozen BOTTLENECK adapter folders that AdapterFusion / ScaLearn combine (comma-separated; include the target task\'s own)',
};

export interface SourceSpec {
  name: string;
  /** The folder the weights are read from (null: fresh, or filled from the saved adapter). */
  dir: string | null;
  config: BottleneckConfig;
  /** The source's own modules_to_save (its task's head), whose saved weights are left out. */
  heads: string[] | null;
}

export interface SourcesConfig extends BaseAdapterConfig {
  sources: SourceSpec[];
}

/** The source fields of a preset's config from `--source-adapters`. */
export function sourcesOption(o: PresetOptions): { source_adapters?: string[] } {
  const s = o['source-adapters'];
  if (s === undefined) return {};
  return { source_adapters: Array.isArray(s) ? s : [String(s)] };
}

const NAME = /^[\w.-]{1,128}$/;

/** A source's default name: its folder's, or the run folder's for a run's `adapter` folder. */
function folderName(dir: string): string {
  const clean = dir.replace(/[/\\]+$/, '');
  const base = basename(clean);
  const pick = base === 'adapter' && basename(dirname(clean)) ? basename(dirname(clean)) : base;
  return pick.replace(/[^\w.-]/g, '_').slice(0, 120) || 'source';
}

function isObject(v: unknown): v is RawAdapterConfig {
  return v !== null && typeof v === 'object' && !Array.isArray(v);
}

/** The base fields and sources of a combining method's config. */
export function parseSources(raw: RawAdapterConfig, source: string, peftType: string): SourcesConfig {
  const base = parseBase(raw, peftType, source);
  const dirs = raw.source_adapters;
  const cfgs = raw.source_configs;
  const given = (v: unknown) => v !== undefined && v !== null;
  if (given(dirs) && given(cfgs)) fail(source, 'source_adapters', 'and "source_configs" are both given; a config names its sources one way (folders to read, or the configs a saved adapter carries)');
  let specs: { raw: RawAdapterConfig; dir: string | null; where: string }[];
  if (given(dirs)) {
    if (!Array.isArray(dirs) || dirs.length === 0 || !dirs.every((d) => typeof d === 'string' && d.length > 0)) {
      fail(source, 'source_adapters', `must be a non-empty list of adapter folders, got ${showValue(dirs)}`);
    }
    specs = (dirs as string[]).map((dir, i) => {
      let r: RawAdapterConfig;
      try {
        r = readAdapterConfig(dir);
      } catch (e) {
        throw new AdapterConfigError(`${source}: "source_adapters"[${i}]: ${(e as Error).message}`, { cause: e });
      }
      return { raw: r, dir, where: join(dir, 'adapter_config.json') };
    });
  } else if (given(cfgs)) {
    if (!Array.isArray(cfgs) || cfgs.length === 0 || !cfgs.every(isObject)) fail(source, 'source_configs', `must be a non-empty list of BOTTLENECK adapter configs, got ${showValue(cfgs)}`);
    specs = (cfgs as RawAdapterConfig[]).map((r, i) => ({ raw: r, dir: null, where: `${source} "source_configs"[${i}]` }));
  } else {
    const n = optInt(raw, 'num_sources', 2, source, 1);
    // smooth (GELU), so finite differences through an untrained combination see no kinks
    specs = Array.from({ length: n }, (_, i) => ({ raw: { peft_type: 'BOTTLENECK', adapter_type: 'pfeiffer', non_linearity: 'gelu' }, dir: null, where: `${source} fresh source ${i}` }));
  }
  if (given(raw.num_sources) && optInt(raw, 'num_sources', 2, source, 1) !== specs.length) {
    fail(source, 'num_sources', `is ${showValue(raw.num_sources)}, but ${specs.length} sources are given`);
  }
  const names = nameSources(raw, specs, source);
  const sources = specs.map((s, i): SourceSpec => {
    if (s.raw.peft_type !== 'BOTTLENECK') {
      throw new AdapterConfigError(`${s.where}: peft_type ${showValue(s.raw.peft_type)}; a source adapter must be a BOTTLENECK adapter (Pfeiffer, Houlsby or parallel placement)`);
    }
    const c = parseBottleneck(s.raw, s.where);
    if (c.layer_norm === 'after') throw new AdapterConfigError(`${s.where}: "layer_norm" is "after"; a source adapter normalized after its residual cannot be combined (use "none" or "before")`);
    if (!c.residual) throw new AdapterConfigError(`${s.where}: "residual" is false; a source adapter must add its output to the layer's (the combination adds that residual once)`);
    // a source's classification head is its own task's, not the combination's
    return { name: names[i]!, dir: s.dir, config: { ...c, modules_to_save: null }, heads: c.modules_to_save };
  });
  const first = sources[0]!;
  for (const s of sources.slice(1)) {
    if (s.config.adapter_type !== first.config.adapter_type) {
      throw new AdapterConfigError(`${source}: source adapters must share one placement, but "${first.name}" is ${first.config.adapter_type} and "${s.name}" is ${s.config.adapter_type}`);
    }
  }
  const inherit = <K extends 'target_modules' | 'layers_to_transform' | 'layers_pattern'>(k: K) => base[k] ?? first.config[k];
  return {
    ...base,
    target_modules: inherit('target_modules'),
    layers_to_transform: inherit('layers_to_transform'),
    layers_pattern: inherit('layers_pattern'),
    sources,
  };
}

function nameSources(raw: RawAdapterConfig, specs: { dir: string | null }[], source: string): string[] {
  const v = raw.source_names;
  if (v !== undefined && v !== null) {
    if (!Array.isArray(v) || v.length !== specs.length || !v.every((x) => typeof x === 'string' && NAME.test(x))) {
      fail(source, 'source_names', `must list ${specs.length} names of letters, digits, _ . - (one per source), got ${showValue(v)}`);
    }
    if (new Set(v).size !== v.length) fail(source, 'source_names', `must not repeat a name, got ${showValue(v)}`);
    return v as string[];
  }
  const out: string[] = [];
  specs.forEach((s, i) => {
    let n = s.dir === null ? `source_${i}` : folderName(s.dir);
    if (out.includes(n)) n = `${n}_${i}`;
    out.push(n);
  });
  return out;
}

/** u_i of one source: its up-projection output from the input its placement reads, no residual. */
export function upOutput(d: BottleneckDelta, x: Tensor, y: Tensor): Tensor {
  const c = d.config;
  const ln = d.adapter_ln;
  const z = c.adapter_type === 'parallel' ? x : c.layer_norm === 'before' && ln ? layerNorm(y, ln.weight, ln.bias) : y;
  const h = d.adapter_up.forward(activate(d.adapter_down.forward(z), c.non_linearity));
  return c.scaling === 1 ? h : mul(h, c.scaling);
}

/** The state the sources read at a location (AdapterFusion's query): x beside the block, else y. */
export function sourceInput(placement: Placement, x: Tensor, y: Tensor): Tensor {
  return placement === 'parallel' ? x : y;
}

/** The u_i of every source stacked on a new second-to-last axis: [..., N, d]. */
export function stackOutputs(us: readonly Tensor[]): Tensor {
  const col = us.map((u) => reshape(u, [...u.shape.slice(0, -1), 1, u.shape[u.shape.length - 1]!]));
  return col.length === 1 ? col[0]! : concat(col, col[0]!.ndim - 2);
}

/** The frozen source adapters of one combining adapter, at every target it adapts. */
export class SourceSet {
  constructor(
    readonly specs: readonly SourceSpec[],
    /** One BOTTLENECK instance per source (frozen), holding its deltas by target path. */
    readonly instances: readonly AdapterInstance[],
  ) {}

  get size(): number {
    return this.specs.length;
  }

  get names(): string[] {
    return this.specs.map((s) => s.name);
  }

  /** The sources' deltas at a target path, in source order. */
  at(path: string): BottleneckDelta[] {
    return this.instances.map((inst) => inst.deltas.get(path) as unknown as BottleneckDelta);
  }

  /** The fields that describe the sources in the combining adapter's config. */
  configJson(): RawAdapterConfig {
    return { num_sources: this.size, source_configs: this.instances.map((i) => i.configJson()), source_names: this.names };
  }
}

function sameList(a: readonly string[], b: readonly string[]): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

function showPaths(paths: readonly string[]): string {
  return paths.length > 4 ? `${paths.slice(0, 4).join(', ')} and ${paths.length - 4} more` : paths.join(', ') || 'nothing';
}

/** A source's weight keys of modules_to_save (its task head), which the combination leaves out. */
function headKeys(tensors: Map<string, Tensor>, heads: string[] | null, own: ReadonlySet<string>): string[] {
  if (!heads?.length) return [];
  return [...tensors.keys()].filter((k) => {
    if (own.has(k) || !k.startsWith(PEFT_MODEL_PREFIX)) return false;
    const path = k.slice(PEFT_MODEL_PREFIX.length).split('.').slice(0, -1).join('.');
    return matches(heads, path, 'modules_to_save') !== null;
  });
}

/**
 * The frozen sources of a combining adapter at `targets`: read from their folders, or drawn at
 * random (fresh sources, and those a saved adapter's weights fill in afterwards).
 */
export function createSources(owner: string, cfg: SourcesConfig, targets: readonly TargetInfo[], ctx: CreateContext): SourceSet {
  const want = targets.map((t) => t.path);
  const instances = cfg.sources.map((s, i) => {
    const mine = findTargets(ctx.model, s.config, defaultTargetsFor(BOTTLENECK, ctx.model, s.config));
    const paths = mine.map((t) => t.path);
    if (!sameList(paths, want)) {
      throw new AdaptkitError(`source adapter "${s.name}"${s.dir ? ` (${s.dir})` : ''} adapts ${showPaths(paths)}, but the combination adapts ${showPaths(want)}; every source must adapt the same layers`);
    }
    const inst = BOTTLENECK.create(`${owner}.sources.${i}`, s.config, mine, ctx);
    for (const p of inst.parameters()) p.requiresGrad = false;
    if (s.dir) {
      const file = adapterWeightsFile(s.dir);
      const tensors = readTensorMap(file);
      try {
        const own = new Set(inst.stateDict().keys());
        for (const k of headKeys(tensors, s.heads, own)) tensors.delete(k);
        inst.loadStateDict(tensors, file);
      } finally {
        for (const t of tensors.values()) t.dispose();
      }
    } else {
      randomize(inst, ctx);
    }
    return inst;
  });
  return new SourceSet(cfg.sources, instances);
}

/** Non-zero weights for a source no folder fills: an untrained combination of them is not trivial. */
function randomize(inst: AdapterInstance, ctx: CreateContext): void {
  noGrad(() => {
    for (const d of inst.deltas.values()) {
      const b = d as unknown as BottleneckDelta;
      const [m, width] = b.adapter_down.weight.shape as [number, number];
      const fill = (t: Tensor | null, std: number) => {
        if (t) (t.storage.data as Float32Array).set(randn(t.shape, { std, rng: ctx.rng }).toArray() as Float32Array, t.offset);
      };
      fill(b.adapter_down.weight, 1 / Math.sqrt(width));
      fill(b.adapter_down.bias, 0.02);
      fill(b.adapter_up.weight, 1 / Math.sqrt(m));
      fill(b.adapter_up.bias, 0.02);
    }
  });
}

/** The one width of every target (a combination shared by all layers needs it). */
export function commonWidth(targets: readonly TargetInfo[], what: string): number {
  const widths = [...new Set(targets.map((t) => targetWidth(t)))];
  if (widths.length !== 1) throw new AdaptkitError(`${what} needs targets of one width, but they have widths ${widths.join(', ')}`);
  return widths[0]!;
}
