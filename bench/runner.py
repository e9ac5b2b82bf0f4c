"""Runs a list of cells: loads each dataset once onto the device, trains, records every outcome."""

from __future__ import annotations

import json
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from bench.data import DataSplits
from bench.errors import BenchError, DataCorrupt, DatasetUnavailable, IncompatibleCell
from bench.grid import Cell
from bench.host import Registry
from bench.store import RunStore
from bench.trainer import train_cell


@dataclass
class RunSummary:
    rows: list[dict[str, Any]] = field(default_factory=list)
    unavailable: dict[str, str] = field(default_factory=dict)

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [r for r in self.rows if r["status"] == "failed"]


def _row(cell: Cell, status: str, error: str = "") -> dict[str, Any]:
    cfg = cell.config
    return {"cell_id": cell.cell_id, "model": cell.model, "loss": cell.loss, "dataset": cell.dataset,
            "params": cell.params_json, "seed": cell.seed, "device": cell.device, "status": status,
            "error": error, "epochs": cfg.epochs, "batch_size": cfg.batch_size, "lr": cfg.lr,
            "optimizer": cfg.optimizer}


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


def run_cells(
    cells: list[Cell],
    registry: Registry,
    store: RunStore,
    device: torch.device,
    data_dir: Path,
    progress: Callable[[Cell, dict[str, Any]], None] | None = None,
    epoch_bar_factory: Callable[[Cell], Any] | None = None,
    done: dict[str, dict[str, Any]] | None = None,
) -> RunSummary:
    """Train every cell and persist each outcome as it happens; a failing cell never stops the grid.

    ``done`` maps the ids of cells finished by an earlier run to their rows: those are not trained
    again, their rows go into the summary as they are. Corrupt data (:class:`DataCorrupt`) and
    Ctrl-C stop the grid; everything finished before is already on disk.
    """
    summary = RunSummary()
    loaded: dict[str, Any] = {}
    done = done or {}
    for index, cell in enumerate(cells):
        if cell.cell_id in done:
            summary.rows.append(done[cell.cell_id])
            continue
        key = json.dumps([cell.dataset, cell.override("dataset")], sort_keys=True)
        record: dict[str, Any] = {"index": index}
        try:
            if key not in loaded:
                loaded.clear()  # keep one dataset resident at a time
                try:
                    loaded[key] = load_dataset(registry, cell.dataset, cell.override("dataset"), data_dir).to(device)
                except BenchError as exc:
                    loaded[key] = exc
            data = loaded[key]
            if isinstance(data, BaseException):
                raise data
            record.update(_train_one(cell, registry, data, device, store, epoch_bar_factory))
        except (KeyboardInterrupt, DataCorrupt):
            raise
        except IncompatibleCell as exc:
            record["row"] = _row(cell, "skipped", str(exc))
        except Exception as exc:
            message = _one_line(exc)
            if isinstance(exc, torch.cuda.OutOfMemoryError):
                message += " (out of device memory: try a smaller --batch-size or model)"
            record["row"] = _row(cell, "failed", message)
            if not isinstance(exc, BenchError):
                record["traceback"] = traceback.format_exc()
        if record["row"]["status"] == "failed" and device.type == "cuda":
            torch.cuda.empty_cache()  # the failed cell's tensors are gone now; give their memory back
        store.write_cell(record)
        summary.rows.append(record["row"])
        if progress:
            progress(cell, record["row"])
    return summary


def _train_one(cell: Cell, registry: Registry, data: DataSplits, device: torch.device, store: RunStore,
               epoch_bar_factory) -> dict[str, Any]:
    model_c, loss_c = registry.get("model", cell.model), registry.get("loss", cell.loss)
    torch.manual_seed(cell.seed)
    model = model_c.factory(data.input_shape, data.num_classes, **{**model_c.params, **cell.override("model")})
    if not isinstance(model, torch.nn.Module):
        raise BenchError(f"model '{cell.model}' factory returned {type(model).__name__}, not a torch.nn.Module")
    loss_fn = loss_c.factory(**{**loss_c.params, **cell.override("loss")})
    bar = epoch_bar_factory(cell) if epoch_bar_factory else None
    try:
        result = train_cell(cell, model, loss_fn, data, device, on_epoch=(lambda row: bar.update(1)) if bar else None)
    finally:
        if bar is not None:
            bar.close()
    row = _row(cell, "ok")
    row.update(result.metrics)
    row.update(result.timing)
    row["n_params"] = result.n_params
    row["weights"] = store.write_weights(cell.cell_id, result.state_dict)
    base = {k: row[k] for k in ("cell_id", "model", "loss", "dataset", "params", "seed")}
    history = [{**base, **h} for h in result.history]
    return {"row": row, "history": history, "confusion": result.confusion, "classes": data.classes,
            "input_shape": list(data.input_shape)}
