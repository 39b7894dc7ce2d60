#!/usr/bin/python3
"""Tiny random ViT checkpoints in the Hugging Face layout and their outputs, from a reference
forward written here in plain PyTorch (CPU, float64) after the ViTForImageClassification
architecture, independently of adaptkit (transformers is not needed):

  patch embedding  Conv2d(C, D, kernel=stride=patch), flattened row-major, transposed to tokens
  embeddings       [CLS, patches] + learned position embeddings
  block            h = h + attn.output.dense(self_attention(layernorm_before(h)))
                   h = h + output.dense(act(intermediate.dense(layernorm_after(h))))
  head             classifier(layernorm(h)[:, 0])

Also the bilinear resize reference (torch.nn.functional.interpolate, align_corners=False) that
adaptkit's image preprocessing is checked against.

Run with Debian's python3-torch:  /usr/bin/python3 scripts/gen_vit_fixtures.py
Writes test/fixtures/models/vit-tiny/ and vit-backbone/ (config.json, model.safetensors,
expected.json) and vit-tiny/resize.json.
"""
import json
import math
import os
import struct

import torch
import torch.nn.functional as F
from fixture_io import save_safetensors, write_model_fixture  # noqa: E402

torch.manual_seed(2024)
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'test', 'fixtures', 'models')


def rnd(*shape, std=0.2):
    return torch.randn(shape) * std


def pair(v):
    return tuple(v) if isinstance(v, (list, tuple)) else (v, v)


def make_weights(cfg, prefix, head, pooler):
    D, I, C, L = cfg['hidden_size'], cfg['intermediate_size'], cfg['num_channels'], cfg['num_hidden_layers']
    ih, iw = pair(cfg['image_size'])
    ph, pw = pair(cfg['patch_size'])
    n = (ih // ph) * (iw // pw)
    qkv_bias = cfg.get('qkv_bias', True)
    w = {
        f'{prefix}embeddings.cls_token': rnd(1, 1, D, std=0.5),
        f'{prefix}embeddings.position_embeddings': rnd(1, n + 1, D, std=0.3),
        f'{prefix}embeddings.patch_embeddings.projection.weight': rnd(D, C, ph, pw),
        f'{prefix}embeddings.patch_embeddings.projection.bias': rnd(D),
        f'{prefix}layernorm.weight': 1 + rnd(D, std=0.1), f'{prefix}layernorm.bias': rnd(D, std=0.1),
    }
    for l in range(L):
        p = f'{prefix}encoder.layer.{l}'
        for m in ('query', 'key', 'value'):
            w[f'{p}.attention.attention.{m}.weight'] = rnd(D, D)
            if qkv_bias:
                w[f'{p}.attention.attention.{m}.bias'] = rnd(D)
        w[f'{p}.attention.output.dense.weight'] = rnd(D, D)
        w[f'{p}.attention.output.dense.bias'] = rnd(D)
        w[f'{p}.intermediate.dense.weight'] = rnd(I, D)
        w[f'{p}.intermediate.dense.bias'] = rnd(I)
        w[f'{p}.output.dense.weight'] = rnd(D, I)
        w[f'{p}.output.dense.bias'] = rnd(D)
        for ln in ('layernorm_before', 'layernorm_after'):
            w[f'{p}.{ln}.weight'] = 1 + rnd(D, std=0.1)
            w[f'{p}.{ln}.bias'] = rnd(D, std=0.1)
    if head:
        w['classifier.weight'] = rnd(len(cfg['id2label']), D)
        w['classifier.bias'] = rnd(len(cfg['id2label']))
    if pooler:
        w[f'{prefix}pooler.dense.weight'] = rnd(D, D)
        w[f'{prefix}pooler.dense.bias'] = rnd(D)
    return w


def act(x, name):
    if name == 'gelu':
        return F.gelu(x)
    if name in ('gelu_new', 'gelu_pytorch_tanh'):
        return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))
    return F.relu(x)


def vit_forward(cfg, w, prefix, px):
    """Final hidden states [B, 1 + N, D] and (with a classifier) logits [B, labels], in float64."""
    g = {k: v.double() for k, v in w.items()}
    D, H, L = cfg['hidden_size'], cfg['num_attention_heads'], cfg['num_hidden_layers']
    eps = cfg.get('layer_norm_eps', 1e-12)
    hd = D // H
    B = px.shape[0]

    def lin(x, name):
        b = g.get(f'{name}.bias')
        return x @ g[f'{name}.weight'].T + (b if b is not None else 0)

    def ln(x, name):
        return F.layer_norm(x, (D,), g[f'{name}.weight'], g[f'{name}.bias'], eps)

    proj = f'{prefix}embeddings.patch_embeddings.projection'
    x = F.conv2d(px.double(), g[f'{proj}.weight'], g[f'{proj}.bias'], stride=pair(cfg['patch_size']))
    x = x.flatten(2).transpose(1, 2)
    h = torch.cat([g[f'{prefix}embeddings.cls_token'].expand(B, -1, -1), x], 1) + g[f'{prefix}embeddings.position_embeddings']
    T = h.shape[1]
    for l in range(L):
        p = f'{prefix}encoder.layer.{l}'
        a = ln(h, f'{p}.layernorm_before')
        heads = lambda t: t.view(B, T, H, hd).transpose(1, 2)
        q = heads(lin(a, f'{p}.attention.attention.query'))
        k = heads(lin(a, f'{p}.attention.attention.key'))
        v = heads(lin(a, f'{p}.attention.attention.value'))
        probs = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(hd), dim=-1)
        o = (probs @ v).transpose(1, 2).reshape(B, T, D)
        h = lin(o, f'{p}.attention.output.dense') + h
        m = act(lin(ln(h, f'{p}.layernorm_after'), f'{p}.intermediate.dense'), cfg.get('hidden_act', 'gelu'))
        h = lin(m, f'{p}.output.dense') + h
    h = ln(h, f'{prefix}layernorm')
    logits = lin(h[:, 0], 'classifier') if 'classifier.weight' in g else None
    return h, logits


def case(name, cfg, prefix, head, pooler, batch=2):
    w = make_weights(cfg, prefix, head, pooler)
    ih, iw = pair(cfg['image_size'])
    px = torch.randn(batch, cfg['num_channels'], ih, iw)
    h, logits = vit_forward(cfg, w, prefix, px)
    exp = {'pixel_values': px.flatten().tolist(), 'pixel_shape': list(px.shape),
           'hidden': h.flatten().tolist(), 'hidden_shape': list(h.shape)}
    if logits is not None:
        exp['logits'] = logits.flatten().tolist()
        exp['logits_shape'] = list(logits.shape)
    write_model_fixture(ROOT, name, cfg, w, exp)


# a ViTForImageClassification: 3 channels, 16x16 images of 4x4 patches, 10 labels; keys adaptkit
# does not use (dropout, architectures, encoder_stride) are there to be ignored
case('vit-tiny', {
    'architectures': ['ViTForImageClassification'], 'model_type': 'vit', 'hidden_size': 32, 'num_hidden_layers': 2,
    'num_attention_heads': 4, 'intermediate_size': 64, 'hidden_act': 'gelu', 'layer_norm_eps': 1e-12, 'image_size': 16,
    'patch_size': 4, 'num_channels': 3, 'qkv_bias': True, 'hidden_dropout_prob': 0.0, 'attention_probs_dropout_prob': 0.0,
    'initializer_range': 0.02, 'encoder_stride': 4, 'id2label': {str(i): f'class_{i}' for i in range(10)},
    'label2id': {f'class_{i}': i for i in range(10)},
}, 'vit.', head=True, pooler=False)

# a bare ViTModel backbone (no "vit." prefix, a pooler the classifier does not use, no head):
# gray 18x14 images whose 4x4 patches leave remainders a strided convolution skips, no q/k/v bias
case('vit-backbone', {
    'architectures': ['ViTModel'], 'model_type': 'vit', 'hidden_size': 16, 'num_hidden_layers': 1,
    'num_attention_heads': 2, 'intermediate_size': 24, 'hidden_act': 'gelu_new', 'layer_norm_eps': 1e-6,
    'image_size': [18, 14], 'patch_size': [4, 4], 'num_channels': 1, 'qkv_bias': False,
}, '', head=False, pooler=True)

# bilinear resizes, up and down, of random planar pixels
resizes = []
for (c, h, w, H, W) in [(3, 5, 7, 16, 16), (1, 20, 18, 16, 12), (2, 4, 4, 4, 9)]:
    x = torch.rand(1, c, h, w, dtype=torch.float64)
    y = F.interpolate(x, size=(H, W), mode='bilinear', align_corners=False)
    resizes.append({'from': [c, h, w], 'to': [H, W], 'input': x.flatten().tolist(), 'output': y.flatten().tolist()})
with open(os.path.join(ROOT, 'vit-tiny', 'resize.json'), 'w') as f:
    json.dump(resizes, f)
print('wrote vit-tiny/resize.json')
