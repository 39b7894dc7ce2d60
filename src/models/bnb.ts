/**
 * Hugging Face checkpoints saved by bitsandbytes (transformers' load_in_8bit / load_in_4bit):
 * config.json's `quantization_config` and the packed tensors of each quantized Linear, read as
 * they lie in the file and kept packed (QuantLinear), and the same layout written back.
 *   4-bit: <m>.weight (uint8), .weight.absmax, .weight.quant_map, [.weight.nested_absmax,
 *          .weight.nested_quant_map], .weight.quant_state.bitsandbytes__<nf4|fp4>
 *   8-bit: <m>.weight (int8 CB), <m>.SCB, <m>.weight_format
 */
import { AdaptkitError } from '../tensor/index.js';
import {
  LLM_INT8_THRESHOLD, bnb4bitFromStateDict, bnb4bitStateDict, int8FromStateDict, int8StateDict,
  type Bnb4bitTensor, type QuantizedTensor, type StateTensor,
} from '../backend/quant/index.js';
import { Linear, type Module, QuantLinear } from '../nn/index.js';
import { isObject, preview } from '../io/json.js';
import type { PackedArray, RawTensor, TensorInfo } from '../io/safetensors.js';
import { ConfigReader, type RawConfig } from './config.js';
import type { WeightMap } from './weights.js';

export interface BnbQuantization {
  bits: 4 | 8;
  /** llm_int8_threshold: the LLM.int8() outlier threshold of 8-bit layers. */
  threshold: number;
}

/** The bitsandbytes settings of a config.json, or null when it has no quantization_config. */
export function bnbQuantization(raw: RawConfig, source: string): BnbQuantization | null {
  const qc = raw.quantization_config;
  if (qc === undefined || qc === null) return null;
  if (!isObject(qc)) throw new AdaptkitError(`${source}: "quantization_config" must be an object, got ${preview(qc)}`);
  const r = new ConfigReader(qc, source, 'quantization_config.');
  const method = r.str('quant_method', 'bitsandbytes');
  if (method !== 'bitsandbytes') {
    throw new AdaptkitError(`${source}: quantization_config.quant_method ${preview(method)} is not supported (adaptkit reads bitsandbytes checkpoints; --quantize quantizes a float model)`);
  }
  // transformers writes both spellings (the underscored ones are its private copies)
  const in4 = r.bool('load_in_4bit', r.bool('_load_in_4bit', false));
  const in8 = r.bool('load_in_8bit', r.bool('_load_in_8bit', false));
  if (in4 === in8) throw new AdaptkitError(`${source}: quantization_config must set exactly one of load_in_4bit and load_in_8bit`);
  const threshold = r.num('llm_int8_threshold', LLM_INT8_THRESHOLD);
  if (threshold < 0) r.fail('llm_int8_threshold', `must be >= 0, got ${threshold}`);
  return { bits: in4 ? 4 : 8, threshold };
}

/** What the loader needs of a checkpoint: its tensor names, shapes and packed reads. */
export interface PackedSource {
  keys(): string[];
  has(name: string): boolean;
  info(name: string): TensorInfo;
  readPacked(name: string): PackedArray;
}

/** Every packed weight of a bitsandbytes checkpoint by weight name, and the state tensors that go with them. */
export function readBnbWeights(src: PackedSource, q: BnbQuantization, source: string): { packed: Map<string, QuantizedTensor>; state: string[] } {
  const packed = new Map<string, QuantizedTensor>();
  const state: string[] = [];
  const get = (k: string) => (src.has(k) ? src.readPacked(k) : undefined);
  const keys = src.keys();
  try {
    collect(q, keys, get, src, source, packed, state);
  } catch (e) {
    if (e instanceof AdaptkitError && !e.message.startsWith(source)) throw new AdaptkitError(`${source}: ${e.message}`, { cause: e });
    throw e;
  }
  if (packed.size === 0) {
    const what = q.bits === 4 ? 'no <module>.weight.quant_state.bitsandbytes__nf4 (or __fp4) tensor' : 'no <module>.SCB tensor';
    throw new AdaptkitError(`${source}: quantization_config says load_in_${q.bits}bit, but the weights hold ${what}`);
  }
  return { packed, state };
}

function collect(
  q: BnbQuantization, keys: string[], get: (k: string) => PackedArray | undefined, src: PackedSource, source: string,
  packed: Map<string, QuantizedTensor>, state: string[],
): void {
  if (q.bits === 4) {
    // a module is 4-bit when any of its state tensors is there, so a missing one is named rather than skipped
    const modules = new Set(keys.flatMap((k) => {
      const at = k.lastIndexOf('.weight.');
      return at > 0 && FOUR_BIT_STATE.some((s) => k.slice(at + '.weight.'.length).startsWith(s)) ? [k.slice(0, at)] : [];
    }));
    for (const m of modules) {
      const t = bnb4bitFromStateDict(m, get);
      packed.set(`${m}.weight`, t);
      state.push(...keys.filter((k) => k.startsWith(`${m}.weight.`)));
    }
  } else {
    const modules = new Set(keys.flatMap((k) => {
      if (k.endsWith('.SCB')) return [k.slice(0, -'.SCB'.length)];
      if (k.endsWith('.weight_format')) return [k.slice(0, -'.weight_format'.length)];
      return k.endsWith('.weight') && src.info(k).dtype === 'I8' ? [k.slice(0, -'.weight'.length)] : [];
    }));
    for (const m of modules) {
      const w = `${m}.weight`;
      if (!src.has(w)) throw new AdaptkitError(`${source}: ${m}.SCB has no ${w} next to it (an 8-bit layer saves both)`);
      const info = src.info(w);
      if (info.dtype !== 'I8' || info.shape.length !== 2) throw new AdaptkitError(`${source}: ${w} must be int8 [out, in] next to ${m}.SCB, got ${info.dtype} [${info.shape.join(', ')}]`);
      packed.set(w, int8FromStateDict(m, get, info.shape));
      state.push(...[`${m}.SCB`, `${m}.weight_format`].filter((k) => src.has(k)));
    }
  }
}

/** What follows `<module>.weight.` in the name of a 4-bit layer's state tensors. */
const FOUR_BIT_STATE = ['absmax', 'quant_map', 'nested_absmax', 'nested_quant_map', 'quant_state.'];

/** Swap every linear layer built on a packed weight's stand-in for a QuantLinear holding it. */
export function installPacked(model: Module, w: WeightMap, threshold: number): number {
  let n = 0;
  for (const [path, m] of model.namedModules()) {
    if (!(m instanceof Linear)) continue;
    const q = w.placeholders.get(m.weight);
    if (!q) continue;
    if (q.shape[0] !== m.outFeatures || q.shape[1] !== m.inFeatures) {
      throw new AdaptkitError(`${w.source}: quantized weight "${q.name}" is [${q.shape.join(', ')}], but ${path} maps ${m.inFeatures} inputs to ${m.outFeatures} outputs`);
    }
    const layer = new QuantLinear(q, m.bias);
    layer.threshold = threshold;
    model.replace(path, layer);
    w.placeholders.delete(m.weight);
    n++;
  }
  const left = [...w.placeholders.values()].map((q) => q.name);
  if (left.length) throw new AdaptkitError(`${w.source}: ${left.join(', ')} ${left.length === 1 ? 'is' : 'are'} quantized, but the model uses ${left.length === 1 ? 'it' : 'them'} outside a linear layer`);
  return n;
}

function raw(t: StateTensor): RawTensor {
  return { dtype: t.dtype, shape: t.shape, data: t.data };
}

/**
 * Quantized layers (path, layer) in the bitsandbytes layout, and the quantization_config that says
 * so. Only int8, nf4 and fp4 have this layout, and a checkpoint is 8-bit or 4-bit, not both.
 */
export function bnbCheckpoint(layers: readonly (readonly [string, QuantLinear])[]): { tensors: Record<string, RawTensor>; quantizationConfig: RawConfig } {
  const formats = [...new Set(layers.map(([, m]) => m.format))];
  const other = formats.filter((f) => !BNB_FORMATS.includes(f));
  if (other.length) throw new AdaptkitError(`layers quantized to ${other.join(', ')} have no bitsandbytes layout to save them in (adaptkit export --format gguf writes GGUF block formats)`);
  if (formats.includes('int8') && formats.length > 1) throw new AdaptkitError(`a bitsandbytes checkpoint is 8-bit or 4-bit, not both (${formats.join(', ')})`);
  const tensors: Record<string, RawTensor> = {};
  let nested = false;
  for (const [path, m] of layers) {
    const q = m.weight;
    const state = q.format === 'int8' ? int8StateDict(q, path) : bnb4bitStateDict(q as Bnb4bitTensor, path);
    if (q.format !== 'int8' && (q as Bnb4bitTensor).nested) nested = true;
    for (const [k, t] of Object.entries(state)) tensors[k] = raw(t);
  }
  const eight = formats[0] === 'int8';
  const quantizationConfig: RawConfig = {
    quant_method: 'bitsandbytes',
    load_in_8bit: eight,
    load_in_4bit: !eight,
    llm_int8_threshold: layers[0]?.[1].threshold ?? LLM_INT8_THRESHOLD,
    llm_int8_skip_modules: null,
    llm_int8_has_fp16_weight: false,
    bnb_4bit_quant_type: eight ? 'fp4' : formats[0],
    bnb_4bit_use_double_quant: nested,
    bnb_4bit_compute_dtype: 'float32',
    bnb_4bit_quant_storage: 'uint8',
  };
  return { tensors, quantizationConfig };
}

/** The formats with a bitsandbytes checkpoint layout. */
export const BNB_FORMATS: readonly string[] = ['int8', 'nf4', 'fp4'];
