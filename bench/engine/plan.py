"""What trains together, decided before anything trains: the same answer for ``--dry-run``, for the executors
that hand groups to workers, and for the rows' ``execution_note``.

Cells of one fuse key (bench/fuse.py) train as one stacked group unless :func:`unfusable` names a reason:
``--compile``; an optimizer without a batched form, or one that rejects a member's hyperparameters; a
schedule with a batched form that has no per-member learning rates; a model with convolutions on a cpu
under ``--fuse auto`` (slower stacked than alone, by measurement); a model that ``vmap`` cannot run (probed on
two members and two training rows). Such cells train one at a time with ``not fused: REASON`` in their
``execution_note``; under ``--fuse on`` they are failed rows instead.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import torch
from torch import nn

from bench.data import DataSplits
from bench.engine.execution import Execution
from bench.errors import BenchError
from bench.grid import Cell

#: On cuda a stacked group may take this share of the device memory that is free when it starts.
CUDA_MEMORY_SHARE = 0.5
#: Elsewhere (cpu, mps) at most this many bytes; beyond some tens of MB the gathered batches no longer fit
#: in a CPU's caches anyway, and the gain per member flattens.
HOST_MEMORY_BUDGET = 1 << 30

_REASONS: dict[tuple, str] = {}


def unfusable(cell: Cell, execution: Execution, registry, data: DataSplits | None) -> str:
    """Why cells of ``cell``'s fuse key cannot train as one stacked group ("" where they can).

    Without ``data`` the model is not probed (only the optimizer, schedule and options are judged). The
    answer is cached per fuse key, member hyperparameters, registry and options."""
    from bench.fuse import fuse_key, member_hyperparameters

    key = (fuse_key(cell), id(registry), execution.fuse, execution.compile, data is None,
           json.dumps([member_hyperparameters(cell), cell.override("schedule")], sort_keys=True, default=str))
    if key not in _REASONS:
        _REASONS[key] = _reason(cell, execution, registry, data)
    return _REASONS[key]


def _reason(cell: Cell, execution: Execution, registry, data: DataSplits | None) -> str:
    from bench.engine.group import Factories, train_split
    from bench.engine.steps import StackedStep, Unfusable, one_line

    if execution.compile:
        return "compiled steps train one cell at a time"
    try:
        factories = Factories.from_registry(registry, cell, data) if data is not None else None
        batched = factories.batched if factories else _batched(registry, cell)
    except Exception:  # an unknown component: the cell fails on its own, with its message
        return ""
    optimizer = cell.recipe.optimizer or registry.default("optimizer")
    if batched is None:
        return f"optimizer '{optimizer}' has no batched form"
    probe = torch.zeros(2, 1, requires_grad=True)
    try:  # every member's hyperparameters, checked before anything trains
        built = batched.build([probe], [cell, cell])
    except BenchError as exc:
        return str(exc)
    except Exception as exc:
        return f"the batched form of '{optimizer}' failed: {one_line(exc)}"
    if has_schedule(registry, cell) and len(getattr(built, "param_groups", ())) != 2:
        return f"the batched form of '{optimizer}' has no per-member learning rates (param_groups) for the schedule"
    if data is None:
        return ""
    device = torch.device(cell.device)
    try:
        torch.manual_seed(cell.seed)
        model = factories.model()
    except Exception:  # the factory fails: every cell fails on its own, with its message
        return ""
    if execution.fuse == "auto" and device.type == "cpu" and slower_on_cpu(model):
        return slower_on_cpu(model)
    x, y = train_split(cell, data)
    try:
        members = [model.to(device), _copy(factories, cell).to(device)]
        step = StackedStep("static", members, factories.loss, x.to(device), y.to(device), [0, 1], batched,
                           [cell, cell])
        step.settle(min(2, len(x)))
    except Unfusable as exc:
        return str(exc)
    except Exception as exc:
        return f"vmap cannot run this model: {one_line(exc)}"
    return ""


def _copy(factories, cell: Cell) -> nn.Module:
    torch.manual_seed(cell.seed + 1)
    return factories.model()


def _batched(registry, cell: Cell):
    from bench.fuse import batched_optimizer_for

    return batched_optimizer_for(registry, cell.recipe.optimizer)


def has_schedule(registry, cell: Cell) -> bool:
    """Whether the cell's schedule does anything (its factory returns a scheduler rather than ``None``)."""
    from bench.recipe import recipe_factories

    key = (id(registry), cell.recipe.schedule, json.dumps(cell.override("schedule"), sort_keys=True, default=str))
    if key not in _SCHEDULED:
        try:
            make_optimizer, make_schedule = recipe_factories(registry, cell)
            optimizer = make_optimizer([torch.zeros(1, requires_grad=True)], False)
            _SCHEDULED[key] = make_schedule is not None and make_schedule(optimizer, 10) is not None
        except Exception:  # the cell will fail on its own, with the message
            _SCHEDULED[key] = False
    return _SCHEDULED[key]


_SCHEDULED: dict[tuple, bool] = {}


def slower_on_cpu(model: nn.Module) -> str:
    """Why ``auto`` trains this model's cells one at a time on a cpu ("" where fusing pays).

    A rule from measurements, not a timing taken at run time, so that the same command always makes the
    same choice: on a cpu a convolution through ``vmap`` is slower per member than one cell's own step,
    while linear and mlp models gain (docs/benchmarks.md). ``--fuse on`` fuses them anyway.
    """
    if any(isinstance(m, nn.modules.conv._ConvNd) for m in model.modules()):
        return "convolutions through vmap are slower than one cell at a time on a cpu (--fuse on fuses anyway)"
    return ""


def member_bytes(model: nn.Module, loss_fn: Callable, x: torch.Tensor, y: torch.Tensor, batch: int,
                 optimizer_states: int = 2) -> int:
    """An estimate of the device memory one member of a stacked group takes: parameters with their gradients
    and optimizer state, buffers, its gathered batch, and the activations autograd saves for one step
    (measured on one forward of ``model``)."""
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    xb, yb = x[:batch], y[:batch]
    saved = 0

    def pack(tensor):
        nonlocal saved
        saved += tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        logits = model(xb)
        loss_fn(logits, yb)
    gathered = xb.numel() * xb.element_size() + yb.numel() * yb.element_size()
    return params * (2 + optimizer_states) + buffers + saved + gathered + 2 * logits.numel() * logits.element_size()


def memory_budget(device: torch.device) -> int:
    """Bytes a stacked group may take on ``device``."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * CUDA_MEMORY_SHARE)
    return HOST_MEMORY_BUDGET


def fitting_size(per_member: int, budget: int) -> int:
    """How many members fit in ``budget`` bytes (at least one)."""
    return max(1, budget // max(per_member, 1))
