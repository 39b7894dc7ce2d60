/** Saving and loading adapters as PEFT folders (adapter_config.json + adapter_model.safetensors). */
import { join } from 'node:path';
import { AdaptkitError, type Tensor } from '../tensor/index.js';
import { describeModel } from '../nn/index.js';
import { writeFileAtomic } from '../io/atomic.js';
import { SafetensorsFile, serializeSafetensors } from '../io/safetensors.js';
import { getMethod } from './registry.js';
import { defaultTargetsFor, findTargets } from './targets.js';
import type { AdapterInstance } from './types.js';
import type { AdapterModel } from './adapter-model.js';
import { pythonJson } from './pyjson.js';
import { loadInto } from './state.js';
import { adapterWeightsFile, peftKey, readAdapterConfig } from './files.js';

/** Parameters of an adapter's modules_to_save copies under their saved keys. */
function savedModuleTensors(am: AdapterModel, name: string): Map<string, Tensor> {
  const out = new Map<string, Tensor>();
  for (const [path, m] of am.saved.get(name) ?? []) for (const [k, t] of m.namedParameters()) out.set(peftKey(path, k), t);
  return out;
}

export function saveAdapter(am: AdapterModel, dir: string, name: string): void {
  const inst = am.adapters.get(name);
  if (!inst) throw new AdaptkitError(`no adapter named "${name}"`);
  const tensors: Record<string, Tensor> = {};
  for (const [k, t] of inst.stateDict()) tensors[k] = t;
  for (const [k, t] of savedModuleTensors(am, name)) tensors[k] = t;
  writeFileAtomic(join(dir, 'adapter_model.safetensors'), serializeSafetensors(tensors, { metadata: { format: 'pt' } }));
  for (const [file, bytes] of inst.extraFiles?.() ?? []) {
    if (!/^[\w][\w.-]*$/.test(file) || file === 'adapter_config.json' || file === 'adapter_model.safetensors') {
      throw new AdaptkitError(`adapter "${name}": cannot save an extra file named ${JSON.stringify(file)}`);
    }
    writeFileAtomic(join(dir, file), bytes);
  }
  writeFileAtomic(join(dir, 'adapter_config.json'), Buffer.from(pythonJson(inst.configJson(), inst.method.floatKeys ?? [])));
}

export function loadAdapter(am: AdapterModel, dir: string, name: string): AdapterInstance {
  const raw = readAdapterConfig(dir);
  const cfgPath = join(dir, 'adapter_config.json');
  const wfile = adapterWeightsFile(dir);
  const method = getMethod(raw.peft_type, cfgPath);
  const prepared = method.prepareLoad ? method.prepareLoad(raw) : { config: raw };
  const f = new SafetensorsFile(wfile);
  let tensors: Map<string, Tensor>;
  try {
    try {
      checkSizes();
    } catch (e) {
      if (e instanceof AdaptkitError && !e.message.includes(cfgPath)) throw new AdaptkitError(`${cfgPath}: ${e.message}`, { cause: e });
      throw e;
    }
    tensors = new Map(f.keys().map((k) => [k, f.read(k)]));
  } finally {
    f.close();
  }
  function checkSizes(): void {
    // every size the config implies is checked against the file before anything is allocated
    if (method.countParameters) {
      const parsed = method.parseConfig(prepared.config, cfgPath);
      const targets = method.kind === 'tuner' ? findTargets(am.model, parsed, defaultTargetsFor(method, am.model, parsed)) : [];
      const implied = method.countParameters(parsed, targets, describeModel(am.model));
      const held = f.keys().reduce((n, k) => n + f.info(k).shape.reduce((p, q) => p * q, 1), 0);
      // a gross excess only: near misses get the exact per-tensor report of loadInto below
      if (implied > 4 * held + (1 << 20)) {
        throw new AdaptkitError(`${cfgPath}: the config implies ${implied} adapter parameters for this model, but ${wfile} holds ${held} values; a size field (r, bottleneck size, virtual tokens, ...) does not match the saved tensors`);
      }
    }
  }
  let inst: AdapterInstance;
  try {
    inst = am.add(name, prepared.config, { source: cfgPath });
  } catch (e) {
    for (const t of tensors.values()) t.dispose();
    throw e;
  }
  prepared.finish?.(inst);
  Object.assign(inst.config, { raw });
  const savedParams = savedModuleTensors(am, name);
  try {
    const mine = new Map<string, Tensor>();
    const theirs = new Map<string, Tensor>();
    for (const [k, t] of tensors) (savedParams.has(k) ? theirs : mine).set(k, t);
    inst.loadStateDict(mine, wfile);
    if (savedParams.size) loadInto(savedParams, theirs, wfile);
  } catch (e) {
    am.delete(name);
    throw e;
  } finally {
    for (const t of tensors.values()) t.dispose();
  }
  return inst;
}

/** Save an adapter converted to another method's form (its `exports` capability), as a PEFT folder. */
export function exportAdapter(am: AdapterModel, name: string, peftType: string, dir: string): void {
  const inst = am.adapters.get(name);
  if (!inst) throw new AdaptkitError(`no adapter named "${name}"`);
  const target = getMethod(peftType);
  const convert = inst.method.exports?.[target.peftType];
  if (!convert) {
    const known = Object.keys(inst.method.exports ?? {});
    throw new AdaptkitError(`adapter "${name}" (${inst.method.peftType}) cannot be written as ${target.peftType}${known.length ? ` (it can be written as: ${known.join(', ')})` : ''}`);
  }
  const { config, tensors } = convert(am, name);
  try {
    writeFileAtomic(join(dir, 'adapter_model.safetensors'), serializeSafetensors(Object.fromEntries(tensors), { metadata: { format: 'pt' } }));
    writeFileAtomic(join(dir, 'adapter_config.json'), Buffer.from(pythonJson(config, target.floatKeys ?? [])));
  } finally {
    for (const t of tensors.values()) t.dispose();
  }
}
