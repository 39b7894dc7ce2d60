/** Every error adaptkit raises on purpose; the message names the operation and the shapes involved. */
export class AdaptkitError extends Error {
  override name = 'AdaptkitError';
}

export function shapeStr(shape: readonly number[]): string {
  return `[${shape.join(', ')}]`;
}

/** An error about one op: `matmul: inner dimensions differ: a [2, 3] b [4, 5]`. */
export function opError(op: string, message: string, shapes?: Record<string, readonly number[]>): AdaptkitError {
  let text = `${op}: ${message}`;
  if (shapes) {
    const parts = Object.entries(shapes).map(([k, s]) => `${k} ${shapeStr(s)}`);
    if (parts.length > 0) text += `: ${parts.join(' ')}`;
  }
  return new AdaptkitError(text);
}
