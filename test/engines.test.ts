/** Every installed dependency runs on the Node version the package promises (package.json "engines"). */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import semver from 'semver';

const ROOT = fileURLToPath(new URL('..', import.meta.url));

describe('supported Node versions', () => {
  it('no locked dependency asks for a newer Node than package.json promises', () => {
    const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { engines: { node: string } };
    const lowest = semver.minVersion(pkg.engines.node)!;
    assert.ok(lowest, `engines.node ${pkg.engines.node}`);
    const lock = JSON.parse(readFileSync(join(ROOT, 'package-lock.json'), 'utf8')) as { packages: Record<string, { engines?: { node?: string } | string[]; dev?: boolean }> };
    const bad: string[] = [];
    let checked = 0;
    for (const [path, p] of Object.entries(lock.packages)) {
      const e = !Array.isArray(p.engines) ? p.engines?.node : undefined;
      if (!path || !e) continue;
      checked++;
      if (!semver.satisfies(lowest, e)) bad.push(`${path.replace(/^node_modules\//, '')} needs node ${e}`);
    }
    assert.ok(checked > 5, 'engine fields were read');
    assert.deepEqual(bad, [], `the package promises node ${pkg.engines.node}`);
  });
});
