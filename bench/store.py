"""The run directory: one JSON record per finished cell, tables rebuilt from them, weights, env.

Layout of a run directory::

    results.csv   one row per cell (RESULT_COLUMNS)
    history.csv   one row per cell and epoch (HISTORY_COLUMNS)
    env.json      versions, device, CPU, threads, command line
    cells/ID.json the record of one cell (the source of truth; the CSVs are rebuilt from these)
    weights/ID.safetensors  final weights (tensors only: loading them never unpickles code)

Every file is written to a temporary name and renamed, so a crash at any moment leaves either
the old file or the new one, never a torn one. A cell's record is written only after its weights,
so a record marks a cell whose outputs are all on disk: a rerun skips exactly those (see
:meth:`RunStore.finished`).
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from bench.config import IDENTITY_COLUMNS
from bench.errors import BenchError

#: One row per cell: its id and identity (bench.config), then outcome, metrics, timings and how it ran.
RESULT_COLUMNS = [
    "cell_id", *IDENTITY_COLUMNS, "status", "error", "test_acc", "test_loss", "val_acc", "val_loss",
    "train_time_s", "epoch_time_s", "eval_time_s", "samples_per_s", "n_params", "weights",
    "data_time_s", "warmup_time_s", "step", "cuda_graphs", "compiled", "execution_note", "fused_group", "fused_size",
]
#: One row per cell and epoch.
HISTORY_COLUMNS = [
    "cell_id", "model", "loss", "dataset", "params", "seed", "epoch", "train_loss", "train_acc", "val_loss",
    "val_acc", "epoch_time_s",
]


def atomic_write(path: Path, data: bytes | str) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    """Make a rename durable across a power loss (a process crash alone cannot undo it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems cannot fsync a directory
    finally:
        os.close(fd)


def _csv_text(rows: list[dict[str, Any]], columns: list[str]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in columns})
    return buffer.getvalue()


class RunStore:
    """Reads and writes one run directory."""

    def __init__(self, root: Path | str):
        self.root = Path(root)
        if self.root.exists() and not self.root.is_dir():
            raise BenchError(f"--out {self.root}: exists and is not a directory")

    @property
    def cells_dir(self) -> Path:
        return self.root / "cells"

    def create(self) -> None:
        try:
            self.cells_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise BenchError(f"cannot create the run directory {self.root}: {exc.strerror}") from None

    def write_env(self, env: dict[str, Any]) -> None:
        atomic_write(self.root / "env.json", json.dumps(env, indent=2, sort_keys=True) + "\n")

    def read_env(self) -> dict[str, Any]:
        path = self.root / "env.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def write_weights(self, cell_id: str, tensors: dict) -> str:
        """Save tensors with safetensors; returns the path relative to the run directory."""
        from safetensors.torch import save

        rel = f"weights/{cell_id}.safetensors"
        atomic_write(self.root / rel, save({k: v.contiguous() for k, v in tensors.items()}))
        return rel

    def write_cell(self, record: dict[str, Any]) -> None:
        """Persist one finished (or failed) cell, then rebuild the tables."""
        atomic_write(self.cells_dir / f"{record['row']['cell_id']}.json", json.dumps(record, sort_keys=True))
        self.rebuild_tables()

    def records(self) -> list[dict[str, Any]]:
        """Every cell record, in grid order."""
        records = []
        if self.cells_dir.is_dir():
            for path in self.cells_dir.glob("*.json"):
                try:
                    records.append(json.loads(path.read_text()))
                except (OSError, json.JSONDecodeError):
                    continue  # only a temporary file can be partial; records are renamed into place
        return sorted(records, key=lambda r: (r.get("index", 0), r["row"]["cell_id"]))

    def finished(self) -> dict[str, dict[str, Any]]:
        """Rows of the cells already done (status ``ok`` with their weights on disk, or ``skipped``),
        by cell id. Failed cells are not done: a rerun retries them."""
        done = {}
        for record in self.records():
            row = record["row"]
            if row.get("status") == "skipped" or (
                    row.get("status") == "ok" and (not row.get("weights") or (self.root / row["weights"]).is_file())):
                done[row["cell_id"]] = row
        return done

    def rebuild_tables(self) -> None:
        records = self.records()
        rows = [r["row"] for r in records]
        history = [h for r in records for h in r.get("history", [])]
        atomic_write(self.root / "results.csv", _csv_text(rows, RESULT_COLUMNS))
        atomic_write(self.root / "history.csv", _csv_text(history, HISTORY_COLUMNS))

    def results(self):
        """``results.csv`` as a pandas DataFrame."""
        import pandas as pd

        path = self.root / "results.csv"
        if not path.exists():
            raise BenchError(f"{self.root} is not a run directory (no results.csv)")
        return pd.read_csv(path, keep_default_na=False, na_values=[""])

    def history(self):
        import pandas as pd

        return pd.read_csv(self.root / "history.csv")
