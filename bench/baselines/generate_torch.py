#!/usr/bin/python3
"""PyTorch baseline for `adaptkit bench generate`: the same models and shapes, prefill then greedy
decode with a KV cache, written in plain torch. Prints one JSON object per line."""
import json
import math
import struct
import sys
import time

import torch
import torch.nn.functional as F

args = json.loads(sys.argv[1])
torch.set_num_threads(args['threads'])
torch.manual_seed(0)


def llama2c_weights(path):
    with open(path, 'rb') as f:
        dim, hidden, L, nh, nkv, vocab, seq = struct.unpack('7i', f.read(28))
        shared = vocab > 0
        vocab = abs(vocab)
        hd = dim // nh

        def t(*shape):
            n = 1
            for s in shape:
                n *= s
            return torch.frombuffer(bytearray(f.read(4 * n)), dtype=torch.float32).reshape(shape)

        w = {'tok': t(vocab, dim), 'rms_att': t(L, dim), 'wq': t(L, dim, dim), 'wk': t(L, nkv * hd, dim),
             'wv': t(L, nkv * hd, dim), 'wo': t(L, dim, dim), 'rms_ffn': t(L, dim), 'w1': t(L, hidden, dim),
             'w2': t(L, dim, hidden), 'w3': t(L, hidden, dim), 'rms_final': t(dim)}
        t(seq, hd)
        w['cls'] = w['tok'] if shared else t(vocab, dim)
    return dict(dim=dim, L=L, nh=nh, nkv=nkv, vocab=vocab), w


class Llama:
    """llama2.c layout: interleaved RoPE pairs."""

    def __init__(self, path):
        self.c, self.w = llama2c_weights(path)

    def rope(self, x, pos):
        hd = x.shape[-1]
        freq = 1.0 / (10000 ** (torch.arange(0, hd, 2).float() / hd))
        ang = pos[:, None].float() * freq[None, :]
        c, s = ang.cos(), ang.sin()
        x1, x2 = x[..., 0::2], x[..., 1::2]
        return torch.stack([x1 * c - x2 * s, x1 * s + x2 * c], -1).flatten(-2)

    def forward(self, ids, cache, start):
        c, w = self.c, self.w
        T = ids.shape[0]
        hd = c['dim'] // c['nh']
        pos = torch.arange(start, start + T)
        h = w['tok'][ids]
        for l in range(c['L']):
            x = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-5) * w['rms_att'][l]
            q = self.rope((x @ w['wq'][l].t()).view(T, c['nh'], hd).transpose(0, 1), pos)
            k = self.rope((x @ w['wk'][l].t()).view(T, c['nkv'], hd).transpose(0, 1), pos)
            v = (x @ w['wv'][l].t()).view(T, c['nkv'], hd).transpose(0, 1)
            if l in cache:
                k = torch.cat([cache[l][0], k], 1)
                v = torch.cat([cache[l][1], v], 1)
            cache[l] = (k, v)
            k = k.repeat_interleave(c['nh'] // c['nkv'], 0)
            v = v.repeat_interleave(c['nh'] // c['nkv'], 0)
            s = (q @ k.transpose(-1, -2)) / math.sqrt(hd)
            if T > 1:
                s = s + torch.triu(torch.full((T, k.shape[1]), float('-inf')), 1 + start)
            o = (torch.softmax(s, -1) @ v).transpose(0, 1).reshape(T, -1)
            h = h + o @ w['wo'][l].t()
            x = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-5) * w['rms_ffn'][l]
            h = h + (F.silu(x @ w['w1'][l].t()) * (x @ w['w3'][l].t())) @ w['w2'][l].t()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-5) * w['rms_final']
        return h @ w['cls'].t()


class GPT2:
    def __init__(self, c):
        self.c = c
        H, V, P, L = c['hidden'], c['vocab'], c['positions'], c['layers']
        r = lambda *s: torch.randn(s) * 0.02
        self.wte, self.wpe = r(V, H), r(P, H)
        self.layers = [dict(ln1w=torch.ones(H), ln1b=torch.zeros(H), attn_w=r(H, 3 * H), attn_b=torch.zeros(3 * H),
                            proj_w=r(H, H), proj_b=torch.zeros(H), ln2w=torch.ones(H), ln2b=torch.zeros(H),
                            fc_w=r(H, 4 * H), fc_b=torch.zeros(4 * H), fc2_w=r(4 * H, H), fc2_b=torch.zeros(H))
                       for _ in range(L)]
        self.lnfw, self.lnfb = torch.ones(H), torch.zeros(H)

    def forward(self, ids, cache, start):
        c = self.c
        H, nh = c['hidden'], c['heads']
        hd = H // nh
        T = ids.shape[0]
        h = self.wte[ids] + self.wpe[start:start + T]
        for l, p in enumerate(self.layers):
            x = F.layer_norm(h, (H,), p['ln1w'], p['ln1b'])
            q, k, v = (x @ p['attn_w'] + p['attn_b']).split(H, -1)
            q, k, v = [t.view(T, nh, hd).transpose(0, 1) for t in (q, k, v)]
            if l in cache:
                k = torch.cat([cache[l][0], k], 1)
                v = torch.cat([cache[l][1], v], 1)
            cache[l] = (k, v)
            s = (q @ k.transpose(-1, -2)) / math.sqrt(hd)
            if T > 1:
                s = s + torch.triu(torch.full((T, k.shape[1]), float('-inf')), 1 + start)
            o = (torch.softmax(s, -1) @ v).transpose(0, 1).reshape(T, H)
            h = h + o @ p['proj_w'] + p['proj_b']
            x = F.layer_norm(h, (H,), p['ln2w'], p['ln2b'])
            m = F.gelu(x @ p['fc_w'] + p['fc_b'], approximate='tanh')
            h = h + m @ p['fc2_w'] + p['fc2_b']
        h = F.layer_norm(h, (H,), self.lnfw, self.lnfb)
        return h @ self.wte.t()


def run(model, name, prefill, decode, reps):
    ids = torch.randint(0, 256, (prefill,))
    best_p, best_d = [], []
    with torch.no_grad():
        for _ in range(reps + 1):
            cache = {}
            t0 = time.perf_counter()
            logits = model.forward(ids, cache, 0)
            t1 = time.perf_counter()
            nxt = int(logits[-1].argmax())
            for i in range(decode):
                logits = model.forward(torch.tensor([nxt]), cache, prefill + i)
                nxt = int(logits[-1].argmax())
            t2 = time.perf_counter()
            best_p.append(prefill / (t1 - t0))
            best_d.append(decode / (t2 - t1))
    best_p, best_d = sorted(best_p[1:]), sorted(best_d[1:])
    print(json.dumps({'bench': 'generate', 'impl': 'pytorch', 'model': name, 'threads': args['threads'],
                      'prefill_tokens': prefill, 'decode_tokens': decode,
                      'prefill_tokens_per_s': best_p[len(best_p) // 2], 'decode_tokens_per_s': best_d[len(best_d) // 2]}), flush=True)


for m in args['models']:
    if m['kind'] == 'llama2c':
        run(Llama(m['path']), m['name'], m['prefill'], m['decode'], m['reps'])
    else:
        run(GPT2(m['config']), m['name'], m['prefill'], m['decode'], m['reps'])
