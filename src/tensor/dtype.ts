/** Storage element types. Compute is f32; i32 holds indices and labels. (bf16/f16 storage can join later.) */
export type DType = 'f32' | 'i32';
export type TypedArrayOf<D extends DType> = D extends 'f32' ? Float32Array : Int32Array;
export type AnyArray = Float32Array | Int32Array;

export function allocArray(dtype: DType, n: number): AnyArray {
  return dtype === 'f32' ? new Float32Array(n) : new Int32Array(n);
}

export function dtypeOf(a: AnyArray): DType {
  return a instanceof Float32Array ? 'f32' : 'i32';
}
