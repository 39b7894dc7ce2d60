#!/usr/bin/python3
"""PEFT POLY adapter folders (Poly and MHR) for the tiny Llama fixture, written from PEFT's
documented layout: adapter_config.json as PolyConfig serializes, adapter_model.safetensors with
the keys base_model.model.<path>.poly_lora_A [S, K, in/S, r], .poly_lora_B [S, K, r, out/S] and
.poly_router.module_logits [n_tasks, S*K]; and the eval-mode logits of a plain PyTorch forward
for given per-row task ids, plus those of the average selector (every skill 1/K, MHR-mu).

Run with Debian's python3-torch:  /usr/bin/python3 scripts/gen_poly_fixtures.py
Writes test/fixtures/poly/<name>/{adapter_config.json, adapter_model.safetensors, expected.json}.
"""
import json
import math
import os
import struct

import torch
import torch.nn.functional as F
from fixture_io import load_safetensors, save_safetensors  # noqa: E402

torch.manual_seed(7)
HERE = os.path.dirname(os.path.abspath(__file__))
MODEL = os.path.join(HERE, '..', 'test', 'fixtures', 'models', 'llama-gqa')
OUT = os.path.join(HERE, '..', 'test', 'fixtures', 'poly')
EPS = 1e-12


def llama_logits(cfg, w, ids, linear):
    B, T = ids.shape
    H, nh, nkv = cfg['hidden_size'], cfg['num_attention_heads'], cfg['num_key_value_heads']
    hd = H // nh
    inv = 1.0 / (cfg['rope_theta'] ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd))
    ang = torch.arange(T, dtype=torch.float64)[:, None] * inv[None, :]
    cos, sin = torch.cat([ang, ang], -1).cos().float(), torch.cat([ang, ang], -1).sin().float()
    half = lambda x: torch.cat([-x[..., hd // 2:], x[..., :hd // 2]], -1)
    norm = lambda x, g: x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + cfg['rms_norm_eps']) * g
    causal = torch.tril(torch.ones(T, T, dtype=torch.bool))
    h = w['model.embed_tokens.weight'][ids]
    for l in range(cfg['num_hidden_layers']):
        p = f'model.layers.{l}'
        x = norm(h, w[p + '.input_layernorm.weight'])
        q = linear(p + '.self_attn.q_proj', x).view(B, T, nh, hd).transpose(1, 2)
        k = linear(p + '.self_attn.k_proj', x).view(B, T, nkv, hd).transpose(1, 2)
        v = linear(p + '.self_attn.v_proj', x).view(B, T, nkv, hd).transpose(1, 2)
        q, k = q * cos + half(q) * sin, k * cos + half(k) * sin
        k, v = k.repeat_interleave(nh // nkv, 1), v.repeat_interleave(nh // nkv, 1)
        s = ((q @ k.transpose(-1, -2)) / math.sqrt(hd)).masked_fill(~causal, float('-inf'))
        h = h + linear(p + '.self_attn.o_proj', (torch.softmax(s, -1) @ v).transpose(1, 2).reshape(B, T, H))
        x = norm(h, w[p + '.post_attention_layernorm.weight'])
        h = h + linear(p + '.mlp.down_proj', F.silu(linear(p + '.mlp.gate_proj', x)) * linear(p + '.mlp.up_proj', x))
    return norm(h, w['model.norm.weight']) @ w['lm_head.weight'].t()


def poly_delta(x, A, Bm, weights, r):
    """x [b, T, in]; A [S, K, in/S, r]; Bm [S, K, r, out/S]; weights [b, S, K] -> [b, T, out]."""
    bs = weights.shape[0]
    A_t = torch.einsum('bqs,qsdr->bqdr', weights, A).reshape(bs, -1, r)
    B_t = torch.einsum('bqs,qsrd->bqrd', weights, Bm).transpose(1, 2).reshape(bs, r, -1)
    return x.bmm(A_t).bmm(B_t) / r


def case(name, targets, r, n_tasks, n_skills, n_splits, task_ids):
    cfg = json.load(open(os.path.join(MODEL, 'config.json')))
    w = load_safetensors(os.path.join(MODEL, 'model.safetensors'))
    ids = torch.randint(0, cfg['vocab_size'], (len(task_ids), 5))
    tasks = torch.tensor(task_ids)
    adapter, layers = {}, {}
    for key in sorted(w):
        mod = key[:-len('.weight')]
        if not key.endswith('.weight') or not any(mod.endswith('.' + t) for t in targets):
            continue
        out_f, in_f = w[key].shape
        A = torch.randn(n_splits, n_skills, in_f // n_splits, r) * 0.4
        Bm = torch.randn(n_splits, n_skills, r, out_f // n_splits) * 0.4
        Z = torch.randn(n_tasks, n_splits * n_skills) * 1.5
        adapter[f'base_model.model.{mod}.poly_lora_A'] = A
        adapter[f'base_model.model.{mod}.poly_lora_B'] = Bm
        adapter[f'base_model.model.{mod}.poly_router.module_logits'] = Z
        layers[mod] = (A, Bm, Z)

    def make_linear(selector):
        def linear(n, x):
            y = x @ w[n + '.weight'].t()
            if n not in layers:
                return y
            A, Bm, Z = layers[n]
            return y + poly_delta(x, A, Bm, selector(Z, x.shape[0]), r)
        return linear

    def routed(Z, bs):
        z = torch.sigmoid(Z[tasks].view(-1, n_splits, n_skills))
        return z / (z.sum(-1, keepdim=True) + EPS)

    def average(Z, bs):
        return torch.full((bs, n_splits, n_skills), 1.0 / n_skills)

    with torch.no_grad():
        logits = llama_logits(cfg, w, ids, make_linear(routed))
        mu = llama_logits(cfg, w, ids, make_linear(average))
    d = os.path.join(OUT, name)
    os.makedirs(d, exist_ok=True)
    config = {
        'auto_mapping': None, 'base_model_name_or_path': None, 'exclude_modules': None, 'inference_mode': True,
        'init_weights': True, 'modules_to_save': None, 'n_skills': n_skills, 'n_splits': n_splits, 'n_tasks': n_tasks,
        'peft_type': 'POLY', 'poly_type': 'poly', 'r': r, 'revision': None, 'target_modules': sorted(targets),
        'task_type': 'CAUSAL_LM',
    }
    with open(os.path.join(d, 'adapter_config.json'), 'w') as f:
        json.dump(config, f, indent=2, sort_keys=True)
    save_safetensors(os.path.join(d, 'adapter_model.safetensors'), adapter, {'format': 'pt'})
    with open(os.path.join(d, 'expected.json'), 'w') as f:
        json.dump({'model': 'llama-gqa', 'ids': ids.tolist(), 'task_ids': task_ids,
                   'logits': logits.flatten().tolist(), 'average_logits': mu.flatten().tolist()}, f)
    print('wrote', name)


case('poly-llama', ['q_proj', 'v_proj'], 2, 3, 3, 1, [2, 0, 1])
case('mhr-llama', ['q_proj', 'v_proj', 'down_proj'], 2, 3, 2, 4, [1, 1, 2, 0])
case('mhr-one-task-llama', ['q_proj', 'o_proj'], 3, 1, 3, 2, [0, 0])
