"""Reading and writing the float32 safetensors files the fixture generators share (the format is
simple enough that the generators need no safetensors package)."""
import json
import os
import struct

import torch


def load_safetensors(path):
    """Every F32 tensor of a safetensors file, by name."""
    with open(path, 'rb') as f:
        n = struct.unpack('<Q', f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for k, v in header.items():
        if k == '__metadata__':
            continue
        a, b = v['data_offsets']
        out[k] = torch.frombuffer(bytearray(data[a:b]), dtype=torch.float32).reshape(v['shape']).clone()
    return out


def save_safetensors(path, tensors, metadata=None):
    """Tensors as F32 in name order, the header padded to 8 bytes; `metadata` as `__metadata__`."""
    header, blobs, off = {}, [], 0
    if metadata:
        header['__metadata__'] = metadata
    for name in sorted(tensors):
        b = tensors[name].detach().contiguous().float().numpy().tobytes()
        header[name] = {'dtype': 'F32', 'shape': list(tensors[name].shape), 'data_offsets': [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header, separators=(',', ':')).encode()
    h += b' ' * ((8 - len(h) % 8) % 8)
    with open(path, 'wb') as f:
        f.write(struct.pack('<Q', len(h)) + h + b''.join(blobs))


def write_model_fixture(root, name, config, weights, expected):
    """A model fixture folder: config.json, model.safetensors and the reference outputs."""
    d = os.path.join(root, name)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, 'config.json'), 'w') as f:
        json.dump(config, f, indent=2)
    save_safetensors(os.path.join(d, 'model.safetensors'), weights)
    with open(os.path.join(d, 'expected.json'), 'w') as f:
        json.dump(expected, f)
    print('wrote', name)
