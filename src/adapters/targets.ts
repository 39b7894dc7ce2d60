/** Which modules a config targets, with PEFT's matching rules. */
import { AdaptkitError } from '../tensor/index.js';
import { Linear, type Module } from '../nn/index.js';
import type { BaseAdapterConfig, TargetInfo } from './types.js';
import { AdaptedLayer } from './wrapper.js';

/** Output heads that `all-linear` leaves alone (as PEFT does). */
const HEADS = new Set(['lm_head', 'classifier', 'score']);

function fullMatch(re: string, s: string): boolean {
  try {
    return new RegExp(`^(?:${re})$`).test(s);
  } catch (e) {
    throw new AdaptkitError(`invalid module regex ${JSON.stringify(re)}: ${(e as Error).message}`);
  }
}

/** PEFT semantics: a list matches a path equal to or ending with ".<entry>"; a string is a full-match regex. */
export function matches(spec: string[] | string, path: string): string | null {
  if (typeof spec === 'string') return fullMatch(spec, path) ? path.split('.').pop()! : null;
  for (const t of spec) if (path === t || path.endsWith(`.${t}`)) return t;
  return null;
}

export function layerIndexOf(path: string, pattern: string[] | string | null): number | null {
  const pats = pattern === null ? ['layers', 'h', 'layer', 'blocks'] : typeof pattern === 'string' ? [pattern] : pattern;
  for (const p of pats) {
    const m = new RegExp(`(?:^|\\.)${p}\\.(\\d+)(?:\\.|$)`).exec(path);
    if (m) return Number(m[1]);
  }
  return null;
}

/** Real (unwrapped) modules with their paths; adapter internals are skipped. */
export function baseModules(model: Module): [string, Module][] {
  return model.namedModules().filter(([p]) => p !== '' && !/(^|\.)(base_layer|deltas)(\.|$)/.test(p));
}

function unwrap(m: Module): Module {
  return m instanceof AdaptedLayer ? m.base_layer : m;
}

export function findTargets(model: Module, config: BaseAdapterConfig, defaults: string[] | string | null): TargetInfo[] {
  const spec = config.target_modules ?? defaults;
  if (spec === null) throw new AdaptkitError(`${config.peft_type}: no target_modules given and the model has no default targets`);
  const all = baseModules(model);
  const layers = config.layers_to_transform === null ? null : [config.layers_to_transform].flat();
  const out: TargetInfo[] = [];
  for (const [path, mod] of all) {
    const base = unwrap(mod);
    let name: string | null;
    if (spec === 'all-linear') {
      name = base instanceof Linear && !HEADS.has(path.split('.').pop()!) ? path.split('.').pop()! : null;
    } else {
      name = matches(spec, path);
    }
    if (name === null) continue;
    if (config.exclude_modules !== null && matches(config.exclude_modules, path) !== null) continue;
    const layerIndex = layerIndexOf(path, config.layers_pattern);
    if (layers && (layerIndex === null || !layers.includes(layerIndex))) continue;
    out.push({ path, module: base, name, layerIndex });
  }
  if (out.length === 0) {
    const linear = all.filter(([, m]) => unwrap(m) instanceof Linear).map(([p]) => p);
    const names = [...new Set(linear.map((p) => p.split('.').pop()!))].sort();
    throw new AdaptkitError(
      `target_modules ${JSON.stringify(spec)} matched no module of the model. Linear modules are named: ${names.join(', ')}`,
    );
  }
  return out;
}
