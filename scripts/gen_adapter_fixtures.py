#!/usr/bin/python3
"""PEFT-format adapter folders (adapter_config.json + adapter_model.safetensors, PEFT's key
scheme) for the tiny model fixtures, and the logits a reference forward in plain PyTorch gives
with each adapter applied, independently of adaptkit.

Run with Debian's python3-torch:  /usr/bin/python3 scripts/gen_adapter_fixtures.py
Writes test/fixtures/adapters/<name>/{adapter_config.json, adapter_model.safetensors, expected.json}.
"""
import json
import math
import os
import struct

import torch
import torch.nn.functional as F
from fixture_io import load_safetensors, save_safetensors  # noqa: E402

torch.manual_seed(99)
HERE = os.path.dirname(os.path.abspath(__file__))
MODELS = os.path.join(HERE, '..', 'test', 'fixtures', 'models')
OUT = os.path.join(HERE, '..', 'test', 'fixtures', 'adapters')


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat([-x[..., h:], x[..., :h]], -1)


def llama_forward(cfg, w, ids, linear):
    B, T = ids.shape
    H, nh, nkv = cfg['hidden_size'], cfg['num_attention_heads'], cfg['num_key_value_heads']
    hd = H // nh
    inv = 1.0 / (cfg['rope_theta'] ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd))
    ang = torch.arange(T, dtype=torch.float64)[:, None] * inv[None, :]
    emb = torch.cat([ang, ang], -1)
    cos, sin = emb.cos().float(), emb.sin().float()
    rms = lambda x, g: x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + cfg['rms_norm_eps']) * g
    h = w['model.embed_tokens.weight'][ids]
    causal = torch.tril(torch.ones(T, T, dtype=torch.bool))
    for l in range(cfg['num_hidden_layers']):
        p = f'model.layers.{l}'
        x = rms(h, w[p + '.input_layernorm.weight'])
        q = linear(p + '.self_attn.q_proj', x).view(B, T, nh, hd).transpose(1, 2)
        k = linear(p + '.self_attn.k_proj', x).view(B, T, nkv, hd).transpose(1, 2)
        v = linear(p + '.self_attn.v_proj', x).view(B, T, nkv, hd).transpose(1, 2)
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        k, v = k.repeat_interleave(nh // nkv, 1), v.repeat_interleave(nh // nkv, 1)
        s = ((q @ k.transpose(-1, -2)) / math.sqrt(hd)).masked_fill(~causal, float('-inf'))
        o = (torch.softmax(s, -1) @ v).transpose(1, 2).reshape(B, T, H)
        h = h + linear(p + '.self_attn.o_proj', o)
        x = rms(h, w[p + '.post_attention_layernorm.weight'])
        h = h + linear(p + '.mlp.down_proj', F.silu(linear(p + '.mlp.gate_proj', x)) * linear(p + '.mlp.up_proj', x))
    h = rms(h, w['model.norm.weight'])
    return h @ w['lm_head.weight'].t()


def gpt2_forward(cfg, w, ids, linear):
    B, T = ids.shape
    H, nh = cfg['n_embd'], cfg['n_head']
    hd = H // nh
    h = w['transformer.wte.weight'][ids] + w['transformer.wpe.weight'][torch.arange(T)]
    causal = torch.tril(torch.ones(T, T, dtype=torch.bool))
    ln = lambda x, n: F.layer_norm(x, (H,), w[n + '.weight'], w[n + '.bias'], 1e-5)
    for l in range(cfg['n_layer']):
        p = f'transformer.h.{l}'
        qkv = linear(p + '.attn.c_attn', ln(h, p + '.ln_1'))
        q, k, v = [t.view(B, T, nh, hd).transpose(1, 2) for t in qkv.split(H, -1)]
        s = ((q @ k.transpose(-1, -2)) / math.sqrt(hd)).masked_fill(~causal, float('-inf'))
        h = h + linear(p + '.attn.c_proj', (torch.softmax(s, -1) @ v).transpose(1, 2).reshape(B, T, H))
        m = F.gelu(linear(p + '.mlp.c_fc', ln(h, p + '.ln_2')), approximate='tanh')
        h = h + linear(p + '.mlp.c_proj', m)
    h = ln(h, 'transformer.ln_f')
    return h @ w['transformer.wte.weight'].t()


def base_linear(w, conv1d):
    def f(name, x):
        W = w[name + '.weight']
        y = x @ W if conv1d else x @ W.t()
        b = w.get(name + '.bias')
        return y + b if b is not None else y
    return f


def case(name, model, config, make_linear_and_weights):
    cfg = json.load(open(os.path.join(MODELS, model, 'config.json')))
    w = load_safetensors(os.path.join(MODELS, model, 'model.safetensors'))
    conv1d = model == 'gpt2'
    fwd = gpt2_forward if conv1d else llama_forward
    ids = torch.randint(0, cfg['vocab_size'], (2, 6))
    linear, adapter = make_linear_and_weights(w, conv1d)
    logits = fwd(cfg, w, ids, linear)
    d = os.path.join(OUT, name)
    os.makedirs(d, exist_ok=True)
    full = {'auto_mapping': None, 'base_model_name_or_path': None, 'inference_mode': True, 'revision': None,
            'task_type': 'CAUSAL_LM', **config}
    with open(os.path.join(d, 'adapter_config.json'), 'w') as f:
        json.dump(full, f, indent=2, sort_keys=True)
    save_safetensors(os.path.join(d, 'adapter_model.safetensors'), adapter, {'format': 'pt'})
    with open(os.path.join(d, 'expected.json'), 'w') as f:
        json.dump({'model': model, 'ids': ids.tolist(), 'logits': logits.flatten().tolist()}, f)
    print('wrote', name)


def lora_case(name, model, targets, r, alpha, rslora=False, dora=False):
    config = {'peft_type': 'LORA', 'r': r, 'lora_alpha': alpha, 'lora_dropout': 0.0, 'target_modules': targets,
              'use_rslora': rslora, 'use_dora': dora, 'bias': 'none', 'fan_in_fan_out': model == 'gpt2',
              'init_lora_weights': True, 'rank_pattern': {}, 'alpha_pattern': {}, 'modules_to_save': None}
    scale = alpha / math.sqrt(r) if rslora else alpha / r

    def make(w, conv1d):
        base = base_linear(w, conv1d)
        adapter, layers = {}, {}
        for key in list(w):
            if not key.endswith('.weight'):
                continue
            mod = key[:-len('.weight')]
            if not any(mod.endswith('.' + t) for t in targets):
                continue
            W = w[key].t() if conv1d else w[key]  # [out, in]
            out_f, in_f = W.shape
            A, Bm = torch.randn(r, in_f) * 0.3, torch.randn(out_f, r) * 0.3
            adapter[f'base_model.model.{mod}.lora_A.weight'] = A
            adapter[f'base_model.model.{mod}.lora_B.weight'] = Bm
            mag = None
            if dora:
                mag = (W + scale * Bm @ A).norm(dim=1) * (1 + 0.2 * torch.randn(out_f))
                adapter[f'base_model.model.{mod}.lora_magnitude_vector'] = mag
            layers[mod] = (W, A, Bm, mag)

        def linear(n, x):
            y = base(n, x)
            if n not in layers:
                return y
            W, A, Bm, mag = layers[n]
            lora = (x @ A.t() @ Bm.t()) * scale
            if mag is None:
                return y + lora
            # DoRA: W' = m * (W + sBA) / ||W + sBA||_row
            Wd = W + scale * Bm @ A
            Wd = Wd * (mag / Wd.norm(dim=1))[:, None]
            b = w.get(n + '.bias')
            return x @ Wd.t() + (b if b is not None else 0)
        return linear, adapter
    case(name, model, config, make)


def ia3_case(name, model, targets, ff):
    config = {'peft_type': 'IA3', 'target_modules': targets, 'feedforward_modules': ff,
              'fan_in_fan_out': model == 'gpt2', 'init_ia3_weights': True, 'modules_to_save': None}

    def make(w, conv1d):
        base = base_linear(w, conv1d)
        adapter, vecs = {}, {}
        for key in list(w):
            if not key.endswith('.weight'):
                continue
            mod = key[:-len('.weight')]
            if not any(mod.endswith('.' + t) for t in targets):
                continue
            W = w[key].t() if conv1d else w[key]
            out_f, in_f = W.shape
            is_ff = any(mod.endswith('.' + t) for t in ff)
            l = 1 + 0.3 * torch.randn(1, in_f) if is_ff else 1 + 0.3 * torch.randn(out_f, 1)
            adapter[f'base_model.model.{mod}.ia3_l'] = l
            vecs[mod] = (l, is_ff)

        def linear(n, x):
            if n not in vecs:
                return base(n, x)
            l, is_ff = vecs[n]
            return base(n, x * l.flatten()) if is_ff else base(n, x) * l.flatten()
        return linear, adapter
    case(name, model, config, make)


lora_case('lora-llama', 'llama-gqa', ['q_proj', 'v_proj'], 4, 8)
lora_case('rslora-llama', 'llama-gqa', ['q_proj', 'k_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'], 4, 16, rslora=True)
lora_case('dora-llama', 'llama-gqa', ['q_proj', 'v_proj', 'down_proj'], 2, 4, dora=True)
lora_case('lora-gpt2', 'gpt2', ['c_attn', 'c_proj'], 4, 8)
lora_case('dora-gpt2', 'gpt2', ['c_attn'], 2, 2, dora=True)
ia3_case('ia3-llama', 'llama-gqa', ['k_proj', 'v_proj', 'down_proj'], ['down_proj'])
ia3_case('ia3-gpt2', 'gpt2', ['c_attn', 'mlp.c_proj'], ['mlp.c_proj'])
