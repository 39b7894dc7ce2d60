/**
 * Checks of a folder named for runtime adapter loading, made on the HTTP thread before the engine
 * reads anything: it must lie under the configured root, hold regular files of bounded size, and
 * carry a JSON config and a safetensors header that parse.
 */
import { constants as fsc } from 'node:fs';
import { type FileHandle, open, realpath, stat } from 'node:fs/promises';
import { join, resolve, sep } from 'node:path';
import { AdaptkitError } from '../tensor/index.js';
import { HttpError } from './http-errors.js';

const CONFIG_MAX_BYTES = 1 << 20;
const HEADER_MAX_BYTES = 1 << 20;

/** The folder runtime loads must stay in: the path as configured, and what it really is. */
export interface LoraRoot {
  abs: string;
  real: string;
}

/** Whether `p` lies strictly below `root`; the separator keeps /a/adapters-evil out of /a/adapters. */
export function under(p: string, root: string): boolean {
  return p.startsWith(root.endsWith(sep) ? root : root + sep);
}

export const refused = (message: string) => new HttpError(403, message, 'permission_error', 'lora_path');
export const badAdapter = (message: string) => new HttpError(400, message, 'invalid_request_error', 'lora_path');

/**
 * Open one of an adapter folder's files for the checks, refusing anything a reader could stall on
 * or be flooded by: links out of the root, FIFOs, devices, sockets and oversized files. The file
 * is examined by stat before it is opened (opening some devices has effects), opened without
 * blocking (a FIFO swapped in meanwhile cannot hang the open), and examined again on the handle.
 */
export async function openAdapterFile(dir: string, root: LoraRoot, name: string, maxBytes: number): Promise<{ fh: FileHandle; size: number }> {
  let real: string;
  try {
    real = await realpath(join(dir, name));
  } catch {
    throw badAdapter(`the adapter folder has no readable ${name}`);
  }
  if (!under(real, root.real)) throw refused(`${name} links to a file outside the adapter root`);
  const check = (st: { isFile(): boolean; size: number }) => {
    if (!st.isFile()) throw badAdapter(`${name} is not a regular file`);
    if (st.size > maxBytes) throw badAdapter(`${name} has ${st.size} bytes, more than the limit of ${maxBytes}`);
  };
  const before = await stat(real);
  check(before);
  let fh: FileHandle;
  try {
    fh = await open(real, fsc.O_RDONLY | (fsc.O_NONBLOCK ?? 0));
  } catch {
    throw badAdapter(`${name} cannot be read`);
  }
  try {
    const st = await fh.stat();
    check(st);
    if (st.ino !== before.ino || st.dev !== before.dev) throw badAdapter(`${name} changed while it was checked`);
    return { fh, size: st.size };
  } catch (e) {
    await fh.close();
    throw e;
  }
}

export async function readExactly(fh: FileHandle, n: number, at: number): Promise<Buffer> {
  const buf = Buffer.alloc(n);
  let got = 0;
  while (got < n) {
    const { bytesRead } = await fh.read(buf, got, n - got, at + got);
    if (bytesRead === 0) break;
    got += bytesRead;
  }
  return buf.subarray(0, got);
}

/** JSON that must be an object; errors never quote the text, which may be anything. */
export function parseObject(buf: Buffer, what: string): Record<string, unknown> {
  let v: unknown;
  try {
    v = JSON.parse(buf.toString('utf8'));
  } catch {
    throw badAdapter(`${what} is not valid JSON`);
  }
  if (!v || typeof v !== 'object' || Array.isArray(v)) throw badAdapter(`${what} is not a JSON object`);
  return v as Record<string, unknown>;
}

/**
 * Check a runtime-load request's folder on this thread, before the engine sees it: the folder is
 * below the root (by its real path), its config and weights are bounded regular files, and both
 * parse. Returns the real path, which is what the engine then registers.
 */
export async function checkAdapterFolder(given: string, root: LoraRoot, maxWeightBytes: number): Promise<string> {
  if (given.length === 0 || given.length > 4096 || given.includes('\0')) throw badAdapter('"lora_path" must be a path of 1 to 4096 characters');
  // relative paths name folders inside the root; a path that is outside on its face is refused
  // before the file system is asked, so answers do not reveal what exists elsewhere
  const lexical = resolve(root.abs, given);
  if (!under(lexical, root.abs) && !under(lexical, root.real)) throw refused('"lora_path" must be a folder under the server\'s adapter root');
  let real: string;
  try {
    real = await realpath(lexical);
  } catch {
    throw badAdapter('"lora_path" does not exist or cannot be read');
  }
  if (!under(real, root.real)) throw refused('"lora_path" must be a folder under the server\'s adapter root');
  if (!(await stat(real)).isDirectory()) throw badAdapter('"lora_path" is not a folder');

  const cfg = await openAdapterFile(real, root, 'adapter_config.json', CONFIG_MAX_BYTES);
  try {
    const raw = parseObject(await readExactly(cfg.fh, cfg.size, 0), 'adapter_config.json');
    // which methods exist is the engine's to say; only the name's shape is checked here, since
    // the engine quotes it in its errors
    if (typeof raw.peft_type !== 'string' || !/^[A-Za-z0-9_]{1,64}$/.test(raw.peft_type)) throw badAdapter('adapter_config.json: "peft_type" must name an adapter method');
  } finally {
    await cfg.fh.close();
  }
  const w = await openAdapterFile(real, root, 'adapter_model.safetensors', maxWeightBytes);
  try {
    const head = await readExactly(w.fh, 8, 0);
    if (head.length < 8) throw badAdapter('adapter_model.safetensors is shorter than a safetensors header');
    const len = head.readBigUInt64LE(0);
    if (len > BigInt(Math.min(HEADER_MAX_BYTES, w.size - 8))) throw badAdapter(`adapter_model.safetensors: the header is longer than the file or the ${HEADER_MAX_BYTES}-byte limit`);
    parseObject(await readExactly(w.fh, Number(len), 8), 'adapter_model.safetensors\'s header');
  } finally {
    await w.fh.close();
  }
  return real;
}

export async function loraRootOf(dir: string | undefined): Promise<LoraRoot> {
  if (!dir) throw new AdaptkitError('runtime adapter loading needs a folder to load from: pass --lora-root or --adapters');
  const abs = resolve(dir);
  let real: string;
  try {
    real = await realpath(abs);
  } catch {
    throw new AdaptkitError(`the adapter root ${dir} does not exist`);
  }
  if (!(await stat(real)).isDirectory()) throw new AdaptkitError(`the adapter root ${dir} is not a folder`);
  return { abs, real };
}
