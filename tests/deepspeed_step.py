"""Launched by test_accelerate.py with deepspeed_zero2.yaml on two processes: one sftbc update through
DeepSpeed's engine, each process holding its weighted share of a batch, against the one-process update
on the whole batch. Prints one JSON line per process."""

import copy
import json

import deepspeed
import torch

from sftbc import dist
from sftbc.train import make_optimizer

engines = []
_initialize = deepspeed.initialize
deepspeed.initialize = lambda **kw: engines.append(_initialize(**kw)) or engines[-1]  # keep (engine, ...) to read its norm

dist.init()
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
x, y = torch.randn(6, 8), torch.randn(6, 1)


def loss(m, rows):  # the batch mean's share of these rows
    return ((m(x[rows]) - y[rows]) ** 2).sum() / len(x)


start, one = copy.deepcopy(model), copy.deepcopy(model)
with dist.alone():  # the plain single-process step
    grads = torch.autograd.grad(loss(one, list(range(6))), list(one.parameters()))
    make_optimizer(one, 0.05, None, 1)(loss(one, list(range(6))))
make_optimizer(model, 0.05, None, 1)(loss(model, list(range(dist.rank(), 6, dist.world()))))
print(json.dumps({
    "rank": dist.rank(),
    "one_norm": torch.cat([g.flatten() for g in grads]).norm().item(),
    "deepspeed_norm": float(engines[0][0].get_global_grad_norm()),
    "max_weight_diff": max((a - b).abs().max().item() for a, b in zip(model.parameters(), one.parameters())),
    "moved": min((a - b).abs().max().item() for a, b in zip(model.parameters(), start.parameters())),
}), flush=True)
