/** The `adaptkit` command line. */
import { Command, CommanderError } from 'commander';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { packageRoot } from '../io/data.js';
import { getBackend, nativeBackend, nativeLoadError, setBackend, type BackendName } from '../backend/index.js';
import { AdaptkitError } from '../tensor/index.js';
import { registerModelCommands } from './models.js';
import { registerAdapterCommands } from './adapters.js';
import { registerTrainCommands } from './train.js';
import { registerServeCommand } from './serve.js';
import '../adapters/index.js';
import { loadPlugins, pluginsFrom } from '../io/plugins.js';
import { TrainingInterrupted } from '../train/trainer.js';

function version(): string {
  const pkg = JSON.parse(readFileSync(join(packageRoot(), 'package.json'), 'utf8')) as { version: string };
  return pkg.version;
}

export async function main(argv: string[]): Promise<number> {
  try {
    await loadPlugins(pluginsFrom(argv));
  } catch (e) {
    if (e instanceof AdaptkitError) {
      console.error(`adaptkit: ${e.message}`);
      return 1;
    }
    throw e;
  }
  const program = new Command();
  program
    .name('adaptkit')
    .description('Adapter-based parameter-efficient fine-tuning (LoRA and friends) for TypeScript')
    .version(version())
    .option('--backend <name>', 'compute backend: native or js (default: $ADAPTKIT_BACKEND, else native)')
    .option('--threads <n>', 'threads for the native backend (default: all cores)')
    .option('--plugin <module>', 'import a module that registers adapter methods or model families (repeatable; also $ADAPTKIT_PLUGINS)', (v: string, acc: string[]) => [...acc, v], [] as string[])
    .hook('preAction', (cmd) => {
      const o = cmd.opts<{ backend?: string; threads?: string }>();
      if (o.backend) {
        if (o.backend !== 'js' && o.backend !== 'native') throw new AdaptkitError(`--backend must be js or native, got "${o.backend}"`);
        setBackend(o.backend as BackendName);
      } else {
        getBackend();
      }
      if (o.threads) {
        const n = Number(o.threads);
        if (!Number.isInteger(n) || n < 1) throw new AdaptkitError(`--threads must be a positive integer, got "${o.threads}"`);
        nativeBackend()?.setThreads(n);
      }
    })
    .exitOverride();

  program
    .command('info')
    .description('show the active backend, SIMD kernel and thread count')
    .option('--json', 'print JSON')
    .action((o: { json?: boolean }) => {
      const be = getBackend();
      const native = nativeBackend();
      const info = {
        version: version(),
        backend: be.name,
        native: native ? { simd: native.simd, threads: native.threads() } : { error: nativeLoadError() },
        node: process.version,
      };
      if (o.json) console.log(JSON.stringify(info));
      else {
        console.log(`adaptkit ${info.version} on node ${info.node}`);
        console.log(`backend: ${info.backend}`);
        console.log(native ? `native: ${native.simd} kernels, ${native.threads()} threads` : `native: unavailable (${nativeLoadError()})`);
      }
    });

  registerModelCommands(program);
  registerAdapterCommands(program);
  registerTrainCommands(program);
  registerServeCommand(program);

  const bench = program.command('bench').description('benchmarks that print one JSON object per line');
  bench
    .command('gemm')
    .description('SGEMM GFLOP/s: native (1 and 2 threads), js, the FMA peak and PyTorch on the same shapes')
    .option('--json', 'one JSON object per line (the default output)')
    .option('--no-js', 'skip the js backend')
    .option('--no-pytorch', 'skip the PyTorch baseline')
    .option('--threads-list <list>', 'comma-separated native thread counts', '1,2')
    .action(async (o: { js: boolean; pytorch: boolean; threadsList: string }) => {
      const { runGemmBench } = await import('../../bench/gemm.js');
      const threads = o.threadsList.split(',').map((s) => Number(s));
      if (threads.some((t) => !Number.isInteger(t) || t < 1)) throw new AdaptkitError(`--threads-list must list positive integers, got "${o.threadsList}"`);
      runGemmBench({ js: o.js, pytorch: o.pytorch, threads });
    });

  bench
    .command('generate')
    .description('prefill and decode tokens/s (stories260K, GPT-2-small-shaped) next to PyTorch')
    .option('--json', 'one JSON object per line (the default output)')
    .option('--no-pytorch', 'skip the PyTorch baseline')
    .option('--reps <n>', 'measured repetitions (median reported)', '3')
    .action(async (o: { pytorch: boolean; reps: string }) => {
      const { runGenerateBench } = await import('../../bench/generate.js');
      runGenerateBench({ pytorch: o.pytorch, reps: Number(o.reps) });
    });

  bench
    .command('train')
    .description('LoRA training tokens/s and peak RSS on a GPT-2-small-shaped model next to PyTorch')
    .option('--json', 'one JSON object per line (the default output)')
    .option('--no-pytorch', 'skip the PyTorch baseline')
    .option('--steps <n>', 'measured steps', '5')
    .option('--quantize <format>', 'quantize the base\'s linear layers (nf4: QLoRA); the PyTorch baseline is then left out')
    .action(async (o: { pytorch: boolean; steps: string; quantize?: string }) => {
      const { runTrainBench } = await import('../../bench/train.js');
      runTrainBench({ pytorch: o.pytorch, shape: { steps: Number(o.steps), ...(o.quantize ? { quantize: o.quantize } : {}) } });
    });

  bench
    .command('quantized')
    .description('quantized bases: stories260K in int8/NF4/FP4/bf16/f16 against f32 (NLL on GSM8K questions, logit error, bytes), QLoRA against LoRA on SMS spam over seeds, peak RSS of LoRA training on a GPT-2-small shape with an NF4 base')
    .option('--cases <list>', 'comma-separated: quality, qlora-sms, train-rss (default: all)')
    .option('--texts <n>', 'GSM8K test questions scored (default 200)')
    .option('--seeds <n>', 'seeds of the SMS runs (default 3)')
    .option('--steps <n>', 'training steps of the SMS runs (default 150, the demo\'s)')
    .option('--batch <n>', 'train-rss batch size (default 4)')
    .option('--seq <n>', 'train-rss sequence length (default 128)')
    .option('--rss-steps <n>', 'train-rss measured steps (default 2)')
    .option('--quick', 'smoke test: 20 texts, 1 seed of 5 steps, a 16-token batch')
    .option('--data-dir <dir>', 'offline data folder (default: $ADAPTKIT_DATA, else ../shared/data)')
    .option('--json', 'one JSON object per line (the default output)')
    .action(async (o: Record<string, string | boolean | undefined>) => {
      const { runQuantizedCli } = await import('../../bench/quantized.js');
      await runQuantizedCli(o);
    });

  bench
    .command('serve')
    .description('generated tokens/s with 1, 10, 100 and 1000 distinct adapters next to merging per request')
    .option('--json', 'one JSON object per line (the default output)')
    .option('--adapters <list>', 'comma-separated adapter counts', '1,10,100,1000')
    .option('--quick', 'fewer requests on the GPT-2-shaped model')
    .action(async (o: { adapters: string; quick?: boolean }) => {
      const { runServeBench } = await import('../../bench/serve.js');
      runServeBench({ counts: o.adapters.split(',').map(Number), quick: o.quick });
    });

  bench
    .command('methods')
    .description('adapter methods side by side on stories260K tasks over seeds: held-out metric, parameters, bytes, train and inference tokens/s, peak RSS')
    .option('--tasks <list>', 'comma-separated tasks: sms, agnews, banking77, gsm8k (default: all four)')
    .option('--methods <list>', 'comma-separated method names: the reference rows lora, ia3, bottleneck, prompt (the default) or any registered preset')
    .option('--configs <file>', 'JSON list of method entries {name, method, options, config, match_params_of, lr} (see docs/methods.md)')
    .option('--seeds <n>', 'seeds per method (default 3; --quick: 1)')
    .option('--steps <n>', 'training steps on every task (default: each task\'s own)')
    .option('--train-examples <n>', 'at most this many training examples per task (the first of the fixed split)')
    .option('--held-out <n>', 'at most this many held-out examples per task (the first of the fixed split)')
    .option('--quick', 'smoke test: 1 seed, 5 steps, 64 training and 24 held-out examples')
    .option('--data-dir <dir>', 'offline data folder (default: $ADAPTKIT_DATA, else ../shared/data)')
    .option('--out <dir>', 'keep the run folders (adapters, metrics) here instead of a temporary folder')
    .option('--json', 'print only the JSON lines (no Markdown table on stdout)')
    .option('--markdown <file>', 'write the Markdown table to this file')
    .option('--multitask', 'run the multi-task training and transfer comparison instead (`bench multitask`; --seeds, --data-dir, --out, --json and --markdown apply)')
    .action(async (o: Record<string, string | boolean | undefined>) => {
      if (o.multitask) {
        const other = (['tasks', 'methods', 'configs', 'steps', 'trainExamples', 'heldOut'] as const).filter((k) => o[k] !== undefined);
        if (other.length) throw new AdaptkitError(`--multitask runs its own rows and tasks; it does not take ${other.map((k) => `--${k.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}`).join(', ')}`);
        const { runMultitaskCli } = await import('../../bench/multitask.js');
        await runMultitaskCli(o);
        return;
      }
      const { runMethodsCli } = await import('../../bench/methods.js');
      await runMethodsCli(o);
    });
  bench
    .command('lt-sft')
    .description('LT-SFT on stories260K: an SMS-spam task difference and a GSM8K-text difference at several densities, composed by addition, against the dense fine-tunes')
    .option('--densities <list>', 'comma-separated fractions K / entries (default 0.001,0.01,0.1)')
    .option('--seeds <n>', 'seeds (default 3)')
    .option('--sms-steps <n>', 'training steps of the SMS difference, each phase (default 150)')
    .option('--gsm8k-steps <n>', 'training steps of the GSM8K difference, each phase (default 80)')
    .option('--lr <x>', 'peak learning rate of both phases (default 2e-3)')
    .option('--data-dir <dir>', 'offline data folder (default: $ADAPTKIT_DATA, else ../shared/data)')
    .option('--json', 'print only the JSON lines (no Markdown table on stdout)')
    .option('--markdown <file>', 'write the Markdown table to this file')
    .action(async (o: Record<string, string | boolean | undefined>) => {
      const { runLtSftCli } = await import('../../bench/lt-sft.js');
      await runLtSftCli(o);
    });

  bench
    .command('multitask')
    .description('multi-task training and transfer on stories260K: per-task, shared and task-routed adapters trained on SMS spam + AG News + BANKING77 + GSM8K at once, then few-shot SVAMP from them (the rows: docs/methods.md)')
    .option('--rows <list>', 'comma-separated row names (default: all; the rows they build on are added)')
    .option('--seeds <n>', 'seeds (default 3; --quick: 1)')
    .option('--joint-steps <n>', 'training steps of the multi-task rows and the MixDA domain stage (default 200)')
    .option('--target-steps <n>', 'training steps of the few-shot target rows (default 40)')
    .option('--quick', 'smoke test: 1 seed, a few steps, 64 training and 24 held-out examples per task')
    .option('--data-dir <dir>', 'offline data folder (default: $ADAPTKIT_DATA, else ../shared/data)')
    .option('--out <dir>', 'keep the run folders (adapters, metrics) here instead of a temporary folder')
    .option('--json', 'print only the JSON lines (no Markdown table on stdout)')
    .option('--markdown <file>', 'write the Markdown tables to this file')
    .action(async (o: Record<string, string | boolean | undefined>) => {
      const { runMultitaskCli } = await import('../../bench/multitask.js');
      await runMultitaskCli(o);
    });

  try {
    await program.parseAsync(argv);
    return 0;
  } catch (e) {
    if (e instanceof CommanderError) return e.exitCode;
    if (e instanceof TrainingInterrupted) {
      console.error(`adaptkit: ${e.message}`);
      return 130;
    }
    if (e instanceof AdaptkitError) {
      console.error(`adaptkit: ${e.message}`);
      return 1;
    }
    throw e;
  }
}
