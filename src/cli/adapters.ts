/** CLI commands over adapters: inspect, merge. */
import type { Command } from 'commander';
import { existsSync, readdirSync, statSync } from 'node:fs';
import { basename, join } from 'node:path';
import { AdaptkitError } from '../tensor/index.js';
import { describeModel } from '../nn/index.js';
import { SafetensorsFile } from '../io/safetensors.js';
import { AdapterModel, addWeightedAdapter, composeSparse, defaultTargetsFor, exportAdapter, findTargets, getMethod, registeredMethods } from '../adapters/index.js';
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
    .action(async (o: { model: string; adapter?: string; as?: string; adapters?: string; sparse?: string; subtract?: string; method: string; density: string; svdRank?: string; seed: string; out: string; overwrite?: boolean }) => {
      if ([o.adapter, o.adapters, o.sparse].filter(Boolean).length !== 1) throw new AdaptkitError('merge needs exactly one of --adapter, --adapters and --sparse');
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
      const loaded = loadModel(modelPath);
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
        const merged = am.merge();
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
