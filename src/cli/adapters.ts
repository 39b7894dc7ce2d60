/** CLI commands over adapters: inspect, merge, export (models and LoRA adapters as GGUF). */
import type { Command } from 'commander';
import { existsSync, readdirSync, statSync } from 'node:fs';
import { basename, join } from 'node:path';
import { AdaptkitError, type Tensor } from '../tensor/index.js';
import { describeModel } from '../nn/index.js';
import { SafetensorsFile } from '../io/safetensors.js';
import {
  AdapterModel, addWeightedAdapter, composeSparse, defaultTargetsFor, exportAdapter, findTargets, getMethod, registeredMethods,
} from '../adapters/index.js';
import { adapterWeightsFile, readAdapterConfig, readTensorMap } from '../adapters/files.js';
import { loadModel } from '../models/load.js';
import { saveModelFolder } from '../models/save.js';
import { LlamaForCausalLM } from '../models/llama/model.js';
import {
  GGUF_EXPORT_TYPES, type GgufExportType, type LoraFactors, exportGgufLora, exportGgufModel, ggufNameFor, ggufVocabKeys,
} from '../models/gguf.js';
import { resolveModel } from './models.js';
import { QUANTIZE_HELP, mergeAndReport, quantizeLoadOptions, reportQuantization } from './quantize.js';

function readAdapter(dir: string): { config: Record<string, unknown>; tensors: Map<string, number[]> } {
  const config = readAdapterConfig(dir);
  const f = new SafetensorsFile(adapterWeightsFile(dir));
  const tensors = new Map<string, number[]>();
  for (const k of f.keys()) tensors.set(k, f.info(k).shape);
  f.close();
  return { config, tensors };
}

/**
 * A PEFT adapter as low-rank factors over `model`: its method's `lowRank` form, or another
 * method's adapter rewritten through its `exports` capability into a method that has one
 * (ZeroI2V, a one-task Poly). What the factors cannot hold is refused, naming the field.
 */
function loraFactorsOf(model: LlamaForCausalLM, dir: string): { alpha: number; factors: LoraFactors[] } {
  const cfgPath = join(dir, 'adapter_config.json');
  const raw = readAdapterConfig(dir);
  const method = getMethod(raw.peft_type, cfgPath);
  let target = method;
  let config: Record<string, unknown>;
  let tensors: Map<string, Tensor>;
  if (method.lowRank) {
    config = raw;
    tensors = readTensorMap(adapterWeightsFile(dir));
  } else {
    const via = Object.keys(method.exports ?? {}).find((t) => getMethod(t).lowRank);
    if (!via) {
      const can = registeredMethods().filter((m) => m.lowRank || Object.keys(m.exports ?? {}).some((t) => getMethod(t).lowRank)).map((m) => m.peftType);
      throw new AdaptkitError(`${cfgPath}: ${method.peftType} adapters cannot be written as GGUF LoRA adapters (llama.cpp's adapters are low-rank factors; these methods can: ${can.join(', ')})`);
    }
    const am = new AdapterModel(model);
    am.load(dir, 'adapter');
    ({ config, tensors } = method.exports![via]!(am, 'adapter'));
    target = getMethod(via);
  }
  try {
    return target.lowRank!(config, tensors, cfgPath);
  } finally {
    for (const t of tensors.values()) t.dispose();
  }
}

export function registerAdapterCommands(program: Command): void {
  program
    .command('export')
    .description('write a model as a llama-architecture GGUF file, or a LoRA adapter as a GGUF LoRA adapter, for llama.cpp')
    .requiredOption('--format <name>', 'output format: gguf')
    .requiredOption('--model <path>', 'the model (HF folder, Hub id, llama2.c .bin or GGUF); with --adapter, the base model the adapter was trained on')
    .option('--adapter <dir>', 'write this PEFT adapter (LoRA, or a method that can be written as LoRA) instead of the model')
    .option('--tokenizer <path>', 'tokenizer to write into the model file (llama2.c tokenizer.bin, HF folder or GGUF); default: the model\'s')
    .option('--type <type>', 'tensor type of the weight matrices: f32, f16 or q8_0 (an adapter: f32 or f16); norms stay f32', 'f32')
    .requiredOption('--out <file>', 'output file')
    .option('--overwrite', 'replace an existing output file')
    .action(async (o: { format: string; model: string; adapter?: string; tokenizer?: string; type: string; out: string; overwrite?: boolean }) => {
      if (o.format !== 'gguf') throw new AdaptkitError(`--format must be gguf, got "${o.format}"`);
      const types: readonly string[] = o.adapter ? ['f32', 'f16'] : GGUF_EXPORT_TYPES;
      if (!types.includes(o.type)) throw new AdaptkitError(`--type must be one of ${types.join(', ')}${o.adapter ? ' for an adapter' : ''}, got "${o.type}"`);
      if (o.adapter && o.tokenizer) throw new AdaptkitError('--tokenizer goes with a model export; an adapter file holds no vocabulary');
      if (existsSync(o.out) && !o.overwrite) throw new AdaptkitError(`${o.out} exists (pass --overwrite to replace it)`);
      const modelPath = await resolveModel(o.model);
      const { model } = loadModel(modelPath);
      if (!(model instanceof LlamaForCausalLM)) throw new AdaptkitError(`${modelPath}: a ${describeModel(model).family} model; GGUF export writes Llama-family models (llama architecture)`);
      if (o.adapter) {
        const { alpha, factors } = loraFactorsOf(model, o.adapter);
        exportGgufLora(model, factors, alpha, o.out, { type: o.type as 'f32' | 'f16', name: basename(o.adapter) });
        console.log(`wrote ${o.adapter} as a GGUF LoRA adapter (${factors.length} layers, ${o.type}, alpha ${alpha}) to ${o.out}`);
        return;
      }
      const vocab = ggufVocabKeys(modelPath, o.tokenizer, model.config.vocabSize);
      const r = exportGgufModel(model, o.out, { type: o.type as GgufExportType, vocab, name: ggufNameFor(modelPath) });
      console.log(`wrote ${modelPath} as a llama GGUF model (${r.tensors} tensors, ${o.type}${r.fallbacks.length ? `, ${r.fallbacks.length} as f16` : ''}) to ${o.out}`);
    });

  program
    .command('inspect')
    .description('describe a PEFT adapter folder: method, settings, tensors and trainable-parameter count')
    .requiredOption('--adapter <dir>', 'adapter folder (adapter_config.json + adapter_model.safetensors)')
    .option('--model <path>', 'base model: also check the count against the method formula for this model')
    .option('--json', 'print JSON')
    .action(async (o: { adapter: string; model?: string; json?: boolean }) => {
      const { config, tensors } = readAdapter(o.adapter);
      const method = getMethod(config.peft_type);
      const parsed = method.parseConfig(config, join(o.adapter, 'adapter_config.json'));
      const count = [...tensors.values()].reduce((n, s) => n + s.reduce((p, q) => p * q, 1), 0);
      const report: Record<string, unknown> = {
        adapter: o.adapter,
        peft_type: parsed.peft_type,
        target_modules: parsed.target_modules,
        tensors: tensors.size,
        trainable_parameters: count,
      };
      Object.assign(report, method.summary?.(parsed) ?? {});
      if (o.model) {
        const { model } = loadModel(await resolveModel(o.model));
        const am = new AdapterModel(model);
        const targets = method.kind === 'tuner' ? findTargets(model, parsed, defaultTargetsFor(method, model, parsed)) : [];
        const formula = method.countParameters ? method.countParameters(parsed, targets, describeModel(model)) : null;
        am.load(o.adapter);
        report.targets_matched = targets.length;
        report.formula_parameters = formula;
        report.formula_matches = formula === null ? null : formula === count;
      }
      if (o.json) console.log(JSON.stringify(report));
      else for (const [k, v] of Object.entries(report)) console.log(`${k}: ${typeof v === 'object' ? JSON.stringify(v) : v}`);
    });

  program
    .command('merge')
    .description('fold an adapter into the base weights (--adapter), or combine adapters into a new one (--adapters a:w,b:w)')
    .requiredOption('--model <path>', 'base model (HF folder, Hub id or llama2.c .bin)')
    .option('--adapter <dir>', 'adapter to merge into a standalone model folder')
    .option('--as <peft_type>', 'with --adapter: write the adapter converted to the format of another method it can export to, instead of merging it')
    .option('--adapters <list>', 'adapters to combine, as dir:weight,dir:weight')
    .option('--sparse <list>', 'sparse differences (saved by sparse fine-tuning methods) to compose by addition, as dir,dir')
    .option('--subtract <list>', 'with --sparse: sparse differences to revert (subtract), as dir,dir')
    .option('--method <name>', `combination: ${[...new Set(registeredMethods().flatMap((m) => m.combinations ?? []))].join(', ')}`, 'linear')
    .option('--density <d>', 'fraction kept by ties / dare / magnitude_prune', '1')
    .option('--svd-rank <r>', 'rank of the svd combination')
    .option('--seed <s>', 'seed for dare', '0')
    .requiredOption('--out <dir>', 'output folder')
    .option('--overwrite', 'replace files in a non-empty output folder')
    .option('--quantize <format>', `${QUANTIZE_HELP}; with --adapter the adapter merges into the quantized base (dequantize, add, requantize) and the error that makes is reported`)
    .action(async (o: { model: string; adapter?: string; as?: string; adapters?: string; sparse?: string; subtract?: string; method: string; density: string; svdRank?: string; seed: string; out: string; overwrite?: boolean; quantize?: string }) => {
      if ([o.adapter, o.adapters, o.sparse].filter(Boolean).length !== 1) throw new AdaptkitError('merge needs exactly one of --adapter, --adapters and --sparse');
      const load = quantizeLoadOptions(o.quantize);
      if (load.quantize && (!o.adapter || o.as)) throw new AdaptkitError('--quantize goes with merging an adapter into the base (--adapter without --as)');
      if (o.subtract && !o.sparse) throw new AdaptkitError('--subtract goes with --sparse');
      if (o.sparse) {
        const list = (v: string | undefined) => (v ?? '').split(',').map((x) => x.trim()).filter(Boolean);
        if (existsSync(o.out) && readdirSync(o.out).length > 0 && !o.overwrite) throw new AdaptkitError(`${o.out} is not empty (pass --overwrite)`);
        const r = composeSparse(list(o.sparse), { subtract: list(o.subtract), out: o.out, overwrite: o.overwrite });
        // the composed difference must fit this base: loading checks every weight's checksum and shape
        new AdapterModel(loadModel(await resolveModel(o.model)).model).load(o.out, 'composed');
        console.log(`wrote the sum of ${list(o.sparse).length} sparse differences${o.subtract ? ` minus ${list(o.subtract).length}` : ''} to ${o.out} (${r.tensors} weights, ${r.nnz} entries)`);
        return;
      }
      const modelPath = await resolveModel(o.model);
      const loaded = loadModel(modelPath, load);
      reportQuantization(loaded);
      const am = new AdapterModel(loaded.model);
      if (o.adapter && o.as) {
        const name = basename(o.adapter).replace(/[^\w.-]/g, '_') || 'adapter';
        am.load(o.adapter, name);
        if (existsSync(o.out) && readdirSync(o.out).length > 0 && !o.overwrite) throw new AdaptkitError(`${o.out} is not empty (pass --overwrite)`);
        exportAdapter(am, name, o.as.toUpperCase(), o.out);
        console.log(`wrote ${o.adapter} as a ${o.as.toUpperCase()} adapter to ${o.out}`);
        return;
      }
      if (o.adapter) {
        am.load(o.adapter, basename(o.adapter).replace(/[^\w.-]/g, '_') || 'adapter');
        const merged = mergeAndReport(am, loaded.model.config.vocabSize);
        saveModelFolder(merged, loaded.config, o.out, { copyFrom: statSync(modelPath).isDirectory() ? modelPath : undefined, overwrite: o.overwrite });
        console.log(`merged ${o.adapter} into ${o.out}`);
        return;
      }
      const items = o.adapters!.split(',').map((s, i) => {
        const at = s.lastIndexOf(':');
        const dir = at > 0 ? s.slice(0, at) : s;
        const w = at > 0 ? Number(s.slice(at + 1)) : 1;
        if (!Number.isFinite(w)) throw new AdaptkitError(`bad weight in "${s}" (use dir:weight)`);
        // adapters are named after their folders, so messages say which input is meant
        const name = `${basename(dir).replace(/[^\w.-]/g, '_') || 'adapter'}${i === 0 ? '' : `_${i}`}`;
        am.load(dir, name);
        return { name, w };
      });
      const method = am.adapters.get(items[0]!.name)!.method;
      const known = method.combinations ?? [];
      if (!known.includes(o.method)) throw new AdaptkitError(`--method must be one of ${known.join(', ') || `(none: ${method.peftType} adapters cannot be combined)`}, got "${o.method}"`);
      if (existsSync(o.out) && readdirSync(o.out).length > 0 && !o.overwrite) throw new AdaptkitError(`${o.out} is not empty (pass --overwrite)`);
      addWeightedAdapter(am, items.map((x) => x.name), items.map((x) => x.w), 'combined', {
        combination: o.method,
        density: Number(o.density),
        svdRank: o.svdRank === undefined ? undefined : Number(o.svdRank),
        seed: Number(o.seed),
      });
      am.save(o.out, 'combined');
      console.log(`wrote the ${o.method} combination of ${items.length} adapters to ${o.out}`);
    });
}
