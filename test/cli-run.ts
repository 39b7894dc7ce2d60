/** The command line run in-process, its output captured (stdout and console.log; stderr and console.error). */
import { main } from '../src/cli/main.js';

export async function runCli(...args: string[]): Promise<{ code: number; out: string; err: string }> {
  let out = '';
  let err = '';
  const ow = process.stdout.write.bind(process.stdout);
  const ew = process.stderr.write.bind(process.stderr);
  const ol = console.log;
  const oe = console.error;
  process.stdout.write = ((s: string | Uint8Array) => ((out += String(s)), true)) as typeof process.stdout.write;
  process.stderr.write = ((s: string | Uint8Array) => ((err += String(s)), true)) as typeof process.stderr.write;
  console.log = (...a: unknown[]) => void (out += `${a.join(' ')}\n`);
  console.error = (...a: unknown[]) => void (err += `${a.join(' ')}\n`);
  try {
    return { code: await main(['node', 'adaptkit', ...args]), out, err };
  } finally {
    process.stdout.write = ow;
    process.stderr.write = ew;
    console.log = ol;
    console.error = oe;
  }
}
