"""Reads run directories into one set of frames, each row tagged with its run."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.config import PARAM_KINDS, RECIPE_FIELDS, config_frame, config_keys, row_config, varying_label
from bench.errors import BenchError
from bench.files import enclosing
from bench.record import CellRecord
from bench.store import RunStore, atomic_write


@dataclass
class ReportedRun:
    """One run directory: its label in the report, its environment and its cell records."""

    label: str
    root: Path
    env: dict[str, Any]
    records: dict[str, CellRecord] = field(repr=False)  # cell_id -> record


@dataclass
class Runs:
    """Several runs read together; ``results`` and ``history`` carry ``run`` and label columns."""

    runs: list[ReportedRun]
    results: pd.DataFrame
    history: pd.DataFrame
    #: The recipe columns (and ``limit``) whose value differs between configurations, in RECIPE order.
    varying: list[str] = field(default_factory=list)
    #: Report directories given among the run directories (``bench report runs/*``), left out.
    skipped_reports: list[Path] = field(default_factory=list)

    @property
    def several(self) -> bool:
        return len(self.runs) > 1

    def run(self, label: str) -> ReportedRun:
        return next(r for r in self.runs if r.label == label)

    def record(self, run: str, cell_id: str) -> CellRecord | None:
        return self.run(run).records.get(cell_id)

    def templates(self, run: str, cell_id: str) -> tuple[np.ndarray | None, str, str]:
        """``(templates [C, *input_shape] or None, kind, why not)`` of one cell."""
        record = self.record(run, cell_id)
        entry = (record.templates if record is not None else None) or {}
        if "path" not in entry:
            return None, "", entry.get("error", "no templates were recorded for this cell")
        root = next(r for r in self.runs if r.label == run).root
        try:
            from safetensors.numpy import load_file

            path = RunStore(root).path_of(entry["path"])  # never a file outside the run (BenchError)
            return load_file(str(path))["templates"], entry.get("kind", ""), ""
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


#: Kinds of component whose parameters go into their label, e.g. ``mlp [hidden=64]``: all that take parameters.
LABELLED = PARAM_KINDS
#: The recipe columns, and ``limit``: shown in tables and figures where they vary across the report.
VARIANT_COLUMNS = (*RECIPE_FIELDS, "limit")


def _labels_of(config: dict[str, Any]) -> dict[str, str]:
    """Each component's name with its swept parameters, e.g. ``mlp [hidden=64]``."""
    params = config["params"]
    labels = {}
    for kind in LABELLED:
        name = str(config[kind])
        own = [f"{k[len(name) + 1:]}={v}" for k, v in params.items() if k.startswith(f"{name}.")]
        labels[f"{kind}_label"] = f"{name} [{', '.join(own)}]" if own else name
    return labels


def _show(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _with_labels(frame: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """``frame`` with ``config`` (the configuration's key, bench.config), per-component labels, ``label``
    (model+loss and what varies) and ``variant`` (the recipe columns that vary, e.g. ``lr=0.01``)."""
    extra = ["config", "label", "variant", *(f"{k}_label" for k in LABELLED)]
    if frame.empty:
        return frame.assign(**{c: pd.Series(dtype=object) for c in extra}), []
    canon = config_frame(frame)
    configs = [row_config(r) for r in canon.to_dict("records")]
    varying = [c for c in VARIANT_COLUMNS if len({_show(cfg[c]) for cfg in configs}) > 1]
    labels = pd.DataFrame([_labels_of(cfg) for cfg in configs], index=frame.index)
    out = frame.assign(config=config_keys(frame), label=varying_label(configs),
                       variant=[" ".join(f"{c}={_show(cfg[c])}" for c in varying) for cfg in configs])
    for column in VARIANT_COLUMNS:  # older run directories lack recipe columns: read them as their defaults
        out[column] = canon[column]
    return pd.concat([out, labels], axis=1), varying


#: The file that marks a directory as a gridbench report (written by ``reports.build_report``).
REPORT_MARKER = "report.json"


def is_report_dir(root: Path) -> bool:
    """A report that ``bench report`` wrote (no results of its own), e.g. one that a glob picked up."""
    if (root / "results.csv").exists():
        return False
    return (root / REPORT_MARKER).is_file() or ((root / "index.html").is_file() and (root / "summary.csv").is_file())


def _run_dir_above(path: Path) -> Path | None:
    """The run directory (resolved) that ``path`` is in or is, if any: an existing folder at or above it
    that ``bench run`` wrote."""
    return enclosing(path, lambda folder: RunStore(folder).is_run_dir())


def _nearest_existing(path: Path) -> Path:
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_output_file(path: Path | str, option: str) -> Path:
    """Refuse to write the output file ``path`` (``--markdown``) into a folder that does not exist (it
    is never created) or into a run directory (its files are bench run's)."""
    path = Path(path)
    parent = path.absolute().parent
    if not parent.is_dir():
        raise BenchError(f"{option} {path}: the folder {parent} does not exist (create it first)")
    if path.is_dir():
        raise BenchError(f"{option} {path}: is a folder, not a file")
    run = _run_dir_above(path.resolve().parent)
    if run is not None:
        raise BenchError(f"{option} {path}: would write into the run directory {run}, whose files bench run "
                         "alone writes; choose a file outside it")
    return path


def prepare_report_dir(out: Path, runs: list[Path]) -> None:
    """Make ``out`` the report directory of ``runs``, refusing to write where a report would overwrite or
    damage what is not a report: a folder that is neither new, empty nor an earlier gridbench report,
    one inside a run directory's ``cells/`` or ``weights/``, one inside another run directory, one
    whose parent folder does not exist, or an earlier report that holds a symlink. The marker
    (``report.json``) is written first, so a report killed half-way is still recognised as one (and may be
    overwritten)."""
    resolved = out.resolve()
    for run in runs:
        root = run.resolve()
        if resolved == root or any(resolved.is_relative_to(root / part) for part in ("cells", "weights")):
            raise BenchError(f"the report directory {out} would be inside the run directory {run} itself; "
                             f"choose another (the default is {run / 'report'})")
    other = _run_dir_above(_nearest_existing(out))
    if other is not None and other not in {run.resolve() for run in runs}:
        raise BenchError(f"the report directory {out} would be inside the run directory {other}, which is not "
                         "one of the runs reported; choose another")
    if not out.absolute().parent.is_dir():
        raise BenchError(f"the report directory {out}: its parent folder {out.absolute().parent} does not exist "
                         "(create it first)")
    if out.exists():
        if not out.is_dir():
            raise BenchError(f"the report directory {out} exists and is not a directory")
        entries = sorted(p.name for p in out.iterdir())
        if entries and not is_report_dir(out):
            shown = ", ".join(entries[:4]) + (f" and {len(entries) - 4} more" if len(entries) > 4 else "")
            raise BenchError(f"{out} is not empty and is not a gridbench report (it holds {shown}): a report "
                             "is written only into a new or empty directory or over an earlier report; choose another")
        link = next((Path(top, name) for top, dirs, files in os.walk(out) for name in [*dirs, *files]
                     if Path(top, name).is_symlink()), None)
        if link is not None:  # a report never holds one: writing through it would write outside the report
            raise BenchError(f"{link} is a symlink (to {os.readlink(link)}) in the report {out}: gridbench writes "
                             "only inside the report directory; remove it or choose another")
    try:
        out.mkdir(exist_ok=True)
    except OSError as exc:
        raise BenchError(f"cannot create the report directory {out}: {exc.strerror}") from None
    atomic_write(out / REPORT_MARKER, json.dumps({"runs": [str(r.resolve()) for r in runs]}, indent=1) + "\n")


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
        store = RunStore(root)  # rows and history come from the cell records (results.csv may be stale or cut)
        cell_records = store.records()
        frame = store.results(cell_records)
        records = {r.cell_id: r for r in cell_records}
        runs.append(ReportedRun(label, root, store.read_env(), records))
        results.append(frame.assign(run=label))
        hist = store.history(cell_records)
        if "cell_id" in hist.columns and len(hist):
            history.append(hist.assign(run=label))
    results_frame, varying = _with_labels(pd.concat(results, ignore_index=True))
    if history:
        per_cell = ["run", "cell_id", "device", "config", "label", "variant", *(f"{k}_label" for k in LABELLED)]
        history_frame = pd.concat(history, ignore_index=True)
        history_frame = history_frame.drop(columns=[c for c in per_cell if c in history_frame and c not in
                                                    ("run", "cell_id")])
        history_frame = history_frame.merge(results_frame[per_cell], on=["run", "cell_id"], how="inner")
    else:
        history_frame = pd.DataFrame()
    return Runs(runs, results_frame, history_frame, varying=varying, skipped_reports=reports)
