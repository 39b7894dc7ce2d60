/** Entry point when running from source (`node --import tsx src/cli/bin.ts ...`); bin/adaptkit.js runs the compiled CLI. */
import { main } from './main.js';

main(process.argv).then(
  (code) => {
    process.exitCode = code;
  },
  (err: Error) => {
    console.error(`adaptkit: ${err?.message ?? err}`);
    process.exitCode = 1;
  },
);
