/** Progress on a TTY (a progress bar with step, loss, tokens/s and ETA), JSON lines otherwise. */
import cliProgress from 'cli-progress';
import type { EvalMetrics, StepMetrics } from './trainer.js';

export interface Progress {
  step(m: StepMetrics): void;
  eval(m: EvalMetrics): void;
  stop(): void;
}

export function makeProgress(total: number, opts: { json?: boolean; stream?: NodeJS.WriteStream; quiet?: boolean } = {}): Progress {
  const stream = opts.stream ?? process.stderr;
  if (opts.quiet) return { step() {}, eval() {}, stop() {} };
  if (opts.json || !stream.isTTY) {
    return {
      step: (m) => process.stdout.write(`${JSON.stringify(m)}\n`),
      eval: (m) => process.stdout.write(`${JSON.stringify(m)}\n`),
      stop() {},
    };
  }
  // the line must fit the terminal, or the terminal cuts it: narrow terminals get a shorter
  // line, and the bar takes what the text leaves
  const columns = stream.columns ?? 80;
  const wide = columns >= 80;
  const format = wide
    ? 'train |{bar}| {value}/{total} steps | loss {loss} | {tps} tok/s | ETA {eta_formatted}'
    : '|{bar}| {value}/{total} | loss {loss} | {tps} tok/s';
  const longest = wide ? 'train || 10000/10000 steps | loss 0.0000 | 000000 tok/s | ETA 00h00m00s' : '|| 10000/10000 | loss 0.0000 | 000000 tok/s';
  const barsize = Math.max(4, Math.min(40, columns - longest.length - 1));
  const bar = new cliProgress.SingleBar({ format, stream, hideCursor: true, etaBuffer: 20, barsize }, cliProgress.Presets.shades_classic);
  bar.start(total, 0, { loss: '-', tps: '-' });
  return {
    step: (m) => bar.update(m.step, { loss: m.loss.toFixed(4), tps: Math.round(m.tokens_per_s) }),
    eval: (m) => {
      // evaluation results get a line of their own above the bar, whatever their number
      const fields = Object.entries(m).filter(([k]) => k !== 'kind' && k !== 'step').map(([k, v]) => `${k} ${typeof v === 'number' ? v.toFixed(4) : v}`);
      stream.write(`\r\x1b[Keval at step ${m.step}: ${fields.join(', ')}\n`);
      bar.update(m.step);
    },
    stop: () => bar.stop(),
  };
}
