export { Module } from './module.js';
export { Linear, Embedding, RMSNorm, LayerNorm } from './layers.js';
