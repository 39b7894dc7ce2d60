export { setBackend, getBackend, nativeBackend, jsKernels, nativeLoadError, type BackendName, type NativeBackend } from './backend.js';
export * as quant from './quant/index.js';
