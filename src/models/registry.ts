/**
 * Model families by `model_type`. Each family folder registers itself once; the loader looks
 * families up here, so adding an architecture touches its own folder and one import.
 */
import { AdaptkitError } from '../tensor/index.js';
import type { DescribedModel } from '../nn/index.js';
import { preview } from '../io/json.js';
import type { RawConfig } from './config.js';
import type { WeightMap } from './weights.js';

export interface ModelFamily {
  name: string;
  /** `model_type` values of config.json this family reads. */
  modelTypes: readonly string[];
  /** Build the model from its config and HF-named weights (shapes checked). */
  build(raw: RawConfig, w: WeightMap, source: string): DescribedModel;
  /** Checkpoint entries the family does not need (buffers, other heads). */
  ignoresWeight?(name: string): boolean;
}

const families = new Map<string, ModelFamily>();

export function registerModelFamily(f: ModelFamily): void {
  for (const t of f.modelTypes) families.set(t, f);
}

export function familyFor(modelType: string, source: string): ModelFamily {
  const f = families.get(modelType);
  if (!f) throw new AdaptkitError(`${source}: model_type ${preview(modelType)} is not supported (supported: ${modelTypes().join(', ')})`);
  return f;
}

export function modelTypes(): string[] {
  return [...families.keys()];
}
