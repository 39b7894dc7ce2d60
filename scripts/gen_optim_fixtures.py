#!/usr/bin/python3
"""Optimizer reference trajectories from PyTorch (CPU, float32): parameters after each step of
AdamW and SGD variants for a fixed sequence of gradients, and clip_grad_norm_.

Run with Debian's python3-torch:  /usr/bin/python3 scripts/gen_optim_fixtures.py
"""
import json
import os

import torch

torch.manual_seed(7)
p0 = torch.randn(6)
grads = [torch.randn(6) for _ in range(4)]
cases = []
for name, make in {
    'adamw': lambda p: torch.optim.AdamW([p], lr=0.01, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1),
    'sgd': lambda p: torch.optim.SGD([p], lr=0.1),
    'sgd_momentum_wd': lambda p: torch.optim.SGD([p], lr=0.1, momentum=0.9, weight_decay=0.01),
    'sgd_nesterov': lambda p: torch.optim.SGD([p], lr=0.05, momentum=0.8, nesterov=True),
}.items():
    p = torch.nn.Parameter(p0.clone())
    opt = make(p)
    traj = []
    for g in grads:
        p.grad = g.clone()
        opt.step()
        traj.append(p.detach().clone().tolist())
    cases.append({'name': name, 'trajectory': traj})

out = {'p0': p0.tolist(), 'grads': [g.tolist() for g in grads], 'cases': cases}
# the gradients before clipping, so the test can clip them itself
torch.manual_seed(11)
a2, b2 = torch.randn(3, 4) * 3, torch.randn(5) * 3
pa, pb = torch.nn.Parameter(torch.zeros(3, 4)), torch.nn.Parameter(torch.zeros(5))
pa.grad, pb.grad = a2.clone(), b2.clone()
n = torch.nn.utils.clip_grad_norm_([pa, pb], 1.5)
out['clip'] = {'max_norm': 1.5, 'a_before': a2.flatten().tolist(), 'b_before': b2.tolist(), 'norm': float(n),
               'a': pa.grad.flatten().tolist(), 'b': pb.grad.tolist()}
path = os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'test', 'fixtures', 'optim.json')
with open(path, 'w') as f:
    json.dump(out, f)
print('wrote', os.path.normpath(path))
