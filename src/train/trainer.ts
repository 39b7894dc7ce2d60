/**
 * The training loop: shuffled (optionally length-bucketed or packed) batches, or batches from an
 * example source (a stream, the multi-task sampler) whose position checkpoints keep, gradient
 * accumulation, global-norm clipping, AdamW or SGD with a warmup + decay schedule, evaluation
 * every N steps with early stopping, and crash-safe checkpoints from which `resume` continues
 * bit-identically (weights, optimizer state, RNG states and the data position are all restored).
 * Ctrl-C finishes the step in progress and checkpoints it; resume keeps metrics.jsonl to one line
 * per step as of the checkpoint it continues from.
 */
import { closeSync, existsSync, fstatSync, ftruncateSync, mkdirSync, openSync } from 'node:fs';
import { join } from 'node:path';
import { Worker, isMainThread } from 'node:worker_threads';
import { training, AdaptkitError, Rng, type Tensor, defaultRng, tidy } from '../tensor/index.js';
import { writeAll, writeError, writeFileAtomic } from '../io/atomic.js';
import { collate, epochBatches } from './batch.js';
import { listCheckpoints, loadCheckpoint, removeStaleTemps, saveCheckpoint } from './checkpoint.js';
import { type Example } from './examples.js';
import { type LossAverage, type TrainableLM, batchLoss } from './evaluate.js';
import { AdamW, type Optimizer, SGD, clipGradNorm, maskGrads } from './optim.js';
import { type ScheduleName, lrFactor } from './schedule.js';

export interface TrainConfig {
  steps: number;
  batchSize: number;
  gradAccum: number;
  lr: number;
  schedule: ScheduleName;
  warmupSteps: number;
  optimizer: 'adamw' | 'sgd';
  weightDecay: number;
  momentum: number;
  maxGradNorm: number;
  seed: number;
  evalEvery: number;
  /** Stop after this many evaluations without improvement (0: never). */
  earlyStoppingPatience: number;
  checkpointEvery: number;
  keepCheckpoints: number;
  bucket: boolean;
  pack: boolean;
  maxLen: number;
  /**
   * How a batch's loss averages its tokens: "token" (absent: every counted token weighs the same)
   * or "row" (each row's mean, then the mean over rows, so a task whose targets are a label word
   * weighs as much per example as one whose targets are long texts).
   */
  lossAverage?: LossAverage;
}

export const DEFAULT_TRAIN: TrainConfig = {
  steps: 100, batchSize: 16, gradAccum: 1, lr: 1e-3, schedule: 'cosine', warmupSteps: 0, optimizer: 'adamw',
  weightDecay: 0, momentum: 0.9, maxGradNorm: 1, seed: 0, evalEvery: 0, earlyStoppingPatience: 0,
  checkpointEvery: 0, keepCheckpoints: 2, bucket: false, pack: false, maxLen: 512,
};

export interface StepMetrics {
  kind: 'train';
  step: number;
  loss: number;
  lr: number;
  grad_norm: number;
  tokens: number;
  tokens_per_s: number;
  elapsed_s: number;
}

export interface EvalMetrics {
  kind: 'eval';
  step: number;
  [metric: string]: number | string;
}

export interface TrainerHooks {
  /** Evaluation run every evalEvery steps; its first key is the one early stopping watches (lower is better unless named accuracy/exact_match). */
  evaluate?: () => Record<string, number>;
  onStep?: (m: StepMetrics) => void;
  onEval?: (m: EvalMetrics) => void;
  /** Write the trainable weights into a checkpoint folder. */
  saveWeights: (dir: string) => void;
  /** Read them back from a checkpoint folder. */
  loadWeights: (dir: string) => void;
  /** The loss of a batch of examples (default: next-token loss on completions). */
  loss?: (examples: Example[]) => { loss: Tensor; tokens: number };
}

/**
 * Examples drawn in order from a source that can say where it is and go back there: a stream
 * over a file larger than memory, or the multi-task sampler. Checkpoints store the position.
 */
export interface ExampleSource {
  next(n: number): Example[];
  position(): unknown;
  seek(position: unknown): void;
  /** Back to the first example, for a run that starts over (a source may be reused by a second run). */
  restart?(): void;
}

function isSource(d: readonly Example[] | ExampleSource): d is ExampleSource {
  return !Array.isArray(d);
}

export interface TrainResult {
  steps: number;
  history: (StepMetrics | EvalMetrics)[];
  stoppedEarly: boolean;
  seconds: number;
}

function higherIsBetter(key: string): boolean {
  return /accuracy|exact_match|f1/.test(key);
}

/** Thrown by `run()` after Ctrl-C: the step in progress was finished and checkpointed. */
export class TrainingInterrupted extends AdaptkitError {
  constructor(readonly step: number, readonly steps: number, readonly checkpoint: string) {
    super(`interrupted at step ${step} of ${steps}; checkpoint saved in ${checkpoint}; to continue, run the same command again with --resume`);
  }
}

/**
 * Runs in a worker: holds a SIGINT handle on the worker's own event loop and raises a shared flag.
 * The training loop is synchronous, so a `process.on('SIGINT')` listener on the main thread would
 * only run after training ends, and workers get no signals through `process.on`; the raw handle is
 * the one way to see a signal while the main thread computes. It is a deprecated internal binding:
 * where it is missing the watch is not armed, and Ctrl-C ends the process as it always did. Closing
 * the handle on the first signal gives SIGINT its default action back, so a second Ctrl-C ends the
 * process at once.
 */
const SIGINT_WATCHER = `
const { workerData: flag } = require('node:worker_threads');
let handle = null;
try {
  process.noDeprecation = true;
  const { Signal } = process.binding('signal_wrap');
  handle = new Signal();
  handle.onsignal = () => {
    Atomics.store(flag, 0, 1);
    handle.close();
  };
  if (handle.start(require('node:os').constants.signals.SIGINT) !== 0) {
    handle.close();
    handle = null;
  }
} catch {
  handle = null;
}
Atomics.store(flag, 1, handle ? 1 : 2);
Atomics.notify(flag, 1);
`;

class InterruptWatch {
  private constructor(private readonly flag: Int32Array, private readonly worker: Worker) {}

  /** A watch, or null where no signal handle can be had (Ctrl-C then ends the run as it ends any process). */
  static start(): InterruptWatch | null {
    const flag = new Int32Array(new SharedArrayBuffer(8));
    let worker: Worker;
    try {
      worker = new Worker(SIGINT_WATCHER, { eval: true, workerData: flag, execArgv: [] });
    } catch {
      return null;
    }
    worker.unref();
    worker.on('error', () => {});
    // wait for the handle, so that a Ctrl-C during the first step is already caught
    Atomics.wait(flag, 1, 0, 5000);
    const watch = new InterruptWatch(flag, worker);
    if (Atomics.load(flag, 1) === 1) return watch;
    watch.stop();
    return null;
  }

  get requested(): boolean {
    return Atomics.load(this.flag, 0) !== 0;
  }

  stop(): void {
    void this.worker.terminate();
  }
}

/** Append a line; a write that fails is cut back off, so the file never ends in a torn line. */
function appendLine(path: string, line: string): void {
  let fd = -1;
  let size = -1;
  try {
    fd = openSync(path, 'a');
    size = fstatSync(fd).size;
    writeAll(fd, Buffer.from(line));
    const f = fd;
    fd = -1;
    closeSync(f);
  } catch (e) {
    if (fd >= 0) {
      try {
        if (size >= 0) ftruncateSync(fd, size);
        closeSync(fd);
      } catch {
        // the write error is the one to report
      }
    }
    throw writeError(path, e);
  }
}

export interface TrainRunOptions {
  /** Continue from the newest complete checkpoint in the run folder (a fresh start when there is none). */
  resume?: boolean;
  /** End after this many steps as if killed there (for tests of resume). */
  stopAfter?: number;
  /**
   * On Ctrl-C (SIGINT), finish the step in progress, write a checkpoint of it and throw
   * TrainingInterrupted; a second Ctrl-C ends the process at once. The handler exists only while
   * `run()` runs. Default: on when checkpoints are written (checkpointEvery > 0), on the main
   * thread of a process that has no SIGINT listener of its own.
   */
  interruptible?: boolean;
}

export class Trainer {
  readonly optim: Optimizer;
  private history: (StepMetrics | EvalMetrics)[] = [];

  constructor(
    readonly model: TrainableLM,
    readonly params: Tensor[],
    /** Examples in memory, or a source of them (a stream over a file larger than memory, the task sampler). */
    readonly data: readonly Example[] | ExampleSource,
    readonly padId: number,
    readonly cfg: TrainConfig,
    readonly runDir: string,
    readonly hooks: TrainerHooks,
  ) {
    if (!isSource(data) && data.length === 0) throw new AdaptkitError('no training examples');
    if (cfg.steps < 1 || cfg.batchSize < 1 || cfg.gradAccum < 1) throw new AdaptkitError('steps, batch size and gradient accumulation must be at least 1');
    this.optim = cfg.optimizer === 'sgd'
      ? new SGD(params, { lr: cfg.lr, momentum: cfg.momentum, weightDecay: cfg.weightDecay })
      : new AdamW(params, { lr: cfg.lr, weightDecay: cfg.weightDecay });
  }

  /** The shuffled batch list of an epoch (a pure function of seed and epoch, so resume replays it). */
  private epoch(e: number): number[][] {
    if (isSource(this.data)) return [];
    const rng = new Rng(this.cfg.seed * 1000003 + e);
    const data = this.data as readonly Example[];
    const order = Array.from(data.keys());
    for (let i = order.length - 1; i > 0; i--) {
      const j = rng.int(i + 1);
      [order[i], order[j]] = [order[j]!, order[i]!];
    }
    const per = this.cfg.pack ? Math.max(1, this.cfg.batchSize * 4) : this.cfg.batchSize;
    const batches = epochBatches(data, per, order, this.cfg.bucket);
    if (this.cfg.bucket) {
      for (let i = batches.length - 1; i > 0; i--) {
        const j = rng.int(i + 1);
        [batches[i], batches[j]] = [batches[j]!, batches[i]!];
      }
    }
    return batches;
  }

  private get metricsPath(): string {
    return join(this.runDir, 'metrics.jsonl');
  }

  private log(m: StepMetrics | EvalMetrics): void {
    this.history.push(m);
    appendLine(this.metricsPath, `${JSON.stringify(m)}\n`);
  }

  run(opts: TrainRunOptions = {}): TrainResult {
    const c = this.cfg;
    const interruptible = opts.interruptible ?? (c.checkpointEvery > 0 && isMainThread && process.listenerCount('SIGINT') === 0);
    const watch = interruptible ? InterruptWatch.start() : null;
    try {
      return this.train(opts, watch);
    } finally {
      watch?.stop();
    }
  }

  private train(opts: TrainRunOptions, watch: InterruptWatch | null): TrainResult {
    const c = this.cfg;
    try {
      mkdirSync(this.runDir, { recursive: true });
    } catch (e) {
      throw writeError(this.runDir, e);
    }
    // no checkpoint is being written now, so any temporary folder is left over from a kill
    removeStaleTemps(this.runDir);
    let step = 0;
    let epoch = 0;
    let batchIdx = 0;
    let best = NaN;
    let badEvals = 0;
    let stoppedEarly = false;
    if (opts.resume && listCheckpoints(this.runDir).length > 0) {
      const ck = loadCheckpoint(this.runDir);
      this.hooks.loadWeights(ck.dir);
      this.optim.loadState(ck.optim);
      // `stream` holds the position of any example source (it was first a stream's alone)
      const s = ck.state as { step: number; epoch: number; batch: number; rng: number[]; best: number | null; badEvals: number; history: (StepMetrics | EvalMetrics)[]; stream?: unknown };
      if (isSource(this.data) && s.stream) this.data.seek(s.stream);
      step = s.step;
      epoch = s.epoch;
      batchIdx = s.batch;
      defaultRng.setState(s.rng);
      best = s.best ?? NaN;
      badEvals = s.badEvals;
      this.history = s.history;
      // the log as of the checkpoint: the steps after it (and a line torn by a kill) are run again
      writeFileAtomic(this.metricsPath, this.history.map((m) => Buffer.from(`${JSON.stringify(m)}\n`)));
    } else {
      defaultRng.seed(c.seed);
      if (isSource(this.data)) this.data.restart?.();
      this.history = [];
      if (existsSync(this.metricsPath)) writeFileAtomic(this.metricsPath, []);
    }
    const save = (): string => saveCheckpoint(this.runDir, step, this.hooks.saveWeights, this.optim.state(), {
      step, epoch, batch: batchIdx, rng: defaultRng.getState(), best: Number.isNaN(best) ? null : best, badEvals, history: this.history,
      stream: isSource(this.data) ? this.data.position() : undefined,
    }, c.keepCheckpoints);
    let batches = this.epoch(epoch);
    const t0 = Date.now();
    let tokensSeen = 0;
    while (step < c.steps) {
      if (opts.stopAfter !== undefined && step >= opts.stopAfter) break;
      this.optim.lr = c.lr * lrFactor(c.schedule, step, c.steps, c.warmupSteps);
      let lossSum = 0;
      let tokens = 0;
      for (let micro = 0; micro < c.gradAccum; micro++) {
        let ex: Example[];
        if (isSource(this.data)) {
          ex = this.data.next(c.pack ? c.batchSize * 4 : c.batchSize);
        } else {
          if (batchIdx >= batches.length) {
            epoch++;
            batchIdx = 0;
            batches = this.epoch(epoch);
          }
          const data = this.data as readonly Example[];
          ex = batches[batchIdx++]!.map((i) => data[i]!);
        }
        // the forward and backward of a step are the training scope: dropout is active there only
        lossSum += training(() => tidy(() => {
          let loss: Tensor;
          if (this.hooks.loss) {
            const r = this.hooks.loss(ex);
            loss = r.loss;
            tokens += r.tokens;
          } else {
            const b = collate(ex, this.padId, { pack: c.pack, maxLen: c.maxLen });
            tokens += b.tokens;
            loss = batchLoss(this.model, b.ids, b.targets, b.mask, { taskIds: b.taskIds, promptLengths: b.promptLengths }, c.lossAverage);
          }
          const scaled = c.gradAccum > 1 ? loss.mul(1 / c.gradAccum) : loss;
          scaled.backward();
          return loss.item();
        }));
      }
      maskGrads(this.params);
      const gradNorm = clipGradNorm(this.params, c.maxGradNorm);
      this.optim.step();
      this.optim.zeroGrad();
      step++;
      tokensSeen += tokens;
      const elapsed = (Date.now() - t0) / 1000;
      const m: StepMetrics = {
        kind: 'train', step, loss: lossSum / c.gradAccum, lr: this.optim.lr, grad_norm: gradNorm, tokens,
        tokens_per_s: elapsed > 0 ? tokensSeen / elapsed : 0, elapsed_s: elapsed,
      };
      this.log(m);
      this.hooks.onStep?.(m);
      if (c.evalEvery > 0 && this.hooks.evaluate && (step % c.evalEvery === 0 || step === c.steps)) {
        const r = this.hooks.evaluate();
        const em: EvalMetrics = { kind: 'eval', step, ...r };
        this.log(em);
        this.hooks.onEval?.(em);
        const [key, value] = Object.entries(r)[0] ?? [];
        if (key !== undefined && value !== undefined) {
          const better = Number.isNaN(best) || (higherIsBetter(key) ? value > best : value < best);
          if (better) {
            best = value;
            badEvals = 0;
          } else if (c.earlyStoppingPatience > 0 && ++badEvals >= c.earlyStoppingPatience) {
            stoppedEarly = true;
          }
        }
      }
      let saved: string | null = null;
      if (c.checkpointEvery > 0 && (step % c.checkpointEvery === 0 || step === c.steps || stoppedEarly)) saved = save();
      if (stoppedEarly) break;
      // checked only between steps, so the checkpoint never holds a half-updated state
      if (watch?.requested && step < c.steps) throw new TrainingInterrupted(step, c.steps, saved ?? save());
    }
    return { steps: step, history: this.history, stoppedEarly, seconds: (Date.now() - t0) / 1000 };
  }
}
