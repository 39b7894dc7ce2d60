export { Module } from './module.js';
export { Linear, Embedding, RMSNorm, LayerNorm, type LinearLike } from './layers.js';
