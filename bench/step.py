"""The training step: one batch chosen by index, forward, backward, optimiser step, metrics kept on the device.

Three ways to run the same arithmetic:

- ``plain``: eager, a fresh batch tensor each step (the reference).
- ``static``: eager, but the batch is gathered into buffers that live as long as the step, the
  optimiser keeps all its state (the step count too) on the device, and the loss/accuracy sums are
  updated in place: exactly what a CUDA graph can capture. On CPU it is what the tests compare with
  ``plain``.
- ``graph``: the ``static`` step captured once per batch length in a CUDA graph and replayed; a step
  is one index copy and one replay, with no Python in between.

Warm-up (first steps, compilation, capture) happens in :meth:`Step.prepare`, on a snapshot of the
model and optimiser that is restored afterwards, so it changes no result and is timed apart.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn

from bench.errors import BenchError
from bench.optim import make_optimizer

GRAPH_CHOICES = ("auto", "on", "off")
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
    fuse: str = "auto"
    fuse_max: int = 0

    def __post_init__(self):
        if self.cuda_graphs not in GRAPH_CHOICES:
            raise BenchError(f"--cuda-graphs must be one of {', '.join(GRAPH_CHOICES)}, got '{self.cuda_graphs}'")
        if self.mode is not None and self.mode not in MODES:
            raise BenchError(f"step mode must be one of {', '.join(MODES)}, got '{self.mode}'")
        if self.fuse not in FUSE_CHOICES:
            raise BenchError(f"--fuse must be one of {', '.join(FUSE_CHOICES)}, got '{self.fuse}'")
        if isinstance(self.fuse_max, bool) or not isinstance(self.fuse_max, int) or self.fuse_max < 0:
            raise BenchError(f"--fuse-max must be an integer >= 0 (0: as many as fit), got {self.fuse_max!r}")

    def step_mode(self, device: torch.device) -> str:
        """The step kind used on ``device``."""
        if self.mode is not None:
            if self.mode == "graph" and device.type != "cuda":
                raise BenchError(f"CUDA graphs need a CUDA device, not {device}")
            return self.mode
        if device.type == "cuda" and self.cuda_graphs in ("auto", "on"):
            return "graph"
        if self.cuda_graphs == "on":
            raise BenchError(f"--cuda-graphs on needs a CUDA device, not {device} (use auto or off)")
        return "plain"


class Step:
    """Trains ``model`` on ``(x, y)`` one index batch at a time; sums loss and hits on the device."""

    mode = "plain"

    def __init__(self, model: nn.Module, loss_fn: Callable, x: torch.Tensor, y: torch.Tensor, optimizer: str,
                 lr: float, compile: bool = False):
        self.model, self.loss_fn, self.x, self.y = model, loss_fn, x, y
        self.device = x.device
        self.optimizer = make_optimizer(optimizer, model.parameters(), lr, capturable=self.mode != "plain")
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

    def __call__(self, idx: torch.Tensor) -> None:
        self._train(self.x.index_select(0, idx), self.y.index_select(0, idx))

    def prepare(self, lengths: Iterable[int], warmup_steps: int = 1) -> None:
        """Run ``warmup_steps`` steps per batch length on a snapshot, then put everything back."""
        saved = _Snapshot(self.model, self.optimizer)
        for length in sorted(set(lengths)):
            idx = torch.arange(length, device=self.device)
            for _ in range(warmup_steps):
                self(idx)
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

    def __call__(self, idx: torch.Tensor) -> None:
        self.buffers(len(idx))[0].copy_(idx)
        self._body(len(idx))


class GraphStep(StaticStep):
    """The static step captured in one CUDA graph per batch length and replayed."""

    mode = "graph"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}

    def prepare(self, lengths: Iterable[int], warmup_steps: int = 3) -> None:
        """Warm up on a side stream (as capture requires), restore the snapshot, then capture."""
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
        self.reset()
        for length in lengths:
            self.optimizer.zero_grad()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self._body(length)
            self.graphs[length] = graph
        saved.restore(rng=False)  # capture runs nothing, but be exact about it
        self.reset()

    def __call__(self, idx: torch.Tensor) -> None:
        self.buffers(len(idx))[0].copy_(idx)
        self.graphs[len(idx)].replay()


class _Snapshot:
    """Copies of a model's parameters and buffers, the optimiser's state and the RNG states."""

    def __init__(self, model: nn.Module, optimizer):
        self.model, self.optimizer = model, optimizer
        self.tensors = [*model.parameters(), *model.buffers(), *optimizer.state_tensors()]
        self.copies = [t.detach().clone() for t in self.tensors]
        self.steps = list(getattr(optimizer, "steps", []))
        self.cpu_rng = torch.get_rng_state()
        self.cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None

    @torch.no_grad()
    def restore(self, rng: bool = True) -> None:
        for tensor, copy in zip(self.tensors, self.copies):
            tensor.copy_(copy)
        if self.steps:
            self.optimizer.steps = list(self.steps)
        self.optimizer.zero_grad()
        if not rng:
            return
        torch.set_rng_state(self.cpu_rng)
        if self.cuda_rng is not None:
            torch.cuda.set_rng_state_all(self.cuda_rng)


STEPS = {"plain": Step, "static": StaticStep, "graph": GraphStep}


def build_step(execution: Execution, model: nn.Module, loss_fn: Callable, x: torch.Tensor, y: torch.Tensor,
               optimizer: str, lr: float, lengths: list[int]) -> Step:
    """The prepared (warmed-up, and on cuda captured) step for ``execution`` on ``x``'s device.

    With ``cuda_graphs=auto`` a model that cannot be captured falls back to the plain step, and the
    step's ``note`` says why; with ``on`` that is an error.
    """
    mode = execution.step_mode(x.device)
    step = STEPS[mode](model, loss_fn, x, y, optimizer, lr, compile=execution.compile)
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
    fallback = Step(model, loss_fn, x, y, optimizer, lr, compile=execution.compile)
    fallback.note = f"CUDA graph capture failed, ran eager steps: {reason}"
    fallback.prepare(lengths)
    return fallback
