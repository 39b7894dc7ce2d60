/**
 * adaptkit: adapter-based parameter-efficient fine-tuning for TypeScript.
 * Importing the package installs the default backend (native when available, else js).
 */
import { getBackend } from './backend/index.js';

export * from './tensor/index.js';
export * from './backend/index.js';
export * from './nn/index.js';
export * from './io/index.js';
export * from './models/index.js';
export * from './adapters/index.js';

getBackend();
export * from './train/index.js';
