import assert from 'node:assert/strict';
import * as ak from '../src/index.js';

/** Backends to run a test file on: js always, native when built (required when ADAPTKIT_REQUIRE_NATIVE=1). */
export function backends(): ak.BackendName[] {
  const list: ak.BackendName[] = ['js'];
  if (ak.nativeBackend()) list.push('native');
  else if (process.env.ADAPTKIT_REQUIRE_NATIVE === '1') {
    throw new Error(`the native backend is required but unavailable: ${ak.nativeLoadError()}`);
  }
  return list;
}

export function assertClose(
  actual: ArrayLike<number>, expected: ArrayLike<number>, what: string, atol = 1e-5, rtol = 1e-4,
): void {
  assert.equal(actual.length, expected.length, `${what}: length ${actual.length} vs ${expected.length}`);
  let worst = -1;
  let worstErr = 0;
  for (let i = 0; i < actual.length; i++) {
    const a = actual[i]!;
    const e = expected[i]!;
    if (Number.isNaN(e) && Number.isNaN(a)) continue;
    const err = Math.abs(a - e) - (atol + rtol * Math.abs(e));
    if (!(err <= 0) && (worst < 0 || err > worstErr)) {
      worst = i;
      worstErr = err;
    }
  }
  if (worst >= 0) {
    assert.fail(`${what}: element ${worst} is ${actual[worst]}, expected ${expected[worst]} (atol ${atol}, rtol ${rtol})`);
  }
}

/** Random values from a seeded generator. */
export function randomArray(n: number, seed: number, scale = 1): Float32Array {
  const rng = new ak.Rng(seed);
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = scale * rng.normal();
  return out;
}
