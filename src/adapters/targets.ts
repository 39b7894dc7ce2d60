/** Which modules a config targets, with PEFT's matching rules, and the model's adapter roles. */
import { AdaptkitError } from '../tensor/index.js';
import { type AdapterDescriptor, type Module, type TargetRole, type TargetSpec, describeModel, isLinearLayer } from '../nn/index.js';
import type { AdapterMethod, BaseAdapterConfig, TargetInfo } from './types.js';
import { AdaptedLayer } from './wrapper.js';
import { escapePattern, fullMatch, search } from './patterns.js';

/** PEFT semantics: a list matches a path equal to or ending with ".<entry>"; a string is a full-match regex. */
export function matches(spec: TargetSpec, path: string, field = 'target_modules'): string | null {
  if (typeof spec === 'string') return fullMatch(spec, path, field) ? path.split('.').pop()! : null;
  for (const t of spec) if (path === t || path.endsWith(`.${t}`)) return t;
  return null;
}

export function layerIndexOf(path: string, pattern: string[] | string | null, defaults: readonly string[]): number | null {
  const pats = pattern === null ? defaults : typeof pattern === 'string' ? [pattern] : pattern;
  for (const p of pats) {
    const m = search(`(?:^|\\.)(?:${p})\\.(\\d+)(?:\\.|$)`, path, 'layers_pattern');
    if (m) return Number(m[1]);
  }
  return null;
}

/** Module paths of adapter internals and hook slots, which targeting never sees. */
const INTERNAL = /(^|\.)(base_layer|deltas|kv_prefix)(\.|$)/;

/** Real (unwrapped) modules with their paths; adapter internals are skipped. */
export function baseModules(model: Module): [string, Module][] {
  return model.namedModules().filter(([p]) => p !== '' && !INTERNAL.test(p));
}

function unwrap(m: Module): Module {
  return m instanceof AdaptedLayer ? m.base_layer : m;
}

/** One spec covering several (a list when all are lists, else one regex). */
export function unionTargets(specs: readonly (TargetSpec | undefined)[]): TargetSpec | null {
  const given = specs.filter((s): s is TargetSpec => s !== undefined);
  if (given.length === 0) return null;
  if (given.every((s) => Array.isArray(s))) return [...new Set(given.flat())];
  return given.map((s) => `(?:${typeof s === 'string' ? s : s.map((x) => `(?:.*\\.)?${escapePattern(x)}`).join('|')})`).join('|');
}

/** The model's modules for these roles (roles it lacks are left out). */
export function roleTargets(d: AdapterDescriptor, roles: readonly TargetRole[]): TargetSpec | null {
  return unionTargets(roles.map((r) => d.roles[r]));
}

/** What a config targets when it names nothing: the method's choice for this model, or the model's default. */
export function defaultTargetsFor(method: AdapterMethod, model: Module, config: BaseAdapterConfig): TargetSpec | null {
  const d = describeModel(model);
  return method.defaultTargets ? method.defaultTargets(d, config) : d.defaultTargets;
}

export function findTargets(model: Module, config: BaseAdapterConfig, defaults: TargetSpec | null): TargetInfo[] {
  const spec = config.target_modules ?? defaults;
  if (spec === null) throw new AdaptkitError(`${config.peft_type}: no target_modules given and the model has no default targets`);
  const d = describeModel(model);
  const heads = new Set(d.heads);
  const all = baseModules(model);
  const layers = config.layers_to_transform === null ? null : [config.layers_to_transform].flat();
  const out: TargetInfo[] = [];
  for (const [path, mod] of all) {
    const base = unwrap(mod);
    let name: string | null;
    if (spec === 'all-linear') {
      // as PEFT: every linear layer but the output head
      name = isLinearLayer(base) && !heads.has(path) && !heads.has(path.split('.').pop()!) ? path.split('.').pop()! : null;
    } else {
      name = matches(spec, path);
    }
    if (name === null) continue;
    if (config.exclude_modules !== null && matches(config.exclude_modules, path, 'exclude_modules') !== null) continue;
    const layerIndex = layerIndexOf(path, config.layers_pattern, d.layersPattern);
    if (layers && (layerIndex === null || !layers.includes(layerIndex))) continue;
    out.push({ path, module: base, name, layerIndex });
  }
  if (out.length === 0) {
    const linear = all.filter(([, m]) => isLinearLayer(unwrap(m))).map(([p]) => p);
    const names = [...new Set(linear.map((p) => p.split('.').pop()!))].sort();
    throw new AdaptkitError(
      `target_modules ${JSON.stringify(spec)} matched no module of the model. Linear modules are named: ${names.join(', ')}`,
    );
  }
  return out;
}
