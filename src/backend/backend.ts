/**
 * Backend selection. `js` is the pure-TypeScript reference; `native` is the C++ addon. The choice
 * comes from setBackend(), else ADAPTKIT_BACKEND=js|native, else native when it loads. If native
 * cannot load, adaptkit runs on js and prints one warning line.
 */
import { AdaptkitError, type KernelSet, installKernels } from '../tensor/index.js';
import { jsKernels } from './js/index.js';
import { type NativeBackend, loadNative, nativeLoadError } from './native/index.js';

export type BackendName = 'js' | 'native';

let current: KernelSet | null = null;
let warned = false;

function warnOnce(msg: string): void {
  if (warned) return;
  warned = true;
  process.emitWarning(msg, { code: 'ADAPTKIT_BACKEND' });
}

/** Switch backends. `native` falls back to `js` with a warning unless `strict` is set. */
export function setBackend(name: BackendName, opts: { strict?: boolean } = {}): KernelSet {
  if (name === 'js') {
    current = jsKernels;
  } else if (name === 'native') {
    const n = loadNative();
    if (!n) {
      if (opts.strict) throw new AdaptkitError(`native backend unavailable: ${nativeLoadError()}`);
      warnOnce(`adaptkit: native backend unavailable (${nativeLoadError()}); using the js backend`);
      current = jsKernels;
    } else {
      current = n;
    }
  } else {
    throw new AdaptkitError(`unknown backend "${String(name)}" (expected js or native)`);
  }
  installKernels(current);
  return current;
}

/** The active backend, choosing the default on first use. */
export function getBackend(): KernelSet {
  if (current) return current;
  const env = process.env.ADAPTKIT_BACKEND;
  if (env && env !== 'js' && env !== 'native') {
    throw new AdaptkitError(`ADAPTKIT_BACKEND must be js or native, got "${env}"`);
  }
  return setBackend((env as BackendName | undefined) ?? 'native');
}

/** The native backend if it loads (for thread control and benchmarks), else null. */
export function nativeBackend(): NativeBackend | null {
  return loadNative();
}

export { jsKernels, nativeLoadError };
export type { NativeBackend };
