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
  const bar = new cliProgress.SingleBar({
    format: 'train |{bar}| {value}/{total} steps | loss {loss} | {tps} tok/s | ETA {eta_formatted} {extra}',
    stream,
    hideCursor: true,
    etaBuffer: 20,
  }, cliProgress.Presets.shades_classic);
  bar.start(total, 0, { loss: '-', tps: '-', extra: '' });
  let extra = '';
  return {
    step: (m) => bar.update(m.step, { loss: m.loss.toFixed(4), tps: Math.round(m.tokens_per_s), extra }),
    eval: (m) => {
      extra = Object.entries(m).filter(([k]) => k !== 'kind' && k !== 'step').map(([k, v]) => `| ${k} ${typeof v === 'number' ? v.toFixed(4) : v}`).join(' ');
      bar.update(m.step, { extra });
    },
    stop: () => bar.stop(),
  };
}
