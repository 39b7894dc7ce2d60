#!/usr/bin/python3
"""PyTorch baseline for `adaptkit bench train`: LoRA training steps on a GPT-2-small-shaped model
(random frozen weights, rank-r adapters on attention and MLP projections, AdamW on the adapters),
written in plain torch. Prints one JSON object."""
import json
import math
import resource
import sys
import time

import torch
import torch.nn.functional as F

a = json.loads(sys.argv[1])
torch.set_num_threads(a['threads'])
torch.manual_seed(0)
V, H, L, nh, P = a['vocab'], a['hidden'], a['layers'], a['heads'], a['positions']
B, T, r, alpha = a['batch'], a['seq'], a['r'], 2 * a['r']
hd = H // nh
scale = alpha / r


def w(*s):
    return torch.randn(s) * 0.02


wte, wpe = w(V, H), w(P, H)
layers = []
loras = []
for _ in range(L):
    p = {'ln1': (torch.ones(H), torch.zeros(H)), 'ln2': (torch.ones(H), torch.zeros(H)),
         'c_attn': (w(H, 3 * H), torch.zeros(3 * H)), 'attn_proj': (w(H, H), torch.zeros(H)),
         'c_fc': (w(H, 4 * H), torch.zeros(4 * H)), 'mlp_proj': (w(4 * H, H), torch.zeros(H))}
    ad = {}
    for name in ('c_attn', 'attn_proj', 'c_fc', 'mlp_proj'):
        i, o = p[name][0].shape
        A = torch.nn.Parameter(torch.empty(r, i).uniform_(-1 / math.sqrt(i), 1 / math.sqrt(i)))
        Bm = torch.nn.Parameter(torch.zeros(o, r) + 1e-3)
        ad[name] = (A, Bm)
        loras += [A, Bm]
    layers.append((p, ad))
lnf = (torch.ones(H), torch.zeros(H))
opt = torch.optim.AdamW(loras, lr=1e-4, weight_decay=0.0)


def lin(x, p, ad, name):
    W, b = p[name]
    A, Bm = ad[name]
    return x @ W + b + (x @ A.t() @ Bm.t()) * scale


def step(ids, tgt):
    h = wte[ids] + wpe[:T]
    mask = torch.triu(torch.full((T, T), float('-inf')), 1)
    for p, ad in layers:
        x = F.layer_norm(h, (H,), *p['ln1'])
        q, k, v = lin(x, p, ad, 'c_attn').split(H, -1)
        q, k, v = [t.view(B, T, nh, hd).transpose(1, 2) for t in (q, k, v)]
        att = torch.softmax((q @ k.transpose(-1, -2)) / math.sqrt(hd) + mask, -1) @ v
        h = h + lin(att.transpose(1, 2).reshape(B, T, H), p, ad, 'attn_proj')
        x = F.layer_norm(h, (H,), *p['ln2'])
        h = h + lin(F.gelu(lin(x, p, ad, 'c_fc'), approximate='tanh'), p, ad, 'mlp_proj')
    h = F.layer_norm(h, (H,), *lnf)
    loss = F.cross_entropy((h @ wte.t()).view(-1, V), tgt.view(-1))
    loss.backward()
    opt.step()
    opt.zero_grad()
    return loss.item()


ids = torch.randint(0, V, (B, T))
tgt = torch.randint(0, V, (B, T))
times = []
for i in range(a['warmup'] + a['steps']):
    t0 = time.perf_counter()
    step(ids, tgt)
    if i >= a['warmup']:
        times.append(time.perf_counter() - t0)
times.sort()
med = times[len(times) // 2]
print(json.dumps({'bench': 'train', 'impl': 'pytorch', 'threads': a['threads'], 'tokens_per_s': B * T / med,
                  'step_s': med, 'peak_rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
