export { Module } from './module.js';
export { Linear, Embedding, RMSNorm, LayerNorm, type LinearLike, type EmbeddingLike } from './layers.js';
export {
  type AdapterDescriptor, type AttentionSlot, type DescribedModel, type KVPrefixHook, type KVPrefixStep, type PrefixCache, type TargetRole, type TargetSpec,
  describeModel,
} from './descriptor.js';
export {
  QuantLinear, type LinearLayer, isLinearLayer, weightOutIn, productNoBias, packedBytes, quantizeOptionsOf,
} from './quant-linear.js';
