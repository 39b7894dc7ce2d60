#!/usr/bin/python3
"""Tiny random Hugging Face model folders and their logits, from reference forwards written here
in plain PyTorch (CPU, float32), independently of adaptkit.

Run with Debian's python3-torch:  /usr/bin/python3 scripts/gen_model_fixtures.py
Writes test/fixtures/models/<name>/{config.json, model.safetensors, expected.json}.
"""
import json
import math
import os
import struct

import torch
import torch.nn.functional as F
from fixture_io import save_safetensors, write_model_fixture  # noqa: E402

torch.manual_seed(4321)
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'test', 'fixtures', 'models')


def rnd(*shape, std=0.2):
    return torch.randn(shape) * std


# ---------------- Llama family ----------------

def rope_inv_freq(cfg, dim):
    base = cfg.get('rope_theta', 10000.0)
    inv = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
    sc = cfg.get('rope_scaling')
    if sc and sc.get('rope_type', sc.get('type')) == 'llama3':
        factor, low, high, orig = sc['factor'], sc['low_freq_factor'], sc['high_freq_factor'], sc['original_max_position_embeddings']
        wave = 2 * math.pi / inv
        out = inv.clone()
        for i in range(len(inv)):
            if wave[i] > orig / low:
                out[i] = inv[i] / factor
            elif wave[i] >= orig / high:
                s = (orig / wave[i] - low) / (high - low)
                out[i] = (1 - s) * inv[i] / factor + s * inv[i]
        inv = out
    return inv, (sc['factor'] if sc and sc.get('rope_type', sc.get('type')) == 'linear' else 1.0)


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat([-x[..., h:], x[..., :h]], -1)


def llama_forward(cfg, w, ids, mask):
    B, T = ids.shape
    H, nh, nkv = cfg['hidden_size'], cfg['num_attention_heads'], cfg['num_key_value_heads']
    hd = H // nh
    eps = cfg['rms_norm_eps']
    inv, lin = rope_inv_freq(cfg, hd)
    ang = (torch.arange(T, dtype=torch.float64)[:, None] / lin) * inv[None, :]
    emb = torch.cat([ang, ang], -1)
    cos, sin = emb.cos().float(), emb.sin().float()

    def rms(x, g):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * g

    def lin_(x, name, bias):
        y = x @ w[name + '.weight'].t()
        return y + w[name + '.bias'] if bias else y

    qkv_bias = cfg['model_type'] == 'qwen2' or cfg.get('attention_bias', False)
    h = w['model.embed_tokens.weight'][ids]
    allowed = torch.tril(torch.ones(T, T, dtype=torch.bool))[None, None] & (mask[:, None, None, :] != 0)
    for l in range(cfg['num_hidden_layers']):
        p = f'model.layers.{l}'
        x = rms(h, w[p + '.input_layernorm.weight'])
        q = lin_(x, p + '.self_attn.q_proj', qkv_bias).view(B, T, nh, hd).transpose(1, 2)
        k = lin_(x, p + '.self_attn.k_proj', qkv_bias).view(B, T, nkv, hd).transpose(1, 2)
        v = lin_(x, p + '.self_attn.v_proj', qkv_bias).view(B, T, nkv, hd).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        k = k.repeat_interleave(nh // nkv, 1)
        v = v.repeat_interleave(nh // nkv, 1)
        s = (q @ k.transpose(-1, -2)) / math.sqrt(hd)
        s = s.masked_fill(~allowed, float('-inf'))
        o = (torch.softmax(s, -1) @ v).transpose(1, 2).reshape(B, T, nh * hd)
        h = h + lin_(o, p + '.self_attn.o_proj', cfg.get('attention_bias', False))
        x = rms(h, w[p + '.post_attention_layernorm.weight'])
        h = h + lin_(F.silu(lin_(x, p + '.mlp.gate_proj', False)) * lin_(x, p + '.mlp.up_proj', False), p + '.mlp.down_proj', False)
    h = rms(h, w['model.norm.weight'])
    head = w['model.embed_tokens.weight'] if cfg.get('tie_word_embeddings') else w['lm_head.weight']
    return h @ head.t()


def llama_case(name, cfg):
    H, nh, nkv, I, V, L = (cfg['hidden_size'], cfg['num_attention_heads'], cfg['num_key_value_heads'],
                           cfg['intermediate_size'], cfg['vocab_size'], cfg['num_hidden_layers'])
    hd = H // nh
    qkv_bias = cfg['model_type'] == 'qwen2' or cfg.get('attention_bias', False)
    w = {'model.embed_tokens.weight': rnd(V, H, std=0.5), 'model.norm.weight': 1 + rnd(H, std=0.1)}
    for l in range(L):
        p = f'model.layers.{l}'
        w[p + '.input_layernorm.weight'] = 1 + rnd(H, std=0.1)
        w[p + '.post_attention_layernorm.weight'] = 1 + rnd(H, std=0.1)
        for n, o in [('q', nh * hd), ('k', nkv * hd), ('v', nkv * hd)]:
            w[f'{p}.self_attn.{n}_proj.weight'] = rnd(o, H)
            if qkv_bias:
                w[f'{p}.self_attn.{n}_proj.bias'] = rnd(o)
        w[p + '.self_attn.o_proj.weight'] = rnd(H, nh * hd)
        w[p + '.mlp.gate_proj.weight'] = rnd(I, H)
        w[p + '.mlp.up_proj.weight'] = rnd(I, H)
        w[p + '.mlp.down_proj.weight'] = rnd(H, I)
    if not cfg.get('tie_word_embeddings'):
        w['lm_head.weight'] = rnd(V, H, std=0.5)
    ids = torch.randint(0, V, (2, 9))
    mask = torch.ones(2, 9)
    mask[1, 6:] = 0
    logits = llama_forward(cfg, w, ids, mask)
    write_model_fixture(ROOT, name, cfg, w, {'ids': ids.tolist(), 'attention_mask': mask.tolist(), 'logits': logits.flatten().tolist(),
                         'shape': list(logits.shape)})


base = {'architectures': ['LlamaForCausalLM'], 'model_type': 'llama', 'hidden_size': 32, 'intermediate_size': 48,
        'num_hidden_layers': 2, 'num_attention_heads': 4, 'num_key_value_heads': 2, 'vocab_size': 64,
        'max_position_embeddings': 64, 'rms_norm_eps': 1e-5, 'rope_theta': 10000.0, 'hidden_act': 'silu',
        'tie_word_embeddings': False, 'bos_token_id': 1, 'eos_token_id': 2, 'torch_dtype': 'float32',
        'some_future_key': {'ignored': True}}
llama_case('llama-gqa', base)
llama_case('qwen2-bias', {**base, 'architectures': ['Qwen2ForCausalLM'], 'model_type': 'qwen2', 'num_key_value_heads': 1,
                          'tie_word_embeddings': True, 'rope_theta': 1000000.0})
llama_case('llama-rope-llama3', {**base, 'num_key_value_heads': 4, 'rope_theta': 500000.0,
                                 'rope_scaling': {'rope_type': 'llama3', 'factor': 8.0, 'low_freq_factor': 1.0,
                                                  'high_freq_factor': 4.0, 'original_max_position_embeddings': 200}})
llama_case('llama-rope-linear', {**base, 'rope_scaling': {'type': 'linear', 'factor': 2.0}})

# ---------------- GPT-2 ----------------


def gelu_new(x):
    return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))


def gpt2_case():
    cfg = {'architectures': ['GPT2LMHeadModel'], 'model_type': 'gpt2', 'n_embd': 32, 'n_head': 4, 'n_layer': 2,
           'n_positions': 32, 'vocab_size': 64, 'layer_norm_epsilon': 1e-5, 'activation_function': 'gelu_new',
           'n_inner': None, 'bos_token_id': 0, 'eos_token_id': 0}
    H, nh, L, V, P = 32, 4, 2, 64, 32
    w = {'transformer.wte.weight': rnd(V, H, std=0.5), 'transformer.wpe.weight': rnd(P, H, std=0.1),
         'transformer.ln_f.weight': 1 + rnd(H, std=0.1), 'transformer.ln_f.bias': rnd(H, std=0.1)}
    for l in range(L):
        p = f'transformer.h.{l}'
        for ln in ('ln_1', 'ln_2'):
            w[f'{p}.{ln}.weight'] = 1 + rnd(H, std=0.1)
            w[f'{p}.{ln}.bias'] = rnd(H, std=0.1)
        w[p + '.attn.c_attn.weight'], w[p + '.attn.c_attn.bias'] = rnd(H, 3 * H), rnd(3 * H)
        w[p + '.attn.c_proj.weight'], w[p + '.attn.c_proj.bias'] = rnd(H, H), rnd(H)
        w[p + '.mlp.c_fc.weight'], w[p + '.mlp.c_fc.bias'] = rnd(H, 4 * H), rnd(4 * H)
        w[p + '.mlp.c_proj.weight'], w[p + '.mlp.c_proj.bias'] = rnd(4 * H, H), rnd(H)
    ids = torch.randint(0, V, (2, 8))
    mask = torch.ones(2, 8)
    mask[0, 5:] = 0
    B, T = ids.shape
    hd = H // nh
    h = w['transformer.wte.weight'][ids] + w['transformer.wpe.weight'][torch.arange(T)]
    allowed = torch.tril(torch.ones(T, T, dtype=torch.bool))[None, None] & (mask[:, None, None, :] != 0)
    for l in range(L):
        p = f'transformer.h.{l}'
        x = F.layer_norm(h, (H,), w[p + '.ln_1.weight'], w[p + '.ln_1.bias'], 1e-5)
        qkv = x @ w[p + '.attn.c_attn.weight'] + w[p + '.attn.c_attn.bias']
        q, k, v = [t.view(B, T, nh, hd).transpose(1, 2) for t in qkv.split(H, -1)]
        s = (q @ k.transpose(-1, -2)) / math.sqrt(hd)
        o = torch.softmax(s.masked_fill(~allowed, float('-inf')), -1) @ v
        o = o.transpose(1, 2).reshape(B, T, H)
        h = h + o @ w[p + '.attn.c_proj.weight'] + w[p + '.attn.c_proj.bias']
        x = F.layer_norm(h, (H,), w[p + '.ln_2.weight'], w[p + '.ln_2.bias'], 1e-5)
        m = gelu_new(x @ w[p + '.mlp.c_fc.weight'] + w[p + '.mlp.c_fc.bias'])
        h = h + m @ w[p + '.mlp.c_proj.weight'] + w[p + '.mlp.c_proj.bias']
    h = F.layer_norm(h, (H,), w['transformer.ln_f.weight'], w['transformer.ln_f.bias'], 1e-5)
    logits = h @ w['transformer.wte.weight'].t()
    # HF checkpoints also carry the causal-mask buffers; loaders must ignore them
    for l in range(L):
        w[f'transformer.h.{l}.attn.bias'] = torch.tril(torch.ones(P, P)).view(1, 1, P, P)
    write_model_fixture(ROOT, 'gpt2', cfg, w, {'ids': ids.tolist(), 'attention_mask': mask.tolist(), 'logits': logits.flatten().tolist(),
                           'shape': list(logits.shape)})


gpt2_case()

# ---------------- BERT ----------------


def bert_case():
    cfg = {'architectures': ['BertForSequenceClassification'], 'model_type': 'bert', 'hidden_size': 32,
           'num_attention_heads': 4, 'num_hidden_layers': 2, 'intermediate_size': 64, 'max_position_embeddings': 32,
           'type_vocab_size': 2, 'vocab_size': 64, 'layer_norm_eps': 1e-12, 'hidden_act': 'gelu',
           'id2label': {'0': 'neg', '1': 'neu', '2': 'pos'}, 'label2id': {'neg': 0, 'neu': 1, 'pos': 2}}
    H, nh, L, I, V, P = 32, 4, 2, 64, 64, 32
    w = {'bert.embeddings.word_embeddings.weight': rnd(V, H, std=0.5),
         'bert.embeddings.position_embeddings.weight': rnd(P, H, std=0.1),
         'bert.embeddings.token_type_embeddings.weight': rnd(2, H, std=0.1),
         'bert.embeddings.LayerNorm.weight': 1 + rnd(H, std=0.1), 'bert.embeddings.LayerNorm.bias': rnd(H, std=0.1),
         'bert.pooler.dense.weight': rnd(H, H), 'bert.pooler.dense.bias': rnd(H),
         'classifier.weight': rnd(3, H, std=0.5), 'classifier.bias': rnd(3)}
    for l in range(L):
        p = f'bert.encoder.layer.{l}'
        for n in ('query', 'key', 'value'):
            w[f'{p}.attention.self.{n}.weight'], w[f'{p}.attention.self.{n}.bias'] = rnd(H, H), rnd(H)
        w[p + '.attention.output.dense.weight'], w[p + '.attention.output.dense.bias'] = rnd(H, H), rnd(H)
        w[p + '.intermediate.dense.weight'], w[p + '.intermediate.dense.bias'] = rnd(I, H), rnd(I)
        w[p + '.output.dense.weight'], w[p + '.output.dense.bias'] = rnd(H, I), rnd(H)
        for ln in ('attention.output.LayerNorm', 'output.LayerNorm'):
            w[f'{p}.{ln}.weight'] = 1 + rnd(H, std=0.1)
            w[f'{p}.{ln}.bias'] = rnd(H, std=0.1)
    ids = torch.randint(0, V, (3, 7))
    mask = torch.ones(3, 7)
    mask[1, 4:] = 0
    mask[2, 2:] = 0
    types = torch.zeros(3, 7, dtype=torch.long)
    types[0, 4:] = 1
    B, T = ids.shape
    hd = H // nh

    def ln(x, name):
        return F.layer_norm(x, (H,), w[name + '.weight'], w[name + '.bias'], 1e-12)

    def lin(x, name):
        return x @ w[name + '.weight'].t() + w[name + '.bias']

    e = (w['bert.embeddings.word_embeddings.weight'][ids] + w['bert.embeddings.position_embeddings.weight'][torch.arange(T)]
         + w['bert.embeddings.token_type_embeddings.weight'][types])
    h = ln(e, 'bert.embeddings.LayerNorm')
    for l in range(L):
        p = f'bert.encoder.layer.{l}'
        q, k, v = [lin(h, f'{p}.attention.self.{n}').view(B, T, nh, hd).transpose(1, 2) for n in ('query', 'key', 'value')]
        s = (q @ k.transpose(-1, -2)) / math.sqrt(hd)
        s = s.masked_fill(mask[:, None, None, :] == 0, float('-inf'))
        o = (torch.softmax(s, -1) @ v).transpose(1, 2).reshape(B, T, H)
        a = ln(lin(o, p + '.attention.output.dense') + h, p + '.attention.output.LayerNorm')
        m = F.gelu(lin(a, p + '.intermediate.dense'))
        h = ln(lin(m, p + '.output.dense') + a, p + '.output.LayerNorm')
    pooled = torch.tanh(lin(h[:, 0], 'bert.pooler.dense'))
    logits = lin(pooled, 'classifier')
    write_model_fixture(ROOT, 'bert', cfg, w, {'ids': ids.tolist(), 'attention_mask': mask.tolist(), 'token_type_ids': types.tolist(),
                           'logits': logits.flatten().tolist(), 'shape': list(logits.shape),
                           'hidden': h.flatten().tolist()})


bert_case()

# a tiny WordPiece tokenizer for the BERT fixture (64 tokens)
words = ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]', 'good', 'bad', 'great', 'awful', 'movie', 'film', 'the', 'a', 'is',
         'was', 'very', 'not', 'plot', 'acting', 'fun', 'boring', 'and', 'but', 'i', 'it', 'this', 'loved', 'hated', '.', ',', '!']
words += [chr(c) for c in range(ord('a'), ord('z') + 1)]
words += ['##' + chr(c) for c in range(ord('a'), ord('a') + 64 - len(words))]
assert len(words) == 64
tok = {
    'version': '1.0', 'truncation': None, 'padding': None,
    'added_tokens': [{'id': i, 'content': w, 'single_word': False, 'lstrip': False, 'rstrip': False, 'normalized': False, 'special': True}
                     for i, w in enumerate(words[:5])],
    'normalizer': {'type': 'BertNormalizer', 'clean_text': True, 'handle_chinese_chars': True, 'strip_accents': None, 'lowercase': True},
    'pre_tokenizer': {'type': 'BertPreTokenizer'},
    'post_processor': {'type': 'TemplateProcessing',
                       'single': [{'SpecialToken': {'id': '[CLS]', 'type_id': 0}}, {'Sequence': {'id': 'A', 'type_id': 0}}, {'SpecialToken': {'id': '[SEP]', 'type_id': 0}}],
                       'pair': [{'SpecialToken': {'id': '[CLS]', 'type_id': 0}}, {'Sequence': {'id': 'A', 'type_id': 0}}, {'SpecialToken': {'id': '[SEP]', 'type_id': 0}},
                                {'Sequence': {'id': 'B', 'type_id': 1}}, {'SpecialToken': {'id': '[SEP]', 'type_id': 1}}],
                       'special_tokens': {'[CLS]': {'id': '[CLS]', 'ids': [2], 'tokens': ['[CLS]']}, '[SEP]': {'id': '[SEP]', 'ids': [3], 'tokens': ['[SEP]']}}},
    'decoder': {'type': 'WordPiece', 'prefix': '##', 'cleanup': True},
    'model': {'type': 'WordPiece', 'unk_token': '[UNK]', 'continuing_subword_prefix': '##', 'max_input_chars_per_word': 100,
              'vocab': {w: i for i, w in enumerate(words)}},
}
with open(os.path.join(ROOT, 'bert', 'tokenizer.json'), 'w') as f:
    json.dump(tok, f)
with open(os.path.join(ROOT, 'bert', 'tokenizer_config.json'), 'w') as f:
    json.dump({'tokenizer_class': 'BertTokenizer', 'cls_token': '[CLS]', 'sep_token': '[SEP]', 'pad_token': '[PAD]',
               'unk_token': '[UNK]', 'mask_token': '[MASK]', 'do_lower_case': True}, f)
print('wrote bert tokenizer')
