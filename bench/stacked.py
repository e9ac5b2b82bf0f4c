"""Faster forms of common layers for a fused group's stacked step (bench/fused_trainer.py).

Under ``torch.func.vmap`` an ``nn.Linear`` of N stacked members becomes ``bmm(x, w.transpose(1, 2))``
and its weight gradient ``bmm(x.transpose(1, 2), grad)``. On a CPU both are the slow orientation for the
narrow matrices of small models: for a ``784 -> 10`` layer, batch 256, they measured 2.6x and 6.5x slower
than the same products computed as ``w @ x^T`` and ``grad^T @ x`` (torch 2.14, MKL, 2-core AMD EPYC),
and the gradient then comes out transposed against the parameter's memory. :func:`stacked_layers` gives
a model's ``nn.Linear`` modules a forward that, under ``vmap``, runs one autograd function over the
physical ``[N, ...]`` tensors with those products (:class:`StackedLinear`); outside ``vmap`` it is
``F.linear``. The arithmetic is the layer's, summed in another order (float rounding only).
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F
from torch import nn


class StackedLinear(torch.autograd.Function):
    """``x [N, B, in]`` (or ``[B, in]``, one input shared by every member), ``weight [N, out, in]``,
    ``bias [N, out]`` or ``None`` -> ``[N, B, out]``: each member's ``F.linear``."""

    @staticmethod
    def forward(x, weight, bias):
        out = torch.matmul(weight, x.transpose(-1, -2))  # [N, out, B]: the fast orientation on a cpu
        if bias is not None:
            out = out + bias.unsqueeze(-1)
        # a view [N, B, out] of [N, out, B] memory: kept so, since reductions over the features (a loss's
        # softmax along dim 1 of the [N, out, B] view, max) then run along contiguous memory
        return out.transpose(-1, -2)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, bias = inputs
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            if x.dim() == 3 and x.transpose(1, 2).is_contiguous():
                # x is the [N, B, in] view of a previous stacked layer's [N, in, B] memory: the gradient in the
                # same layout, so that the element-wise backward before it (an activation's) runs aligned
                grad_x = torch.bmm(weight.transpose(1, 2), grad.transpose(1, 2)).transpose(1, 2)
            else:
                grad_x = torch.matmul(grad, weight)
            if x.dim() == 2:  # a shared input: its gradient sums over the members
                grad_x = grad_x.sum(0)
        if ctx.needs_input_grad[1]:
            grad_t = grad.transpose(-1, -2)
            grad_weight = torch.bmm(grad_t, x) if x.dim() == 3 else torch.matmul(grad_t, x)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad.sum(-2)
        return grad_x, grad_weight, grad_bias


class _VmappedLinear(torch.autograd.Function):
    """``F.linear`` whose batching rule (``vmap``) is :class:`StackedLinear` on the physical tensors."""

    @staticmethod
    def forward(x, weight, bias):
        return F.linear(x, weight, bias)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, bias = inputs
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None

    @staticmethod
    def backward(ctx, grad):  # outside vmap (or under torch.func.grad inside it): F.linear's gradient
        x, weight = ctx.saved_tensors
        grad_x = grad @ weight if ctx.needs_input_grad[0] else None
        grad_weight = grad.reshape(-1, grad.shape[-1]).T @ x.reshape(-1, x.shape[-1]) \
            if ctx.needs_input_grad[1] else None
        grad_bias = grad.reshape(-1, grad.shape[-1]).sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_x, grad_weight, grad_bias

    @staticmethod
    def vmap(info, in_dims, x, weight, bias):
        x_dim, weight_dim, bias_dim = in_dims
        n = info.batch_size
        weight = weight.movedim(weight_dim, 0) if weight_dim is not None else weight.expand(n, *weight.shape)
        if bias is not None:
            bias = bias.movedim(bias_dim, 0) if bias_dim is not None else bias.expand(n, *bias.shape)
        if x_dim is not None:
            x = x.movedim(x_dim, 0)
            lead = x.shape[1:-1]
            x = x.reshape(n, -1, x.shape[-1])
        else:
            lead = x.shape[:-1]
            x = x.reshape(-1, x.shape[-1])
        out = StackedLinear.apply(x, weight, bias)
        return out.reshape(n, *lead, out.shape[-1]), 0


def _linear_forward(self: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    return _VmappedLinear.apply(x, self.weight, self.bias)


def stacked_layers(model: nn.Module) -> int:
    """Give every plain ``nn.Linear`` of ``model`` (not a subclass, which may have its own forward) the
    stacked forward, in place; returns how many. Meant for the fused step's private copy of a member."""
    count = 0
    for module in model.modules():
        if type(module) is nn.Linear and "forward" not in vars(module):
            module.forward = types.MethodType(_linear_forward, module)
            count += 1
    return count
