"""Built-in learning-rate schedules: ``constant``, ``cosine`` and ``warmup-cosine``.

Each sets ``lr = base_lr * factor(t)``, ``t`` counting optimizer steps from 0, through
:class:`bench.optim.FactorSchedule` (tensor learning rates are updated in place, so a captured CUDA
graph sees them). ``constant`` returns no scheduler at all: nothing is stepped.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from bench import hookimpl

if TYPE_CHECKING:
    from bench.optim import FactorSchedule  # imported by the factories: bench.optim imports torch


def cosine_factor(t: int, total_steps: int) -> float:
    """``(1 + cos(pi * t / total_steps)) / 2``: 1 at the first step, 1/2 half-way, 0 at ``total_steps``."""
    if total_steps <= 0:
        return 0.0
    return 0.5 * (1.0 + math.cos(math.pi * min(t, total_steps) / total_steps))


def warmup_steps(warmup: float, total_steps: int) -> int:
    """The number of warm-up steps: ``warmup * total_steps`` rounded, at least 1 when ``warmup > 0``."""
    return max(1, round(warmup * total_steps)) if warmup > 0 else 0


def warmup_cosine_factor(t: int, total_steps: int, warmup: float) -> float:
    """``(t + 1) / w`` for the ``w`` warm-up steps (the last of them at the full rate), then the cosine
    over the remaining steps, 0 at ``total_steps``."""
    w = warmup_steps(warmup, total_steps)
    if t < w:
        return (t + 1) / w
    return cosine_factor(t - w, total_steps - w)


def _check_total(total_steps: int) -> int:
    if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
        raise ValueError(f"total_steps must be an integer >= 1, got {total_steps!r}")
    return total_steps


def make_constant(optimizer, total_steps: int):
    """No scheduler: the optimizer keeps its learning rate (and the step does no per-step work for it)."""
    return None


def make_cosine(optimizer, total_steps: int) -> FactorSchedule:
    from bench.optim import FactorSchedule

    _check_total(total_steps)
    return FactorSchedule(optimizer, lambda t: cosine_factor(t, total_steps))


def make_warmup_cosine(optimizer, total_steps: int, warmup: float = 0.05) -> FactorSchedule:
    _check_total(total_steps)
    if not (isinstance(warmup, (int, float)) and 0 <= warmup < 1):
        raise ValueError(f"warmup must be a fraction of the steps in [0, 1), got {warmup!r}")
    from bench.optim import FactorSchedule

    return FactorSchedule(optimizer, lambda t: warmup_cosine_factor(t, total_steps, float(warmup)))


@hookimpl
def bench_register_schedules(register):
    register("constant", make_constant, description="the optimizer's learning rate throughout", default=True)
    register("cosine", make_cosine, description="cosine decay from the learning rate to 0 over the training steps")
    register("warmup-cosine", make_warmup_cosine, params={"warmup": 0.05},
             description="linear warm-up over the first `warmup` fraction of the steps, then cosine decay to 0")
