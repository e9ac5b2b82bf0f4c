"""How training steps run: chosen on the command line, not part of a cell's identity."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from bench.errors import BenchError, OptionError
from bench.options import RunOptions, integer, options_of

#: What a target can be set on: validation accuracy (reached from below) or loss (from above).
TARGET_METRICS = ("val_acc", "val_loss")
MODES = ("plain", "static", "graph")
#: The run options this record carries, checked by their one declaration (bench.options.RunOptions).
_RUN_OPTIONS = [o for o in options_of(RunOptions) if o.name in ("cuda_graphs", "compile", "fuse", "fuse_max")]


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
    #: Without ``eval_every``: evaluate this many times an epoch, evenly spaced (0 or 1: at its end only), at
    #: least ``bench.engine.group.MIN_POINT_STEPS`` training steps apart, for the run's watchers (tuning's
    #: pruner asks it of its trials, bench/tune.py).
    eval_points: int = 0
    fuse: str = "auto"
    fuse_max: int = 0

    def __post_init__(self):
        if self.target is not None:
            metric, value = self.target
            if metric not in TARGET_METRICS or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise OptionError("target", f"must be {' or '.join(TARGET_METRICS)}=VALUE with a finite value, "
                                            f"got {metric}={value}")
        integer("eval_every")(self.eval_every)
        integer("eval_points")(self.eval_points)
        for option in _RUN_OPTIONS:
            option.check(getattr(self, option.name))
        if self.mode is not None and self.mode not in MODES:
            raise BenchError(f"step mode must be one of {', '.join(MODES)}, got '{self.mode}'")

    @classmethod
    def of(cls, options: RunOptions, target: tuple[str, float] | None = None, eval_every: int = 0) -> Execution:
        """The engine's view of a run: its run options (each declared once, in :class:`RunOptions`) and the
        study's time to target (:attr:`bench.study.Study.target`, parsed, and ``eval_every``)."""
        return cls(target=target, eval_every=eval_every, **{o.name: getattr(options, o.name) for o in _RUN_OPTIONS})

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
