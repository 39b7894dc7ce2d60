import { closeSync, fsyncSync, mkdirSync, openSync, renameSync, rmSync, writeSync } from 'node:fs';
import { dirname, join, basename } from 'node:path';
import { randomBytes } from 'node:crypto';
import { getSystemErrorMap } from 'node:util';
import { AdaptkitError } from '../tensor/index.js';

/**
 * A write that failed. Node's own messages for write(2) errors ("ENOSPC: no space left on device,
 * write") do not say which file, and on a full disk that is the first thing a user needs to know.
 */
export class WriteError extends AdaptkitError {
  constructor(readonly path: string, readonly reason: string, readonly code?: string, options?: ErrorOptions) {
    super(`cannot write ${path}: ${reason}${code ? ` (${code})` : ''}`, options);
  }
}

/** `e` as an error naming `path` (an AdaptkitError passes through: it already says what failed). */
export function writeError(path: string, e: unknown): AdaptkitError {
  if (e instanceof AdaptkitError) return e;
  const err = e as NodeJS.ErrnoException | undefined;
  const sys = typeof err?.errno === 'number' ? getSystemErrorMap().get(err.errno) : undefined;
  const reason = sys?.[1] ?? (err instanceof Error ? err.message : String(e));
  return new WriteError(path, reason, err?.code, { cause: e });
}

/** Write all of `data` at the descriptor's position (write(2) may write less than asked). */
export function writeAll(fd: number, data: Uint8Array): void {
  let off = 0;
  while (off < data.length) off += writeSync(fd, data, off, data.length - off);
}

/** fsync a directory so a rename in it survives a power cut; some filesystems cannot, and the rename is atomic anyway. */
export function fsyncDir(dir: string): void {
  try {
    const dfd = openSync(dir, 'r');
    try {
      fsyncSync(dfd);
    } finally {
      closeSync(dfd);
    }
  } catch {
    // best effort, see above
  }
}

/**
 * Write a file so that readers see either the old contents or the new, never a torn file: write a
 * temporary file in the same directory, fsync it, rename it over the target, fsync the directory.
 * A failure (disk full, ...) removes the temporary file, leaves the old file intact and throws a
 * WriteError naming the target.
 */
export function writeFileAtomic(path: string, chunks: Uint8Array | readonly Uint8Array[]): void {
  const dir = dirname(path);
  const tmp = join(dir, `.${basename(path)}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`);
  const list = chunks instanceof Uint8Array ? [chunks] : chunks;
  let fd = -1;
  try {
    mkdirSync(dir, { recursive: true });
    fd = openSync(tmp, 'w', 0o644);
    for (const c of list) writeAll(fd, c);
    fsyncSync(fd);
    closeSync(fd);
    fd = -1;
    renameSync(tmp, path);
  } catch (e) {
    if (fd >= 0) {
      try {
        closeSync(fd);
      } catch {
        // the write error is the one worth reporting
      }
    }
    rmSync(tmp, { force: true });
    throw writeError(path, e);
  }
  fsyncDir(dir);
}
