/**
 * The entry header the packed adapter files share (low-bit codes, bit masks): u32 name length,
 * the UTF-8 name, u32 ndim, ndim × u32 dims, all little-endian.
 */

/** Bytes of an entry header. */
export function entryHeaderBytes(name: Uint8Array, shape: readonly number[]): number {
  return 8 + name.length + 4 * shape.length;
}

/** Write an entry header at `o`; returns the offset after it. */
export function writeEntryHeader(out: Uint8Array, dv: DataView, o: number, name: Uint8Array, shape: readonly number[]): number {
  dv.setUint32(o, name.length, true);
  out.set(name, o + 4);
  o += 4 + name.length;
  dv.setUint32(o, shape.length, true);
  o += 4;
  for (const d of shape) {
    dv.setUint32(o, d, true);
    o += 4;
  }
  return o;
}
