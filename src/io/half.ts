/** The half-precision converters live with the dtypes (the backend's quantized formats need them too). */
export { bf16ToF32, f32ToBf16, f16ToF32, f32ToF16 } from '../tensor/half.js';
