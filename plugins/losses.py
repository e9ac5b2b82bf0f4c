"""Built-in losses: mse on softmax (as in the notebook), cross-entropy and multi-class hinge.

Each loss function also offers its stacked form as ``loss.stacked(logits, targets)``: ``logits [N, B, C]``
and ``targets [N, B]`` of N members of a fused group (bench/engine/steps.py) -> ``[N]``, member ``i``'s
``loss(logits[i], targets[i])``, computed over all members at once instead of per member through
``vmap``, which is several times slower for these losses (docs/benchmarks.md; ``multi_margin_loss`` has
no batching rule). Each is the same formula per sample, averaged per member, so it differs from the loss
of each member alone by float rounding in the mean only; the gradients are the same. The logits come
as the stacked linear layers return them, a ``[N, B, C]`` view of ``[N, C, B]`` memory: crossentropy and
mse reduce along dim 1 of the ``[N, C, B]`` view, the contiguous way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bench import hookimpl

if TYPE_CHECKING:
    import torch

# torch is imported by each factory, not here: listing the plugins (``bench plugins``) must not import it


def make_mse():
    """Mean squared error between softmax(logits) and one-hot targets, as the notebook does."""
    import torch
    import torch.nn.functional as F

    def mse(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        one_hot = F.one_hot(targets, logits.shape[1]).to(logits.dtype)
        return F.mse_loss(torch.softmax(logits, dim=1), one_hot)

    def stacked(logits, targets):  # the classes along dim 1: [N, C, B]
        one_hot = F.one_hot(targets, logits.shape[-1]).to(logits.dtype).transpose(1, 2)
        return F.mse_loss(torch.softmax(logits.transpose(1, 2), dim=1), one_hot, reduction="none").mean((1, 2))

    mse.stacked = stacked
    return mse


def make_crossentropy(label_smoothing=0.0):
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError("label_smoothing must be in [0, 1)")
    import torch.nn.functional as F

    def crossentropy(logits, targets):
        return F.cross_entropy(logits, targets, label_smoothing=label_smoothing)

    def stacked(logits, targets):  # cross_entropy's K-dimensional form: the classes along dim 1
        return F.cross_entropy(logits.transpose(1, 2), targets, label_smoothing=label_smoothing,
                               reduction="none").mean(1)

    crossentropy.stacked = stacked
    return crossentropy


def make_hinge(margin=1.0):
    if margin <= 0:
        raise ValueError("margin must be > 0")
    import torch.nn.functional as F

    def hinge(logits, targets):
        return F.multi_margin_loss(logits, targets, margin=margin)

    def stacked(logits, targets):
        members, batch = targets.shape
        per_sample = F.multi_margin_loss(logits.reshape(members * batch, -1), targets.reshape(-1), margin=margin,
                                         reduction="none")
        return per_sample.view(members, batch).mean(1)

    hinge.stacked = stacked
    return hinge


@hookimpl
def bench_register_losses(register):
    register("mse", make_mse, description="mean squared error between softmax(logits) and one-hot targets")
    register(
        "crossentropy", make_crossentropy, params={"label_smoothing": 0.0},
        description="softmax cross-entropy", default=True,
    )
    register("hinge", make_hinge, params={"margin": 1.0}, description="multi-class margin (hinge) loss")
