"""Class templates of a trained model: what each class logit looks for in the input.

A linear map's weight rows are its templates. Models that expose ``effective_weight()`` (the
built-in ``linear`` and ``deep-linear``: for the latter, the product of its weight matrices) give
those weights. Any other model gives, for each class, the average over the test images of that
class of the gradient of the class's logit with respect to the input.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from bench.data import DataSplits

WEIGHTS = "weights"
INPUT_GRADIENT = "input gradient"
BATCH = 1024


def class_templates(model: nn.Module, data: DataSplits) -> tuple[torch.Tensor, str]:
    """``(templates [C, *input_shape] float32 on the CPU, kind)`` for a trained model and its data."""
    shape, classes = data.input_shape, data.num_classes
    effective = getattr(model, "effective_weight", None)
    if callable(effective):
        try:
            weight = effective()
        except (TypeError, NotImplementedError):
            weight = None  # e.g. an mlp with activations: not a linear map
        if weight is not None and tuple(weight.shape) == (classes, torch.Size(shape).numel()):
            return weight.detach().float().reshape(classes, *shape).cpu(), WEIGHTS
    return input_gradients(model, *data.test, classes), INPUT_GRADIENT


def input_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Per class k: the mean over inputs of class k of d logit_k / d input (inputs are independent in eval mode)."""
    model.eval()
    sums = torch.zeros(num_classes, *x.shape[1:], device=x.device)
    with torch.enable_grad():
        for start in range(0, len(x), BATCH):
            xb = x[start:start + BATCH].detach().requires_grad_(True)
            yb = y[start:start + BATCH]
            own_logits = model(xb).gather(1, yb[:, None]).sum()
            (grad,) = torch.autograd.grad(own_logits, xb)
            sums.index_add_(0, yb, grad.float())
    counts = torch.bincount(y, minlength=num_classes).clamp(min=1).to(sums.dtype)
    return (sums / counts.view(-1, *([1] * (sums.dim() - 1)))).cpu()


def template_entry(model: nn.Module, data: DataSplits) -> dict[str, Any]:
    """A cell record's template entries: ``templates`` (``{"kind"}``, or ``{"error"}``) and, when they
    could be computed, ``templates_state`` (``{"templates": tensor}``, which the driver stores and
    replaces by ``templates["path"]``).

    A template that cannot be computed never fails the cell: its results are already good.
    """
    try:
        templates, kind = class_templates(model, data)
    except Exception as exc:  # a by-product: report why, keep the cell
        return {"templates": {"error": f"{type(exc).__name__}: {' '.join(str(exc).split())}"}}
    return {"templates": {"kind": kind}, "templates_state": {"templates": templates.contiguous()}}
