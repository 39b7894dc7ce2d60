export { Module } from './module.js';
export { Linear, Embedding, RMSNorm, LayerNorm, type LinearLike, type EmbeddingLike } from './layers.js';
