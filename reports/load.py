"""Reads run directories into one set of frames, each row tagged with its run."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.errors import BenchError
from bench.store import RunStore


@dataclass
class Run:
    """One run directory: its label in the report, its environment and its cell records."""

    label: str
    root: Path
    env: dict[str, Any]
    records: dict[str, dict[str, Any]] = field(repr=False)  # cell_id -> record


@dataclass
class Runs:
    """Several runs read together; ``results`` and ``history`` carry ``run`` and label columns."""

    runs: list[Run]
    results: pd.DataFrame
    history: pd.DataFrame
    #: Report directories given among the run directories (``bench report runs/*``), left out.
    skipped_reports: list[Path] = field(default_factory=list)

    @property
    def several(self) -> bool:
        return len(self.runs) > 1

    def record(self, run: str, cell_id: str) -> dict[str, Any]:
        return next(r for r in self.runs if r.label == run).records.get(cell_id, {})

    def templates(self, run: str, cell_id: str) -> tuple[np.ndarray | None, str, str]:
        """``(templates [C, *input_shape] or None, kind, why not)`` of one cell."""
        entry = self.record(run, cell_id).get("templates") or {}
        if "path" not in entry:
            return None, "", entry.get("error", "no templates were recorded for this cell")
        root = next(r for r in self.runs if r.label == run).root
        try:
            from safetensors.numpy import load_file

            return load_file(str(root / entry["path"]))["templates"], entry.get("kind", ""), ""
        except Exception as exc:  # a missing or damaged file: say so in the report
            return None, "", f"cannot read {entry['path']}: {type(exc).__name__}: {exc}"


def _labels(roots: list[Path]) -> list[str]:
    """Short unique labels: the folder names, or more of the path where names repeat."""
    resolved = [r.resolve() for r in roots]
    for depth in range(1, max(len(r.parts) for r in resolved) + 1):
        labels = ["/".join(r.parts[-depth:]) for r in resolved]
        if len(set(labels)) == len(labels):
            return labels
    return [str(r) for r in resolved]


def _split_params(row: pd.Series) -> dict[str, str]:
    """Model, loss and dataset labels that carry the swept parameters, e.g. ``mlp [hidden=64]``."""
    try:
        params = json.loads(row["params"]) if isinstance(row["params"], str) and row["params"] else {}
    except json.JSONDecodeError:
        params = {}
    labels = {}
    for kind in ("model", "loss", "dataset"):
        name = str(row[kind])
        own = [f"{k[len(name) + 1:]}={v}" for k, v in params.items() if k.startswith(f"{name}.")]
        labels[f"{kind}_label"] = f"{name} [{', '.join(own)}]" if own else name
    return labels


def _with_labels(frame: pd.DataFrame) -> pd.DataFrame:
    if frame.empty:
        return frame.assign(model_label=[], loss_label=[], dataset_label=[])
    labels = frame.apply(_split_params, axis=1, result_type="expand")
    return pd.concat([frame, labels], axis=1)


#: The file that marks a directory as a gridbench report (written by ``reports.build_report``).
REPORT_MARKER = "report.json"


def is_report_dir(root: Path) -> bool:
    """A report that ``bench report`` wrote (no results of its own), e.g. one that a glob picked up."""
    if (root / "results.csv").exists():
        return False
    return (root / REPORT_MARKER).is_file() or ((root / "index.html").is_file() and (root / "summary.csv").is_file())


def read_runs(paths: list[Path | str]) -> Runs:
    """Read every run directory; a path that is not one is a clear error.

    A report directory among several paths (``bench report runs/*`` after an earlier multi-run report
    was written into ``runs/``) is left out and listed in ``skipped_reports``; given alone, it is an error.
    """
    if not paths:
        raise BenchError("no run directory given")
    roots = [Path(p) for p in paths]
    reports = [root for root in roots if root.is_dir() and is_report_dir(root)]
    if reports and len(reports) == len(roots):
        raise BenchError(f"{reports[0]} is a gridbench report, not a run directory: give the run directories "
                         "it was made from (its index.html lists them)")
    roots = [root for root in roots if root not in reports]
    seen = set()
    for root in roots:
        if root.resolve() in seen:
            raise BenchError(f"run directory {root} given twice")
        seen.add(root.resolve())
    runs, results, history = [], [], []
    for label, root in zip(_labels(roots), roots):
        if not root.is_dir():
            raise BenchError(f"{root}: no such run directory")
        store = RunStore(root)
        frame = store.results()
        records = {r["row"]["cell_id"]: r for r in store.records()}
        runs.append(Run(label, root, store.read_env(), records))
        results.append(frame.assign(run=label))
        hist_path = root / "history.csv"
        if hist_path.exists() and hist_path.stat().st_size:
            hist = store.history()
            hist = hist.merge(frame[["cell_id", "device"]], on="cell_id", how="left")
            history.append(hist.assign(run=label))
    results_frame = _with_labels(pd.concat(results, ignore_index=True))
    history_frame = _with_labels(pd.concat(history, ignore_index=True)) if history else pd.DataFrame()
    return Runs(runs, results_frame, history_frame, reports)
