"""Runs a list of cells: loads each dataset once onto the device, trains, records every outcome.

The seam for executors: :func:`train_record` trains one cell into a record; an executor (plugin)
decides where that happens (here, in worker processes, on a Ray cluster: :func:`execute_cell` is
the picklable entry point for those); :func:`run_cells` writes every record through the store.
"""

from __future__ import annotations

import json
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import torch

from bench.data import DataSplits
from bench.engine import Execution
from bench.errors import BenchError, DataCorrupt, DatasetUnavailable, IncompatibleCell, one_line
from bench.grid import Cell
from bench.host import BrokenPlugin, Registry
from bench.record import CellRecord
from bench.store import RunStore
from bench.templates import template_entry
from bench.timing import Stopwatch


@dataclass
class RunSummary:
    records: list[CellRecord] = field(default_factory=list)

    @property
    def failed(self) -> list[CellRecord]:
        return [r for r in self.records if r.status == "failed"]


def _row(cell: Cell, status: str, error: str = "", index: int = 0) -> CellRecord:
    return CellRecord.of(cell, status, error, index)


def load_dataset(registry: Registry, name: str, overrides: dict, data_dir: Path) -> DataSplits:
    component = registry.get("dataset", name)
    params = {**component.params, **overrides}
    try:
        splits = component.factory(Path(data_dir), **params)
    except BenchError:
        raise
    except Exception as exc:
        raise BenchError(f"dataset '{name}' failed to load: {one_line(exc)}") from exc
    if not isinstance(splits, DataSplits):
        raise BenchError(f"dataset '{name}' returned {type(splits).__name__}, not bench.DataSplits")
    splits.validate(name)
    return splits


def available_datasets(registry: Registry, names: list[str], data_dir: Path, cache: DataCache | None = None,
                       device: torch.device | None = None) -> tuple[list[str], dict[str, str]]:
    """Split dataset names into those that load here and those unavailable (name -> the reason, in a few
    words where the dataset gives them: ``DatasetUnavailable.short``).

    With a ``cache`` the datasets are loaded through it onto ``device``, so the first cells that
    train on one reuse the load instead of repeating it.
    """
    ok, missing = [], {}
    for name in names:
        try:
            if cache is not None:
                cache.load(registry, name, {}, data_dir, device or torch.device("cpu"))
            else:
                load_dataset(registry, name, {}, data_dir)
        except DatasetUnavailable as exc:
            missing[name] = getattr(exc, "short", "") or str(exc)
        else:
            ok.append(name)
    return ok, missing


@dataclass(frozen=True)
class WorkSpec:
    """What a worker process needs to rebuild the driver's world; picklable (plain strings only).

    A worker (a ``process`` executor's child, a Ray task) loads the same plugins (``-p`` modules
    plus built-ins and installed ones) and the datasets itself, so no registry, tensor or open
    file crosses a process boundary on the way in.
    """

    plugin_modules: tuple[str, ...]
    data_dir: str
    device: str
    execution: Execution | None = None


@dataclass
class Job:
    """One run's cells as an executor sees them: the driver-side registry and the picklable spec."""

    registry: Registry
    device: torch.device
    data_dir: Path
    plugin_modules: tuple[str, ...] = ()
    #: The run's lifecycle events (bench/lifecycle.py); executors that train in the driver's process
    #: pass it to :func:`train_record`, so that cell starts and epochs are announced as they happen.
    events: Any = None
    execution: Execution | None = None
    #: The driver's resident datasets (the local executor trains on them).
    cache: DataCache | None = None
    #: The run directory (an executor that submits jobs keeps their ids there, under a folder of its own).
    run_dir: Path | None = None

    @property
    def spec(self) -> WorkSpec:
        return WorkSpec(tuple(self.plugin_modules), str(self.data_dir), str(self.device), self.execution)


class Executor(Protocol):
    """Runs cells somewhere and hands their records back as they finish (see ``bench_register_executors``)."""

    def run(self, tasks: list[tuple[int, Cell]], job: Job) -> Iterator[CellRecord | Fatal]:
        """Yield one record per ``(index, cell)`` task, in any order, each as soon as it is done (or a
        :class:`Fatal` for corrupt data, which stops the run)."""


@dataclass(frozen=True)
class Fatal:
    """What a worker hands back instead of a record when the data is corrupt: the driver stops the run."""

    index: int
    message: str


class DataCache:
    """Keeps one dataset resident on the device at a time; a load failure is remembered as the error."""

    def __init__(self) -> None:
        self._loaded: dict[str, DataSplits | BaseException] = {}
        #: Seconds the last load took, until the cell that caused it claims them (``take_load_time``).
        self._load_time = 0.0

    def get(self, registry: Registry, cell: Cell, data_dir: Path, device: torch.device) -> DataSplits:
        return self.load(registry, cell.dataset, cell.override("dataset"), data_dir, device)

    def load(self, registry: Registry, name: str, overrides: dict, data_dir: Path, device: torch.device) -> DataSplits:
        key = json.dumps([name, overrides, str(device)], sort_keys=True)
        if key not in self._loaded:
            # keep one dataset resident at a time (a load that failed costs nothing to remember)
            for old in [k for k, v in self._loaded.items() if not isinstance(v, BaseException)]:
                del self._loaded[old]
            watch = Stopwatch(device)
            try:
                with watch.phase("load"):
                    self._loaded[key] = load_dataset(registry, name, overrides, data_dir).to(device)
            except DataCorrupt:
                raise
            except BenchError as exc:
                self._loaded[key] = exc
            self._load_time = watch.last
        data = self._loaded[key]
        if isinstance(data, BaseException):
            raise data
        return data

    def take_load_time(self) -> float:
        seconds, self._load_time = self._load_time, 0.0
        return seconds


def train_record(index: int, cell: Cell, registry: Registry, cache: DataCache, device: torch.device,
                 data_dir: Path, events=None, execution: Execution | None = None) -> CellRecord:
    """Train one cell (a group of one) and build its record; a failing cell becomes a ``failed`` (or ``skipped``)
    record, one stopped by a watcher of its evaluation points (:class:`~bench.errors.StopCell`) a record with
    that status.

    An ``ok`` record carries the final weights under ``"state_dict"`` and the class templates under
    ``"templates_state"`` for the driver to store.
    Only Ctrl-C and corrupt data (:class:`DataCorrupt`, which stops the run) propagate; a
    ``sys.exit()`` in plugin code is the cell's failure, not the end of the grid. ``started_at`` and
    ``ended_at`` are wall-clock times (Unix seconds) of the attempt, wherever it ran.
    """
    return train_group_records([(index, cell)], registry, cache, device, data_dir, events, execution)[0]


def _error_record(index: int, cell: Cell, exc: BaseException) -> CellRecord:
    """The record of a cell that raised: ``skipped`` for an incompatible cell, else ``failed``."""
    if isinstance(exc, IncompatibleCell):
        return _row(cell, "skipped", str(exc), index)
    message = one_line(exc)
    if isinstance(exc, SystemExit):
        message = f"SystemExit: the cell's code called sys.exit({exc.code!r})"
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        message += " (out of device memory: try a smaller --batch-size or model)"
    record = _row(cell, "failed", message, index)
    if not isinstance(exc, BenchError):
        record.traceback = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return record


def train_group_records(tasks: list[tuple[int, Cell]], registry: Registry, cache: DataCache, device: torch.device,
                        data_dir: Path, events=None, execution: Execution | None = None
                        ) -> list[CellRecord]:
    """Train a group (cells of one :func:`bench.fuse.fuse_key`; one cell is a group of one) through the engine;
    one record per member, each with ``fused_group``/``fused_size`` where it trained stacked.

    Whether the group trains stacked was decided by :func:`fused_groups` (:func:`bench.engine.plan.unfusable`,
    asked again here with the same answer): cells that cannot fuse train one at a time with ``not fused:
    REASON`` in their ``execution_note``, or are failed records under ``--fuse on``. A group larger than fits in
    memory trains in chunks. Each member's start and epochs are announced to ``events`` as they happen; a
    :class:`~bench.errors.StopCell` raised by an epoch's announcement stops that member only.
    """
    from bench.engine import Factories, Unfusable, train_group
    from bench.engine.plan import unfusable
    from bench.fuse import group_id

    execution = execution or Execution()
    cells = [cell for _, cell in tasks]
    first = cells[0]
    started = time.time()
    watch = Stopwatch(device)
    load_time = 0.0
    results: list[Any] = []
    try:
        data = cache.get(registry, first, data_dir, device)
        load_time = cache.take_load_time()
        with watch.phase("setup"):
            factories = Factories.from_registry(registry, first, data)
            reason = unfusable(first, execution, registry, data) if len(cells) > 1 and execution.fuse != "off" else ""
        if reason and execution.fuse == "on":
            raise BenchError(f"{len(cells)} {first.model} cells cannot be fused: {reason}")
        if events is not None:
            for cell in cells:
                events.cell_start(cell)

        def announce(members) -> dict[str, Any]:
            """The group's observers: each epoch's row to every observer, each evaluation inside an epoch to
            the run's watchers (:meth:`~bench.lifecycle.Lifecycle.evaluation`)."""
            def on_epoch(i, row):
                if events is not None:
                    cell = members[i]
                    events.epoch_end(cell, {**CellRecord.of(cell).key(), **row})

            def on_eval(i, point):
                if events is not None:
                    events.evaluation(members[i], point)

            point_end = getattr(events, "point_end", None)  # (an observer that only watches epochs has none)

            def on_point(alive):
                stops = point_end([members[i] for i in alive]) if point_end is not None else {}
                return {i: stops[members[i].cell_id] for i in alive if members[i].cell_id in stops}
            return {"on_epoch": on_epoch, "on_eval": on_eval, "on_point": on_point}

        by_cell: dict[str, Any] = {}

        def one_at_a_time(members, note):
            for cell in members:
                try:
                    result = train_group([cell], factories, data, device, execution, **announce([cell]))[0]
                except (KeyboardInterrupt, DataCorrupt, BrokenPlugin):
                    raise
                except (Exception, SystemExit) as exc:
                    result = exc
                if note and not isinstance(result, BaseException):
                    result.execution["execution_note"] = "; ".join(filter(None, [f"not fused: {note}",
                                                                                 result.execution["execution_note"]]))
                by_cell[cell.cell_id] = result

        if len(cells) == 1 or reason:
            one_at_a_time(cells, reason)
        else:
            for chunk in _chunks(cells, factories, data, device, execution):
                try:
                    for cell, result in zip(chunk, train_group(chunk, factories, data, device, execution,
                                                               fused_group=group_id(chunk), **announce(chunk))):
                        by_cell[cell.cell_id] = result
                except Unfusable as exc:  # what the plan's probe could not see (e.g. a failure in the optimizer step)
                    if execution.fuse == "on":
                        raise BenchError(f"{len(chunk)} {first.model} cells cannot be fused: {exc}") from exc
                    one_at_a_time(chunk, str(exc))
        results = [by_cell[cell.cell_id] for cell in cells]
    except (KeyboardInterrupt, DataCorrupt, BrokenPlugin):
        raise
    except (Exception, SystemExit) as exc:  # what fails the whole group (e.g. the factory) fails each member alike
        results = [exc] * len(cells)
    records = []
    for (index, cell), result in zip(tasks, results):
        if isinstance(result, BaseException):
            record = _error_record(index, cell, result)
        else:
            with watch.phase("record"):
                model = factories.model()
                model.load_state_dict(result.state_dict)
                record = _result_record(cell, result, data, model.to(device))
            if result.stopped is not None:  # e.g. a pruned trial: what it reached, no weights kept
                record.status, record.error = result.stopped.status, result.stopped.reason
                record.set({"epochs": result.reached})  # the epoch it was stopped in
                record.state_dict = record.templates_state = record.templates = None
        record.index, record.started_at, record.ended_at = index, started, time.time()
        records.append(record)
    # what the group spent outside its members' phases: loading the data, building and writing records
    for record in records:
        if record.setup_time_s is not None:
            record.setup_time_s += (watch.totals.get("setup", 0.0) + watch.totals.get("record", 0.0)) / len(records)
    if records and records[0].data_time_s is not None:
        records[0].data_time_s += load_time
    if device.type == "cuda" and any(r.status == "failed" for r in records):
        torch.cuda.empty_cache()
    return records


def _chunks(cells: list[Cell], factories, data: DataSplits, device: torch.device,
            execution: Execution) -> list[list[Cell]]:
    """The group in training order (members of one seed adjacent, so that they share their batch: see
    :class:`bench.engine.steps.StackedStep`; within a seed equal hyperparameters in one order, so that the
    batched optimizer steps runs of them in one call), split by memory unless ``fuse_max`` already bounds it."""
    from bench.engine.group import train_split
    from bench.engine.plan import fitting_size, member_bytes, memory_budget
    from bench.fuse import even_chunks, member_hyperparameters

    seeds = list(dict.fromkeys(cell.seed for cell in cells))
    ordered = sorted(cells, key=lambda c: (seeds.index(c.seed),
                                           json.dumps(member_hyperparameters(c), sort_keys=True, default=str)))
    if execution.fuse_max:
        return [ordered]
    torch.manual_seed(ordered[0].seed)
    model = factories.model().to(device)
    x, y = train_split(ordered[0], data)
    per_member = member_bytes(model, factories.loss, x, y, min(ordered[0].recipe.batch_size, len(x)))
    del model
    size = fitting_size(per_member, memory_budget(device))
    if size >= len(ordered):
        return [ordered]
    return even_chunks(ordered, size)


def failed_record(index: int, cell: Cell, error: str) -> CellRecord:
    """The record of a cell whose worker died (or was lost) before it could report."""
    return _row(cell, "failed", error, index)


#: Per worker process: registries by plugin modules, and the resident dataset.
_WORKER_REGISTRIES: dict[tuple[str, ...], Registry] = {}
_WORKER_DATA = DataCache()


def execute_cell(index: int, cell: Cell, spec: WorkSpec) -> CellRecord | Fatal:
    """Train one cell in a worker process from picklable inputs; returns a picklable record.

    The plugin host and the dataset are built on first use and cached for the life of the worker
    process. The weights come back as safetensors bytes. Corrupt data comes back as a :class:`Fatal`:
    the driver stops the run, as it would in-process.
    """
    device = _worker_device(spec)
    cell = replace(cell, device=str(device))  # the row names the device that trained it; the id stays
    registry, error = _worker_registry(spec)
    if registry is None:
        return failed_record(index, cell, error)
    try:
        record = train_record(index, cell, registry, _WORKER_DATA, device, Path(spec.data_dir),
                              execution=spec.execution)
    except DataCorrupt as exc:
        return Fatal(index, str(exc))
    return _picklable(record)


def execute_group(tasks: list[tuple[int, Cell]], spec: WorkSpec) -> list[CellRecord | Fatal]:
    """:func:`execute_cell` for a fused group (cells of one :func:`bench.fuse.fuse_key`): one picklable record
    per member, in order (see :func:`train_group_records`)."""
    device = _worker_device(spec)
    tasks = [(index, replace(cell, device=str(device))) for index, cell in tasks]
    registry, error = _worker_registry(spec)
    if registry is None:
        return [failed_record(index, cell, error) for index, cell in tasks]
    try:
        records = train_group_records(tasks, registry, _WORKER_DATA, device, Path(spec.data_dir),
                                      execution=spec.execution)
    except DataCorrupt as exc:
        return [Fatal(index, str(exc)) for index, _ in tasks]
    return [_picklable(record) for record in records]


def _worker_device(spec: WorkSpec) -> torch.device:
    device = torch.device(spec.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device


def _worker_registry(spec: WorkSpec) -> tuple[Registry | None, str]:
    """This worker's registry for ``spec``'s plugins (built once), or ``None`` and why."""
    from bench.host import Host

    registry = _WORKER_REGISTRIES.get(spec.plugin_modules)
    if registry is None:
        try:
            registry = _WORKER_REGISTRIES[spec.plugin_modules] = Host(spec.plugin_modules).registry
        except Exception as exc:  # e.g. a -p module that this worker's machine cannot import
            return None, f"the worker could not load the plugins: {one_line(exc)}"
    return registry, ""


def _picklable(record: CellRecord) -> CellRecord:
    """A record with its tensors as safetensors bytes."""
    from safetensors.torch import save

    if isinstance(record.state_dict, dict):
        record.state_dict = save(record.state_dict)
    if isinstance(record.templates_state, dict):
        record.templates_state = save(record.templates_state)
    return record


class LocalExecutor:
    """In the driver's process, one cell after another: the default."""

    def run(self, tasks: list[tuple[int, Cell]], job: Job) -> Iterator[CellRecord | Fatal]:
        cache = job.cache if job.cache is not None else DataCache()
        for group in fused_groups(tasks, job.execution, job.registry):
            yield from train_group_records(group, job.registry, cache, job.device, job.data_dir, job.events,
                                           job.execution)


def fused_groups(tasks: list[tuple[int, Cell]], execution: Execution | None,
                 registry: Registry | None = None) -> list[list[tuple[int, Cell]]]:
    """The tasks grouped by :func:`bench.fuse.fuse_key` (at most ``fuse_max`` a group), or one group per task
    with ``fuse`` off; decided before anything trains, the same for every executor and for ``--dry-run``.

    A group whose cells cannot fuse (:func:`plan_groups` says why) stays one group, whose cells the engine
    trains one at a time, each with the reason in its ``execution_note`` (under ``--fuse on``: failed records).
    """
    from bench.fuse import fuse_key, group_cells

    execution = execution or Execution()
    if execution.fuse == "off":
        return [[task] for task in tasks]
    return group_cells(tasks, execution.fuse_max or None, key=lambda task: fuse_key(task[1]))


def plan_groups(tasks: list[tuple[int, Cell]], execution: Execution | None, registry: Registry,
                data_for: Callable[[Cell], DataSplits | None] = lambda cell: None
                ) -> list[tuple[list[tuple[int, Cell]], str]]:
    """:func:`fused_groups` with each group's verdict: ``""`` (it trains stacked, or is one cell) or why its cells
    train one at a time. ``data_for(cell)`` gives the dataset the model is probed on (``None``: not probed)."""
    from bench.engine.plan import unfusable

    execution = execution or Execution()
    planned = []
    for group in fused_groups(tasks, execution, registry):
        cell = group[0][1]
        reason = ""
        if len(group) > 1:
            try:
                data = data_for(cell)
            except BenchError:
                data = None
            reason = unfusable(cell, execution, registry, data)
        planned.append((group, reason))
    return planned


def run_cells(
    cells: list[Cell],
    registry: Registry,
    store: RunStore,
    device: torch.device,
    data_dir: Path,
    events=None,
    done: dict[str, CellRecord] | None = None,
    executor: Executor | None = None,
    plugin_modules: tuple[str, ...] = (),
    execution: Execution | None = None,
    cache: DataCache | None = None,
    on_first_record: Callable[[], None] | None = None,
) -> RunSummary:
    """Train every cell and persist each outcome as it happens; a failing cell never stops the grid.

    ``done`` maps the ids of cells finished by an earlier run to their records: those are not trained
    again, their records go into the summary as they are. Corrupt data (:class:`DataCorrupt`) and
    Ctrl-C stop the grid; everything finished before is already on disk.

    ``executor`` decides where cells train (default: here, one after another); whichever it is,
    this process alone writes the records, through ``store``, as they arrive. ``on_first_record``
    is called once, just before the first record is written (never, if corrupt data stops the run first).
    """
    done = done or {}
    finished: dict[int, CellRecord] = {i: done[c.cell_id] for i, c in enumerate(cells) if c.cell_id in done}
    tasks = [(i, c) for i, c in enumerate(cells) if c.cell_id not in done]
    job = Job(registry, device, Path(data_dir), tuple(plugin_modules), events, execution, cache, store.root)
    records = (executor or LocalExecutor()).run(tasks, job)
    try:
        for record in records:
            if isinstance(record, Fatal):
                raise DataCorrupt(record.message)
            cell = cells[record.index]
            if on_first_record is not None:  # e.g. env.json: written once the data has loaded cleanly
                on_first_record()
                on_first_record = None
            _write_tensors(record, cell, store)
            store.write_cell(record)
            finished[record.index] = record
            if events is not None:
                events.cell_end(cell, record)
    finally:
        close = getattr(records, "close", None)
        if close is not None:
            close()  # stop the executor's workers, also on Ctrl-C or corrupt data
    return RunSummary(records=[finished[i] for i in sorted(finished)])


def _write_tensors(record: CellRecord, cell: Cell, store: RunStore) -> None:
    """Store the record's weights and templates (tensors, or safetensors bytes from a worker) as files."""
    from safetensors.torch import load

    def tensors(value):
        return load(value) if isinstance(value, bytes) else value

    if record.state_dict is not None:
        record.weights = store.write_weights(cell.cell_id, tensors(record.state_dict))
        record.state_dict = None
    if record.templates_state is not None:
        path = store.write_weights(f"{cell.cell_id}.templates", tensors(record.templates_state))
        record.templates = {**(record.templates or {}), "path": path}
        record.templates_state = None


def _result_record(cell: Cell, result, data: DataSplits, model: torch.nn.Module) -> CellRecord:
    """The record of a trained cell (``model`` holds its final weights, for the class templates)."""
    record = _row(cell, "ok")
    record.set({**result.metrics, **result.timing, **result.execution, "n_params": result.n_params})
    for entry in result.history:
        record.add_epoch(entry)
    templates = template_entry(model, data)
    record.confusion, record.classes, record.input_shape = result.confusion, list(data.classes), list(data.input_shape)
    record.state_dict, record.templates_state = result.state_dict, templates.get("templates_state")
    record.templates = templates["templates"]
    return record
