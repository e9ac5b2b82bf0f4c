"""Built-in losses: mse on softmax (as in the notebook), cross-entropy and multi-class hinge."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bench import hookimpl


def make_mse():
    """Mean squared error between softmax(logits) and one-hot targets, as the notebook does."""

    def mse(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        one_hot = F.one_hot(targets, logits.shape[1]).to(logits.dtype)
        return F.mse_loss(torch.softmax(logits, dim=1), one_hot)

    return mse


def make_crossentropy(label_smoothing=0.0):
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError("label_smoothing must be in [0, 1)")

    def crossentropy(logits, targets):
        return F.cross_entropy(logits, targets, label_smoothing=label_smoothing)

    return crossentropy


def make_hinge(margin=1.0):
    if margin <= 0:
        raise ValueError("margin must be > 0")

    def hinge(logits, targets):
        return F.multi_margin_loss(logits, targets, margin=margin)

    return hinge


@hookimpl
def bench_register_losses(register):
    register("mse", make_mse, description="mean squared error between softmax(logits) and one-hot targets")
    register(
        "crossentropy", make_crossentropy, params={"label_smoothing": 0.0},
        description="softmax cross-entropy", default=True,
    )
    register("hinge", make_hinge, params={"margin": 1.0}, description="multi-class margin (hinge) loss")
