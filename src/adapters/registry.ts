import { AdaptkitError } from '../tensor/index.js';
import type { AdapterInstance, AdapterMethod, MethodOption, MethodPreset } from './types.js';

const methods = new Map<string, AdapterMethod>();

/** Make a method available by its peft_type. Each method file calls this once. */
export function registerMethod(m: AdapterMethod): void {
  for (const p of m.presets ?? []) {
    const other = findPreset(p.name);
    if (other && other.method.peftType !== m.peftType) throw new AdaptkitError(`preset "${p.name}" of ${m.peftType} is already a preset of ${other.method.peftType}`);
  }
  methods.set(m.peftType, m);
}

export function getMethod(peftType: unknown, source?: string): AdapterMethod {
  const m = typeof peftType === 'string' ? methods.get(peftType) : undefined;
  if (!m) {
    const shown = typeof peftType === 'string' ? JSON.stringify(peftType.slice(0, 60)) : peftType === undefined ? 'missing' : peftType === null ? 'null' : `not a string (${Array.isArray(peftType) ? 'a list' : typeof peftType})`;
    throw new AdaptkitError(`${source ? `${source}: ` : ''}peft_type ${shown}: unknown (known: ${[...methods.keys()].sort().join(', ')})`);
  }
  return m;
}

export function methodNames(): string[] {
  return [...methods.keys()].sort();
}

export function registeredMethods(): AdapterMethod[] {
  return methodNames().map((n) => methods.get(n)!);
}

function findPreset(name: string): { method: AdapterMethod; preset: MethodPreset } | null {
  for (const m of methods.values()) for (const p of m.presets ?? []) if (p.name === name) return { method: m, preset: p };
  return null;
}

/** Every preset name (what `--method` accepts besides peft types), in registration order. */
export function presetNames(): string[] {
  return [...methods.values()].flatMap((m) => (m.presets ?? []).map((p) => p.name));
}

/**
 * A `--method` value: a preset name ("dora"), or a peft_type in any case ("lora", "PREFIX_TUNING")
 * meaning that method's first preset.
 */
export function resolvePreset(name: string): { method: AdapterMethod; preset: MethodPreset } {
  const p = findPreset(name);
  if (p) return p;
  const m = methods.get(name.toUpperCase());
  if (m?.presets?.length) return { method: m, preset: m.presets[0]! };
  throw new AdaptkitError(`unknown method "${name}" (registered: ${presetNames().join(', ')}; or a peft_type: ${methodNames().join(', ')})`);
}

/** The union of every method's CLI options (each name once). */
export function methodOptions(): MethodOption[] {
  const out = new Map<string, MethodOption>();
  for (const m of methods.values()) for (const o of m.options ?? []) if (!out.has(o.name)) out.set(o.name, o);
  return [...out.values()];
}

/** Whether an adapter folds into the base weights. */
export function isMergeable(inst: AdapterInstance): boolean {
  const m = inst.method.mergeable;
  return typeof m === 'function' ? m(inst) : !!m;
}
