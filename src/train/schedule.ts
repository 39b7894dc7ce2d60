/** Learning-rate schedules: a factor of the base rate for each step (0-based), after linear warmup. */
import { AdaptkitError } from '../tensor/index.js';

export type ScheduleName = 'constant' | 'linear' | 'cosine';

export function lrFactor(name: ScheduleName, step: number, totalSteps: number, warmupSteps = 0): number {
  if (warmupSteps > 0 && step < warmupSteps) return (step + 1) / warmupSteps;
  const span = Math.max(1, totalSteps - warmupSteps);
  const progress = Math.min(1, Math.max(0, (step - warmupSteps) / span));
  switch (name) {
    case 'constant':
      return 1;
    case 'linear':
      return 1 - progress;
    case 'cosine':
      return 0.5 * (1 + Math.cos(Math.PI * progress));
    default:
      throw new AdaptkitError(`unknown schedule "${String(name)}" (constant, linear, cosine)`);
  }
}
