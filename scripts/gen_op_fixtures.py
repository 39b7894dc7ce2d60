#!/usr/bin/python3
"""Reference values for adaptkit's primitive ops, computed by PyTorch (CPU, float32).

Run with Debian's python3-torch:  /usr/bin/python3 scripts/gen_op_fixtures.py
Writes test/fixtures/ops.json: for each case the inputs, the op's parameters, the output, a random
upstream gradient and the gradients PyTorch's autograd gives for every float input. Ops without a
torch 1.13 builtin (RMSNorm, grouped-query attention, rotary embedding) are written out here from
basic torch ops, independently of adaptkit's kernels.
"""
import json
import math
import os

import torch
import torch.nn.functional as F

torch.manual_seed(1234)
CASES = []


def rnd(*shape, low=None):
    x = torch.randn(tuple(shape))
    if low is not None:
        x = x.abs() + low
    return x


def case(name, op, inputs, fn, params=None, grad=None):
    """inputs: list of (tensor, requires_grad); fn(*tensors) -> output tensor."""
    ts = []
    for t, rg in inputs:
        t = t.clone()
        if rg:
            t.requires_grad_(True)
        ts.append(t)
    out = fn(*ts)
    g = torch.randn(out.shape) if grad is None else grad
    grads = [None] * len(ts)
    if any(t.requires_grad for t in ts):
        (out * g).sum().backward()
        grads = [t.grad.flatten().tolist() if t.requires_grad else None for t in ts]
    CASES.append({
        'name': name,
        'op': op,
        'params': params or {},
        'inputs': [
            {'shape': list(t.shape), 'dtype': 'i32' if t.dtype in (torch.int64, torch.int32) else 'f32',
             'data': t.detach().flatten().tolist(), 'requiresGrad': bool(rg)}
            for t, (_, rg) in zip(ts, inputs)
        ],
        'output': {'shape': list(out.shape), 'data': out.detach().flatten().tolist()},
        'gradOutput': g.flatten().tolist(),
        'grads': grads,
    })


# ---- unary ----
unary = {
    'neg': (torch.neg, None), 'exp': (torch.exp, None), 'log': (torch.log, 0.1), 'sqrt': (torch.sqrt, 0.1),
    'tanh': (torch.tanh, None), 'sigmoid': (torch.sigmoid, None), 'relu': (torch.relu, None),
    'gelu': (F.gelu, None), 'gelu_tanh': (lambda x: F.gelu(x, approximate='tanh'), None),
    'silu': (F.silu, None), 'abs': (torch.abs, None),
}
for name, (fn, low) in unary.items():
    x = rnd(3, 7, low=low) * (1 if low else 2)
    if name in ('relu', 'abs'):
        x = x + 0.05 * torch.sign(x)  # keep away from the kink for finite differences
    case(f'unary_{name}', 'unary', [(x, True)], fn, {'op': name})

# ---- binary with broadcasting ----
bfn = {'add': torch.add, 'sub': torch.sub, 'mul': torch.mul, 'div': torch.div,
       'max': torch.maximum, 'min': torch.minimum}
for name, fn in bfn.items():
    for sa, sb in [((3, 4), (3, 4)), ((2, 3, 4), (4,)), ((2, 1, 4), (3, 1)), ((), (2, 3))]:
        a = rnd(*sa)
        b = rnd(*sb, low=0.5) if name == 'div' else rnd(*sb)
        while name in ('max', 'min') and (a - b).abs().min() < 0.05:  # stay off the kink
            a, b = rnd(*sa), rnd(*sb)
        case(f'binary_{name}_{len(sa)}x{len(sb)}', 'binary', [(a, True), (b, True)], fn, {'op': name})

c = (torch.rand(3, 4) > 0.5).float()
case('where', 'where', [(c, False), (rnd(3, 4), True), (rnd(4), True)], lambda c, a, b: torch.where(c != 0, a, b))

# ---- reductions ----
x = rnd(2, 3, 4)
case('sum_all', 'sum', [(x, True)], lambda x: x.sum(), {'axes': None, 'keepdim': False})
case('sum_1', 'sum', [(x, True)], lambda x: x.sum(1), {'axes': [1], 'keepdim': False})
case('sum_02_keep', 'sum', [(x, True)], lambda x: x.sum((0, 2), keepdim=True), {'axes': [0, 2], 'keepdim': True})
case('sum_12', 'sum', [(x, True)], lambda x: x.sum((1, 2)), {'axes': [1, 2], 'keepdim': False})
case('mean_last', 'mean', [(x, True)], lambda x: x.mean(-1), {'axes': [-1], 'keepdim': False})
case('max_1', 'max', [(x, True)], lambda x: x.max(1).values, {'axis': 1, 'keepdim': False})
case('max_last_keep', 'max', [(x, True)], lambda x: x.max(-1, keepdim=True).values, {'axis': -1, 'keepdim': True})

# ---- matmul ----
case('matmul_2d', 'matmul', [(rnd(3, 4), True), (rnd(4, 5), True)], torch.matmul)
case('matmul_batched', 'matmul', [(rnd(2, 3, 4), True), (rnd(2, 4, 5), True)], torch.matmul)
case('matmul_fold', 'matmul', [(rnd(2, 3, 4), True), (rnd(4, 5), True)], torch.matmul)
case('matmul_broadcast', 'matmul', [(rnd(2, 1, 3, 4), True), (rnd(3, 4, 2), True)], torch.matmul)
case('matmul_bT', 'matmul', [(rnd(3, 4), True), (rnd(5, 4), True)], lambda a, b: a @ b.t(), {'transposeB': True})
case('matmul_aT', 'matmul', [(rnd(4, 3), True), (rnd(4, 5), True)], lambda a, b: a.t() @ b, {'transposeA': True})
case('linear', 'linear', [(rnd(2, 3, 4), True), (rnd(5, 4), True), (rnd(5), True)], F.linear)
case('linear_nobias', 'linear', [(rnd(3, 4), True), (rnd(5, 4), True)], F.linear)
case('addmm', 'addmm', [(rnd(2, 3, 5), True), (rnd(2, 3, 4), True), (rnd(4, 5), True)], lambda y, a, b: y + a @ b)

# ---- indexing ----
w = rnd(6, 4)
ids = torch.tensor([[0, 5, 2], [2, 2, 1]])
case('index_select_0', 'indexSelect', [(w, True), (ids, False)], lambda w, i: w[i], {'dim': 0})
idx1 = torch.tensor([3, 0, 0])
case('index_select_1', 'indexSelect', [(w, True), (idx1, False)], lambda w, i: w.index_select(1, i), {'dim': 1})
case('index_add_0', 'indexAdd', [(rnd(5, 3), True), (torch.tensor([4, 0, 4]), False), (rnd(3, 3), True)],
     lambda x, i, s: x.index_add(0, i, s), {'dim': 0})

# ---- shape ops ----
case('concat_1', 'concat', [(rnd(2, 3), True), (rnd(2, 1), True), (rnd(2, 2), True)],
     lambda a, b, c: torch.cat([a, b, c], 1), {'dim': 1})
case('permute', 'permute', [(rnd(2, 3, 4), True)], lambda x: x.permute(2, 0, 1), {'dims': [2, 0, 1]})
case('reshape_permuted', 'reshapePermuted', [(rnd(2, 3, 4), True)], lambda x: x.transpose(0, 2).reshape(4, 6))
case('narrow', 'narrow', [(rnd(3, 5), True)], lambda x: x.narrow(1, 1, 3), {'dim': 1, 'start': 1, 'length': 3})
case('expand', 'expand', [(rnd(3, 1), True)], lambda x: x.expand(2, 3, 4), {'shape': [2, 3, 4]})

# ---- fused nn ops ----
x = rnd(3, 6)
case('softmax', 'softmax', [(x, True)], lambda x: torch.softmax(x, -1))
case('log_softmax', 'logSoftmax', [(x, True)], lambda x: torch.log_softmax(x, -1))


def rms_ref(x, w, eps):
    return x * torch.rsqrt((x * x).mean(-1, keepdim=True) + eps) * w


case('rms_norm', 'rmsNorm', [(rnd(2, 3, 8), True), (rnd(8), True)], lambda x, w: rms_ref(x, w, 1e-5), {'eps': 1e-5})
case('layer_norm', 'layerNorm', [(rnd(4, 8), True), (rnd(8), True), (rnd(8), True)],
     lambda x, w, b: F.layer_norm(x, (8,), w, b, 1e-5), {'eps': 1e-5})

logits = rnd(5, 7) * 2
tg = torch.tensor([1, 6, -100, 0, 3])
for red in ('mean', 'sum', 'none'):
    case(f'cross_entropy_{red}', 'crossEntropy', [(logits, True), (tg, False)],
         lambda l, t, red=red: F.cross_entropy(l, t, ignore_index=-100, reduction=red),
         {'ignoreIndex': -100, 'reduction': red})
case('cross_entropy_3d', 'crossEntropy', [(rnd(2, 3, 5), True), (torch.tensor([[0, 4, 2], [1, 1, -100]]), False)],
     lambda l, t: F.cross_entropy(l.reshape(-1, 5), t.reshape(-1), ignore_index=-100), {'ignoreIndex': -100, 'reduction': 'mean'})


def attention_ref(q, k, v, causal, mask, scale):
    B, H, Tq, D = q.shape
    Hkv, Tk = k.shape[1], k.shape[2]
    k = k.repeat_interleave(H // Hkv, dim=1)
    v = v.repeat_interleave(H // Hkv, dim=1)
    s = (q @ k.transpose(-1, -2)) * scale
    allowed = torch.ones(Tq, Tk, dtype=torch.bool)
    if causal:
        allowed = torch.arange(Tk)[None, :] <= (torch.arange(Tq)[:, None] + Tk - Tq)
    allowed = allowed[None, None].expand(B, H, Tq, Tk)
    if mask is not None:
        allowed = allowed & (mask[:, None, None, :] != 0)
    s = s.masked_fill(~allowed, float('-inf'))
    return torch.softmax(s, -1) @ v


for nm, (B, H, Hkv, Tq, Tk, D, causal, masked) in {
    'attention_full': (2, 2, 2, 4, 4, 8, False, False),
    'attention_causal_gqa': (1, 4, 2, 5, 5, 4, True, False),
    'attention_causal_cache': (1, 2, 1, 2, 6, 4, True, False),
    'attention_padding': (2, 2, 2, 3, 4, 4, True, True),
}.items():
    q, k, v = rnd(B, H, Tq, D), rnd(B, Hkv, Tk, D), rnd(B, Hkv, Tk, D)
    mask = torch.ones(B, Tk)
    if masked:
        mask[1, 0] = 0
    scale = 1 / math.sqrt(D)
    case(nm, 'attention', [(q, True), (k, True), (v, True), (mask, False)],
         lambda q, k, v, m, causal=causal, masked=masked, scale=scale: attention_ref(q, k, v, causal, m if masked else None, scale),
         {'causal': causal, 'masked': masked})


def rope_ref(x, cos, sin):
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    c = torch.cat([cos, cos], -1)
    s = torch.cat([sin, sin], -1)
    return x * c + torch.cat([-x2, x1], -1) * s


T, D = 5, 8
ang = torch.arange(T)[:, None].float() * (10000 ** (-torch.arange(0, D, 2).float() / D))[None, :]
case('rope', 'rope', [(rnd(2, 3, T, D), True), (torch.cos(ang), False), (torch.sin(ang), False)], rope_ref)

out = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'test', 'fixtures', 'ops.json')
with open(out, 'w') as f:
    json.dump({'generator': 'scripts/gen_op_fixtures.py', 'torch': torch.__version__, 'cases': CASES}, f)
print(f'wrote {len(CASES)} cases to {os.path.normpath(out)}')
