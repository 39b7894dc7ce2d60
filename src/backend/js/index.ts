import type { KernelSet } from '../../tensor/index.js';
import { binary, compare, copy, unary, unaryBackward, where } from './elementwise.js';
import { matmul } from './matmul.js';
import {
  attention, attentionBackward, crossEntropy, crossEntropyBackward, indexAdd, indexSelect, layernorm,
  layernormBackward, rmsnorm, rmsnormBackward, rope,
} from './nn.js';
import { max, softmax, softmaxBackward, sum } from './reduce.js';
import { quantMatmul } from './quant.js';

/** The pure-TypeScript reference backend: always available, single-threaded. */
export const jsKernels: KernelSet = {
  name: 'js',
  unary, unaryBackward, binary, compare, where, copy, sum, max, matmul, indexSelect, indexAdd,
  softmax, softmaxBackward, rmsnorm, rmsnormBackward, layernorm, layernormBackward,
  crossEntropy, crossEntropyBackward, attention, attentionBackward, rope, quantMatmul,
};
