/**
 * Plugins: modules that register adapter methods or model families (a method is one file that
 * calls registerMethod). They are named by `--plugin FILE` (repeatable) or $ADAPTKIT_PLUGINS
 * (comma-separated), and imported before the commands are built, so `train --method`, `--help`
 * and the server know their methods.
 */
import { existsSync } from 'node:fs';
import { isAbsolute, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { AdaptkitError } from '../tensor/index.js';

/** Plugin module specifiers from the arguments and the environment. */
export function pluginsFrom(argv: readonly string[], env = process.env.ADAPTKIT_PLUGINS): string[] {
  const out = (env ?? '').split(',').map((s) => s.trim()).filter(Boolean);
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '--plugin' && i + 1 < argv.length) out.push(argv[++i]!);
    else if (a.startsWith('--plugin=')) out.push(a.slice('--plugin='.length));
  }
  return out;
}

/** A URL to import for a plugin: a file path (relative to the working folder) or a package name. */
export function pluginUrl(spec: string): string {
  if (spec.startsWith('file:')) return spec;
  const looksLikePath = spec.startsWith('.') || isAbsolute(spec) || /\.(m?[jt]s)$/.test(spec);
  if (!looksLikePath) return spec;
  const file = resolve(spec);
  if (!existsSync(file)) throw new AdaptkitError(`plugin ${spec}: no such file`);
  return pathToFileURL(file).href;
}

const loaded: string[] = [];

/** The plugins imported so far, as URLs (a server hands them to its engine thread). */
export function loadedPlugins(): string[] {
  return [...loaded];
}

export async function loadPlugins(specs: readonly string[]): Promise<void> {
  for (const s of specs) {
    try {
      const url = pluginUrl(s);
      await import(url);
      if (!loaded.includes(url)) loaded.push(url);
    } catch (e) {
      if (e instanceof AdaptkitError) throw e;
      throw new AdaptkitError(`plugin ${s} could not be loaded: ${(e as Error).message}`);
    }
  }
}
