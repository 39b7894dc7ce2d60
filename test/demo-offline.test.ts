/**
 * The main job runs offline anywhere: `adaptkit demo` from an empty folder, with no data folder
 * named and no Hub access, reads the stories260K model and the SMS Spam Collection embedded in the
 * package (their sha256 are the published files').
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import '../src/index.js';
import { STORIES260K, demoModelDir, embeddedAsset, runDemo } from '../src/train/demo.js';
import { dataDir, packageRoot } from '../src/io/data.js';

const ROOT = fileURLToPath(new URL('..', import.meta.url));

describe('the demo runs offline from the package', () => {
  it('the embedded model files are the published ones', () => {
    for (const [f, sum] of Object.entries(STORIES260K.files)) {
      const got = createHash('sha256').update(readFileSync(embeddedAsset(f))).digest('hex');
      assert.equal(got, sum, f);
    }
  });

  it('with no data folder named, the demo reads the embedded files', async () => {
    const saved = process.env.ADAPTKIT_DATA;
    delete process.env.ADAPTKIT_DATA;
    const tmp = mkdtempSync(join(tmpdir(), 'adaptkit-demo-offline-'));
    try {
      const modelDir = await demoModelDir(dataDir());
      const r = runDemo({ task: 'sms', modelDir, outDir: join(tmp, 'run'), steps: 4 });
      assert.equal(r.model_file, join(packageRoot(), 'assets', 'stories260K', 'stories260K.bin'));
      assert.equal(r.data_file, join(packageRoot(), 'assets', 'sms_spam', 'SMSSpamCollection'));
      assert.equal(r.eval_examples, 1000);
    } finally {
      if (saved !== undefined) process.env.ADAPTKIT_DATA = saved;
      rmSync(tmp, { recursive: true, force: true });
    }
  });

  it('`adaptkit demo` from an empty folder, offline, with ADAPTKIT_DATA unset, adapts the model', () => {
    const cwd = mkdtempSync(join(tmpdir(), 'adaptkit-demo-cwd-'));
    try {
      const env: NodeJS.ProcessEnv = { ...process.env, HF_HUB_OFFLINE: '1', HF_HOME: join(cwd, 'hf') };
      delete env.ADAPTKIT_DATA;
      const r = spawnSync(process.execPath, ['--import', import.meta.resolve('tsx'), join(ROOT, 'src/cli/bin.ts'), 'demo', '--steps', '40', '--json'], { cwd, env, encoding: 'utf8' });
      assert.equal(r.status, 0, r.stderr);
      const last = JSON.parse(r.stdout.trim().split('\n').pop()!) as { task: string; before: number; after: number };
      assert.equal(last.task, 'sms');
      assert.ok(last.after > last.before + 0.3, `held-out accuracy ${last.before} -> ${last.after}`);
    } finally {
      rmSync(cwd, { recursive: true, force: true });
    }
  });
});
