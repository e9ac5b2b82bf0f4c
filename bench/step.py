"""The training step: one batch chosen by index, forward, backward, optimiser step, metrics kept on the device.

Three ways to run the same arithmetic:

- ``plain``: eager, a fresh batch tensor each step (the reference).
- ``static``: eager, but the batch is gathered into buffers that live as long as the step, the
  optimiser keeps all its state (the step count too) on the device, and the loss/accuracy sums are
  updated in place: exactly what a CUDA graph can capture. On CPU it is what the tests compare with
  ``plain``.
- ``graph``: the ``static`` step captured once per batch length in a CUDA graph and replayed; a step
  is one index copy and one replay, with no Python in between.

The optimiser comes from ``make_optimizer(parameters, capturable)`` (``capturable`` is true for
``static`` and ``graph``), the learning-rate schedule, if any, from ``make_schedule(optimizer,
total_steps)``; the schedule is stepped after every optimiser step, outside the captured graph: it
updates the learning rate tensor that the graph reads.

Warm-up (first steps, compilation, capture) happens in :meth:`Step.prepare`, on a snapshot of the
model and optimiser that is restored afterwards, so it changes no result and is timed apart. It does
not step the schedule.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from bench.errors import BenchError, OptionError
from bench.optim import state_tensor_ptrs

GRAPH_CHOICES = ("auto", "on", "off")
#: What a target can be set on: validation accuracy (reached from below) or loss (from above).
TARGET_METRICS = ("val_acc", "val_loss")
FUSE_CHOICES = ("auto", "on", "off")
MODES = ("plain", "static", "graph")


@dataclass(frozen=True)
class Execution:
    """How training steps run; chosen on the command line, not part of a cell's identity.

    ``cuda_graphs``: ``auto`` (graphs on cuda, falling back to eager steps with a note if the model
    cannot be captured), ``on`` (graphs on cuda, an error elsewhere or if capture fails), ``off``.
    ``compile``: wrap the model in ``torch.compile``. ``mode`` forces a step kind (tests use it).
    ``fuse``: train groups of cells of one shape as one stacked model (see bench/fuse.py): ``auto``
    (where the model and optimizer allow, else one by one with a note), ``on`` (an error where they do
    not), ``off``. ``fuse_max``: the most cells in one fused group (0: as many as fit in memory).
    """

    cuda_graphs: str = "auto"
    compile: bool = False
    mode: str | None = None
    #: Time to target: ``("val_acc", 0.97)`` records when the validation metric first reaches the value
    #: (``val_loss``: falls to it); ``eval_every`` evaluates the validation split every N training steps
    #: as well as at each epoch's end (the evaluations are timed apart from training).
    target: tuple[str, float] | None = None
    eval_every: int = 0
    fuse: str = "auto"
    fuse_max: int = 0

    def __post_init__(self):
        if self.target is not None:
            metric, value = self.target
            if metric not in TARGET_METRICS or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise OptionError("target", f"must be {' or '.join(TARGET_METRICS)}=VALUE with a finite value, "
                                            f"got {metric}={value}")
        if isinstance(self.eval_every, bool) or not isinstance(self.eval_every, int) or self.eval_every < 0:
            raise OptionError("eval_every", f"must be an integer >= 0, got {self.eval_every!r}")
        if self.cuda_graphs not in GRAPH_CHOICES:
            raise OptionError("cuda_graphs", f"must be one of {', '.join(GRAPH_CHOICES)}, got '{self.cuda_graphs}'")
        if self.mode is not None and self.mode not in MODES:
            raise BenchError(f"step mode must be one of {', '.join(MODES)}, got '{self.mode}'")
        if self.fuse not in FUSE_CHOICES:
            raise OptionError("fuse", f"must be one of {', '.join(FUSE_CHOICES)}, got '{self.fuse}'")
        if isinstance(self.fuse_max, bool) or not isinstance(self.fuse_max, int) or self.fuse_max < 0:
            raise OptionError("fuse_max", f"must be an integer >= 0 (0: as many as fit), got {self.fuse_max!r}")

    def step_mode(self, device: torch.device) -> str:
        """The step kind used on ``device``."""
        if self.mode is not None:
            if self.mode == "graph" and device.type != "cuda":
                raise BenchError(f"CUDA graphs need a CUDA device, not {device}")
            return self.mode
        if device.type == "cuda" and self.cuda_graphs in ("auto", "on"):
            return "graph"
        if self.cuda_graphs == "on":
            raise OptionError("cuda_graphs", f"on needs a CUDA device, not {device} (use auto or off)")
        return "plain"


class Step:
    """Trains ``model`` on ``(x, y)`` one index batch at a time; sums loss and hits on the device."""

    mode = "plain"

    def __init__(self, model: nn.Module, loss_fn: Callable, x: torch.Tensor, y: torch.Tensor,
                 make_optimizer: Callable[[list[torch.Tensor], bool], Any],
                 make_schedule: Callable[[Any], Any] | None = None, compile: bool = False):
        self.model, self.loss_fn, self.x, self.y = model, loss_fn, x, y
        self.device = x.device
        self.optimizer = make_optimizer(list(model.parameters()), self.mode != "plain")
        #: stepped after every optimiser step; ``None``: the learning rate stays as it is
        self.schedule = make_schedule(self.optimizer) if make_schedule is not None else None
        self.forward = torch.compile(model) if compile else model
        self.loss_sum = torch.zeros((), device=self.device)
        self.correct = torch.zeros((), device=self.device, dtype=torch.int64)
        self.note = ""

    def reset(self) -> None:
        """Zero the loss and accuracy sums (at the start of an epoch)."""
        self.loss_sum.zero_()
        self.correct.zero_()

    def _train(self, xb: torch.Tensor, yb: torch.Tensor) -> None:
        logits = self.forward(xb)
        loss = self.loss_fn(logits, yb)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad()
        with torch.no_grad():
            self.loss_sum.add_(loss.detach().float(), alpha=len(yb))
            self.correct.add_((logits.detach().argmax(1) == yb).sum())

    def run(self, idx: torch.Tensor) -> None:
        """One training step on the batch ``idx``, without the schedule."""
        self._train(self.x.index_select(0, idx), self.y.index_select(0, idx))

    def __call__(self, idx: torch.Tensor) -> None:
        """One training step on the batch ``idx``, then the schedule's step."""
        self.run(idx)
        if self.schedule is not None:
            self.schedule.step()

    def prepare(self, lengths: Iterable[int], warmup_steps: int = 1) -> None:
        """Run ``warmup_steps`` steps per batch length on a snapshot, then put everything back."""
        saved = _Snapshot(self.model, self.optimizer)
        for length in sorted(set(lengths)):
            idx = torch.arange(length, device=self.device)
            for _ in range(warmup_steps):
                self.run(idx)
        saved.restore()
        self.reset()


class StaticStep(Step):
    """The plain step's arithmetic on buffers that outlive the step (what a CUDA graph captures)."""

    mode = "static"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._buffers: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def buffers(self, length: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The index, input and target buffers for batches of ``length``."""
        if length not in self._buffers:
            idx = torch.zeros(length, dtype=torch.int64, device=self.device)
            xb = torch.empty((length, *self.x.shape[1:]), dtype=self.x.dtype, device=self.device)
            yb = torch.empty(length, dtype=self.y.dtype, device=self.device)
            self._buffers[length] = (idx, xb, yb)
        return self._buffers[length]

    def _body(self, length: int) -> None:
        idx, xb, yb = self.buffers(length)
        torch.index_select(self.x, 0, idx, out=xb)
        torch.index_select(self.y, 0, idx, out=yb)
        self._train(xb, yb)

    def run(self, idx: torch.Tensor) -> None:
        self.buffers(len(idx))[0].copy_(idx)
        self._body(len(idx))


class GraphStep(StaticStep):
    """The static step captured in one CUDA graph per batch length and replayed."""

    mode = "graph"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}

    def prepare(self, lengths: Iterable[int], warmup_steps: int = 3) -> None:
        """Warm up on a side stream (as capture requires), restore the snapshot, then capture.

        With a schedule, every param group's learning rate must be a tensor on the device (updated in
        place by the schedule) or the graph would replay the first one: otherwise this raises, and
        :func:`build_step` falls back to eager steps.
        """
        if self.schedule is not None:
            floats = [g["lr"] for g in self.optimizer.param_groups
                      if not (isinstance(g["lr"], torch.Tensor) and g["lr"].device == self.device)]
            if floats:
                raise BenchError(f"the optimizer {type(self.optimizer).__name__} keeps its learning rate as "
                                 f"{type(floats[0]).__name__}, not as a tensor on {self.device}: a captured step "
                                 "would not see the schedule's changes")
        saved = _Snapshot(self.model, self.optimizer)
        main_stream = torch.cuda.current_stream(self.device)
        try:
            self._warm_up_and_capture(sorted(set(lengths)), warmup_steps, saved)
        except BaseException:
            # a failed capture_end leaves torch.cuda.graph's capture stream current: go back
            torch.cuda.set_stream(main_stream)
            saved.restore(rng=False)  # the CUDA generator may still be mid-capture
            torch.set_rng_state(saved.cpu_rng)
            self.reset()
            raise

    def _warm_up_and_capture(self, lengths: list[int], warmup_steps: int, saved: _Snapshot) -> None:
        for length in lengths:  # buffers live on the main stream, before any side stream touches them
            self.buffers(length)[0].copy_(torch.arange(length, device=self.device))
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            for length in lengths:
                for _ in range(warmup_steps):
                    self._body(length)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        saved.restore()
        if not saved.in_place:
            raise BenchError(f"the optimizer {type(self.optimizer).__name__}'s load_state_dict() does not restore its "
                             "state in place (e.g. state created on the first step), which a captured graph needs")
        self.reset()
        for length in lengths:
            self.optimizer.zero_grad()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self._body(length)
            self.graphs[length] = graph
        saved.restore(rng=False)  # capture runs nothing, but be exact about it
        self._lrs = [g["lr"] for g in self.optimizer.param_groups]
        self.reset()

    def run(self, idx: torch.Tensor) -> None:
        self.buffers(len(idx))[0].copy_(idx)
        self.graphs[len(idx)].replay()

    def __call__(self, idx: torch.Tensor) -> None:
        self.run(idx)
        if self.schedule is not None:
            self.schedule.step()
            if any(g["lr"] is not lr for g, lr in zip(self.optimizer.param_groups, self._lrs)):
                raise BenchError("the schedule replaced the optimizer's learning rate tensor instead of updating it "
                                 "in place (lr.fill_(value)): the captured CUDA graph would not see it")


class _Snapshot:
    """Copies of a model's parameters and buffers, the optimiser's state and the RNG states.

    The optimiser's state is a deep copy of its ``state_dict()``, put back with ``load_state_dict()``;
    :attr:`in_place` then says whether that kept the state's tensors where they were (the built-in
    optimisers copy into them), which is what a captured CUDA graph needs.
    """

    def __init__(self, model: nn.Module, optimizer):
        self.model, self.optimizer = model, optimizer
        self.tensors = [*model.parameters(), *model.buffers()]
        self.copies = [t.detach().clone() for t in self.tensors]
        self.optimizer_state = copy.deepcopy(optimizer.state_dict())
        self.in_place = True
        self.cpu_rng = torch.get_rng_state()
        self.cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None

    @torch.no_grad()
    def restore(self, rng: bool = True) -> None:
        for tensor, saved in zip(self.tensors, self.copies):
            tensor.copy_(saved)
        before = state_tensor_ptrs(self.optimizer)
        # a copy again: an optimiser may keep the tensors it is given (torch.optim does), and train them
        self.optimizer.load_state_dict(copy.deepcopy(self.optimizer_state))
        self.in_place = state_tensor_ptrs(self.optimizer) == before
        self.optimizer.zero_grad()
        if not rng:
            return
        torch.set_rng_state(self.cpu_rng)
        if self.cuda_rng is not None:
            torch.cuda.set_rng_state_all(self.cuda_rng)


STEPS = {"plain": Step, "static": StaticStep, "graph": GraphStep}


def build_step(execution: Execution, model: nn.Module, loss_fn: Callable, x: torch.Tensor, y: torch.Tensor,
               lengths: list[int], make_optimizer: Callable[[list[torch.Tensor], bool], Any],
               make_schedule: Callable[[Any, int], Any] | None = None, total_steps: int = 0) -> Step:
    """The prepared (warmed-up, and on cuda captured) step for ``execution`` on ``x``'s device.

    ``make_optimizer(parameters, capturable)`` builds the optimiser, ``make_schedule(optimizer,
    total_steps)`` the schedule (or ``None``). With ``cuda_graphs=auto`` a model, optimiser or
    schedule that cannot be captured falls back to the plain step (a fresh optimiser and schedule),
    and the step's ``note`` says why; with ``on`` that is an error.
    """
    schedule = (lambda optimizer: make_schedule(optimizer, total_steps)) if make_schedule is not None else None
    mode = execution.step_mode(x.device)
    step = STEPS[mode](model, loss_fn, x, y, make_optimizer, schedule, compile=execution.compile)
    if mode != "graph":
        step.prepare(lengths)
        return step
    try:
        step.prepare(lengths)
        return step
    except Exception as exc:  # capture fails on host syncs, data-dependent shapes, ...
        reason = " ".join(str(exc).split())[:300]
        if execution.cuda_graphs == "on" and execution.mode is None:
            raise BenchError(f"CUDA graph capture failed: {reason} (use --cuda-graphs auto or off)") from exc
        torch.cuda.synchronize(x.device)
    fallback = Step(model, loss_fn, x, y, make_optimizer, schedule, compile=execution.compile)
    fallback.note = f"CUDA graph capture failed, ran eager steps: {reason}"
    fallback.prepare(lengths)
    return fallback
