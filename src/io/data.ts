/** Where the offline assets live: $ADAPTKIT_DATA, else ../shared/data next to the package. */
import { existsSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

export function packageRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 6; i++) {
    if (existsSync(join(dir, 'package.json'))) return dir;
    dir = dirname(dir);
  }
  return dir;
}

export function dataDir(override?: string): string {
  return resolve(override ?? process.env.ADAPTKIT_DATA ?? join(packageRoot(), '..', 'shared', 'data'));
}
