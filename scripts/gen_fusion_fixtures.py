#!/usr/bin/python3
"""AdapterFusion and ScaLearn fixtures, computed in plain PyTorch from the documented formulas
(AdapterHub is not needed, nor used).

Three Pfeiffer bottleneck source adapters (adaptkit BOTTLENECK folders, PEFT key scheme) for the
llama-gqa model fixture (hidden size 32, two layers, adapters after mlp.down_proj), AdapterHub
fusion folders over them (adapter_fusion_config.json + model_adapter_fusion.safetensors with
keys <location>.adapter_fusion_layer.a,b,c.{query,key,value}.{weight,bias}), and for a given
layer input x and output y at each layer: every source's up-projection output, the output of each
fusion, and the ScaLearn combination for given scales.

Run with Debian's python3-torch:  /usr/bin/python3 scripts/gen_fusion_fixtures.py
Writes test/fixtures/fusion/{sources/<a,b,c>, dynamic, static, variant, expected.safetensors}.
"""
import json
import os
import struct

import torch
import torch.nn.functional as F
from fixture_io import save_safetensors  # noqa: E402

torch.manual_seed(7)
HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, '..', 'test', 'fixtures', 'fusion')
D, HIDDEN, LAYERS = 32, 48, 2
B, T = 2, 3
NAMES = ['a', 'b', 'c']
PATH = 'model.layers.{}.mlp.down_proj'


def write_json(path, obj):
    with open(path, 'w') as f:
        json.dump(obj, f, indent=2, sort_keys=True)


def f32(t):
    """Values as float32 holds them (what the files store), kept in float64 for the reference."""
    return t.float().double()


# ---- the source adapters: y' = y + s * up(act(down(LN?(y))))
SOURCES = {
    'a': {'non_linearity': 'relu', 'bottleneck_size': 8, 'scaling': 1.0, 'layer_norm': 'none'},
    'b': {'non_linearity': 'gelu', 'bottleneck_size': 4, 'scaling': 0.5, 'layer_norm': 'none'},
    'c': {'non_linearity': 'silu', 'bottleneck_size': 8, 'scaling': 1.0, 'layer_norm': 'before'},
}
ACT = {'relu': F.relu, 'gelu': F.gelu, 'silu': F.silu}

weights = {}
for name, s in SOURCES.items():
    m = s['bottleneck_size']
    w = {}
    for l in range(LAYERS):
        w[l] = {
            'adapter_down.weight': f32(torch.randn(m, D) / D ** 0.5),
            'adapter_down.bias': f32(torch.randn(m) * 0.1),
            'adapter_up.weight': f32(torch.randn(D, m) * 0.5 / m ** 0.5),
            'adapter_up.bias': f32(torch.randn(D) * 0.1),
        }
        if s['layer_norm'] == 'before':
            w[l]['adapter_ln.weight'] = f32(1 + torch.randn(D) * 0.1)
            w[l]['adapter_ln.bias'] = f32(torch.randn(D) * 0.1)
    weights[name] = w
    folder = os.path.join(OUT, 'sources', name)
    os.makedirs(folder, exist_ok=True)
    write_json(os.path.join(folder, 'adapter_config.json'), {
        'peft_type': 'BOTTLENECK', 'adapter_type': 'pfeiffer', 'reduction_factor': 16, 'residual': True,
        'target_modules': None, 'base_model_name_or_path': None, 'task_type': None, **s,
    })
    save_safetensors(os.path.join(folder, 'adapter_model.safetensors'), {
        f'base_model.model.{PATH.format(l)}.{k}': v for l in range(LAYERS) for k, v in w[l].items()
    }, {'format': 'pt'})


def up_output(name, l, y):
    s, w = SOURCES[name], weights[name][l]
    z = y
    if s['layer_norm'] == 'before':
        z = F.layer_norm(y, (D,), w['adapter_ln.weight'], w['adapter_ln.bias'], eps=1e-5)
    h = ACT[s['non_linearity']](z @ w['adapter_down.weight'].T + w['adapter_down.bias'])
    return s['scaling'] * (h @ w['adapter_up.weight'].T + w['adapter_up.bias'])


# ---- AdapterFusion: s_i = (Q q)·(K u_i), p = softmax(s / T), h = Σ p_i V u_i (+ y)
def fusion(cfg, w, q_in, us, resid, temp):
    u = torch.stack(us, dim=2)  # [B, T, N, D]
    if cfg['residual_before']:
        u = u + resid.unsqueeze(2)
    q = q_in @ w['query.weight'].T + w['query.bias'] if cfg['query'] else q_in
    k = u @ w['key.weight'].T + w['key.bias'] if cfg['key'] else u
    v = u @ w['value.weight'].T if cfg['value'] and cfg['value_before_softmax'] else u
    p = torch.softmax((q.unsqueeze(2) * k).sum(-1) / temp, dim=-1)
    h = (p.unsqueeze(-1) * v).sum(2)
    if cfg['value'] and not cfg['value_before_softmax']:
        h = h @ w['value.weight'].T
    return h if cfg['residual_before'] else h + resid


DYNAMIC = {'key': True, 'query': True, 'value': True, 'query_before_ln': False, 'regularization': True, 'residual_before': False,
           'temperature': False, 'value_before_softmax': True, 'value_initialized': True, 'dropout_prob': None}
FUSIONS = {
    # AdapterHub's decoder layout: the layer's output_adapters module
    'dynamic': (DYNAMIC, lambda l: f'model.layers.{l}.output_adapters'),
    # no value; keys under the adapted layer's parent module (AdapterHub's BERT-family layout)
    'static': ({**DYNAMIC, 'value': False, 'regularization': False, 'value_initialized': False}, lambda l: f'model.layers.{l}.mlp'),
    # the residual before attention, V after the weighted sum, a fresh temperature of 50
    'variant': ({**DYNAMIC, 'residual_before': True, 'value_before_softmax': False, 'temperature': True, 'dropout_prob': 0.1},
                lambda l: f'model.layers.{l}.output_adapters'),
}
fusion_name = ','.join(NAMES)
expected = {}
xs = {l: f32(torch.randn(B, T, HIDDEN)) for l in range(LAYERS)}
ys = {l: f32(torch.randn(B, T, D)) for l in range(LAYERS)}
for l in range(LAYERS):
    expected[f'x.{l}'] = xs[l]
    expected[f'y.{l}'] = ys[l]
    for n in NAMES:
        expected[f'u.{n}.{l}'] = up_output(n, l, ys[l])

for fname, (cfg, location) in FUSIONS.items():
    folder = os.path.join(OUT, fname)
    os.makedirs(folder, exist_ok=True)
    tensors = {}
    for l in range(LAYERS):
        w = {
            'query.weight': f32(torch.randn(D, D) * 0.2), 'query.bias': f32(torch.randn(D) * 0.1),
            'key.weight': f32(torch.randn(D, D) * 0.2), 'key.bias': f32(torch.randn(D) * 0.1),
        }
        if cfg['value']:
            w['value.weight'] = f32(torch.eye(D) + torch.randn(D, D) * 0.05)
        for k, v in w.items():
            tensors[f'{location(l)}.adapter_fusion_layer.{fusion_name}.{k}'] = v
        us = [up_output(n, l, ys[l]) for n in NAMES]
        expected[f'fusion.{fname}.{l}'] = fusion(cfg, w, ys[l], us, ys[l], 50.0 if cfg['temperature'] else 1.0)
    save_safetensors(os.path.join(folder, 'model_adapter_fusion.safetensors'), tensors)
    write_json(os.path.join(folder, 'adapter_fusion_config.json'), {
        'config': cfg, 'hidden_size': D, 'model_class': 'LlamaForCausalLM', 'model_name': 'llama-gqa', 'model_type': 'llama',
        'name': fusion_name, 'version': 'adapters.1.1.0',
    })

# ---- ScaLearn: h = Σ_i ω_i ⊙ u_i + y, ω per layer [N, D] (vector) or [N, 1] (scalar)
for shape, cols in (('vector', D), ('scalar', 1)):
    for l in range(LAYERS):
        omega = f32(2 / len(NAMES) + torch.randn(len(NAMES), cols) * 0.3)
        expected[f'omega.{shape}.{l}'] = omega
        us = [up_output(n, l, ys[l]) for n in NAMES]
        expected[f'scalearn.{shape}.{l}'] = sum(omega[i] * us[i] for i in range(len(NAMES))) + ys[l]

save_safetensors(os.path.join(OUT, 'expected.safetensors'), expected)
print('wrote', OUT)
