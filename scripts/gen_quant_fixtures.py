#!/usr/bin/python3
"""Reference packed weights for adaptkit's quantized formats, computed independently of adaptkit.

Run with Debian's python3-torch and python3-numpy:  /usr/bin/python3 scripts/gen_quant_fixtures.py
Writes test/fixtures/quant/quant.safetensors (every tensor under "<case>.<field>") and
test/fixtures/quant/cases.json (what each case is and its parameters).

bitsandbytes is not installed, so its algorithms are written out here in torch exactly as its
reference torch backend runs them (bitsandbytes/backends/default/ops.py, functional.py): the
absmax blocks over the flattened tensor with a partial last block of its own, `1 / absmax`
multiplied on full blocks and a true division on the partial one, torch.bucketize over the
midpoints of the sorted code, even codes in the high nibble, torch.round (ties to even) for int8,
`127 / t` as torch evaluates it (`t.reciprocal() * 127`), the dynamic map from torch.linspace.
One deviation: the double-quantization offset is the correctly rounded f32 mean of the absmax
values, not torch's f32 reduction (whose summation order depends on the CPU's vector width).

The GGUF blocks follow ggml's block layouts (block_q8_0, block_q4_0, block_q4_K, block_q6_K) and
its reference quantizers for Q8_0 (roundf of x/d, ties away from zero) and Q4_0 (d = max / -8,
truncation of x/d + 8.5), in numpy float32 so every rounding step is f32. Q4_K and Q6_K are
checked for dequantization on blocks of random bytes (every bit pattern of scales and codes).
"""
import json
import os
import struct

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, '..', 'test', 'fixtures', 'quant')
f32 = np.float32
torch.manual_seed(7)
RNG = np.random.default_rng(7)

TENSORS = {}
CASES = {}


def put(name, arr):
    arr = np.array(arr, order='C')  # ascontiguousarray would make a 0-d array 1-d
    kind = {np.dtype(np.float32): 'F32', np.dtype(np.uint8): 'U8', np.dtype(np.int8): 'I8'}[arr.dtype]
    TENSORS[name] = (kind, list(arr.shape), arr.tobytes())


def save_safetensors(path):
    header, blobs, off = {'__metadata__': {'format': 'pt'}}, [], 0
    for name in sorted(TENSORS):
        kind, shape, b = TENSORS[name]
        header[name] = {'dtype': kind, 'shape': shape, 'data_offsets': [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header, separators=(',', ':')).encode()
    h += b' ' * ((8 - len(h) % 8) % 8)
    with open(path, 'wb') as f:
        f.write(struct.pack('<Q', len(h)) + h + b''.join(blobs))


# ---------------------------------------------------------------- bitsandbytes

NF4 = torch.tensor([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
    0.7229568362236023, 1.0])
FP4 = torch.tensor([0, 0.0625, 8.0, 12.0, 4.0, 6.0, 2.0, 3.0, -0, -0.0625, -8.0, -12.0, -4.0, -6.0, -2.0, -3.0])
FP4 = FP4 / FP4.abs().max()
CODES = {'nf4': NF4, 'fp4': FP4}


def dynamic_map():
    """create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8)."""
    data = []
    for i in range(7):
        boundaries = torch.linspace(0.1, 1, 2 ** i + 1, dtype=torch.float32)
        means = (boundaries[:-1] + boundaries[1:]) / 2.0
        data += ((10 ** (-6 + i)) * means).tolist()
        data += (-(10 ** (-6 + i)) * means).tolist()
    data.append(0)
    data.append(1.0)
    data.sort()
    return torch.tensor(data, dtype=torch.float32)


DYNAMIC = dynamic_map()


def blockwise_scaled(a, blocksize):
    a = a.reshape(-1).float()
    n = a.numel()
    rem = n % blocksize
    full = n - rem
    com = a[:full].reshape(full // blocksize, blocksize)
    absmax = com.abs().max(dim=-1)[0]
    scaled = torch.clamp(com * (1.0 / absmax.clamp(min=1e-38).view(-1, 1)), -1, 1).reshape(-1)
    if rem:
        am = a[full:].abs().max().clamp(min=1e-38)
        absmax = torch.cat([absmax, am.unsqueeze(0)])
        scaled = torch.cat([scaled, torch.clamp(a[full:] / am, -1, 1)])
    return scaled, absmax


def quantize_blockwise(a, code, blocksize):
    scaled, absmax = blockwise_scaled(a, blocksize)
    bounds = (code[:-1] + code[1:]) / 2
    return torch.bucketize(scaled, bounds, out_int32=True).to(torch.uint8), absmax


def dequantize_blockwise(q, absmax, code, blocksize):
    out = code[q.long()]
    n = out.numel()
    idx = torch.arange(n) // blocksize
    return out * absmax[idx]


def quantize_4bit(a, blocksize, quant_type):
    code = CODES[quant_type]
    order = torch.argsort(code)
    bounds = (code[order[:-1]] + code[order[1:]]) / 2
    scaled, absmax = blockwise_scaled(a, blocksize)
    if scaled.numel() % 2:
        scaled = torch.nn.functional.pad(scaled, (0, 1))
    q = torch.bucketize(scaled, bounds, out_int32=True)
    if quant_type != 'nf4':
        q = order[q.long()]
    q8 = q.to(torch.uint8)
    return ((q8[::2] << 4) | q8[1::2]).unsqueeze(1), absmax


def dequantize_4bit(packed, absmax, code, blocksize, n):
    p = packed.reshape(-1)
    codes = torch.empty(p.numel() * 2, dtype=torch.int64)
    codes[::2] = (p >> 4).long()
    codes[1::2] = (p & 15).long()
    vals = code[codes][:n]
    return vals * absmax[torch.arange(n) // blocksize]


def f32_mean(v):
    return f32(np.float64(v.double().sum().item()) / v.numel())


def bnb_4bit_case(name, w, blocksize, quant_type, double_quant, note):
    n = w.numel()
    packed, absmax = quantize_4bit(w, blocksize, quant_type)
    code = CODES[quant_type]
    state = {'quant_type': quant_type, 'blocksize': blocksize, 'dtype': 'float32', 'shape': list(w.shape)}
    p = f'{name}.weight'
    put(p, packed.numpy())
    put(f'{p}.quant_map', code.numpy())
    if double_quant:
        offset = torch.tensor(f32_mean(absmax))
        qabs, nested_absmax = quantize_blockwise(absmax - offset, DYNAMIC, 256)
        state.update({'nested_blocksize': 256, 'nested_dtype': 'float32', 'nested_offset': offset.item()})
        put(f'{p}.absmax', qabs.numpy())
        put(f'{p}.nested_absmax', nested_absmax.numpy())
        put(f'{p}.nested_quant_map', DYNAMIC.numpy())
        used_absmax = dequantize_blockwise(qabs, nested_absmax, DYNAMIC, 256) + offset
    else:
        put(f'{p}.absmax', absmax.numpy())
        used_absmax = absmax
    put(f'{p}.quant_state.bitsandbytes__{quant_type}', np.frombuffer(json.dumps(state).encode('utf-8'), dtype=np.uint8))
    put(f'{name}.source', w.numpy())
    put(f'{name}.dequant', dequantize_4bit(packed, used_absmax, code, blocksize, n).reshape(w.shape).numpy())
    CASES[name] = {'kind': 'bnb4bit', 'quant_type': quant_type, 'blocksize': blocksize, 'double_quant': double_quant,
                   'shape': list(w.shape), 'note': note}


def with_ties(w, code, blocksize, starts):
    """Put exact midpoints of the code (scaled by the block's absmax) into blocks starting at `starts`."""
    flat = w.reshape(-1)
    s = torch.sort(code).values
    mids = (s[:-1] + s[1:]) / 2
    for start, am in starts:
        flat[start] = am
        for j, m in enumerate(mids.tolist()):
            if start + 1 + j < flat.numel():
                flat[start + 1 + j] = float(f32(m) * f32(am))
    return w


def ulps(x, k):
    x = np.float32(x)
    for _ in range(abs(k)):
        x = np.nextafter(x, np.float32(np.inf if k > 0 else -np.inf), dtype=np.float32)
    return x


def split_values(code, count, seed):
    """An absmax and values next to level midpoints whose bucket differs between x·(1/absmax)
    (full blocks) and x/absmax (the partial block), so the fixture pins which one each block uses."""
    s = torch.sort(code).values
    mids = (s[:-1] + s[1:]) / 2
    rng = np.random.default_rng(seed)
    while True:
        am = torch.tensor([f32(rng.uniform(0.3, 3.0))])
        found = []
        for m in mids.tolist():
            for k in range(-3, 4):
                x = torch.tensor([float(ulps(f32(m) * am.item(), k))])
                if x.abs().item() < am.item() and torch.bucketize(x * (1.0 / am), mids) != torch.bucketize(x / am, mids):
                    found.append(x.item())
        if len(found) >= count:
            return am.item(), found[:count]


def bnb_cases():
    w = torch.randn(7, 45) * 0.05
    w = with_ties(w, NF4, 64, [(0, 1.0)])
    am, xs = split_values(NF4, 12, 1)
    for start in (64, 256):
        w.reshape(-1)[start] = am
        w.reshape(-1)[start + 1:start + 1 + len(xs)] = torch.tensor(xs)
    w.reshape(-1)[128:192] = 0
    bnb_4bit_case('nf4_ties', w, 64, 'nf4', False,
                  '315 values: 4 full blocks of 64 (block 2 all zero) and a partial block of 59 with its own absmax; '
                  'exact midpoints of NF4 levels in block 0 (absmax 1); in block 1 and the partial block values whose code '
                  'differs between multiplying by 1/absmax and dividing by absmax; odd count (padding nibble)')
    bnb_4bit_case('nf4_zero', torch.zeros(3, 30), 64, 'nf4', False, 'all zero: a full block keeps absmax 0, the partial block clamps to 1e-38')
    w = torch.randn(33, 257) * torch.linspace(0.01, 2.0, 33).unsqueeze(1)
    bnb_4bit_case('nf4_double', w, 32, 'nf4', True,
                  '8481 values in 266 blocks of 32 (partial last block of 1); the 266 absmax values double-quantized in blocks of 256 (partial last block of 10)')
    w = torch.randn(7, 45) * 0.2
    w = with_ties(w, FP4, 64, [(0, 1.0), (256, 4.0)])
    w.reshape(-1)[100:104] = torch.tensor([0.0, -0.0, 0.001, -0.001])
    bnb_4bit_case('fp4_ties', w, 64, 'fp4', False,
                  'FP4 (unsorted table): exact midpoints in block 0 and in the partial block, signed zeros and values next to zero')
    w = torch.randn(9, 130)
    bnb_4bit_case('fp4_double', w, 128, 'fp4', True, '1170 values in blocks of 128 (partial 18); 10 absmax values in one partial nested block')
    put('dynamic_map', DYNAMIC.numpy())


def int8_vectorwise_quant(a, threshold):
    a = a.clone()
    outlier_cols = torch.empty(0, dtype=torch.int64)
    if threshold > 0.0:
        outliers = a.abs() >= threshold
        if outliers.any():
            outlier_cols = torch.argwhere(outliers.any(dim=0)).view(-1)
            a[outliers] = 0
    row_stats = torch.max(a.abs(), dim=1).values.float()
    out = torch.round(a * (127.0 / row_stats.unsqueeze(-1))).to(torch.int8)
    if outlier_cols.numel():
        out[:, outlier_cols] = 0
    return out, row_stats, outlier_cols


def int8_split_values(count, seed):
    """A row absmax and values whose code differs between torch's 127 / t (t.reciprocal() * 127)
    and a true division."""
    rng = np.random.default_rng(seed)
    while True:
        am = torch.tensor([f32(rng.uniform(0.5, 3.0))])
        s_torch = 127.0 / am
        s_div = torch.full_like(am, 127.0) / am
        if s_torch.item() == s_div.item():
            continue
        found = []
        for k in range(1, 127):
            for d in range(-2, 3):
                x = torch.tensor([float(ulps(f32((k + 0.5) / s_torch.item()), d))])
                if x.abs().item() < am.item() and torch.round(x * s_torch) != torch.round(x * s_div):
                    found.append(x.item())
        if len(found) >= count:
            return am.item(), found[:count]


def int8_cases():
    w = torch.randn(6, 40)
    w[0, :8] = torch.tensor([127.0, 0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 126.5])
    am, xs = int8_split_values(8, 2)
    w[1] *= 0.1
    w[1, 0] = am
    w[1, 1:1 + len(xs)] = torch.tensor(xs)
    cb, scb, _ = int8_vectorwise_quant(w, 0.0)
    put('int8_w.weight', cb.numpy())
    put('int8_w.SCB', scb.numpy())
    put('int8_w.weight_format', np.zeros((), dtype=np.uint8))
    put('int8_w.source', w.numpy())
    put('int8_w.dequant', (cb * scb.view(-1, 1) * 7.874015718698502e-3).numpy())
    x = torch.randn(4, 40) * 1.5
    x[1, 3] = 7.5
    x[0, 3] = 5.9
    x[2, 17] = -9.0
    x[0, 25] = 6.0
    x[3, 30] = 5.999
    put('int8_w.x', x.numpy())
    cols = {}
    for tag, threshold in (('t6', 6.0), ('t0', 0.0)):
        ca, sca, oc = int8_vectorwise_quant(x, threshold)
        main = (ca.double() @ cb.double().t()) * (sca.double().view(-1, 1) * scb.double().view(1, -1)) / (127 * 127)
        wdq = cb.double() * scb.double().view(-1, 1) / 127
        outl = x.double()[:, oc] @ wdq[:, oc].t() if oc.numel() else torch.zeros_like(main)
        put(f'int8_w.{tag}.CA', ca.numpy())
        put(f'int8_w.{tag}.SCA', sca.numpy())
        put(f'int8_w.{tag}.y', (main + outl).float().numpy())
        cols[tag] = {'threshold': threshold, 'outlier_cols': oc.tolist()}
    CASES['int8_w'] = {'kind': 'int8', 'shape': list(w.shape), 'x_shape': list(x.shape), 'products': cols,
                       'note': 'W row 0 has absmax 127 so x·127/absmax lands on exact .5 ties; row 1 holds values whose code differs between t.reciprocal()·127 and 127/t; '
                               'x has outliers at columns 3, 17 and exactly 6.0 at 25 (5.999 at 30 is not one); row 0 takes its absmax 5.9 from outlier column 3'}


# ---------------------------------------------------------------- ggml

def f16_bits(v):
    return np.array([v], dtype=np.float32).astype(np.float16).view(np.uint16)[0]


def f16_value(bits):
    return f32(np.array([bits], dtype=np.uint16).view(np.float16)[0])


def q8_0_quantize(x):
    out = bytearray()
    for blk in x.reshape(-1, 32):
        amax = f32(0)
        for v in blk:
            amax = max(amax, abs(v))
        d = f32(amax / f32(127))
        idv = f32(f32(1) / d) if d else f32(0)
        out += struct.pack('<H', int(f16_bits(d)))
        for v in blk:
            t = float(f32(v * idv))
            q = int(np.floor(abs(t) + 0.5)) * (1 if t >= 0 else -1)
            out += struct.pack('<b', q)
    return np.frombuffer(bytes(out), dtype=np.uint8)


def q4_0_quantize(x):
    out = bytearray()
    for blk in x.reshape(-1, 32):
        amax, mx = f32(0), f32(0)
        for v in blk:
            if amax < abs(v):
                amax, mx = abs(v), v
        d = f32(mx / f32(-8))
        idv = f32(f32(1) / d) if d else f32(0)
        out += struct.pack('<H', int(f16_bits(d)))
        for j in range(16):
            x0 = f32(blk[j] * idv)
            x1 = f32(blk[16 + j] * idv)
            q0 = min(15, int(f32(x0 + f32(8.5))))
            q1 = min(15, int(f32(x1 + f32(8.5))))
            out.append(q0 | (q1 << 4))
    return np.frombuffer(bytes(out), dtype=np.uint8)


def q8_0_dequantize(data):
    b = data.reshape(-1, 34)
    d = b[:, :2].copy().view(np.float16).astype(np.float32)
    q = b[:, 2:].copy().view(np.int8).astype(np.float32)
    return (q * d).reshape(-1)


def q4_0_dequantize(data):
    b = data.reshape(-1, 18)
    d = b[:, :2].copy().view(np.float16).astype(np.float32)
    qs = b[:, 2:]
    lo = (qs & 15).astype(np.float32) - 8
    hi = (qs >> 4).astype(np.float32) - 8
    return (np.concatenate([lo, hi], axis=1) * d).reshape(-1)


def q4_k_dequantize(data):
    out = []
    for b in data.reshape(-1, 144):
        d = f16_value(b[0] | (b[1] << 8))
        dmin = f16_value(b[2] | (b[3] << 8))
        s = [int(v) for v in b[4:16]]
        qs = b[16:]
        sc, mn = [], []
        for j in range(8):
            if j < 4:
                sc.append(s[j] & 63)
                mn.append(s[j + 4] & 63)
            else:
                sc.append((s[j + 4] & 15) | ((s[j - 4] >> 6) << 4))
                mn.append((s[j + 4] >> 4) | ((s[j] >> 6) << 4))
        y = np.zeros(256, dtype=np.float32)
        for c in range(4):
            for half in range(2):
                j = 2 * c + half
                d1 = f32(d * f32(sc[j]))
                m1 = f32(dmin * f32(mn[j]))
                for l in range(32):
                    q = int(qs[32 * c + l])
                    q = q & 15 if half == 0 else q >> 4
                    y[64 * c + 32 * half + l] = f32(f32(d1 * f32(q)) - m1)
        out.append(y)
    return np.concatenate(out)


def q6_k_dequantize(data):
    out = []
    for b in data.reshape(-1, 210):
        ql, qh = b[:128], b[128:192]
        sc = b[192:208].view(np.int8)
        d = f16_value(b[208] | (b[209] << 8))
        y = np.zeros(256, dtype=np.float32)
        for e in range(256):
            h, r = divmod(e, 128)
            quarter, l = divmod(r, 32)
            low_byte = ql[64 * h + l + (32 if quarter in (1, 3) else 0)]
            low = (low_byte & 15) if quarter < 2 else (low_byte >> 4)
            high = (qh[32 * h + l] >> (2 * quarter)) & 3
            q = int(low | (high << 4)) - 32
            y[e] = f32(f32(d * f32(int(sc[e // 16]))) * f32(q))
        out.append(y)
    return np.concatenate(out)


def random_half_bits(n, lo_exp, hi_exp):
    """Finite f16 bit patterns with exponents in [lo_exp, hi_exp] (biased), random sign and mantissa."""
    e = RNG.integers(lo_exp, hi_exp + 1, n)
    m = RNG.integers(0, 1024, n)
    s = RNG.integers(0, 2, n)
    return (s << 15) | (e << 10) | m


def ggml_cases():
    x = (RNG.standard_normal((3, 96)) * 0.1).astype(np.float32)
    x[0, :8] = [127.0, 2.5, -2.5, 0.5, -0.5, 1.5, -1.5, 126.5]
    x[2, 32:64] = 0
    data = q8_0_quantize(x)
    put('q8_0.source', x)
    put('q8_0.data', data)
    put('q8_0.dequant', q8_0_dequantize(data).reshape(x.shape))
    CASES['q8_0'] = {'kind': 'ggml', 'format': 'q8_0', 'shape': list(x.shape),
                     'note': 'block 0 has amax 127 (d = 1): .5 ties round away from zero; one all-zero block'}

    x = (RNG.standard_normal((4, 64)) * 0.2).astype(np.float32)
    x[0, :6] = [8.0, 0.5, f32(-0.49999997), -8.0, -7.5, 3.0]
    x[1, :3] = [-3.0, 3.0, f32(-0.1875)]
    x[2, 32:64] = 0
    data = q4_0_quantize(x)
    put('q4_0.source', x)
    put('q4_0.data', data)
    put('q4_0.dequant', q4_0_dequantize(data).reshape(x.shape))
    CASES['q4_0'] = {'kind': 'ggml', 'format': 'q4_0', 'shape': list(x.shape),
                     'note': 'block 0: max 8 (d = -1), x/d + 8.5 landing on and next to integers, the opposite extreme clipped to 15; block 2 negative max; one all-zero block'}

    for fmt, size, deq in (('q4_K', 144, q4_k_dequantize), ('q6_K', 210, q6_k_dequantize)):
        blocks = RNG.integers(0, 256, (4, size)).astype(np.uint8)
        if fmt == 'q4_K':
            hb = random_half_bits(8, 5, 20).reshape(4, 2)
            for i in range(4):
                blocks[i, 0:2] = [hb[i, 0] & 0xff, hb[i, 0] >> 8]
                blocks[i, 2:4] = [hb[i, 1] & 0xff, hb[i, 1] >> 8]
        else:
            hb = random_half_bits(4, 3, 18)
            for i in range(4):
                blocks[i, 208:210] = [hb[i] & 0xff, hb[i] >> 8]
        data = blocks.reshape(-1)
        put(f'{fmt}.data', data)
        put(f'{fmt}.dequant', deq(data).reshape(2, 512))
        CASES[fmt] = {'kind': 'ggml', 'format': fmt, 'shape': [2, 512],
                      'note': 'four super-blocks of random bytes (every scale/min/code bit pattern), random finite f16 super-scales'}


def half_cases():
    v = torch.cat([torch.randn(64), torch.tensor([1 + 2 ** -8, 1 + 3 * 2 ** -8, 1 + 2 ** -11, 1 + 3 * 2 ** -11, 65520.0, 1e-8, -0.0, 3e38])])
    put('half.source', v.numpy())
    put('half.bf16', v.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint8))
    put('half.f16', v.to(torch.float16).view(torch.int16).numpy().view(np.uint8))
    CASES['half'] = {'kind': 'half', 'shape': [v.numel()], 'note': 'bf16 and f16 bit patterns (little-endian bytes) by torch: ties to even, overflow, underflow'}


def float_repr_cases():
    """repr() of floats, as json.dumps writes the quant_state's nested_offset."""
    values = [0.1, 1.0, -2.5, 1e-05, 0.0001, 0.00012345, 1.5e-07, 123456.789, 1e16, 9999999999999998.0,
              1.2345678901234567e+20, 5e-324, 3.4028234663852886e+38, -0.0, 0.0, 2.0 ** -20, 0.3 - 0.1]
    values += [float(np.float32(v)) for v in RNG.standard_normal(6) * 10.0 ** RNG.integers(-8, 8, 6)]
    CASES['float_repr'] = {'kind': 'float_repr', 'values': [[v, repr(v)] for v in values],
                           'note': 'Python repr of each value (shortest round trip, exponent form below 1e-4 and from 1e16)'}


def main():
    os.makedirs(OUT, exist_ok=True)
    float_repr_cases()
    bnb_cases()
    int8_cases()
    ggml_cases()
    half_cases()
    save_safetensors(os.path.join(OUT, 'quant.safetensors'))
    with open(os.path.join(OUT, 'cases.json'), 'w') as f:
        json.dump(CASES, f, indent=1, sort_keys=True)
        f.write('\n')
    size = os.path.getsize(os.path.join(OUT, 'quant.safetensors'))
    print(f'wrote {len(TENSORS)} tensors ({size} bytes) in {len(CASES)} cases to {OUT}')


if __name__ == '__main__':
    main()
