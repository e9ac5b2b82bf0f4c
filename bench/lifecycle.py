"""Lifecycle events of a run, delivered to every plugin that observes them and to the chosen trackers.

Events, in the process that writes the run directory (the driver), in this order::

    bench_run_start(run)
      bench_cell_start(cell)          for each cell that trains (not those finished earlier)
        bench_epoch_end(cell, row)    for each epoch: the history row (epoch, losses, accuracies, time)
      bench_cell_end(cell, record)    the cell's record, as written to cells/ID.json
    bench_run_end(run, results)       results: the run's rows (a list of dicts), finished cells included

With the ``local`` executor they happen as training happens. With executors that train elsewhere
(``process``, ``ray``) a cell's start and epoch events reach the driver together with its record,
just before ``bench_cell_end``. An observer that raises is reported once, naming its plugin, and
gets no further events in that run; the run goes on (under ``BENCH_STRICT_PLUGINS=1`` it raises
:class:`bench.host.BrokenPlugin` instead, with the original traceback).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bench.errors import StopCell

EVENTS = ("bench_run_start", "bench_cell_start", "bench_epoch_end", "bench_cell_end", "bench_run_end")


class Lifecycle:
    """Calls the lifecycle hooks of a host's working plugins, and the same methods of tracker objects.

    A tracker (from ``bench_register_trackers``) may define any of ``run_start(run)``,
    ``cell_start(cell)``, ``epoch_end(cell, row)``, ``cell_end(cell, record)`` and
    ``run_end(run, results)``.
    """

    def __init__(self, host=None, trackers: dict[str, Any] | None = None,
                 echo: Callable[[str], None] = lambda message: None):
        self.echo = echo
        self.strict = bool(getattr(host, "strict", False))  # BENCH_STRICT_PLUGINS: raise, with the traceback
        self.observers: list[tuple[str, str, Callable]] = []  # (who, event, function)
        if host is not None:
            for event in EVENTS:
                for impl in host._impls(event):
                    self.observers.append((f"plugin '{impl.plugin_name}'", event, _caller(impl, event)))
        for name, tracker in (trackers or {}).items():
            for event in EVENTS:
                method = getattr(tracker, event[len("bench_"):], None)
                if callable(method):
                    self.observers.append((f"tracker '{name}'", event, method))
        self.broken: set[str] = set()
        self.started: set[str] = set()  # ids of cells whose start this run has announced

    def _emit(self, event: str, *args) -> None:
        for who, name, function in self.observers:
            if name != event or who in self.broken:
                continue
            try:
                function(*args)
            except StopCell:  # how a watcher of a cell's evaluation points stops that cell: the engine's to handle
                raise
            except Exception as exc:  # an observer never takes the run down
                self.broken.add(who)
                text = " ".join(str(exc).split())
                if self.strict:
                    from bench.host import BrokenPlugin

                    raise BrokenPlugin(f"{who} failed in {event}: {type(exc).__name__}: {text}") from exc
                self.echo(f"warning: {who} failed in {event} and gets no more events in this run: "
                          f"{type(exc).__name__}: {text}")

    def run_start(self, run) -> None:
        self._emit("bench_run_start", run)

    def cell_start(self, cell) -> None:
        self.started.add(cell.cell_id)
        self._emit("bench_cell_start", cell)

    def epoch_end(self, cell, row: dict[str, Any]) -> None:
        self._emit("bench_epoch_end", cell, row)

    def cell_end(self, cell, record: dict[str, Any]) -> None:
        """The cell's record arrived: announce its start and epochs first if nobody saw them happen."""
        if cell.cell_id not in self.started:
            self.cell_start(cell)
            for row in record.get("history", []):
                self.epoch_end(cell, row)
        self.started.discard(cell.cell_id)
        self._emit("bench_cell_end", cell, record)

    def run_end(self, run, results: list[dict[str, Any]]) -> None:
        self._emit("bench_run_end", run, results)


#: The arguments of each event, in order.
ARGUMENTS = {"bench_run_start": ("run",), "bench_cell_start": ("cell",), "bench_epoch_end": ("cell", "row"),
             "bench_cell_end": ("cell", "record"), "bench_run_end": ("run", "results")}


def _caller(impl, event: str) -> Callable:
    """Call a hookimpl with the arguments it asks for (pluggy lets an impl take a subset)."""
    names = list(impl.argnames)

    def call(*args):
        values = dict(zip(ARGUMENTS[event], args))
        return impl.function(**{n: values[n] for n in names})

    return call
