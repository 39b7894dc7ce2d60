/** Hub downloads against a local HTTP server that serves a model folder in the Hub's URL shape. */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { createServer, type Server } from 'node:http';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as ak from '../src/index.js';
import { snapshotDownload } from '../src/io/hub.js';
import { loadModel } from '../src/models/load.js';
import { dataDir } from '../src/io/data.js';
import { demoModelDir, embeddedAsset } from '../src/train/demo.js';

const FIX = fileURLToPath(new URL('./fixtures/models/llama-gqa/', import.meta.url));
const STORIES = join(dataDir(), 'models', 'stories260K');
const FILES = ['config.json', 'model.safetensors'];
const COMMIT = 'a'.repeat(40);
delete process.env.HF_TOKEN;
delete process.env.HUGGING_FACE_HUB_TOKEN;
delete process.env.HF_HUB_OFFLINE;
const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex');

interface Mode { cutOnce: boolean; corrupt: boolean; gated: boolean; ranges: string[] }
const mode: Mode = { cutOnce: false, corrupt: false, gated: false, ranges: [] };

let server: Server;
let endpoint = '';
const cache = mkdtempSync(join(tmpdir(), 'adaptkit-hub-'));

before(async () => {
  server = createServer((req, res) => {
    const url = new URL(req.url!, 'http://x');
    if (mode.gated && req.headers.authorization !== 'Bearer secret') {
      res.writeHead(401).end('unauthorized');
      return;
    }
    const api = /^\/api\/models\/([^/]+\/[^/]+)\/revision\/main$/.exec(url.pathname);
    if (api && api[1] === 'karpathy/tinyllamas') {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ id: api[1], sha: COMMIT, siblings: ['stories260K/stories260K.bin', 'stories260K/tok512.bin', 'stories15M.bin'].map((rfilename) => ({ rfilename })) }));
      return;
    }
    const story = /^\/karpathy\/tinyllamas\/resolve\/[0-9a-f]{40}\/stories260K\/(.+)$/.exec(url.pathname);
    if (story) {
      let body = readFileSync(join(STORIES, story[1]!));
      if (mode.corrupt) body = Buffer.from(body.map((b, i) => (i === 100 ? b ^ 1 : b)));
      res.writeHead(200, { etag: `"${createHash('sha1').update(body).digest('hex')}"`, 'content-length': body.length });
      res.end(req.method === 'HEAD' ? undefined : body);
      return;
    }
    let m = api;
    if (m) {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ id: m[1], sha: COMMIT, siblings: [...FILES, 'README.md'].map((rfilename) => ({ rfilename })) }));
      return;
    }
    m = /^\/([^/]+\/[^/]+)\/resolve\/([0-9a-f]{40})\/(.+)$/.exec(url.pathname);
    if (m && FILES.includes(m[3]!)) {
      const file = m[3]!;
      const body = readFileSync(join(FIX, file));
      if (file.endsWith('.safetensors')) {
        // LFS: the resolve URL redirects to a CDN and names the sha256 in X-Linked-Etag
        res.writeHead(302, { location: `/cdn/${file}`, 'x-linked-etag': `"${sha256(body)}"`, 'x-linked-size': String(body.length), 'x-repo-commit': COMMIT });
        res.end();
      } else {
        res.writeHead(200, { etag: `"${createHash('sha1').update(body).digest('hex')}"`, 'content-length': body.length, 'x-repo-commit': COMMIT });
        res.end(req.method === 'HEAD' ? undefined : body);
      }
      return;
    }
    m = /^\/cdn\/(.+)$/.exec(url.pathname);
    if (m) {
      let body = readFileSync(join(FIX, m[1]!));
      if (mode.corrupt) body = Buffer.from(body.map((b, i) => (i === body.length - 1 ? b ^ 1 : b)));
      const range = req.headers.range;
      if (range) mode.ranges.push(range);
      const start = range ? Number(/bytes=(\d+)-/.exec(range)![1]) : 0;
      const part = body.subarray(start);
      res.writeHead(range ? 206 : 200, { 'content-length': part.length, ...(range ? { 'content-range': `bytes ${start}-${body.length - 1}/${body.length}` } : {}) });
      if (mode.cutOnce) {
        mode.cutOnce = false;
        res.write(part.subarray(0, Math.floor(part.length / 3)), () => res.destroy());
        return;
      }
      res.end(part);
      return;
    }
    res.writeHead(404).end('not found');
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  endpoint = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});

after(() => {
  server.close();
  rmSync(cache, { recursive: true, force: true });
});

describe('Hub download', () => {
  it('resumes an interrupted download with a Range request and lays out the HF cache', async () => {
    mode.cutOnce = true;
    await assert.rejects(snapshotDownload('org/tiny-llama', { endpoint, cacheDir: cache }));
    const blobs = join(cache, 'models--org--tiny-llama', 'blobs');
    assert.ok(readdirSync(blobs).some((f) => f.endsWith('.incomplete')), 'a partial download stays for resuming');
    const snap = await snapshotDownload('org/tiny-llama', { endpoint, cacheDir: cache });
    assert.equal(mode.ranges.length, 1);
    assert.match(mode.ranges[0]!, /^bytes=\d+-$/);
    assert.equal(snap, join(cache, 'models--org--tiny-llama', 'snapshots', COMMIT));
    assert.equal(readFileSync(join(cache, 'models--org--tiny-llama', 'refs', 'main'), 'utf8'), COMMIT);
    assert.deepEqual(readFileSync(join(snap, 'model.safetensors')), readFileSync(join(FIX, 'model.safetensors')));
    assert.ok(!readdirSync(blobs).some((f) => f.endsWith('.incomplete')));
    assert.ok(!existsSync(join(snap, 'README.md')), 'only model files are fetched');
    ak.getBackend();
    const ids = ak.tensor([3, 1, 4, 1, 5], [1, 5], { dtype: 'i32' });
    const a = ak.noGrad(() => loadModel(snap).model.forward(ids).toArray());
    const b = ak.noGrad(() => loadModel(FIX).model.forward(ids).toArray());
    assert.deepEqual(a, b);
  });

  it('works offline from the cache, and says so when a model is not cached', async () => {
    const snap = await snapshotDownload('org/tiny-llama', { endpoint: 'http://127.0.0.1:9', cacheDir: cache, offline: true });
    assert.ok(existsSync(join(snap, 'config.json')));
    await assert.rejects(snapshotDownload('org/other', { cacheDir: cache, offline: true }), /not in the cache .* offline mode is on/);
  });

  it('rejects a file whose sha256 does not match and keeps nothing of it', async () => {
    mode.corrupt = true;
    try {
      await assert.rejects(snapshotDownload('org/corrupt', { endpoint, cacheDir: cache }), /checksum mismatch/);
    } finally {
      mode.corrupt = false;
    }
    const blobs = join(cache, 'models--org--corrupt', 'blobs');
    assert.deepEqual(readdirSync(blobs).filter((f) => f.length === 64 || f.endsWith('.incomplete')), []);
  });

  it('fetches the demo model when the data folder lacks it, and checks its sha256', async () => {
    const env = { HF_ENDPOINT: process.env.HF_ENDPOINT, HF_HUB_CACHE: process.env.HF_HUB_CACHE };
    process.env.HF_ENDPOINT = endpoint;
    try {
      process.env.HF_HUB_CACHE = join(cache, 'bad');
      mode.corrupt = true;
      await assert.rejects(demoModelDir(join(cache, 'no-data')), /stories260K\/stories260K.bin from karpathy\/tinyllamas has sha256 [0-9a-f]+, expected b0a507e7/);
      mode.corrupt = false;
      process.env.HF_HUB_CACHE = join(cache, 'good');
      const dir = await demoModelDir(join(cache, 'no-data'));
      assert.deepEqual(readFileSync(join(dir, 'stories260K.bin')), readFileSync(join(STORIES, 'stories260K.bin')));
      assert.ok(!existsSync(join(dir, '..', 'stories15M.bin')), 'only the demo files are fetched');
      // with no data folder named, the package's own copy is used and nothing is downloaded
      delete process.env.HF_ENDPOINT;
      const saved = process.env.ADAPTKIT_DATA;
      delete process.env.ADAPTKIT_DATA;
      try {
        assert.equal(await demoModelDir(dataDir()), embeddedAsset('stories260K'));
      } finally {
        if (saved !== undefined) process.env.ADAPTKIT_DATA = saved;
      }
    } finally {
      mode.corrupt = false;
      for (const [k, v] of Object.entries(env)) {
        if (v === undefined) delete process.env[k];
        else process.env[k] = v;
      }
    }
  });

  it('sends HF_TOKEN to gated repositories', async () => {
    mode.gated = true;
    try {
      await assert.rejects(snapshotDownload('org/gated', { endpoint, cacheDir: cache, token: undefined }), /access denied \(401\); set HF_TOKEN/);
      const snap = await snapshotDownload('org/gated', { endpoint, cacheDir: cache, token: 'secret' });
      assert.ok(existsSync(join(snap, 'model.safetensors')));
    } finally {
      mode.gated = false;
    }
  });
});
