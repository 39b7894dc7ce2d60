#!/usr/bin/python3
"""Tiny Hugging Face checkpoints in the layout bitsandbytes saves (transformers' load_in_4bit /
load_in_8bit followed by save_pretrained), made from test/fixtures/models/llama-gqa, and the
logits of reference forwards written in plain PyTorch, independently of adaptkit.

Run with Debian's python3-torch:  /usr/bin/python3 scripts/gen_bnb_checkpoint_fixture.py
Writes test/fixtures/models/llama-gqa-bnb4/ and llama-gqa-bnb8/: config.json (with its
quantization_config), model.safetensors, expected.safetensors (the dequantized weights) and
expected.json (ids, mask, logits).

bitsandbytes is not installed; its quantizers come from scripts/gen_quant_fixtures.py, which
writes out the algorithms of its reference torch backend. Every Linear of the decoder layers is
quantized; the embedding, the norms and lm_head stay float (llm_int8_skip_modules ["lm_head"], as
transformers does). The 4-bit checkpoint is QLoRA's: NF4, blocks of 64, double quantization.
The 8-bit one is LLM.int8() with llm_int8_threshold 3.0 (lower than the default 6.0 so that this
small random model has outlier columns). Its expected logits are those of the LLM.int8() product
(activations quantized per row at run time, outlier columns in float), and also, for reference,
those of the dequantized model.
"""
import ast
import json
import os
import struct
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import gen_quant_fixtures as q  # noqa: E402  (its main() only runs as a script)

MODELS = os.path.join(HERE, '..', 'test', 'fixtures', 'models')
SOURCE = os.path.join(MODELS, 'llama-gqa')
LINEARS = ['self_attn.q_proj', 'self_attn.k_proj', 'self_attn.v_proj', 'self_attn.o_proj', 'mlp.gate_proj', 'mlp.up_proj', 'mlp.down_proj']
INT8_THRESHOLD = 3.0


def model_fixture_functions():
    """llama_forward and its helpers from gen_model_fixtures.py, without running that script's
    top level (which rewrites every model fixture)."""
    path = os.path.join(HERE, 'gen_model_fixtures.py')
    tree = ast.parse(open(path).read(), path)
    keep = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom, ast.FunctionDef))]
    ns = {}
    exec(compile(ast.Module(body=keep, type_ignores=[]), path, 'exec'), ns)
    return ns


def read_safetensors(path):
    buf = open(path, 'rb').read()
    n = struct.unpack('<Q', buf[:8])[0]
    header = json.loads(buf[8:8 + n])
    out = {}
    for k, v in header.items():
        if k == '__metadata__':
            continue
        a, b = v['data_offsets']
        assert v['dtype'] == 'F32'
        out[k] = torch.from_numpy(np.frombuffer(buf[8 + n + a:8 + n + b], dtype=np.float32).copy()).reshape(v['shape'])
    return out


def save_safetensors(path, tensors):
    header, blobs, off = {'__metadata__': {'format': 'pt'}}, [], 0
    for name in sorted(tensors):
        arr = np.array(tensors[name], order='C')
        kind = {np.dtype(np.float32): 'F32', np.dtype(np.uint8): 'U8', np.dtype(np.int8): 'I8'}[arr.dtype]
        b = arr.tobytes()
        header[name] = {'dtype': kind, 'shape': list(arr.shape), 'data_offsets': [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header, separators=(',', ':')).encode()
    h += b' ' * ((8 - len(h) % 8) % 8)
    with open(path, 'wb') as f:
        f.write(struct.pack('<Q', len(h)) + h + b''.join(blobs))


def nf4_double_quant(w, blocksize=64):
    """Params4bit with quant_type nf4 and compress_statistics: the saved tensors and the dequantized weight."""
    packed, absmax = q.quantize_4bit(w, blocksize, 'nf4')
    offset = torch.tensor(q.f32_mean(absmax))
    qabs, nested_absmax = q.quantize_blockwise(absmax - offset, q.DYNAMIC, 256)
    state = {'quant_type': 'nf4', 'blocksize': blocksize, 'dtype': 'float32', 'shape': list(w.shape),
             'nested_blocksize': 256, 'nested_dtype': 'float32', 'nested_offset': offset.item()}
    saved = {
        'weight': packed.numpy(),
        'weight.absmax': qabs.numpy(),
        'weight.quant_map': q.CODES['nf4'].numpy(),
        'weight.nested_absmax': nested_absmax.numpy(),
        'weight.nested_quant_map': q.DYNAMIC.numpy(),
        'weight.quant_state.bitsandbytes__nf4': np.frombuffer(json.dumps(state).encode('utf-8'), dtype=np.uint8),
    }
    used_absmax = q.dequantize_blockwise(qabs, nested_absmax, q.DYNAMIC, 256) + offset
    dequant = q.dequantize_4bit(packed, used_absmax, q.CODES['nf4'], blocksize, w.numel()).reshape(w.shape)
    return saved, dequant


def int8_rowwise(w):
    """Linear8bitLt's saved tensors (CB, SCB, weight_format 0) and the dequantized weight."""
    cb, scb, _ = q.int8_vectorwise_quant(w, 0.0)
    saved = {'weight': cb.numpy(), 'SCB': scb.numpy(), 'weight_format': np.zeros((), dtype=np.uint8)}
    return saved, cb, scb, cb.float() * scb.view(-1, 1) * 7.874015718698502e-3


class Int8Product:
    """Stands where llama_forward multiplies by Wᵀ: x @ this is the LLM.int8() product of bitsandbytes'
    torch backend (int8_mixed_scaled_mm): the batch's rows quantized with the threshold, the int32
    product scaled by SCA ⊗ SCB / 127², outlier columns in float against the dequantized CB."""

    def __init__(self, cb, scb, threshold, stats):
        self.cb, self.scb, self.threshold, self.stats = cb, scb, threshold, stats

    def __rmatmul__(self, x):
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        ca, sca, oc = q.int8_vectorwise_quant(x2, self.threshold)
        self.stats.append(int(oc.numel()))
        main = (ca.double() @ self.cb.double().t()) * (sca.double().view(-1, 1) * self.scb.double().view(1, -1)) / (127 * 127)
        wdq = (self.cb.float() * self.scb.view(-1, 1) * 7.874015718698502e-3).double()
        if oc.numel():
            main = main + x2.double()[:, oc] @ wdq[:, oc].t()
        return main.float().reshape(*shape[:-1], -1)


class Int8Weight:
    def __init__(self, product):
        self.product = product

    def t(self):
        return self.product


def write(name, config, saved, dequant, expected):
    d = os.path.join(MODELS, name)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, 'config.json'), 'w') as f:
        json.dump(config, f, indent=2)
        f.write('\n')
    save_safetensors(os.path.join(d, 'model.safetensors'), saved)
    save_safetensors(os.path.join(d, 'expected.safetensors'), {k: v.numpy() for k, v in dequant.items()})
    with open(os.path.join(d, 'expected.json'), 'w') as f:
        json.dump(expected, f)
    print('wrote', name)


def main():
    fx = model_fixture_functions()
    llama_forward = fx['llama_forward']
    config = json.load(open(os.path.join(SOURCE, 'config.json')))
    src = read_safetensors(os.path.join(SOURCE, 'model.safetensors'))
    ref = json.load(open(os.path.join(SOURCE, 'expected.json')))
    ids = torch.tensor(ref['ids'])
    mask = torch.tensor(ref['attention_mask'])
    modules = [f'model.layers.{l}.{m}' for l in range(config['num_hidden_layers']) for m in LINEARS]

    # ---- 4-bit: NF4 with double quantization (QLoRA)
    saved, dequant, weights = {}, {}, dict(src)
    for m in modules:
        t, dq = nf4_double_quant(src[f'{m}.weight'])
        for k, v in t.items():
            saved[f'{m}.{k}'] = v
        dequant[f'{m}.weight'] = dq
        weights[f'{m}.weight'] = dq
    for k, v in src.items():
        if k not in dequant:
            saved[k] = v.numpy()
    logits = llama_forward(config, weights, ids, mask)
    qc4 = {'quant_method': 'bitsandbytes', '_load_in_4bit': True, '_load_in_8bit': False, 'load_in_4bit': True, 'load_in_8bit': False,
           'bnb_4bit_quant_type': 'nf4', 'bnb_4bit_use_double_quant': True, 'bnb_4bit_compute_dtype': 'float32',
           'bnb_4bit_quant_storage': 'uint8', 'llm_int8_threshold': 6.0, 'llm_int8_skip_modules': None,
           'llm_int8_has_fp16_weight': False, 'llm_int8_enable_fp32_cpu_offload': False}
    write('llama-gqa-bnb4', {**config, 'quantization_config': qc4}, saved, dequant,
          {'ids': ref['ids'], 'attention_mask': ref['attention_mask'], 'logits': logits.flatten().tolist(), 'shape': list(logits.shape),
           'quantized': modules})

    # ---- 8-bit: LLM.int8()
    saved, dequant, fp_weights, int8_weights, stats = {}, {}, dict(src), dict(src), []
    for m in modules:
        t, cb, scb, dq = int8_rowwise(src[f'{m}.weight'])
        for k, v in t.items():
            saved[f'{m}.{k}'] = v
        dequant[f'{m}.weight'] = dq
        fp_weights[f'{m}.weight'] = dq
        int8_weights[f'{m}.weight'] = Int8Weight(Int8Product(cb, scb, INT8_THRESHOLD, stats))
    for k, v in src.items():
        if k not in dequant:
            saved[k] = v.numpy()
    logits_fp = llama_forward(config, fp_weights, ids, mask)
    logits_int8 = llama_forward(config, int8_weights, ids, mask)
    qc8 = {**qc4, '_load_in_4bit': False, '_load_in_8bit': True, 'load_in_4bit': False, 'load_in_8bit': True,
           'bnb_4bit_quant_type': 'fp4', 'bnb_4bit_use_double_quant': False, 'llm_int8_threshold': INT8_THRESHOLD}
    write('llama-gqa-bnb8', {**config, 'quantization_config': qc8}, saved, dequant,
          {'ids': ref['ids'], 'attention_mask': ref['attention_mask'], 'logits': logits_int8.flatten().tolist(),
           'logits_dequantized': logits_fp.flatten().tolist(), 'shape': list(logits_int8.shape), 'quantized': modules,
           'threshold': INT8_THRESHOLD, 'outlier_columns_per_product': stats})


if __name__ == '__main__':
    main()
