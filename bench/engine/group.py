"""Trains a group of N >= 1 cells with the dataset resident on the device: one epoch loop for every group.

A single cell is a group of one (:class:`~bench.engine.steps.ModelStep`: its own optimizer, no ``vmap``); a
larger group trains as one stacked model (:class:`~bench.engine.steps.StackedStep`). Either way the loop is
this one: each member draws its own permutation each epoch from its own generator (members that share a
seed share it, and their batch), divergence is checked per member, the validation split is evaluated for
every member at once at each epoch's end (and every ``eval_every`` steps), each member's time to target is
tracked on its own, and each member's evaluation points are reported to ``on_epoch``.

Whether a group may train stacked is decided before it trains (:mod:`bench.engine.plan`); this module trains
what it is given.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from bench.data import DataSplits
from bench.engine.execution import Execution
from bench.engine.steps import ModelStep, StackedStep, Step
from bench.errors import BenchError, StopCell
from bench.grid import Cell
from bench.timing import Stopwatch, median

#: Evaluations asked per epoch (``Execution.eval_points``) are at least this many training steps apart (an epoch
#: shorter than that is evaluated at its end only): judged after a handful of steps, members differ in how fast
#: they start rather than in where they are going.
MIN_POINT_STEPS = 20

#: Read the running training loss every this many steps to stop a diverged member early. Reading it
#: synchronises the device, so it is not done every step; NaN/inf propagate through the running sum.
FINITE_CHECK_EVERY = 32

MakeOptimizer = Callable[[list[torch.Tensor], bool], Any]
MakeSchedule = Callable[[Any, int], Any]


class NonFiniteLoss(RuntimeError):
    """The training loss became NaN or infinite: the cell diverged."""


@dataclass(frozen=True)
class Factories:
    """What a group is built from, given explicitly: ``model()`` builds one member's model (called right after
    ``torch.manual_seed(cell.seed)``), ``loss`` is the loss function, ``recipe(cell)`` gives the cell's
    ``(make_optimizer, make_schedule)`` (:func:`bench.recipe.recipe_factories`), ``batched`` the optimizer's
    batched form (:class:`bench.fuse.BatchedOptimizer`; ``None``: it has none, and only groups of one train)."""

    model: Callable[[], nn.Module]
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    recipe: Callable[[Cell], tuple[MakeOptimizer, MakeSchedule | None]]
    batched: Any = None

    @classmethod
    def from_registry(cls, registry, cell: Cell, data: DataSplits) -> Factories:
        """The factories of ``cell``'s components and recipe in ``registry`` (for ``data``'s shapes)."""
        from bench.fuse import batched_optimizer_for
        from bench.recipe import recipe_factories

        model_c, loss_c = registry.get("model", cell.model), registry.get("loss", cell.loss)
        params = {**model_c.params, **cell.override("model")}

        def model() -> nn.Module:
            built = model_c.factory(data.input_shape, data.num_classes, **params)
            if not isinstance(built, nn.Module):
                raise BenchError(f"model '{cell.model}' factory returned {type(built).__name__}, "
                                 "not a torch.nn.Module")
            return built

        loss = loss_c.factory(**{**loss_c.params, **cell.override("loss")})
        return cls(model, loss, lambda c: recipe_factories(registry, c),
                   batched_optimizer_for(registry, cell.recipe.optimizer))


@dataclass
class CellResult:
    """What training one member produced: final metrics, per-epoch history, timings and weights."""

    metrics: dict[str, float]
    history: list[dict[str, float]]
    timing: dict[str, float]
    n_params: int
    state_dict: dict[str, torch.Tensor] = field(repr=False)
    confusion: list[list[int]] = field(repr=False, default_factory=list)
    #: How the steps ran: ``step`` (plain/static/graph), ``cuda_graphs``, ``compiled``, ``execution_note``
    #: (and ``fused_group``, ``fused_size`` for a member of a stacked group).
    execution: dict[str, Any] = field(default_factory=dict)
    #: Set when a watcher of the member's evaluation points stopped it early (e.g. a pruned tuning trial).
    stopped: StopCell | None = None
    #: The epoch of the member's latest evaluation (for a stopped member: the epoch it was stopped in).
    reached: int = 0


class _Target:
    """When the validation metric first reached the target: epoch, training steps and training seconds."""

    def __init__(self, target: tuple[str, float] | None):
        self.target = target
        self.epoch = self.steps = self.seconds = None

    def check(self, loss: float, acc: float, epoch: int, steps: int, train_seconds: float) -> None:
        if self.target is None or self.epoch is not None:
            return
        metric, value = self.target
        if (acc >= value) if metric == "val_acc" else (loss <= value):
            self.epoch, self.steps, self.seconds = epoch, steps, train_seconds

    def columns(self) -> dict[str, Any]:
        """``target`` (e.g. ``val_acc>=0.97``) and when it was reached (blank: never), or nothing without one."""
        if self.target is None:
            return {}
        metric, value = self.target
        return {"target": f"{metric}{'>=' if metric == 'val_acc' else '<='}{value:g}", "target_epoch": self.epoch,
                "target_steps": self.steps, "target_time_s": self.seconds}


def _finite(value: float, what: str, epoch: int, step: int | None = None) -> NonFiniteLoss | None:
    if math.isfinite(value):
        return None
    where = f"by step {step} of epoch {epoch}" if step is not None else f"in epoch {epoch}"
    return NonFiniteLoss(f"{what} became {value} {where}: the cell diverged and was stopped (try a smaller --lr)")


def train_split(cell: Cell, data: DataSplits) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = data.train
    return (x[:cell.limit], y[:cell.limit]) if cell.limit else (x, y)


def streams_of(cells: Sequence[Cell]) -> list[int]:
    """Each member's index stream: members with equal seeds draw the same permutation, so they share one."""
    seen: dict[int, int] = {}
    return [seen.setdefault(cell.seed, len(seen)) for cell in cells]


def point_steps(steps_per_epoch: int, execution: Execution) -> int:
    """Training steps between evaluations inside an epoch (an epoch's length: none); each epoch starts anew and
    ends with an evaluation."""
    if execution.eval_every:
        return execution.eval_every
    if execution.eval_points:
        return max(math.ceil(steps_per_epoch / execution.eval_points), MIN_POINT_STEPS)
    return steps_per_epoch


def evaluation_points(rows: int, batch_size: int, execution: Execution) -> int:
    """A cell's evaluation points an epoch, on ``rows`` training rows (each epoch's end counts)."""
    steps = max(1, math.ceil(rows / batch_size))
    return math.ceil(steps / point_steps(steps, execution))


def build_step(cells: Sequence[Cell], factories: Factories, data: DataSplits, device: torch.device,
               execution: Execution, lengths: list[int], total_steps: int) -> tuple[Step, list[nn.Module]]:
    """The prepared (warmed-up, on cuda captured) step of ``cells`` and their freshly built models.

    With ``cuda_graphs=auto`` a step that cannot be captured runs eagerly (rebuilt from the same models)
    and its ``note`` says why; with ``on`` that is an error.
    """
    x, y = train_split(cells[0], data)
    mode = execution.step_mode(device)

    def models() -> list[nn.Module]:
        built = []
        for cell in cells:
            torch.manual_seed(cell.seed)
            built.append(factories.model().to(device))
        return built

    def make(mode: str, members: list[nn.Module]) -> Step:
        if len(cells) == 1:
            make_optimizer, make_schedule = factories.recipe(cells[0])
            schedule = (lambda opt: make_schedule(opt, total_steps)) if make_schedule is not None else None
            return ModelStep(mode, members[0], factories.loss, x, y, make_optimizer, schedule,
                             compile=execution.compile)
        schedules, keys = [], []
        for cell in cells:
            _, make_schedule = factories.recipe(cell)
            schedules.append((lambda opt, m=make_schedule: m(opt, total_steps)) if make_schedule is not None
                             else None)
            keys.append(repr(sorted(cell.override("schedule").items())))
        return StackedStep("static" if mode == "plain" else mode, members, factories.loss, x, y, streams_of(cells),
                           factories.batched, cells, schedules, keys)

    members = models()
    for model in members:
        model.train()
    step = make(mode, members)
    if mode != "graph":
        step.prepare(lengths)
        return step, members
    if isinstance(step, StackedStep):
        step.build(lengths)  # vmap's verdict first, eagerly, so that a capture failure is only about capture
    try:
        step.prepare(lengths)
        return step, members
    except Exception as exc:  # capture fails on host syncs, data-dependent shapes, ...
        reason = " ".join(str(exc).split())[:300]
        if execution.cuda_graphs == "on" and execution.mode is None:
            raise BenchError(f"CUDA graph capture failed: {reason} (use --cuda-graphs auto or off)") from exc
        torch.cuda.synchronize(device)
    members = models()
    fallback = make("plain", members)
    fallback.note = f"CUDA graph capture failed, ran eager steps: {reason}"
    fallback.prepare(lengths)
    return fallback, members


def train_group(
    cells: Sequence[Cell],
    factories: Factories,
    data: DataSplits,
    device: torch.device,
    execution: Execution | None = None,
    on_epoch: Callable[[int, dict[str, Any]], None] | None = None,
    fused_group: str = "",
    on_eval: Callable[[int, dict[str, Any]], None] | None = None,
    on_point: Callable[[list[int]], dict[int, StopCell]] | None = None,
) -> list[CellResult | Exception]:
    """Train ``cells`` (one fuse key; a group of one is one cell) together; one entry per member, in order.

    An entry is the member's :class:`CellResult`, or the exception that failed it (e.g.
    :class:`NonFiniteLoss`: a diverged member fails alone, its slice goes on computing untouched). Timings
    are each member's share of the group's: the group's time divided by its size. ``on_epoch(i, row)`` is
    called at each epoch's end with member ``i``'s history row; a :class:`~bench.errors.StopCell` it raises
    stops that member (the others go on; its result keeps its history so far and carries ``stopped``).
    ``on_eval(i, point)`` is called likewise at each evaluation inside an epoch (``eval_every``,
    ``eval_points``) with ``epoch``, ``step`` (training steps so far), ``val_loss`` and ``val_acc``; a member
    it stops leaves a stacked group's step at once. ``on_point(members)`` is called after each evaluation
    point's calls, with the members that reached it (in order), and returns those to stop there with why
    (e.g. a pruner that judges the members of a group together). ``fused_group`` is written as the members'
    ``fused_group`` column when the group has more than one.

    What fails every member alike (the model factory, a vmap failure, corrupt data, Ctrl-C) raises.
    """
    execution = execution or Execution()
    cells = list(cells)
    cfg = cells[0].recipe
    size = len(cells)
    x_train, _ = train_split(cells[0], data)
    n = len(x_train)
    total_steps = cfg.epochs * math.ceil(n / cfg.batch_size)
    lengths = [min(cfg.batch_size, n)] + ([n % cfg.batch_size] if n > cfg.batch_size and n % cfg.batch_size else [])
    watch = Stopwatch(device)
    streams = streams_of(cells)
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    chunk = point_steps(steps_per_epoch, execution)
    # the step trains the members of one index stream side by side (they share one gathered batch and, for a
    # first linear layer, one wide product), whatever order the grid gave them in
    order = sorted(range(size), key=streams.__getitem__)
    with watch.phase("warmup"):
        step, models = build_step([cells[i] for i in order], factories, data, device, execution, lengths,
                                  total_steps)
    generators = [torch.Generator().manual_seed(cells[streams.index(s)].seed) for s in range(max(streams) + 1)]
    outcome: list[BaseException | None] = [None] * size
    histories: list[list[dict[str, float]]] = [[] for _ in cells]
    targets = [_Target(execution.target) for _ in cells]
    states: list[dict[str, torch.Tensor] | None] = [None] * size
    #: each member's latest validation loss, accuracy and epoch (what a member stopped early reports)
    last: list[tuple[float, float, int] | None] = [None] * size
    #: the member that each of the step's positions trains (members that stop or diverge are dropped from a stack)
    slots = order
    steps_done = 0

    def fail(p: int, problem: BaseException | None) -> None:
        if problem is not None and outcome[slots[p]] is None:
            outcome[slots[p]] = problem

    def alive() -> list[int]:
        """The step's positions whose members still train."""
        return [p for p in range(len(slots)) if outcome[slots[p]] is None]

    def stop(p: int, stopped: StopCell) -> None:
        """Member ``slots[p]`` stops here, with its weights as they are; the others go on."""
        outcome[slots[p]] = stopped
        with watch.phase("setup"):
            states[slots[p]] = step.state_dicts([p])[0]

    def drop_stopped() -> bool:
        """A stacked step without the members that stopped or failed (their slices would cost compute for
        nothing), each kept member as it is, its running loss and hit sums too; whether it changed."""
        nonlocal step, slots
        keep = alive()
        if not keep or len(keep) == len(slots) or not isinstance(step, StackedStep):
            return False
        index = torch.tensor(keep, device=device)
        with watch.phase("warmup"):
            smaller = step.without([p for p in range(len(slots)) if p not in keep], lengths)
            smaller.loss_sum.copy_(step.loss_sum.index_select(0, index))
            smaller.correct.copy_(step.correct.index_select(0, index))
        step, slots = smaller, [slots[p] for p in keep]
        step.train_mode(True)
        return True

    def point_end() -> None:
        """The members that ``on_point`` stops at the point all of them just reached."""
        if on_point is None:
            return
        members = {slots[p]: p for p in sorted(alive(), key=slots.__getitem__)}
        for i, stopped in on_point(list(members)).items():
            if i in members:
                stop(members[i], stopped)

    def step_perm(perms: list[torch.Tensor]) -> torch.Tensor:
        """The epoch's permutations of the step's index streams (as original streams, in the step's order)."""
        with watch.phase("data"):
            rows = list(dict.fromkeys(streams[i] for i in slots))
            return torch.stack([perms[s] for s in rows]).to(device)

    for epoch in range(1, cfg.epochs + 1):
        if not alive():
            break
        drop_stopped()
        step.train_mode(True)
        with watch.phase("data"):
            perms = [torch.randperm(n, generator=g) for g in generators]
        perm = step_perm(perms)
        step.reset()
        epoch_time = 0.0
        starts = list(range(0, n, cfg.batch_size))
        for first in range(0, len(starts), chunk):  # training steps, with validation every chunk steps
            with watch.phase("train"):
                for batch, start in enumerate(starts[first:first + chunk], first + 1):
                    step(perm[:, start:start + cfg.batch_size])
                    if batch % FINITE_CHECK_EVERY == 0:
                        sums = step.loss_sum.tolist()
                        for p in alive():
                            fail(p, _finite(sums[p], "the training loss", epoch, batch))
            epoch_time += watch.last
            steps_done += len(starts[first:first + chunk])
            if first + chunk < len(starts) and alive():
                with watch.phase("eval"):
                    mid_loss, mid_acc, _ = step.evaluate(*data.val)
                step.train_mode(True)
                for p in sorted(alive(), key=slots.__getitem__):  # in the members' order, as watchers expect them
                    i = slots[p]
                    targets[i].check(mid_loss[p], mid_acc[p], epoch, steps_done, watch.totals["train"] / size)
                    last[i] = (mid_loss[p], mid_acc[p], epoch)
                    if on_eval is not None:
                        try:
                            on_eval(i, {"epoch": epoch, "step": steps_done, "val_loss": mid_loss[p],
                                        "val_acc": mid_acc[p]})
                        except StopCell as stopped:
                            stop(p, stopped)
                point_end()
                if alive() and drop_stopped():
                    perm = step_perm(perms)
            if not alive():
                break
        sums, hits = step.loss_sum.tolist(), step.correct.tolist()
        for p in alive():
            fail(p, _finite(sums[p] / n, "the training loss", epoch))
        if not alive():
            break
        with watch.phase("eval"):
            val_loss, val_acc, _ = step.evaluate(*data.val)
        for p in alive():
            fail(p, _finite(val_loss[p], "the validation loss", epoch))
        for p in sorted(alive(), key=slots.__getitem__):  # in the members' order, as watchers expect them
            i = slots[p]
            targets[i].check(val_loss[p], val_acc[p], epoch, steps_done, watch.totals["train"] / size)
            row = {"epoch": epoch, "train_loss": sums[p] / n, "train_acc": hits[p] / n, "val_loss": val_loss[p],
                   "val_acc": val_acc[p], "epoch_time_s": epoch_time / size}
            histories[i].append(row)
            last[i] = (val_loss[p], val_acc[p], epoch)
            if on_epoch is not None:
                try:
                    on_epoch(i, row)
                except StopCell as stopped:
                    stop(p, stopped)
        point_end()

    finished = [p for p in range(len(slots)) if outcome[slots[p]] is None]
    test: tuple[list, list, list] = ([], [], [])
    if finished:
        with watch.phase("eval"):
            test = step.evaluate(*data.test, num_classes=data.num_classes)
        with watch.phase("setup"):
            for p, state in enumerate(step.state_dicts()):
                if outcome[slots[p]] is None:
                    states[slots[p]] = state
    scores = {slots[p]: (test[0][p], test[1][p], test[2][p]) for p in finished}
    train_time = watch.totals.get("train", 0.0)
    timing = {  # each member's share of the group's time
        "train_time_s": train_time / size,
        "eval_time_s": watch.totals.get("eval", 0.0) / size,
        "data_time_s": watch.totals.get("data", 0.0) / size,
        "warmup_time_s": watch.totals.get("warmup", 0.0) / size,
        "setup_time_s": watch.totals.get("setup", 0.0) / size,
        "samples_per_s": n * cfg.epochs * size / train_time if train_time > 0 else float("nan"),
    }
    how: dict[str, Any] = {"step": step.mode, "cuda_graphs": step.mode == "graph", "compiled": execution.compile,
                           "execution_note": step.note}
    if size > 1:
        how.update(fused_group=fused_group, fused_size=size)
    n_params = sum(p.numel() for p in models[0].parameters())
    results: list[CellResult | Exception] = []
    for i in range(size):
        problem = outcome[i]
        if problem is not None and not isinstance(problem, StopCell):
            results.append(problem)  # type: ignore[arg-type]
            continue
        history = histories[i]
        test_loss, test_acc, confusion = scores.get(i, (None, None, []))  # a stopped member: no test evaluation
        val_loss, val_acc, reached = last[i] or (float("nan"), float("nan"), 0)
        metrics = {"test_acc": test_acc, "test_loss": test_loss, "val_acc": val_acc, "val_loss": val_loss}
        member_timing = {**timing,  # a member stopped inside its first epoch has no epoch's time: blank
                         "epoch_time_s": median([h["epoch_time_s"] for h in history]) if history else None,
                         **targets[i].columns()}
        results.append(CellResult(metrics, history, member_timing, n_params, states[i], confusion, dict(how),
                                  stopped=problem if isinstance(problem, StopCell) else None, reached=reached))
    return results
