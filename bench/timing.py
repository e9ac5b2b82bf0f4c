"""Wall-clock timing that is correct on asynchronous devices."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field

import torch

from bench.device import synchronize


@dataclass
class Stopwatch:
    """Accumulates named phases; each phase synchronises the device before reading the clock.

    >>> sw = Stopwatch(torch.device("cpu"))
    >>> with sw.phase("train"):
    ...     pass
    """

    device: torch.device
    totals: dict[str, float] = field(default_factory=dict)
    last: float = 0.0

    def phase(self, name: str) -> _Phase:
        return _Phase(self, name)


class _Phase:
    def __init__(self, watch: Stopwatch, name: str):
        self.watch, self.name = watch, name

    def __enter__(self):
        synchronize(self.watch.device)
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        synchronize(self.watch.device)
        elapsed = time.perf_counter() - self.start
        self.watch.last = elapsed
        self.watch.totals[self.name] = self.watch.totals.get(self.name, 0.0) + elapsed
        return False


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")
