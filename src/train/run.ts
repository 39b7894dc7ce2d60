/**
 * A whole training run: model, tokenizer, adapter (or full fine-tuning), data, trainer, final
 * PEFT adapter, training report and curves. Used by `adaptkit train` and the demo.
 */
import { existsSync, mkdirSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { AdaptkitError, type Tensor, parameter } from '../tensor/index.js';
import { AdapterModel, type AdapterInstance } from '../adapters/index.js';
import { readTensorMap } from '../adapters/files.js';
import { writeFileAtomic } from '../io/atomic.js';
import type { Tokenizer } from '../models/tokenizer.js';
import type { AnyModel } from '../models/load.js';
import { BertForSequenceClassification } from '../models/bert/model.js';
import { Linear } from '../nn/index.js';
import { classificationAccuracy, classificationLoss } from './classify.js';
import { saveModelFolder } from '../models/save.js';
import { type Example } from './examples.js';
import { StreamingExamples } from './stream.js';
import { evaluateLoss, labelAccuracy } from './evaluate.js';
import { plotMetrics } from './plot.js';
import { type Progress } from './progress.js';
import { DEFAULT_TRAIN, type TrainConfig, type TrainResult, Trainer } from './trainer.js';

export type MethodName = 'lora' | 'rslora' | 'dora' | 'ia3' | 'prefix' | 'prompt' | 'bottleneck' | 'compacter' | 'hydra' | 'full';
export const METHODS: readonly MethodName[] = ['lora', 'rslora', 'dora', 'ia3', 'prefix', 'prompt', 'bottleneck', 'compacter', 'hydra', 'full'];

export interface MethodOptions {
  r?: number;
  alpha?: number;
  dropout?: number;
  targets?: string[] | string;
  virtualTokens?: number;
  reductionFactor?: number;
  /** A PEFT config to use as is (overrides the method options). */
  config?: Record<string, unknown>;
}

/** The PEFT config for a method name and options. */
export function methodConfig(method: MethodName, o: MethodOptions, fanInFanOut: boolean): Record<string, unknown> | null {
  if (o.config) return o.config;
  const r = o.r ?? 8;
  const base = o.targets ? { target_modules: o.targets } : {};
  switch (method) {
    case 'lora':
    case 'rslora':
    case 'dora':
      return {
        peft_type: 'LORA', r, lora_alpha: o.alpha ?? 2 * r, lora_dropout: o.dropout ?? 0, fan_in_fan_out: fanInFanOut,
        use_rslora: method === 'rslora', use_dora: method === 'dora', target_modules: o.targets ?? 'all-linear',
      };
    case 'hydra':
      return { peft_type: 'HYDRA', r, lora_alpha: o.alpha ?? 2 * r, target_modules: o.targets ?? 'all-linear' };
    case 'ia3':
      return { peft_type: 'IA3', fan_in_fan_out: fanInFanOut, ...base };
    case 'prompt':
      return { peft_type: 'PROMPT_TUNING', num_virtual_tokens: o.virtualTokens ?? 20, prompt_tuning_init: 'SAMPLE_VOCAB' };
    case 'prefix':
      return { peft_type: 'PREFIX_TUNING', num_virtual_tokens: o.virtualTokens ?? 20 };
    case 'bottleneck':
      return { peft_type: 'BOTTLENECK', adapter_type: 'houlsby', reduction_factor: o.reductionFactor ?? 4, ...base };
    case 'compacter':
      return { peft_type: 'COMPACTER', adapter_type: 'houlsby', reduction_factor: o.reductionFactor ?? 4, phm_dim: 4, ...base };
    case 'full':
      return null;
  }
}

export interface RunOptions {
  model: AnyModel;
  tokenizer: Tokenizer;
  method: MethodName;
  methodOptions: MethodOptions;
  /** Examples in memory, or a stream over a large JSONL file. */
  train: Example[] | StreamingExamples;
  validation: Example[];
  outDir: string;
  config: Partial<TrainConfig>;
  resume?: boolean;
  overwrite?: boolean;
  /** Labels of classification data: accuracy is evaluated when given. */
  labels?: string[];
  progress?: Progress;
  /** Settings recorded in the run folder to recognize the same run again. */
  identity?: Record<string, unknown>;
  stopAfter?: number;
}

export interface RunResult {
  result: TrainResult;
  adapterDir: string;
  report: Record<string, unknown>;
}

const ADAPTER = 'default';

/** First completion token of each label (labels must differ in it). */
export function labelFirstTokens(train: readonly Example[], labels: readonly string[]): Map<string, number> {
  const out = new Map<string, number>();
  for (const l of labels) {
    const e = train.find((x) => x.label === l);
    if (!e || e.completion.length === 0) throw new AdaptkitError(`label "${l}" has no training example`);
    out.set(l, e.completion[0]!);
  }
  const firsts = [...out.values()];
  if (new Set(firsts).size !== firsts.length) throw new AdaptkitError(`labels ${labels.join(', ')} begin with the same token; choose label words that differ in their first token`);
  return out;
}

function prepareRunDir(o: RunOptions): void {
  const cfgPath = join(o.outDir, 'run_config.json');
  const identity = JSON.stringify(o.identity ?? {});
  if (existsSync(o.outDir) && readdirSync(o.outDir).length > 0) {
    if (o.overwrite) {
      rmSync(o.outDir, { recursive: true, force: true });
    } else if (o.resume) {
      if (existsSync(cfgPath) && readFileSync(cfgPath, 'utf8') !== identity) {
        throw new AdaptkitError(`${o.outDir} holds a run with different settings; refusing to resume it (use another --out or --overwrite)`);
      }
    } else {
      throw new AdaptkitError(`${o.outDir} already holds a run (pass --resume to continue it or --overwrite to start over)`);
    }
  }
  mkdirSync(o.outDir, { recursive: true });
  writeFileSync(cfgPath, identity);
}

export function runTraining(o: RunOptions): RunResult {
  prepareRunDir(o);
  const cfg: TrainConfig = { ...DEFAULT_TRAIN, ...o.config };
  const classifier = o.model instanceof BertForSequenceClassification ? o.model : null;
  if (classifier) {
    if (!o.labels?.length) throw new AdaptkitError('a sequence classifier trains on {"text", "label"} data');
    if (classifier.config.numLabels !== o.labels.length) {
      // a head of the right size, freshly initialized (the checkpoint's head had other labels)
      classifier.classifier = Linear.init(classifier.config.hiddenSize, o.labels.length);
      (classifier.config as { numLabels: number }).numLabels = o.labels.length;
    }
  }
  const am = new AdapterModel(o.model);
  const fan = o.model.constructor.name === 'GPT2LMHeadModel';
  let peft = methodConfig(o.method, o.methodOptions, fan);
  // the classification head trains along with the adapter, as PEFT's modules_to_save
  if (peft && classifier && !peft.modules_to_save) peft = { ...peft, modules_to_save: ['classifier'], task_type: 'SEQ_CLS' };
  let inst: AdapterInstance | null = null;
  let params: Tensor[];
  if (peft) {
    inst = am.add(ADAPTER, peft, { seed: cfg.seed });
    params = am.trainableParameters();
  } else {
    o.model.unfreeze();
    params = o.model.parameters().map((p) => parameter(p));
  }
  const padId = classifier ? ((o.tokenizer as { padId?: number | null }).padId ?? 0) : (o.tokenizer.eosId ?? 0);
  const labelTokens = o.labels?.length && !classifier && !(o.train instanceof StreamingExamples) ? labelFirstTokens(o.train, o.labels) : null;
  const evaluate = o.validation.length && classifier
    ? () => {
        const r = classificationAccuracy(am as unknown as { forward: typeof am.forward }, o.validation, padId);
        return { accuracy: r.accuracy, loss: r.loss };
      }
    : o.validation.length
    ? () => {
        const r: Record<string, number> = {};
        if (labelTokens) r.accuracy = labelAccuracy(am, o.validation, labelTokens, padId).accuracy;
        const l = evaluateLoss(am, o.validation, padId);
        r.loss = l.loss;
        r.perplexity = l.perplexity;
        return r;
      }
    : undefined;
  const trainer = new Trainer(am, params, o.train, padId, cfg, o.outDir, {
    evaluate,
    loss: classifier
      ? (ex) => ({ loss: classificationLoss(am, ex, padId), tokens: ex.reduce((n, e) => n + e.body.length, 0) })
      : undefined,
    onStep: (m) => o.progress?.step(m),
    onEval: (m) => o.progress?.eval(m),
    saveWeights: (dir) => (inst ? am.save(dir, ADAPTER) : saveModelFolder(o.model, {}, dir, { overwrite: true })),
    loadWeights: (dir) => {
      const file = join(dir, inst ? 'adapter_model.safetensors' : 'model.safetensors');
      const tensors = readTensorMap(file);
      if (inst) inst.loadStateDict(tensors, file);
      else for (const [k, p] of o.model.namedParameters()) (p.storage.data as Float32Array).set(tensors.get(k)!.toArray() as Float32Array, p.offset);
    },
  });
  const result = trainer.run({ resume: o.resume, stopAfter: o.stopAfter });
  o.progress?.stop();
  const adapterDir = join(o.outDir, inst ? 'adapter' : 'model');
  if (inst) {
    mkdirSync(adapterDir, { recursive: true });
    am.save(adapterDir, ADAPTER);
  } else {
    saveModelFolder(o.model, {}, adapterDir, { overwrite: true });
  }
  // hand the model back without this run's adapter modules in it
  if (inst) am.setActive([]);
  const evals = result.history.filter((h) => h.kind === 'eval');
  const report = {
    method: o.method,
    adapter_config: peft,
    train_config: cfg,
    trainable_parameters: params.reduce((n, p) => n + p.size, 0),
    steps: result.steps,
    stopped_early: result.stoppedEarly,
    seconds: result.seconds,
    train_examples: o.train instanceof StreamingExamples ? 'streamed' : o.train.length,
    validation_examples: o.validation.length,
    final_train_loss: result.history.filter((h) => h.kind === 'train').slice(-10).reduce((s, h, _, a) => s + Number((h as { loss: number }).loss) / a.length, 0),
    final_eval: evals[evals.length - 1] ?? null,
  };
  writeFileAtomic(join(o.outDir, 'training_report.json'), Buffer.from(`${JSON.stringify(report, null, 2)}\n`));
  if (existsSync(join(o.outDir, 'metrics.jsonl'))) writeFileAtomic(join(o.outDir, 'curves.svg'), Buffer.from(plotMetrics(join(o.outDir, 'metrics.jsonl'))));
  return { result, adapterDir, report };
}
