"""Lifecycle events of a run, delivered through pluggy's hook calls to every plugin that observes them.

Events, in the process that writes the run directory (the driver), in this order::

    bench_run_start(run)
      bench_cell_start(cell)          for each cell that trains (not those finished earlier)
        bench_epoch_end(cell, row)    for each epoch: the history row (epoch, losses, accuracies, time)
      bench_cell_end(cell, record)    the cell's record, as written to cells/ID.json
    bench_run_end(run, results)       results: the run's rows (a list of dicts), finished cells included

Observers are plugins: the host's plugins (the progress bars among them) and, for one run, the trackers it
asked for, registered on the host's plugin manager when the run starts and unregistered when it ends.
Each event is one call of the hook (``pm.hook.bench_epoch_end(cell=..., row=...)``), so implementations
run in pluggy's order: the last registered first, ``tryfirst``/``trylast`` move one. The built-in
trackers' implementations are ``trylast``: they mirror the run directory after the other observers ran.

With the ``local`` executor events happen as training happens. With executors that train elsewhere
(``process``, ``ray``) a cell's start and epoch events reach the driver together with its record, just
before ``bench_cell_end``. An observer that raises is reported once, naming its plugin, and gets no
further events in that run; the others still get that event and the run goes on (under
``BENCH_STRICT_PLUGINS=1`` it raises :class:`bench.host.BrokenPlugin` instead, with the original
traceback). :class:`bench.errors.StopCell` from ``bench_epoch_end`` is no failure: the other observers
still get the event, then it reaches the caller (the training loop stops that cell).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from bench import hookimpl
from bench.errors import StopCell

EVENTS = ("bench_run_start", "bench_cell_start", "bench_epoch_end", "bench_cell_end", "bench_run_end")


class Lifecycle:
    """One run's observers on a host's plugin manager, and the calls of its lifecycle hooks.

    ``trackers`` (name -> object, from ``bench_register_trackers``) are registered as plugins for the
    run; :meth:`run_end` unregisters them (as does a failing :meth:`run_start`).
    """

    def __init__(self, host, trackers: Mapping[str, Any] | None = None,
                 echo: Callable[[str], None] = lambda message: None):
        self.pm = host.pm
        self.echo = echo
        self.strict = bool(host.strict)  # BENCH_STRICT_PLUGINS: raise, with the traceback
        #: Plugins that get no events: those the host found broken, then those that raise during the run.
        self.broken: set[object] = {self.pm.get_plugin(name) for name, info in host.plugins.items()
                                    if info.status != "ok" and self.pm.get_plugin(name) is not None}
        self.who: dict[int, str] = {}  # id(plugin) -> how a warning names it, for the trackers
        self.added: list[object] = []  # the trackers registered for this run
        self.started: set[str] = set()  # ids of cells whose start this run has announced
        for name, tracker in (trackers or {}).items():
            self._add_tracker(name, tracker)

    # -- the run's trackers ----------------------------------------------------------------------------

    def _add_tracker(self, name: str, tracker: object) -> None:
        marked = any(self.pm.parse_hookimpl_opts(tracker, attr) is not None
                     for attr in dir(tracker) if attr.startswith("bench_"))
        plugin = tracker if marked else MethodTracker(tracker)
        who = f"tracker '{name}'"
        try:
            self.pm.register(plugin, name=f"tracker:{name}")
            self.added.append(plugin)
            unknown = sorted(c.name for c in self.pm.get_hookcallers(plugin) or () if c.name not in EVENTS)
            if unknown:
                raise ValueError(f"{unknown[0]} is not a lifecycle hook (a tracker implements only "
                                 f"{', '.join(EVENTS)})")
        except Exception as exc:
            self.broken.add(plugin)
            self._report(who, "registration", exc)
        self.who[id(plugin)] = who

    def watch(self, name: str, epoch_end: Callable[[Any, dict[str, Any]], None],
              point_end: Callable[[list], dict[str, StopCell]] | None = None) -> None:
        """Have ``epoch_end(cell, row)`` called at every evaluation point of this run: each epoch's end, as a
        plugin registered for the run, and each evaluation inside an epoch (:meth:`evaluation`); and
        ``point_end(cells)`` once the cells that reached a point together had theirs (:meth:`point_end`).
        E.g. tuning's pruner, which stops a trial by raising :class:`bench.errors.StopCell` or returning it."""
        plugin = _EpochWatcher(epoch_end, point_end)
        self.pm.register(plugin, name=f"watch:{name}")
        self.added.append(plugin)
        self.who[id(plugin)] = f"'{name}'"

    def evaluation(self, cell, point: dict[str, Any]) -> None:
        """An evaluation inside an epoch (``epoch``, ``step``, ``val_loss``, ``val_acc``), for the run's watchers
        only: it is no history row. May raise :class:`bench.errors.StopCell`, after every watcher had it."""
        watchers = {plugin for plugin in self.added if isinstance(plugin, _EpochWatcher)}
        self._call("bench_epoch_end", only=watchers, what="an evaluation", cell=cell, row=point)

    def point_end(self, cells: list) -> dict[str, StopCell]:
        """The end of an evaluation point that ``cells`` (a group's members) reached together, after each one's
        ``epoch_end``: the cells the run's watchers stop there, by cell id, with why."""
        stops: dict[str, StopCell] = {}
        for plugin in self.added:
            if isinstance(plugin, _EpochWatcher) and plugin.point_end is not None:
                stops.update(plugin.point_end(cells))
        return stops

    def close(self) -> None:
        """Unregister the run's trackers (the host's plugins stay)."""
        while self.added:
            self.pm.unregister(self.added.pop())

    # -- calling a hook --------------------------------------------------------------------------------

    def _call(self, event: str, only: set | None = None, what: str = "", **kwargs: Any) -> None:
        """One hook call to every working observer (of ``only``, when given); a raising one is set aside, reported
        as failing in ``what`` (default: the event), and the rest still called."""
        done = set(self.broken)  # not (or no more) to be called in this event
        if only is not None:
            done.update(plugin for plugin in self.pm.get_plugins() if plugin not in only)
        stop: StopCell | None = None
        while True:
            caller = self.pm.subset_hook_caller(event, done)
            try:
                caller(**kwargs)
                break
            except Exception as exc:
                impls = caller.get_hookimpls()
                culprit = _culprit(exc, impls)
                if culprit is None:  # not raised by an implementation: not the observers' business
                    raise
                # pluggy calls implementations in reverse order of get_hookimpls(): those after the culprit ran
                position = impls.index(culprit)
                done.update(impl.plugin for impl in impls[position:])
                if isinstance(exc, StopCell) and event == "bench_epoch_end":
                    stop = stop or exc
                    continue
                self.broken.add(culprit.plugin)
                self._report(self._who(culprit), what or event, exc)
        if stop is not None:
            raise stop

    def _who(self, impl) -> str:
        return self.who.get(id(impl.plugin), f"plugin '{impl.plugin_name}'")

    def _report(self, who: str, event: str, exc: Exception) -> None:
        text = " ".join(str(exc).split())
        if self.strict:
            from bench.host import BrokenPlugin

            self.close()
            raise BrokenPlugin(f"{who} failed in {event}: {type(exc).__name__}: {text}") from exc
        self.echo(f"warning: {who} failed in {event} and gets no more events in this run: "
                  f"{type(exc).__name__}: {text}")

    # -- the events --------------------------------------------------------------------------------------

    def run_start(self, run) -> None:
        try:
            self._call("bench_run_start", run=run)
        except BaseException:
            self.close()
            raise

    def cell_start(self, cell) -> None:
        self.started.add(cell.cell_id)
        self._call("bench_cell_start", cell=cell)

    def epoch_end(self, cell, row: dict[str, Any]) -> None:
        """May raise :class:`bench.errors.StopCell` (an observer stops the cell), after every observer had it."""
        self._call("bench_epoch_end", cell=cell, row=row)

    def cell_end(self, cell, record: dict[str, Any]) -> None:
        """The cell's record arrived: announce its start and epochs first if nobody saw them happen."""
        if cell.cell_id not in self.started:
            self.cell_start(cell)
            for row in record.history:
                try:
                    self.epoch_end(cell, row)
                except StopCell:  # the cell has ended already: nothing left to stop
                    pass
        self.started.discard(cell.cell_id)
        self._call("bench_cell_end", cell=cell, record=record)

    def run_end(self, run, results: list[dict[str, Any]]) -> None:
        try:
            self._call("bench_run_end", run=run, results=results)
        finally:
            self.close()


def _culprit(exc: BaseException, impls: list) -> Any:
    """The hook implementation whose call raised ``exc``: the outermost frame of its traceback that runs one."""
    by_code: dict[Any, list] = {}
    for impl in impls:
        function = getattr(impl.function, "__func__", impl.function)
        code = getattr(function, "__code__", None)
        if code is not None:
            by_code.setdefault(code, []).append(impl)
    tb = exc.__traceback__
    while tb is not None:
        frame = tb.tb_frame
        for impl in by_code.get(frame.f_code, ()):
            owner = getattr(impl.function, "__self__", None)
            if owner is None or (frame.f_code.co_varnames and frame.f_locals.get(frame.f_code.co_varnames[0]) is owner):
                return impl
        tb = tb.tb_next
    return None


class MethodTracker:
    """A tracker written with plain methods (``run_start(run)``, ``cell_start(cell)``, ``epoch_end(cell, row)``,
    ``cell_end(cell, record)``, ``run_end(run, results)``), as a plugin: each hook calls the method, if any."""

    def __init__(self, tracker: object):
        self.tracker = tracker

    def _method(self, name: str) -> Callable[..., Any]:
        method = getattr(self.tracker, name, None)
        return method if callable(method) else (lambda *args: None)

    @hookimpl(trylast=True)
    def bench_run_start(self, run):
        self._method("run_start")(run)

    @hookimpl(trylast=True)
    def bench_cell_start(self, cell):
        self._method("cell_start")(cell)

    @hookimpl(trylast=True)
    def bench_epoch_end(self, cell, row):
        self._method("epoch_end")(cell, row)

    @hookimpl(trylast=True)
    def bench_cell_end(self, cell, record):
        self._method("cell_end")(cell, record)

    @hookimpl(trylast=True)
    def bench_run_end(self, run, results):
        self._method("run_end")(run, results)


class _EpochWatcher:
    """One function called at every evaluation point (:meth:`Lifecycle.watch`)."""

    def __init__(self, epoch_end: Callable[[Any, dict[str, Any]], None],
                 point_end: Callable[[list], dict[str, StopCell]] | None = None):
        self.epoch_end = epoch_end
        self.point_end = point_end

    @hookimpl(trylast=True)
    def bench_epoch_end(self, cell, row):
        self.epoch_end(cell, row)
