/**
 * Hugging Face Hub downloads into the standard cache layout
 * (`$HF_HUB_CACHE` or `$HF_HOME/hub` or `~/.cache/huggingface/hub`):
 *   models--org--name/blobs/<etag>, snapshots/<commit>/<file> -> ../../blobs/<etag>, refs/<revision>.
 * Downloads resume from `<blob>.incomplete` with HTTP Range, LFS files are checked against their
 * sha256 before they enter the cache, `HF_TOKEN` authenticates, and `HF_HUB_OFFLINE=1` (or a failed
 * connection) uses what is cached.
 */
import { createHash } from 'node:crypto';
import { createReadStream, existsSync, mkdirSync, readFileSync, renameSync, rmSync, statSync, symlinkSync, writeFileSync, openSync, writeSync, closeSync, readlinkSync } from 'node:fs';
import { homedir } from 'node:os';
import { dirname, join, relative } from 'node:path';
import { AdaptkitError } from '../tensor/index.js';

export interface HubOptions {
  revision?: string;
  endpoint?: string;
  cacheDir?: string;
  token?: string;
  offline?: boolean;
  /** Which files to fetch (default: what a model needs: config, tokenizer, weights). */
  filter?: (file: string) => boolean;
  onProgress?: (file: string, done: number, total: number | null) => void;
}

const REPO_RE = /^[A-Za-z0-9][\w.-]*\/[\w.-]+$/;

export function isHubId(s: string): boolean {
  return REPO_RE.test(s) && !existsSync(s);
}

export function hubCacheDir(): string {
  if (process.env.HF_HUB_CACHE) return process.env.HF_HUB_CACHE;
  if (process.env.HF_HOME) return join(process.env.HF_HOME, 'hub');
  return join(homedir(), '.cache', 'huggingface', 'hub');
}

const MODEL_FILES = /^(config\.json|generation_config\.json|tokenizer\.json|tokenizer_config\.json|special_tokens_map\.json|tokenizer\.model|model\.safetensors|model\.safetensors\.index\.json|model-\d+-of-\d+\.safetensors|adapter_config\.json|adapter_model\.safetensors)$/;

function repoFolder(cache: string, repo: string): string {
  return join(cache, `models--${repo.replace('/', '--')}`);
}

function headers(token: string | undefined): Record<string, string> {
  const h: Record<string, string> = { 'user-agent': 'adaptkit' };
  if (token) h.authorization = `Bearer ${token}`;
  return h;
}

async function getJson(url: string, token: string | undefined): Promise<unknown> {
  const res = await fetch(url, { headers: headers(token) });
  if (res.status === 401 || res.status === 403) throw new AdaptkitError(`${url}: access denied (${res.status}); set HF_TOKEN for gated or private models`);
  if (res.status === 404) throw new AdaptkitError(`${url}: not found (check the model id and revision)`);
  if (!res.ok) throw new AdaptkitError(`${url}: HTTP ${res.status}`);
  return res.json();
}

function sha256File(path: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const h = createHash('sha256');
    createReadStream(path).on('data', (d) => h.update(d)).on('error', reject).on('end', () => resolve(h.digest('hex')));
  });
}

/** Download one file into blobs/, resuming a partial download; returns the blob path. */
async function fetchBlob(url: string, blobs: string, file: string, o: HubOptions): Promise<{ blob: string; etag: string }> {
  // HEAD-like request without following redirects gives the repo's ETag for LFS files
  const head = await fetch(url, { method: 'HEAD', headers: headers(o.token), redirect: 'manual' });
  if (head.status === 401 || head.status === 403) throw new AdaptkitError(`${url}: access denied (${head.status}); set HF_TOKEN for gated or private models`);
  if (head.status === 404) throw new AdaptkitError(`${url}: not found`);
  if (head.status >= 400) throw new AdaptkitError(`${url}: HTTP ${head.status}`);
  const etag = (head.headers.get('x-linked-etag') ?? head.headers.get('etag') ?? '').replace(/^W\//, '').replace(/"/g, '');
  if (!etag) throw new AdaptkitError(`${url}: the server sent no ETag`);
  const blob = join(blobs, etag);
  if (existsSync(blob)) return { blob, etag };
  mkdirSync(blobs, { recursive: true });
  const part = `${blob}.incomplete`;
  let have = existsSync(part) ? statSync(part).size : 0;
  const h = headers(o.token);
  if (have > 0) h.range = `bytes=${have}-`;
  const res = await fetch(url, { headers: h });
  if (res.status === 416) {
    have = 0;
  } else if (!res.ok) {
    throw new AdaptkitError(`${url}: HTTP ${res.status}`);
  }
  if (have > 0 && res.status !== 206) have = 0; // server ignored the range: start over
  const lenHeader = res.headers.get('content-length');
  const total = lenHeader ? have + Number(lenHeader) : null;
  const fd = openSync(part, have > 0 ? 'a' : 'w');
  let done = have;
  try {
    if (res.body && res.status !== 416) {
      for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
        writeSync(fd, chunk);
        done += chunk.length;
        o.onProgress?.(file, done, total);
      }
    }
  } finally {
    closeSync(fd);
  }
  if (total !== null && done !== total) throw new AdaptkitError(`${url}: download ended at ${done} of ${total} bytes (run again to resume)`);
  if (/^[0-9a-f]{64}$/.test(etag)) {
    const sum = await sha256File(part);
    if (sum !== etag) {
      rmSync(part, { force: true });
      throw new AdaptkitError(`${file}: checksum mismatch (sha256 ${sum}, expected ${etag}); the partial file was removed`);
    }
  }
  renameSync(part, blob);
  return { blob, etag };
}

function link(snapshot: string, file: string, blob: string): void {
  const dst = join(snapshot, file);
  mkdirSync(dirname(dst), { recursive: true });
  if (existsSync(dst)) {
    try {
      if (readlinkSync(dst) === relative(dirname(dst), blob)) return;
    } catch {
      // a regular file: replace it
    }
    rmSync(dst, { force: true });
  }
  try {
    symlinkSync(relative(dirname(dst), blob), dst);
  } catch {
    writeFileSync(dst, readFileSync(blob)); // filesystems without symlinks
  }
}

function cachedSnapshot(folder: string, revision: string): string | null {
  const ref = join(folder, 'refs', revision);
  const commit = existsSync(ref) ? readFileSync(ref, 'utf8').trim() : revision;
  const snap = join(folder, 'snapshots', commit);
  return existsSync(join(snap, 'config.json')) || existsSync(join(snap, 'adapter_config.json')) ? snap : null;
}

/** Download (or find in the cache) a model repository; returns the local snapshot folder. */
export async function snapshotDownload(repo: string, o: HubOptions = {}): Promise<string> {
  if (!REPO_RE.test(repo)) throw new AdaptkitError(`"${repo}" is not a Hub model id (org/name)`);
  const revision = o.revision ?? 'main';
  const cache = o.cacheDir ?? hubCacheDir();
  const folder = repoFolder(cache, repo);
  const offline = o.offline ?? ['1', 'true', 'yes'].includes((process.env.HF_HUB_OFFLINE ?? '').toLowerCase());
  const token = o.token ?? process.env.HF_TOKEN ?? process.env.HUGGING_FACE_HUB_TOKEN;
  const endpoint = (o.endpoint ?? process.env.HF_ENDPOINT ?? 'https://huggingface.co').replace(/\/$/, '');
  if (offline) {
    const snap = cachedSnapshot(folder, revision);
    if (!snap) throw new AdaptkitError(`${repo}@${revision} is not in the cache (${folder}) and offline mode is on`);
    return snap;
  }
  let info: { sha?: string; siblings?: { rfilename: string }[] };
  try {
    info = (await getJson(`${endpoint}/api/models/${repo}/revision/${encodeURIComponent(revision)}`, token)) as typeof info;
  } catch (e) {
    const snap = cachedSnapshot(folder, revision);
    if (snap && !(e instanceof AdaptkitError)) return snap; // no connection: use the cache
    throw e instanceof AdaptkitError ? e : new AdaptkitError(`cannot reach ${endpoint} (${(e as Error).message}) and ${repo} is not cached`);
  }
  const commit = info.sha;
  if (!commit || !/^[0-9a-f]{40}$/.test(commit)) throw new AdaptkitError(`${repo}: the Hub sent no commit hash`);
  const files = (info.siblings ?? []).map((s) => s.rfilename).filter(o.filter ?? ((f) => MODEL_FILES.test(f)));
  if (files.length === 0) throw new AdaptkitError(`${repo}@${revision}: no model files found`);
  const snapshot = join(folder, 'snapshots', commit);
  for (const file of files) {
    if (file.includes('..') || file.startsWith('/')) throw new AdaptkitError(`${repo}: refusing file name "${file}"`);
    const url = `${endpoint}/${repo}/resolve/${commit}/${file.split('/').map(encodeURIComponent).join('/')}`;
    const { blob } = await fetchBlob(url, join(folder, 'blobs'), file, { ...o, token });
    link(snapshot, file, blob);
  }
  mkdirSync(join(folder, 'refs'), { recursive: true });
  writeFileSync(join(folder, 'refs', revision), commit);
  return snapshot;
}
