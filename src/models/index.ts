export { loadModel, loadAnyModel, loadTokenizer, type LoadedModel, type CausalModel, type AnyModel } from './load.js';
export { generate, sampleToken, type SamplingOptions, type GenerateResult, type CausalLM } from './generate.js';
export { convertLlama2c } from './convert.js';
export { KVCache } from './cache.js';
export type { Tokenizer } from './tokenizer.js';
export { LlamaForCausalLM } from './llama/model.js';
export { parseLlamaConfig, type LlamaConfig } from './llama/config.js';
export { GPT2LMHeadModel, parseGPT2Config, type GPT2Config } from './gpt2/model.js';
export { BertForSequenceClassification, parseBertConfig, type BertConfig } from './bert/model.js';
