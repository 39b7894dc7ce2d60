export { AdamW, SGD, clipGradNorm, maskGrads, type Optimizer, type OptimizerState } from './optim.js';
export { lrFactor, type ScheduleName } from './schedule.js';
export { readRecords, readLines, jsonRecord, DataError, type DataRecord, type ReadOptions } from './data.js';
export { toExample, fitExamples, splitExamples, exampleLength, promptLength, readLabelWords, type Example } from './examples.js';
export { collate, epochBatches, IGNORE, type Batch } from './batch.js';
export { evaluateLoss, labelAccuracy, exactMatch, finalNumber, batchLoss, tokenLoss, LOSS_AVERAGES, type LossAverage, type RowConditioning } from './evaluate.js';
export { Trainer, TrainingInterrupted, DEFAULT_TRAIN, type TrainConfig, type TrainResult, type TrainRunOptions, type StepMetrics, type EvalMetrics, type ExampleSource } from './trainer.js';
export {
  TaskSampler, taskProbabilities, taskMetrics, prefixRecord, taskPrefixText, withTask, readTaskManifest, readTasksFile, TASKS_FILE, TASK_SAMPLINGS,
  DEFAULT_TASK_TEMPERATURE, type TaskData, type TaskSampling, type TasksFile, type SamplerPosition, type ManifestTask,
} from './multitask.js';
export { saveCheckpoint, loadCheckpoint, listCheckpoints, removeStaleTemps } from './checkpoint.js';
export { runTraining, methodConfig, FULL_FINE_TUNING, type MethodOptions } from './run.js';
export { runDemo, type DemoResult } from './demo.js';
export { plotMetrics, readMetrics } from './plot.js';
export { classificationExamples, classificationLoss, classificationAccuracy } from './classify.js';
export { StreamingExamples, type StreamPosition } from './stream.js';
export { openImageSource, imageExamples, imageBatch, toPixels, resizeBilinear, imagePrep, MNIST_SPLITS, type ImageExample, type ImagePrep } from './images.js';
export {
  IMAGE_CORRUPTIONS, IMAGE_SEVERITIES, TEXT_CORRUPTIONS, TEXT_SEVERITIES, CHAR_EDITS, QWERTY_NEIGHBOURS, corruptImage, corruptText, corruptionParameters,
  addGaussianNoise, addShotNoise, gaussianBlur, shiftBrightness, scaleContrast, pixelate, rotateImage, elasticTransform,
  charNoise, keyboardTypo, flipCase, allCaps, wordDrop, type ImageCorruption, type TextCorruption, type CharEdit, type CorruptionParameters,
} from './corruptions.js';
export {
  imageStream, textStream, presetDomains, exampleSeed, rawToPlanar, planarToRaw, CorruptedStream, ImageStream, STREAM_PRESETS, GRADUAL_SEVERITIES,
  type StreamPreset, type StreamDomain, type StreamSegment, type StreamBatch, type StreamManifest, type ImageStreamOptions, type TextStreamOptions, type ImageItem,
} from './tta-streams.js';
