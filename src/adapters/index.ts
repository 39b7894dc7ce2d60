import './methods/lora.js';
import './methods/ia3.js';

export { AdapterModel, type AddAdapterOptions } from './adapter-model.js';
export { registerMethod, getMethod, methodNames } from './registry.js';
export { findTargets } from './targets.js';
export { AdaptedLayer } from './wrapper.js';
export { pythonJson } from './pyjson.js';
export type { AdapterMethod, AdapterInstance, LayerDelta, BaseAdapterConfig, RawAdapterConfig, TargetInfo } from './types.js';
export { LoraDelta, rankAndScale, type LoraConfig } from './methods/lora.js';
export { IA3Delta, type IA3Config } from './methods/ia3.js';
export { MixedLoraDelta, RowRouting, buildMixedDeltas } from './mixed.js';
export { addWeightedAdapter, COMBINATIONS, type Combination, type CombineOptions } from './combine.js';
