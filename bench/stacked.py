"""A faster form of ``nn.Linear`` for a fused group's stacked step (bench/engine/steps.py, StackedStep).

Under ``torch.func.vmap`` an ``nn.Linear`` of N stacked members becomes ``bmm(x, w.transpose(1, 2))``
and its weight gradient ``bmm(x.transpose(1, 2), grad)``. On a CPU both are the slow orientation for the
narrow matrices of small models: several times slower than the same products taken as ``w @ x^T`` and
``grad^T @ x`` (docs/benchmarks.md), and the gradient came out transposed against the parameter's memory (laying the
parameter out to match, as the fused step did, made its forward slower still). :func:`stacked_layers`
gives a model's ``nn.Linear`` modules the forward ``(w @ x^T)^T + b``: the same dot products (summed in
another order: float rounding only), for which ``vmap`` and autograd take the fast orientation, and whose
weight gradient has the parameter's layout.

The layer's output is then a ``[..., B, out]`` view of ``[..., out, B]`` memory. Element-wise layers keep
that layout, the next stacked layer reads it as it is, and reductions over the features should run along
it (see ``loss.stacked`` in plugins/losses.py).
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F
from torch import nn


def _linear_forward(self: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    if x.dim() < 2:  # one sample: no batch to orient
        return F.linear(x, self.weight, self.bias)
    out = torch.matmul(self.weight, x.transpose(-1, -2)).transpose(-1, -2)
    return out if self.bias is None else out + self.bias


def stacked_layers(model: nn.Module) -> int:
    """Give every plain ``nn.Linear`` of ``model`` (not a subclass, which may have its own forward) the
    stacked forward, in place; returns how many. Meant for the fused step's private copy of a member,
    which only ever runs under ``vmap``."""
    count = 0
    for module in model.modules():
        if type(module) is nn.Linear and "forward" not in vars(module):
            module.forward = types.MethodType(_linear_forward, module)
            count += 1
    return count
