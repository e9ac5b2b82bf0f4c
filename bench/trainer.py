"""Trains one cell with the dataset resident on the device: no DataLoader, no per-sample Python."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from bench.data import DataSplits
from bench.grid import Cell
from bench.recipe import MakeOptimizer, MakeSchedule, builtin_registry, recipe_factories
from bench.step import Execution, build_step
from bench.timing import Stopwatch, median

EVAL_BATCH = 4096
#: Read the running training loss every this many steps to stop a diverged cell early. Reading it
#: synchronises the device, so it is not done every step; NaN/inf propagate through the running sum.
FINITE_CHECK_EVERY = 32


class NonFiniteLoss(RuntimeError):
    """The training loss became NaN or infinite: the cell diverged."""


@dataclass
class CellResult:
    """What training one cell produced: final metrics, per-epoch history, timings and weights."""

    metrics: dict[str, float]
    history: list[dict[str, float]]
    timing: dict[str, float]
    n_params: int
    state_dict: dict[str, torch.Tensor] = field(repr=False)
    confusion: list[list[int]] = field(repr=False, default_factory=list)
    #: How the steps ran: ``step`` (plain/static/graph), ``cuda_graphs``, ``compiled``, ``execution_note``.
    execution: dict[str, Any] = field(default_factory=dict)


@torch.no_grad()
def evaluate(model: nn.Module, loss_fn, x: torch.Tensor, y: torch.Tensor, num_classes: int | None = None):
    """Mean loss and accuracy over ``(x, y)`` in large batches; optionally the confusion matrix."""
    model.eval()
    loss_sum = torch.zeros((), device=x.device)
    correct = torch.zeros((), device=x.device, dtype=torch.int64)
    confusion = torch.zeros(num_classes or 1, num_classes or 1, dtype=torch.int64, device=x.device)
    for start in range(0, len(x), EVAL_BATCH):
        xb, yb = x[start:start + EVAL_BATCH], y[start:start + EVAL_BATCH]
        logits = model(xb)
        loss_sum += loss_fn(logits, yb).float() * len(yb)
        pred = logits.argmax(1)
        correct += (pred == yb).sum()
        if num_classes:
            confusion += torch.bincount(yb * num_classes + pred, minlength=num_classes * num_classes).view(
                num_classes, num_classes)
    n = max(len(x), 1)
    return float(loss_sum) / n, float(correct) / n, confusion.cpu().tolist()


def _check_finite(value: float, what: str, epoch: int, step: int | None = None) -> None:
    if not math.isfinite(value):
        where = f"by step {step} of epoch {epoch}" if step is not None else f"in epoch {epoch}"
        raise NonFiniteLoss(f"{what} became {value} {where}: the cell diverged and was stopped (try a smaller --lr)")


class _Target:
    """When the validation metric first reached the target: epoch, training steps and training seconds."""

    def __init__(self, target: tuple[str, float] | None):
        self.target = target
        self.epoch = self.steps = self.seconds = None

    def check(self, val: tuple, epoch: int, steps: int, train_seconds: float) -> None:
        if self.target is None or self.epoch is not None:
            return
        metric, value = self.target
        loss, acc = val[0], val[1]
        if (acc >= value) if metric == "val_acc" else (loss <= value):
            self.epoch, self.steps, self.seconds = epoch, steps, train_seconds

    def columns(self) -> dict[str, Any]:
        """``target`` (e.g. ``val_acc>=0.97``) and when it was reached (blank: never), or nothing without one."""
        if self.target is None:
            return {}
        metric, value = self.target
        return {"target": f"{metric}{'>=' if metric == 'val_acc' else '<='}{value:g}", "target_epoch": self.epoch,
                "target_steps": self.steps, "target_time_s": self.seconds}


def train_cell(
    cell: Cell,
    model: nn.Module,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    data: DataSplits,
    device: torch.device,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    execution: Execution | None = None,
    make_optimizer: MakeOptimizer | None = None,
    make_schedule: MakeSchedule | None = None,
) -> CellResult:
    """Train ``model`` (already built under the cell's seed) on ``data`` (already on ``device``).

    ``make_optimizer(parameters, capturable)`` returns the optimizer and ``make_schedule(optimizer,
    total_steps)`` the learning-rate schedule or ``None`` (see :func:`bench.recipe.recipe_factories`,
    which builds both from a registry and the cell). Without ``make_optimizer`` both come from the
    built-in plugins and the cell's recipe; a given ``make_optimizer`` without ``make_schedule`` trains
    at a constant learning rate.

    Phases are timed apart, each with the device synchronised: ``warmup`` (first steps, compilation,
    graph capture; on a snapshot that is restored, so it changes no result), ``data`` (the epoch's
    permutation), ``train`` (the steps: the per-epoch figures) and ``eval``.
    """
    cfg = cell.recipe
    execution = execution or Execution()
    model = model.to(device)
    model.train()
    x_train, y_train = data.train
    if cell.limit:
        x_train, y_train = x_train[:cell.limit], y_train[:cell.limit]
    n = len(x_train)
    if make_optimizer is None:
        make_optimizer, make_schedule = recipe_factories(builtin_registry(), cell)
    total_steps = cfg.epochs * math.ceil(n / cfg.batch_size)
    lengths = [min(cfg.batch_size, n)] + ([n % cfg.batch_size] if n > cfg.batch_size and n % cfg.batch_size else [])
    generator = torch.Generator().manual_seed(cell.seed)
    watch = Stopwatch(device)
    history: list[dict[str, float]] = []
    with watch.phase("warmup"):
        step = build_step(execution, model, loss_fn, x_train, y_train, lengths, make_optimizer, make_schedule,
                          total_steps)

    reached = _Target(execution.target)
    steps_done = 0
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        with watch.phase("data"):
            perm = torch.randperm(n, generator=generator).to(device)
        step.reset()
        epoch_time = 0.0
        starts = list(range(0, n, cfg.batch_size))
        chunk = execution.eval_every or len(starts)
        for first in range(0, len(starts), chunk):  # training steps, with validation every eval_every steps
            with watch.phase("train"):
                for batch, start in enumerate(starts[first:first + chunk], first + 1):
                    step(perm[start:start + cfg.batch_size])
                    if batch % FINITE_CHECK_EVERY == 0:
                        _check_finite(float(step.loss_sum), "the training loss", epoch, batch)
            epoch_time += watch.last
            steps_done += len(starts[first:first + chunk])
            if first + chunk < len(starts):
                with watch.phase("eval"):
                    mid = evaluate(model, loss_fn, *data.val)
                model.train()
                reached.check(mid, epoch, steps_done, watch.totals["train"])
        train_loss, train_acc = float(step.loss_sum) / n, float(step.correct) / n
        _check_finite(train_loss, "the training loss", epoch)
        with watch.phase("eval"):
            val_loss, val_acc, _ = evaluate(model, loss_fn, *data.val)
        _check_finite(val_loss, "the validation loss", epoch)
        reached.check((val_loss, val_acc), epoch, steps_done, watch.totals["train"])
        row = {"epoch": epoch, "train_loss": train_loss, "train_acc": train_acc, "val_loss": val_loss,
               "val_acc": val_acc, "epoch_time_s": epoch_time}
        history.append(row)
        if on_epoch:
            on_epoch(row)

    with watch.phase("eval"):
        test_loss, test_acc, confusion = evaluate(model, loss_fn, *data.test, num_classes=data.num_classes)
    train_time = watch.totals["train"]
    metrics = {"test_acc": test_acc, "test_loss": test_loss, "val_acc": history[-1]["val_acc"],
               "val_loss": history[-1]["val_loss"]}
    timing = {
        "train_time_s": train_time,
        "epoch_time_s": median([h["epoch_time_s"] for h in history]),
        "eval_time_s": watch.totals.get("eval", 0.0),
        "data_time_s": watch.totals.get("data", 0.0),
        "warmup_time_s": watch.totals.get("warmup", 0.0),
        "samples_per_s": n * cfg.epochs / train_time if train_time > 0 else float("nan"),
        **reached.columns(),
    }
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    n_params = sum(p.numel() for p in model.parameters())
    how = {"step": step.mode, "cuda_graphs": step.mode == "graph", "compiled": execution.compile,
           "execution_note": step.note}
    return CellResult(metrics, history, timing, n_params, state, confusion, how)
