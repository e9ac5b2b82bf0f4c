"""Label-smoothed cross-entropy, written out: ``(1 - e) * NLL + e * mean over classes of -log p``."""

from __future__ import annotations

import torch


def make_smooth_ce(smoothing=0.1):
    """Factory for ``smooth-ce``; ``smoothing=0`` is plain cross-entropy."""
    if not 0.0 <= smoothing < 1.0:
        raise ValueError("smoothing must be in [0, 1)")

    def smooth_ce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        log_p = torch.log_softmax(logits, dim=1)
        nll = -log_p.gather(1, targets.unsqueeze(1)).squeeze(1)
        uniform = -log_p.mean(dim=1)
        return ((1.0 - smoothing) * nll + smoothing * uniform).mean()

    return smooth_ce
