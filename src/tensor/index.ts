import './methods.js';

export * from './dtype.js';
export * from './errors.js';
export * from './shape.js';
export * from './random.js';
export { bufferPool } from './storage.js';
export { Tensor, tidy, dispose, empty } from './tensor.js';
export * from './create.js';
export * from './ops.js';
export * from './composite.js';
export { backward, noGrad, isGradEnabled, checkpoint } from './autograd.js';
export { VJP, sumTo } from './vjp.js';
export { svd, inverse, matmul64, type SVD } from './linalg.js';
export { type KernelSet, type UnaryOp, type BinaryOp, type CompareOp, type StridedView, type MatmulArgs, type AttentionArgs, type AttentionBackwardArgs, type PackedWeight, type QuantMatmulArgs, UNARY_OPS, BINARY_OPS, COMPARE_OPS, installKernels, kernels } from './kernels.js';
export { training, inference, isTraining } from './mode.js';
