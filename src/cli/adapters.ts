/** CLI commands over adapters: inspect, merge. */
import type { Command } from 'commander';
import { existsSync, readFileSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { AdaptkitError } from '../tensor/index.js';
import { SafetensorsFile } from '../io/safetensors.js';
import { AdapterModel, COMBINATIONS, addWeightedAdapter, findTargets, getMethod, type Combination } from '../adapters/index.js';
import { adapterWeightsFile, readAdapterConfig } from '../adapters/files.js';
import { loadModel } from '../models/load.js';
import { saveModelFolder } from '../models/save.js';
import { resolveModel } from './models.js';

function readAdapter(dir: string): { config: Record<string, unknown>; tensors: Map<string, number[]> } {
  const config = readAdapterConfig(dir);
  const f = new SafetensorsFile(adapterWeightsFile(dir));
  const tensors = new Map<string, number[]>();
  for (const k of f.keys()) tensors.set(k, f.info(k).shape);
  f.close();
  return { config, tensors };
}

export function registerAdapterCommands(program: Command): void {
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
      for (const k of ['r', 'lora_alpha', 'use_rslora', 'use_dora', 'feedforward_modules', 'num_virtual_tokens', 'reduction_factor']) {
        if (config[k] !== undefined) report[k] = config[k];
      }
      if (o.model) {
        const { model } = loadModel(await resolveModel(o.model));
        const am = new AdapterModel(model);
        const targets = method.kind === 'tuner' ? findTargets(model, parsed, method.defaultTargets ? method.defaultTargets(model, parsed) : ((model.constructor as { defaultAdapterTargets?: string[] }).defaultAdapterTargets ?? null)) : [];
        const formula = method.countParameters ? method.countParameters(parsed, targets) : null;
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
    .option('--adapters <list>', 'adapters to combine, as dir:weight,dir:weight')
    .option('--method <name>', `combination: ${COMBINATIONS.join(', ')}`, 'linear')
    .option('--density <d>', 'fraction kept by ties / dare / magnitude_prune', '1')
    .option('--svd-rank <r>', 'rank of the svd combination')
    .option('--seed <s>', 'seed for dare', '0')
    .requiredOption('--out <dir>', 'output folder')
    .option('--overwrite', 'replace files in a non-empty output folder')
    .action(async (o: { model: string; adapter?: string; adapters?: string; method: string; density: string; svdRank?: string; seed: string; out: string; overwrite?: boolean }) => {
      if (!!o.adapter === !!o.adapters) throw new AdaptkitError('merge needs exactly one of --adapter and --adapters');
      const modelPath = await resolveModel(o.model);
      const loaded = loadModel(modelPath);
      const am = new AdapterModel(loaded.model);
      if (o.adapter) {
        am.load(o.adapter, 'default');
        const merged = am.merge();
        saveModelFolder(merged, loaded.config, o.out, { copyFrom: statSync(modelPath).isDirectory() ? modelPath : undefined, overwrite: o.overwrite });
        console.log(`merged ${o.adapter} into ${o.out}`);
        return;
      }
      if (!COMBINATIONS.includes(o.method as Combination)) throw new AdaptkitError(`--method must be one of ${COMBINATIONS.join(', ')}, got "${o.method}"`);
      const items = o.adapters!.split(',').map((s, i) => {
        const at = s.lastIndexOf(':');
        const dir = at > 0 ? s.slice(0, at) : s;
        const w = at > 0 ? Number(s.slice(at + 1)) : 1;
        if (!Number.isFinite(w)) throw new AdaptkitError(`bad weight in "${s}" (use dir:weight)`);
        am.load(dir, `in${i}`);
        return { name: `in${i}`, w };
      });
      if (existsSync(o.out) && readdirSync(o.out).length > 0 && !o.overwrite) throw new AdaptkitError(`${o.out} is not empty (pass --overwrite)`);
      addWeightedAdapter(am, items.map((x) => x.name), items.map((x) => x.w), 'combined', {
        combination: o.method as Combination,
        density: Number(o.density),
        svdRank: o.svdRank === undefined ? undefined : Number(o.svdRank),
        seed: Number(o.seed),
      });
      am.save(o.out, 'combined');
      console.log(`wrote the ${o.method} combination of ${items.length} adapters to ${o.out}`);
    });
}
