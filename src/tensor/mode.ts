/**
 * Training is a scope, not a flag on modules: code run inside `training()` may drop out; all
 * other code (evaluation, scoring, generation, serving) is deterministic.
 */
let depth = 0;

export function training<T>(fn: () => T): T {
  depth++;
  try {
    return fn();
  } finally {
    depth--;
  }
}

/** Run fn outside any training scope (validation during a training run). */
export function inference<T>(fn: () => T): T {
  const saved = depth;
  depth = 0;
  try {
    return fn();
  } finally {
    depth = saved;
  }
}

export function isTraining(): boolean {
  return depth > 0;
}
