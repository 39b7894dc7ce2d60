#!/usr/bin/env node
import { main } from '../dist/src/cli/main.js';

main(process.argv).then(
  (code) => {
    process.exitCode = code;
  },
  (err) => {
    console.error(`adaptkit: ${err && err.message ? err.message : err}`);
    process.exitCode = 1;
  },
);
