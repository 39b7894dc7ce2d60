/**
 * Modules are plain trees: a module's parameters are its own Tensor-valued properties and its
 * children are its Module-valued properties (or arrays of modules). Property names are the names
 * in Hugging Face checkpoints (`self_attn.q_proj.weight`), so a module's path is its state-dict key.
 */
import { AdaptkitError, Tensor } from '../tensor/index.js';

export abstract class Module {
  /** Direct children and parameters, in declaration order. */
  protected *entries(): Generator<[string, Tensor | Module]> {
    for (const [k, v] of Object.entries(this)) {
      if (v instanceof Tensor || v instanceof Module) yield [k, v];
      else if (Array.isArray(v)) {
        for (let i = 0; i < v.length; i++) {
          const item = v[i];
          if (item instanceof Module || item instanceof Tensor) yield [`${k}.${i}`, item];
        }
      }
    }
  }

  /** Every parameter with its dotted path (`layers.0.self_attn.q_proj.weight`). */
  namedParameters(prefix = ''): [string, Tensor][] {
    const out: [string, Tensor][] = [];
    for (const [k, v] of this.entries()) {
      const name = prefix ? `${prefix}.${k}` : k;
      if (v instanceof Tensor) out.push([name, v]);
      else out.push(...v.namedParameters(name));
    }
    return out;
  }

  parameters(): Tensor[] {
    return this.namedParameters().map(([, t]) => t);
  }

  trainableParameters(): Tensor[] {
    return this.parameters().filter((t) => t.requiresGrad);
  }

  /** This module and every descendant with its dotted path ('' for this module). */
  namedModules(prefix = ''): [string, Module][] {
    const out: [string, Module][] = [[prefix, this]];
    for (const [k, v] of this.entries()) {
      if (v instanceof Module) out.push(...v.namedModules(prefix ? `${prefix}.${k}` : k));
    }
    return out;
  }

  /** Stop (or start) computing gradients for every parameter below this module. */
  freeze(frozen = true): this {
    for (const p of this.parameters()) p.requiresGrad = !frozen;
    return this;
  }

  unfreeze(): this {
    return this.freeze(false);
  }

  /** The module at a dotted path (array children are indexed: `layers.0.mlp`). */
  get(path: string): Module {
    let m: unknown = this;
    for (const part of path.split('.').filter(Boolean)) {
      m = (m as Record<string, unknown>)[part];
      if (m === undefined || m === null || (typeof m !== 'object')) {
        throw new AdaptkitError(`no module at "${path}" (stopped at "${part}")`);
      }
    }
    if (!(m instanceof Module)) throw new AdaptkitError(`no module at "${path}"`);
    return m;
  }

  /** Swap the module at a dotted path for another (how adapters wrap layers). Returns the old one. */
  replace(path: string, next: Module): Module {
    const parts = path.split('.');
    const last = parts.pop();
    if (!last) throw new AdaptkitError('replace: empty path');
    let parent: unknown = this;
    for (const part of parts) {
      parent = (parent as Record<string, unknown>)[part];
      if (parent === undefined || parent === null || typeof parent !== 'object') throw new AdaptkitError(`replace: no module at "${path}"`);
    }
    const holder = parent as Record<string, unknown>;
    const old = holder[last];
    if (!(old instanceof Module)) throw new AdaptkitError(`replace: no module at "${path}"`);
    holder[last] = next;
    return old;
  }

  /**
   * Put a module into a hook slot: a property that holds a module or null (an attention layer's
   * `kv_prefix`). Returns what was there.
   */
  setSlot(path: string, next: Module | null): Module | null {
    const parts = path.split('.');
    const last = parts.pop()!;
    const holder = parts.length ? (this.get(parts.join('.')) as unknown as Record<string, unknown>) : (this as unknown as Record<string, unknown>);
    if (!(last in holder)) throw new AdaptkitError(`no module or hook slot at "${path}"`);
    const old = holder[last];
    if (old !== null && !(old instanceof Module)) throw new AdaptkitError(`"${path}" is not a module slot`);
    holder[last] = next;
    return old as Module | null;
  }

  /** Parameter count (all, or only trainable). */
  numParameters(trainableOnly = false): number {
    return (trainableOnly ? this.trainableParameters() : this.parameters()).reduce((n, t) => n + t.size, 0);
  }

  /** Free every parameter's storage. */
  dispose(): void {
    for (const p of this.parameters()) p.dispose();
  }
}
