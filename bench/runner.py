"""Runs a list of cells: loads each dataset once onto the device, trains, records every outcome.

The seam for executors: :func:`train_record` trains one cell into a record; an executor (plugin)
decides where that happens (here, in worker processes, on a Ray cluster: :func:`execute_cell` is
the picklable entry point for those); :func:`run_cells` writes every record through the store.
"""

from __future__ import annotations

import json
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import torch

from bench.data import DataSplits
from bench.errors import BenchError, DataCorrupt, DatasetUnavailable, IncompatibleCell
from bench.grid import Cell
from bench.host import Registry
from bench.step import Execution
from bench.store import RunStore
from bench.templates import template_entry
from bench.timing import Stopwatch
from bench.trainer import train_cell

#: Record keys holding tensors ({name: tensor}) that the driver writes to ``weights/`` and replaces by a path.
TENSOR_KEYS = ("state_dict", "templates_state")


@dataclass
class RunSummary:
    rows: list[dict[str, Any]] = field(default_factory=list)

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [r for r in self.rows if r["status"] == "failed"]


def _row(cell: Cell, status: str, error: str = "") -> dict[str, Any]:
    return cell.row(status, error)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if not isinstance(exc, BenchError) else text


def load_dataset(registry: Registry, name: str, overrides: dict, data_dir: Path) -> DataSplits:
    component = registry.get("dataset", name)
    params = {**component.params, **overrides}
    try:
        splits = component.factory(Path(data_dir), **params)
    except BenchError:
        raise
    except Exception as exc:
        raise BenchError(f"dataset '{name}' failed to load: {_one_line(exc)}") from exc
    if not isinstance(splits, DataSplits):
        raise BenchError(f"dataset '{name}' returned {type(splits).__name__}, not bench.DataSplits")
    splits.validate(name)
    return splits


def available_datasets(registry: Registry, names: list[str], data_dir: Path) -> tuple[list[str], dict[str, str]]:
    """Split dataset names into those that load here and those unavailable (name -> reason)."""
    ok, missing = [], {}
    for name in names:
        try:
            load_dataset(registry, name, {}, data_dir)
        except DatasetUnavailable as exc:
            missing[name] = str(exc)
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
    #: Per-cell epoch bars; only executors that train in the driver's process can show them.
    epoch_bar_factory: Callable[[Cell], Any] | None = None
    execution: Execution | None = None

    @property
    def spec(self) -> WorkSpec:
        return WorkSpec(tuple(self.plugin_modules), str(self.data_dir), str(self.device), self.execution)


class Executor(Protocol):
    """Runs cells somewhere and hands their records back as they finish (see ``bench_register_executors``)."""

    def run(self, tasks: list[tuple[int, Cell]], job: Job) -> Iterator[dict[str, Any]]:
        """Yield one record per ``(index, cell)`` task, in any order, each as soon as it is done."""


class DataCache:
    """Keeps one dataset resident on the device at a time; a load failure is remembered as the error."""

    def __init__(self) -> None:
        self._loaded: dict[str, DataSplits | BaseException] = {}
        #: Seconds the last load took, until the cell that caused it claims them (``take_load_time``).
        self._load_time = 0.0

    def get(self, registry: Registry, cell: Cell, data_dir: Path, device: torch.device) -> DataSplits:
        key = json.dumps([cell.dataset, cell.override("dataset"), str(device)], sort_keys=True)
        if key not in self._loaded:
            self._loaded.clear()  # keep one dataset resident at a time
            watch = Stopwatch(device)
            try:
                with watch.phase("load"):
                    self._loaded[key] = load_dataset(registry, cell.dataset, cell.override("dataset"),
                                                     data_dir).to(device)
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
                 data_dir: Path, epoch_bar_factory=None, execution: Execution | None = None) -> dict[str, Any]:
    """Train one cell and build its record; a failing cell becomes a ``failed`` (or ``skipped``) record.

    An ``ok`` record carries the final weights under ``"state_dict"`` and the class templates under
    ``"templates_state"`` for the driver to store.
    Only Ctrl-C and corrupt data (:class:`DataCorrupt`, which stops the run) propagate.
    """
    record: dict[str, Any] = {"index": index}
    try:
        data = cache.get(registry, cell, data_dir, device)
        record.update(_train_one(cell, registry, data, device, epoch_bar_factory, execution))
        record["row"]["data_time_s"] += cache.take_load_time()
    except (KeyboardInterrupt, DataCorrupt):
        raise
    except Exception as exc:
        record = _error_record(index, cell, exc)
    if record["row"]["status"] == "failed" and device.type == "cuda":
        torch.cuda.empty_cache()  # the failed cell's tensors are gone now; give their memory back
    return record


def _error_record(index: int, cell: Cell, exc: BaseException) -> dict[str, Any]:
    """The record of a cell that raised: ``skipped`` for an incompatible cell, else ``failed``."""
    if isinstance(exc, IncompatibleCell):
        return {"index": index, "row": _row(cell, "skipped", str(exc))}
    message = _one_line(exc)
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        message += " (out of device memory: try a smaller --batch-size or model)"
    record = {"index": index, "row": _row(cell, "failed", message)}
    if not isinstance(exc, BenchError):
        record["traceback"] = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return record


def train_group_records(tasks: list[tuple[int, Cell]], registry: Registry, cache: DataCache, device: torch.device,
                        data_dir: Path, epoch_bar_factory=None, execution: Execution | None = None
                        ) -> list[dict[str, Any]]:
    """Train a fused group (cells of one :func:`bench.fuse.fuse_key`) as one stacked model; one record per
    member, each what :func:`train_record` would give for that cell, plus ``fused_group``/``fused_size``."""
    from bench.fuse import batched_optimizer_for
    from bench.fused_trainer import train_group

    if len(tasks) == 1:
        return [train_record(*tasks[0], registry, cache, device, data_dir, epoch_bar_factory, execution)]
    cells = [cell for _, cell in tasks]
    first = cells[0]
    bar = None
    try:
        data = cache.get(registry, first, data_dir, device)
        load_time = cache.take_load_time()
        model_c, loss_c = registry.get("model", first.model), registry.get("loss", first.loss)
        model_params = {**model_c.params, **first.override("model")}

        def factory():
            return model_c.factory(data.input_shape, data.num_classes, **model_params)

        loss_fn = loss_c.factory(**{**loss_c.params, **first.override("loss")})
        bar = epoch_bar_factory(first) if epoch_bar_factory else None
        results = train_group(cells, factory, loss_fn, data, device, execution,
                              batched_optimizer_for(registry, first.recipe.optimizer),
                              on_epoch=(lambda epoch, rows: bar.update(1)) if bar else None)
    except (KeyboardInterrupt, DataCorrupt):
        raise
    except Exception as exc:  # what fails the whole group (e.g. the factory) fails each member alike
        results = [exc] * len(cells)
    finally:
        if bar is not None:
            bar.close()
    records = []
    for (index, cell), result in zip(tasks, results):
        if isinstance(result, BaseException):
            records.append(_error_record(index, cell, result))
            continue
        model = factory()
        model.load_state_dict(result.state_dict)
        records.append({"index": index, **_result_record(cell, result, data, model.to(device))})
    if records and "data_time_s" in records[0]["row"]:
        records[0]["row"]["data_time_s"] += load_time
    if device.type == "cuda" and any(r["row"]["status"] == "failed" for r in records):
        torch.cuda.empty_cache()
    return records


def failed_record(index: int, cell: Cell, error: str) -> dict[str, Any]:
    """The record of a cell whose worker died (or was lost) before it could report."""
    return {"index": index, "row": _row(cell, "failed", error)}


#: Per worker process: registries by plugin modules, and the resident dataset.
_WORKER_REGISTRIES: dict[tuple[str, ...], Registry] = {}
_WORKER_DATA = DataCache()


def execute_cell(index: int, cell: Cell, spec: WorkSpec) -> dict[str, Any]:
    """Train one cell in a worker process from picklable inputs; returns a picklable record.

    The plugin host and the dataset are built on first use and cached for the life of the worker
    process. The weights come back as safetensors bytes. Corrupt data comes back as
    ``{"fatal": message}``: the driver stops the run, as it would in-process.
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
        return {"index": index, "fatal": str(exc)}
    return _picklable(record)


def execute_group(tasks: list[tuple[int, Cell]], spec: WorkSpec) -> list[dict[str, Any]]:
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
        return [{"index": index, "fatal": str(exc)} for index, _ in tasks]
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
            return None, f"the worker could not load the plugins: {_one_line(exc)}"
    return registry, ""


def _picklable(record: dict[str, Any]) -> dict[str, Any]:
    """A record with its tensors as safetensors bytes."""
    from safetensors.torch import save

    for key in TENSOR_KEYS:
        if record.get(key) is not None:
            record[key] = save(record[key])
    return record


class LocalExecutor:
    """In the driver's process, one cell after another: the default."""

    def run(self, tasks: list[tuple[int, Cell]], job: Job) -> Iterator[dict[str, Any]]:
        cache = DataCache()
        for group in fused_groups(tasks, job.execution):
            yield from train_group_records(group, job.registry, cache, job.device, job.data_dir,
                                           job.epoch_bar_factory, job.execution)


def fused_groups(tasks: list[tuple[int, Cell]], execution: Execution | None) -> list[list[tuple[int, Cell]]]:
    """The tasks grouped for fused training (bench/fuse.py), or one group per task with ``fuse`` off."""
    from bench.fuse import fuse_key, group_cells

    execution = execution or Execution()
    if execution.fuse == "off":
        return [[task] for task in tasks]
    return group_cells(tasks, execution.fuse_max or None, key=lambda task: fuse_key(task[1]))


def run_cells(
    cells: list[Cell],
    registry: Registry,
    store: RunStore,
    device: torch.device,
    data_dir: Path,
    progress: Callable[[Cell, dict[str, Any]], None] | None = None,
    epoch_bar_factory: Callable[[Cell], Any] | None = None,
    done: dict[str, dict[str, Any]] | None = None,
    executor: Executor | None = None,
    plugin_modules: tuple[str, ...] = (),
    execution: Execution | None = None,
) -> RunSummary:
    """Train every cell and persist each outcome as it happens; a failing cell never stops the grid.

    ``done`` maps the ids of cells finished by an earlier run to their rows: those are not trained
    again, their rows go into the summary as they are. Corrupt data (:class:`DataCorrupt`) and
    Ctrl-C stop the grid; everything finished before is already on disk.

    ``executor`` decides where cells train (default: here, one after another); whichever it is,
    this process alone writes the records, through ``store``, as they arrive.
    """
    done = done or {}
    rows: dict[int, dict[str, Any]] = {i: done[c.cell_id] for i, c in enumerate(cells) if c.cell_id in done}
    tasks = [(i, c) for i, c in enumerate(cells) if c.cell_id not in done]
    job = Job(registry, device, Path(data_dir), tuple(plugin_modules), epoch_bar_factory, execution)
    records = (executor or LocalExecutor()).run(tasks, job)
    try:
        for record in records:
            if "fatal" in record:
                raise DataCorrupt(record["fatal"])
            cell = cells[record["index"]]
            _write_tensors(record, cell, store)
            store.write_cell(record)
            rows[record["index"]] = record["row"]
            if progress:
                progress(cell, record["row"])
    finally:
        close = getattr(records, "close", None)
        if close is not None:
            close()  # stop the executor's workers, also on Ctrl-C or corrupt data
    return RunSummary(rows=[rows[i] for i in sorted(rows)])


def _write_tensors(record: dict[str, Any], cell: Cell, store: RunStore) -> None:
    """Store the record's weights and templates (tensors, or safetensors bytes from a worker) as files."""
    from safetensors.torch import load

    for key in TENSOR_KEYS:
        tensors = record.pop(key, None)
        if tensors is None:
            continue
        if isinstance(tensors, bytes):
            tensors = load(tensors)
        if key == "state_dict":
            record["row"]["weights"] = store.write_weights(cell.cell_id, tensors)
        else:
            record["templates"]["path"] = store.write_weights(f"{cell.cell_id}.templates", tensors)


def _train_one(cell: Cell, registry: Registry, data: DataSplits, device: torch.device,
               epoch_bar_factory, execution: Execution | None = None) -> dict[str, Any]:
    model_c, loss_c = registry.get("model", cell.model), registry.get("loss", cell.loss)
    torch.manual_seed(cell.seed)
    model = model_c.factory(data.input_shape, data.num_classes, **{**model_c.params, **cell.override("model")})
    if not isinstance(model, torch.nn.Module):
        raise BenchError(f"model '{cell.model}' factory returned {type(model).__name__}, not a torch.nn.Module")
    loss_fn = loss_c.factory(**{**loss_c.params, **cell.override("loss")})
    bar = epoch_bar_factory(cell) if epoch_bar_factory else None
    try:
        result = train_cell(cell, model, loss_fn, data, device, on_epoch=(lambda row: bar.update(1)) if bar else None,
                            execution=execution)
    finally:
        if bar is not None:
            bar.close()
    return _result_record(cell, result, data, model)


def _result_record(cell: Cell, result, data: DataSplits, model: torch.nn.Module) -> dict[str, Any]:
    """The record of a trained cell (``model`` holds its final weights, for the class templates)."""
    row = _row(cell, "ok")
    row.update(result.metrics)
    row.update(result.timing)
    row.update(result.execution)
    row["n_params"] = result.n_params
    row["weights"] = ""  # the driver stores the weights and fills this in
    base = {k: row[k] for k in ("cell_id", "model", "loss", "dataset", "params", "seed")}
    history = [{**base, **h} for h in result.history]
    return {"row": row, "history": history, "confusion": result.confusion, "classes": data.classes,
            "input_shape": list(data.input_shape), "state_dict": result.state_dict,
            **template_entry(model, data)}
