// Builds the native addon during `npm install`. A failed build is not fatal: adaptkit then runs
// on its pure-TypeScript backend and says so once when loaded.
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';

if (process.env.ADAPTKIT_SKIP_NATIVE === '1') {
  console.log('adaptkit: ADAPTKIT_SKIP_NATIVE=1, not building the native addon');
  process.exit(0);
}
// npm names its bundled node-gyp in npm_config_node_gyp; outside npm, look next to node
const bundled = join(dirname(process.execPath), '..', 'lib', 'node_modules', 'npm', 'node_modules', 'node-gyp', 'bin', 'node-gyp.js');
const gyp = process.env.npm_config_node_gyp || (existsSync(bundled) ? bundled : undefined);
const args = ['rebuild'];
// build against the headers of the running node when it ships them (no download needed)
const prefix = join(dirname(process.execPath), '..');
if (!process.env.npm_config_nodedir && existsSync(join(prefix, 'include', 'node', 'node_api.h'))) {
  args.push(`--nodedir=${prefix}`);
}
const [cmd, cmdArgs] = gyp ? [process.execPath, [gyp, ...args]] : ['node-gyp', args];
const r = spawnSync(cmd, cmdArgs, { stdio: 'inherit', shell: !gyp && process.platform === 'win32' });
if (r.status !== 0) {
  console.warn('adaptkit: the native addon did not build; the js backend will be used (slower).');
}
process.exit(0);
