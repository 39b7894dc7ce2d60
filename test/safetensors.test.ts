import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, writeFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as ak from '../src/index.js';
import { SafetensorsFile, WeightSource, readSafetensors, serializeSafetensors, writeSafetensors } from '../src/io/safetensors.js';
import { f16ToF32, f32ToF16, f32ToBf16, bf16ToF32 } from '../src/io/half.js';
import { loadAnyModel } from '../src/models/load.js';
import { assertClose } from './helpers.js';

const tmp = mkdtempSync(join(tmpdir(), 'adaptkit-st-'));
ak.getBackend();

function rawFile(header: unknown, data: Uint8Array, lenOverride?: bigint): Buffer {
  const h = Buffer.from(JSON.stringify(header));
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(lenOverride ?? BigInt(h.length));
  return Buffer.concat([len, h, data]);
}

describe('safetensors', () => {
  it('round-trips every dtype it writes', () => {
    const f = ak.tensor([1.5, -2.25, 3e-3, 65504, -0.0], [5]);
    const i = ak.tensor([1, -7, 2147483647, 0], [2, 2], { dtype: 'i32' });
    const path = join(tmp, 'all.safetensors');
    writeSafetensors(path, { f32: f, f16: f, bf16: f, i32: i, i64: i, u8: ak.tensor([0, 255], [2], { dtype: 'i32' }) }, {
      dtypes: { f16: 'F16', bf16: 'BF16', i64: 'I64', u8: 'U8' }, metadata: { format: 'pt' },
    });
    const { tensors, metadata } = readSafetensors(path);
    assert.deepEqual(metadata, { format: 'pt' });
    assert.deepEqual(Array.from(tensors.f32!.toArray()), Array.from(f.toArray()));
    assert.deepEqual(Array.from(tensors.i32!.toArray()), [1, -7, 2147483647, 0]);
    assert.deepEqual(Array.from(tensors.i64!.toArray()), [1, -7, 2147483647, 0]);
    assert.deepEqual(tensors.i64!.shape, [2, 2]);
    assert.deepEqual(Array.from(tensors.u8!.toArray()), [0, 255]);
    assertClose(tensors.f16!.toArray(), f.toArray(), 'f16', 1e-3, 1e-3);
    assertClose(tensors.bf16!.toArray(), f.toArray(), 'bf16', 1e-3, 1e-2);
    // header is 8-byte aligned so the data section is too
    const len = Number(readFileSync(path).readBigUInt64LE(0));
    assert.equal(len % 8, 0);
  });

  it('half-precision conversions round to nearest even and keep specials', () => {
    assert.equal(f16ToF32(f32ToF16(1 / 3)), 0.333251953125);
    assert.equal(f16ToF32(f32ToF16(65520)), Infinity);
    assert.equal(f16ToF32(f32ToF16(-0)), -0);
    assert.equal(f16ToF32(f32ToF16(5.960464477539063e-8)), 5.960464477539063e-8);
    assert.ok(Number.isNaN(f16ToF32(f32ToF16(NaN))));
    assert.equal(bf16ToF32(f32ToBf16(1 + 2 ** -8)), 1); // tie to even
    assert.equal(bf16ToF32(f32ToBf16(1 + 3 * 2 ** -8)), 1 + 2 ** -6);
  });

  const bad: [string, () => Buffer, RegExp][] = [
    ['a file shorter than 8 bytes', () => Buffer.from([1, 2, 3]), /shorter than the 8-byte header length/],
    ['a header length past the end', () => rawFile({}, new Uint8Array(0), 1000n), /header length 1000 exceeds the file/],
    ['a header that is not JSON', () => Buffer.concat([Buffer.from([4, 0, 0, 0, 0, 0, 0, 0]), Buffer.from('{{{{')]), /header is not JSON/],
    ['an unknown dtype', () => rawFile({ a: { dtype: 'Q4', shape: [1], data_offsets: [0, 4] } }, new Uint8Array(4)), /unknown dtype "Q4"/],
    ['a byte count that disagrees with the shape', () => rawFile({ a: { dtype: 'F32', shape: [2], data_offsets: [0, 4] } }, new Uint8Array(8)), /has 4 bytes but F32 \[2\] needs 8/],
    ['a truncated data section', () => rawFile({ a: { dtype: 'F32', shape: [4], data_offsets: [0, 16] } }, new Uint8Array(8)), /truncated file/],
    ['overlapping tensors', () => rawFile({ a: { dtype: 'F32', shape: [2], data_offsets: [0, 8] }, b: { dtype: 'F32', shape: [2], data_offsets: [4, 12] } }, new Uint8Array(12)), /"a" and "b" overlap/],
    ['negative offsets', () => rawFile({ a: { dtype: 'F32', shape: [1], data_offsets: [-4, 0] } }, new Uint8Array(4)), /invalid data_offsets/],
  ];
  for (const [what, make, re] of bad) {
    it(`rejects ${what} with a clear error`, () => {
      const p = join(tmp, 'bad.safetensors');
      writeFileSync(p, make());
      assert.throws(() => new SafetensorsFile(p), (e: Error) => e instanceof ak.AdaptkitError && re.test(e.message) && e.message.includes(p));
    });
  }

  it('reads sharded checkpoints through model.safetensors.index.json', () => {
    const dir = join(tmp, 'sharded');
    writeSafetensors(join(dir, 'model-00001-of-00002.safetensors'), { a: ak.tensor([1, 2]) });
    writeSafetensors(join(dir, 'model-00002-of-00002.safetensors'), { b: ak.tensor([3]) });
    writeFileSync(join(dir, 'model.safetensors.index.json'), JSON.stringify({ weight_map: { a: 'model-00001-of-00002.safetensors', b: 'model-00002-of-00002.safetensors' } }));
    const src = new WeightSource(dir);
    assert.deepEqual(src.keys().sort(), ['a', 'b']);
    assert.deepEqual(Array.from(src.read('b').toArray()), [3]);
    src.close();
  });

  it('loads a bf16 checkpoint with f32 compute', () => {
    const fix = new URL('./fixtures/models/llama-gqa/', import.meta.url).pathname;
    const dir = join(tmp, 'bf16');
    const { tensors } = readSafetensors(join(fix, 'model.safetensors'));
    writeSafetensors(join(dir, 'model.safetensors'), tensors, { dtypes: Object.fromEntries(Object.keys(tensors).map((k) => [k, 'BF16' as const])) });
    writeFileSync(join(dir, 'config.json'), readFileSync(join(fix, 'config.json')));
    const a = loadAnyModel(fix).model as any;
    const b = loadAnyModel(dir).model as any;
    const ids = ak.tensor([1, 5, 9, 3], [1, 4], { dtype: 'i32' });
    const la = ak.noGrad(() => a.forward(ids).toArray());
    const lb = ak.noGrad(() => b.forward(ids).toArray());
    assertClose(lb, la, 'bf16 logits', 0.05, 0.05);
  });

  it('serializes deterministically (same tensors, same bytes)', () => {
    const t = { b: ak.tensor([1, 2]), a: ak.tensor([3]) };
    assert.deepEqual(Buffer.concat(serializeSafetensors(t)), Buffer.concat(serializeSafetensors({ a: t.a, b: t.b })));
  });

  it('cleans up', () => rmSync(tmp, { recursive: true, force: true }));
});
