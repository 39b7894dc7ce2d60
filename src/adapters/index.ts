import './methods/lora.js';
import './methods/ia3.js';
import './methods/hydra.js';
import './methods/bottleneck.js';
import './methods/compacter.js';
import './methods/prompt-tuning.js';
import './methods/prefix-tuning.js';
import './methods/mosa.js';
import './methods/lowbit.js';
import './methods/zeroi2v.js';
import './methods/mask-tuning.js';
import './methods/sparse-diff.js';
import './methods/s2ft.js';
import './methods/lt-sft.js';
import './methods/poly.js';
import './methods/iapt.js';
import './methods/fusion.js';
import './methods/scalearn.js';
import './methods/mixda.js';
import './methods/generative-adapter.js';

export { AdapterModel, type AddAdapterOptions } from './adapter-model.js';
export { exportAdapter } from './peft-io.js';
export { composeSparse, readSparseDiff } from './methods/sparse-diff.js';
export { trainLtSft } from './methods/lt-sft.js';
export {
  registerMethod, getMethod, methodNames, registeredMethods, presetNames, resolvePreset, methodOptions, isMergeable,
} from './registry.js';
export { findTargets, defaultTargetsFor, roleTargets, unionTargets } from './targets.js';
export { AdaptedLayer } from './wrapper.js';
export { pythonJson } from './pyjson.js';
export { loadInto } from './state.js';
export { peftKey, splitPeftKey, readAdapterConfig, adapterWeightsFile, readTensorMap, deltaStateDict, PEFT_MODEL_PREFIX } from './files.js';
export { parseBase, baseJson, optInt, optNumber, optBool, optString, AdapterConfigError } from './config.js';
export {
  RowRouting,
  TaskRouting,
  PromptSpans,
  PaddingMask,
  type AdapterMethod, type AdapterInstance, type LayerDelta, type BaseAdapterConfig, type RawAdapterConfig, type TargetInfo,
  type MethodOption, type MethodPreset, type PresetOptions, type RowBatchedForm, type SlotTensor, type CombineOptions, type CreateContext,
} from './types.js';
export { RowStacks, stackedDeltas, isRowBatched } from './mixed.js';
export { LoraDelta, RowLoraDelta, rankAndScale, type LoraConfig } from './methods/lora.js';
export { LORA_COMBINATIONS } from './methods/lora-combine.js';
export { IA3Delta, type IA3Config } from './methods/ia3.js';
export { addWeightedAdapter } from './combine.js';
export { HydraDelta, type HydraConfig } from './methods/hydra.js';
export { BottleneckDelta, type BottleneckConfig } from './methods/bottleneck.js';
export { CompacterDelta, phmWeight, type CompacterConfig } from './methods/compacter.js';
export { PromptEmbedding, type PromptTuningConfig } from './methods/prompt-tuning.js';
export { PrefixAdapter, type PrefixTuningConfig } from './methods/prefix-tuning.js';
export { collectCovariance } from './calibrate.js';
export { compilePattern } from './patterns.js';
export { POLY, PolyDelta, PolyRouter, PolyAdapter, mixFactors, newTaskConfig, averagedLora, saveAveragedLora, taskLora, type PolyConfig, type PolyTransfer } from './methods/poly.js';
export { IAPT, IaptAdapter, PromptGenerator, rational, GENERATOR_WIDTH, type IaptConfig } from './methods/iapt.js';
export { exportAdapterHubFusion, loadAdapterHubFusion, adapterHubLocation, FUSION_CONFIGS, type FusionConfig, type AdapterHubLocation } from './methods/fusion.js';
export { ScaLearnDelta, type ScaLearnConfig } from './methods/scalearn.js';
export { MIXDA, MixdaDelta, KnowledgeAdapter, parseMixda, lastRealPositions, type MixdaConfig, type GatePosition } from './methods/mixda.js';
export { GENERATIVE_ADAPTER, GenerativeAdapter, GenerativeDelta, captureLayerInputs, parseGenerativeAdapter, type GenerativeAdapterConfig, type ContextStates, type CoreNorm } from './methods/generative-adapter.js';
