/** `adaptkit train` and `adaptkit eval` on image classification data (--images), for image models (ViT). */
import type { Command } from 'commander';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { AdaptkitError, Rng } from '../tensor/index.js';
import { writeFileAtomic } from '../io/atomic.js';
import { AdapterModel, resolvePreset } from '../adapters/index.js';
import { type DescribedModel, describeModel } from '../nn/index.js';
import type { RawConfig } from '../models/config.js';
import { type Classifier, classificationAccuracy } from '../train/classify.js';
import { splitExamples } from '../train/examples.js';
import {
  type ImageExample, type ImagePrep, type ImageSource, MNIST_SPLITS, PREPROCESSOR_FILE, imageExamples, imageInputOf, imagePrep, openImageSource, parseImageRange, preprocessorJson,
} from '../train/images.js';
import { makeProgress } from '../train/progress.js';
import { FULL_FINE_TUNING, type RunOptions, labelsInOrder, readLabelsFile, runTraining } from '../train/run.js';
import type { TrainConfig } from '../train/trainer.js';

export interface ImageFlags {
  images?: string;
  imageRange?: string;
  imageMean?: string;
  imageStd?: string;
}

const SPLITS = Object.entries(MNIST_SPLITS).map(([k, [a, b]]) => `${k} = images ${a}..${b - 1}`).join(', ');

/** The image data options of train and eval. */
export function addImageOptions(c: Command): Command {
  return c
    .option('--images <source>', `image classification data (for image models such as ViT), instead of --data: a folder of class subfolders of PNG/JPEG files; an IDX images file (*-images-idx3-ubyte[.gz], labels from the *-labels-idx1-ubyte[.gz] beside it); or mnist[:DIR][:SPLIT], the MNIST test set in DIR (default $ADAPTKIT_DATA/datasets/mnist_test) with its fixed split (${SPLITS})`)
    .option('--image-range <start:end>', 'use only images start..end-1 of --images (of its split), in its order')
    .option('--image-mean <list>', "per-channel mean after scaling to [0, 1] (one value, or one per channel); default: the model folder's preprocessor_config.json, else MNIST's 0.1307 for mnist, else 0.5")
    .option('--image-std <list>', "per-channel std (as --image-mean); default: preprocessor_config.json, else MNIST's 0.3081 for mnist, else 0.5");
}

/** Text data (--data) for a model of images is a mistake to name before a tokenizer is looked for. */
export function refuseTextData(model: DescribedModel): void {
  if (imageInputOf(model)) throw new AdaptkitError(`this ${describeModel(model).family} model takes images, not text: give --images SOURCE instead of --data`);
}

/** Options of a text run that mean nothing for images, by flag. */
function refuseTextOptions(o: Record<string, unknown>, flags: [string, string][]): void {
  for (const [key, flag] of flags) {
    const v = o[key];
    if (v !== undefined && v !== false && !(Array.isArray(v) && v.length === 0)) throw new AdaptkitError(`${flag} is for text data; --images gives image data`);
  }
}

interface Opened {
  source: ImageSource;
  range: [number, number];
  prep: ImagePrep;
}

function openImages(model: DescribedModel, o: ImageFlags, prepDirs: string[]): Opened {
  const input = imageInputOf(model);
  if (!input) throw new AdaptkitError(`--images needs a model of images (ViT); this is a ${describeModel(model).family} model of tokens, which takes --data`);
  const source = openImageSource(String(o.images));
  const range = o.imageRange === undefined ? [0, source.count] as [number, number] : parseImageRange(o.imageRange, source.count);
  // the first folder with a preprocessor_config.json decides, unless the command line does
  const dir = prepDirs.find((d) => existsSync(join(d, PREPROCESSOR_FILE)));
  return { source, range, prep: imagePrep(input, { modelDir: dir, source, mean: o.imageMean, std: o.imageStd }) };
}

export interface ImageTrainArgs {
  model: DescribedModel;
  modelPath: string;
  rawConfig: RawConfig;
  flags: ImageFlags & Record<string, unknown>;
  /** --val-split. */
  val: number;
  config: Omit<TrainConfig, 'evalEvery' | 'bucket' | 'pack' | 'maxLen'> & { evalEvery: number };
  run: Pick<RunOptions, 'method' | 'methodOptions' | 'adapterConfig' | 'outDir' | 'resume' | 'overwrite' | 'settingName' | 'onNotice'> & { json: boolean; modelArg: string };
}

/** A training run on --images: a full fine-tune or an adapter, with the classifier head trained along. */
export function trainOnImages(a: ImageTrainArgs): void {
  refuseTextOptions(a.flags, [['tasks', '--tasks'], ['stream', '--stream'], ['valData', '--val-data'], ['labelWords', '--label-words'], ['pack', '--pack'], ['bucket', '--bucket'], ['classificationHead', '--classification-head'], ['taskSampling', '--task-sampling'], ['taskTemperature', '--task-temperature'], ['taskPrefix', '--task-prefix']]);
  const data = a.flags.data as string | string[] | undefined;
  if (data !== undefined && data.length > 0) throw new AdaptkitError('give the data either as --data (text) or as --images, not both');
  const { source, range, prep } = openImages(a.model, a.flags, [a.modelPath]);
  const labels = [...source.labels];
  const examples = imageExamples(source, prep, labels, range);
  const split = a.val > 0 ? splitExamples(examples, a.val, a.config.seed) : { train: examples, validation: [] as ImageExample[] };
  if (split.train.length === 0) throw new AdaptkitError('no training images left after the validation split');
  const config: TrainConfig = { ...a.config, evalEvery: a.config.evalEvery || (split.validation.length ? a.config.steps : 0), bucket: false, pack: false, maxLen: 0 };
  // the folder of a fully fine-tuned model says which labels its head has, as transformers writes them
  const { num_labels: _n, ...rest } = a.rawConfig;
  const modelConfig = { ...rest, id2label: Object.fromEntries(labels.map((l, i) => [String(i), l])), label2id: Object.fromEntries(labels.map((l, i) => [l, i])) };
  const identity = {
    model: a.run.modelArg, images: source.name, imageRange: range, imageMean: prep.mean, imageStd: prep.std, valSplit: a.val,
    method: a.run.method, methodOptions: a.run.methodOptions, adapterConfig: a.run.adapterConfig, config: { ...config },
  };
  const runOpts: RunOptions = {
    ...a.run, model: a.model, train: split.train, validation: split.validation, labels, modelConfig, config,
    progress: makeProgress(config.steps, { json: a.run.json }), identity,
  };
  const preset = a.run.method === FULL_FINE_TUNING || a.run.adapterConfig ? null : resolvePreset(a.run.method).preset;
  const r = preset?.train ? preset.train(runOpts, runTraining, a.run.methodOptions) : runTraining(runOpts);
  // the pixels the model was trained on, for whoever evaluates or serves it
  writeFileAtomic(join(r.adapterDir, PREPROCESSOR_FILE), Buffer.from(`${JSON.stringify(preprocessorJson(prep), null, 2)}\n`));
  process.stderr.write(`adaptkit: trained ${r.result.steps} steps on ${split.train.length} images of ${source.name} in ${r.result.seconds.toFixed(1)} s; ${a.run.method === FULL_FINE_TUNING ? 'model' : 'adapter'} in ${r.adapterDir}, curves in ${join(a.run.outDir, 'curves.svg')}\n`);
  if (r.report.final_eval) process.stderr.write(`adaptkit: final evaluation ${JSON.stringify(r.report.final_eval)}\n`);
}

export interface ImageEvalArgs {
  model: DescribedModel;
  modelPath: string;
  adapter?: string;
  flags: ImageFlags & Record<string, unknown>;
  batchSize: number;
  limit: number;
  taskId?: number;
}

/** The labels a model's head (or its adapter's saved head) stands for, in row order. */
function headLabels(model: DescribedModel, source: ImageSource, adapter: string | undefined): string[] {
  const saved = adapter ? readLabelsFile(adapter) : null;
  if (saved) return labelsInOrder(saved);
  const c = (model as unknown as { config: { numLabels: number; id2label?: Record<string, string> | null } }).config;
  const named = c.id2label ? Object.keys(c.id2label).map(Number).sort((x, y) => x - y).map((i) => c.id2label![String(i)]!) : null;
  if (named && named.length === c.numLabels && source.labels.every((l) => named.includes(l))) return named;
  if (c.numLabels === source.labels.length) return [...source.labels];
  throw new AdaptkitError(`the classification head has ${c.numLabels} labels${named ? ` (${named.slice(0, 5).join(', ')}${named.length > 5 ? ', ...' : ''})` : ''}, ${source.name} has ${source.labels.length} (${source.labels.slice(0, 5).join(', ')}${source.labels.length > 5 ? ', ...' : ''})`);
}

/** Accuracy and loss of a model (with an optional adapter) on --images. */
export function evalOnImages(a: ImageEvalArgs): Record<string, number> {
  refuseTextOptions(a.flags, [['data', '--data'], ['exactMatch', '--exact-match'], ['labelWords', '--label-words'], ['task', '--task']]);
  const { source, range, prep } = openImages(a.model, a.flags, [...(a.adapter ? [a.adapter] : []), a.modelPath]);
  const labels = headLabels(a.model, source, a.adapter);
  // the adapter's saved head replaces this one, which only has to have its shape
  if (a.adapter) (a.model as unknown as { resizeClassifier(n: number, rng?: Rng): void }).resizeClassifier(labels.length, new Rng(0));
  const am = new AdapterModel(a.model);
  if (a.adapter) am.load(a.adapter);
  if (a.taskId !== undefined) am.tasks.ids = Int32Array.of(a.taskId);
  const end = Math.min(range[1], range[0] + a.limit);
  const examples = imageExamples(source, prep, labels, [range[0], end]);
  const r = classificationAccuracy(am as unknown as Classifier, examples, 0, a.batchSize);
  return { examples: examples.length, accuracy: r.accuracy, loss: r.loss };
}
