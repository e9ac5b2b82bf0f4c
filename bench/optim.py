"""What gridbench asks of an optimizer and a learning-rate schedule, and helpers to write them.

An optimizer (``bench_register_optimizers``) has torch's optimizer interface: ``step()``,
``zero_grad()``, ``param_groups`` (a list of dicts whose ``"lr"`` is read at every step),
``state_dict()`` and ``load_state_dict()``. A schedule (``bench_register_schedules``) has
``step()``, called once after every optimizer step, and sets each group's ``lr``.

When the learning rate is a tensor (the built-in optimizers keep it on the device when their step
is captured in a CUDA graph), a schedule must update it in place, as :func:`set_lr` does, or the
captured graph would keep reading the old one. :class:`FactorSchedule` does that for any
``lr = base_lr * factor(t)``.

Nothing here imports ``torch.optim``: its first optimizer construction imports ``torch._dynamo``,
a noticeable part of a CPU run's start-up (docs/benchmarks.md).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any

import torch

#: What a registered optimizer's object must have (``torch.optim.Optimizer``'s interface).
OPTIMIZER_INTERFACE = ("step", "zero_grad", "param_groups", "state_dict", "load_state_dict")


def accepts_keyword(factory: Callable[..., Any], name: str) -> bool:
    """Whether ``factory`` names the keyword argument ``name`` (a ``**kwargs`` catch-all does not count)."""
    try:
        parameters = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # a builtin without a signature: do not guess
        return False
    parameter = parameters.get(name)
    return parameter is not None and parameter.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                                        inspect.Parameter.KEYWORD_ONLY)


def set_lr(group: dict[str, Any], value: float) -> None:
    """Set a param group's learning rate; a tensor one is updated in place (a captured graph reads it)."""
    lr = group["lr"]
    if isinstance(lr, torch.Tensor):
        lr.fill_(value)
    else:
        group["lr"] = value


def lr_value(lr: float | torch.Tensor) -> float:
    """A learning rate as a Python float (reading a device tensor synchronises: not for every step)."""
    return float(lr.item()) if isinstance(lr, torch.Tensor) else float(lr)


class FactorSchedule:
    """Sets every param group's ``lr`` to ``base_lr * factor(t)``, ``t`` counting optimizer steps.

    ``base_lr`` is each group's learning rate when the schedule is built; construction already
    applies ``factor(0)`` (the first step's rate), and each :meth:`step` (after an optimizer step)
    moves to the next. Tensor learning rates are updated in place.
    """

    def __init__(self, optimizer: Any, factor: Callable[[int], float]):
        self.optimizer = optimizer
        self.factor = factor
        self.base_lrs = [lr_value(group["lr"]) for group in optimizer.param_groups]
        self.t = 0
        self._apply()

    def _apply(self) -> None:
        f = float(self.factor(self.t))
        if not math.isfinite(f):
            raise ValueError(f"the schedule's factor at step {self.t} is {f}")
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            set_lr(group, base * f)

    def step(self) -> None:
        self.t += 1
        self._apply()

    def state_dict(self) -> dict[str, Any]:
        return {"t": self.t, "base_lrs": list(self.base_lrs)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.t, self.base_lrs = int(state["t"]), [float(b) for b in state["base_lrs"]]
        self._apply()


def state_tensor_ptrs(optimizer: Any) -> list[int]:
    """The storage addresses of every tensor of an optimizer's state and learning rates, in order.

    Equal before and after ``load_state_dict`` means that it restored the state in place, which a
    captured CUDA graph (it reads fixed addresses) needs.
    """
    ptrs: list[int] = []

    def walk(value: Any) -> None:
        if isinstance(value, torch.Tensor):
            ptrs.append(value.data_ptr())
        elif isinstance(value, dict):
            for key in sorted(value, key=str):
                walk(value[key])
        elif isinstance(value, (list, tuple)):
            for item in value:
                walk(item)

    walk(optimizer.state_dict().get("state", {}))
    walk([group.get("lr") for group in optimizer.param_groups])
    return ptrs
