export type {
  Int8RowwiseTensor, Bnb4bitTensor, NestedAbsmax, GgmlTensor, GgmlFormatName, HalfTensor, QuantizedTensor,
  QuantFormatName, QuantFormat, QuantizeOptions, QuantMatmulOptions,
} from './types.js';
export { QUANT_FORMATS, QUANT_FORMAT_NAMES, quantFormat, ggmlTypeFormat, quantize, dequantize, validateQuantized, formatOf } from './formats.js';
export { NF4_CODE, FP4_CODE, DYNAMIC_MAP, BNB_4BIT_BLOCKSIZES, NESTED_BLOCKSIZE, quantize4bit } from './bnb.js';
export { quantizeInt8, int8Matmul, int8QuantizeActivations, LLM_INT8_THRESHOLD, type Int8Activations } from './int8.js';
export {
  packQuantState, unpackQuantState, quantStateKey, pythonFloatRepr, bnb4bitStateDict, bnb4bitFromStateDict,
  int8StateDict, int8FromStateDict, type StateTensor, type StateLookup, type QuantStateDict,
} from './bnb-state.js';
export { quantMatmul, blockMatmul, blockMatmulTransposed } from './matvec.js';
