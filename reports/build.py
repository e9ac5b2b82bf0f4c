"""Builds a report directory from run directories: tables, figures and index.html."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from html import escape
from pathlib import Path

import pandas as pd

from bench import stats
from bench.store import atomic_write
from reports import cellfigs, figures, html
from reports.load import REPORT_MARKER, Runs, prepare_report_dir, read_runs
from reports.tables import Tables, make_tables

RUN_FACTS = ("device", "device_name", "torch", "gridbench", "cpu", "torch_threads", "command", "started")


@dataclass
class Report:
    out: Path
    index: Path
    tables: Tables
    figures: dict[str, Path]  # name -> comparative figure
    cell_figures: dict[str, list[Path]]  # "run/cell_id" -> its template and confusion figures
    skipped_reports: list[Path] = field(default_factory=list)  # report directories given as runs, left out

    def terminal(self) -> str:
        """The summary table as plain text, for the terminal."""
        shown = self.tables.display(self.tables.summary)
        if "error" in shown and not shown["error"].astype(bool).any():
            shown = shown.drop(columns="error")
        if not len(shown):
            return "(no cells)"
        return shown.to_markdown(index=False, tablefmt="simple", disable_numparse=True)


def _write_tables(frame: pd.DataFrame, shown: pd.DataFrame, out: Path, stem: str, table_id: str) -> None:
    atomic_write(out / f"{stem}.csv", frame.to_csv(index=False))
    # plugin names and errors are text, never markup: escape HTML; a '|' would split the column
    cells = shown.map(lambda v: escape(str(v), quote=False).replace("|", "\\|"))
    markdown = cells.to_markdown(index=False, disable_numparse=True) if len(shown) else "(no cells)"
    atomic_write(out / f"{stem}.md", markdown + "\n")
    atomic_write(out / f"{stem}.html", html.standalone_table(shown, table_id, f"gridbench {stem}"))


def _cell_title(row: pd.Series, several: bool) -> str:
    title = (f"{row['model_label']} + {row['loss_label']} on {row['dataset_label']}, "
             f"seed {row['seed']} ({row['device']})")
    return f"{row['run']}: {title}" if several else title


def _number(value, fmt: str) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, fmt)


def _cells(runs: Runs, out: Path) -> tuple[list[html.CellEntry], dict[str, list[Path]]]:
    entries, made = [], {}
    run_index = {run.label: i for i, run in enumerate(runs.runs)}
    for _, row in runs.results.iterrows():
        safe_id = re.sub(r"[^0-9A-Za-z_-]", "_", str(row["cell_id"]))
        stem = f"r{run_index[row['run']]}-{safe_id}"
        title = _cell_title(row, runs.several)
        status = str(row["status"])
        error = "" if pd.isna(row["error"]) else str(row["error"])
        entry = html.CellEntry(
            anchor=f"cell-{stem}", title=title, status=status, error=error,
            facts={"cell": str(row["cell_id"]), "test accuracy": _number(row.get("test_acc"), ".4f"),
                   "test loss": _number(row.get("test_loss"), ".4g"),
                   "median epoch time (s)": _number(row.get("epoch_time_s"), ".4g"),
                   "parameters": _number(row.get("n_params"), ",.0f")},
        )
        record = runs.record(row["run"], row["cell_id"])
        if status == "ok":
            classes = [str(c) for c in record.get("classes", [])]
            templates, kind, why = runs.templates(row["run"], row["cell_id"])
            if templates is not None:
                path = cellfigs.templates_figure(templates, classes, kind, title, out / "figures" / "cells"
                                                 / f"{stem}-templates.png")
                caption = "class templates: " + ("weights" if kind == "weights" else "input gradient")
                entry.figures.append((caption, path))
            else:
                entry.notes.append(f"no template figure: {why}")
            if record.get("confusion"):
                path = cellfigs.confusion_figure(record["confusion"], classes, title,
                                                 out / "figures" / "cells" / f"{stem}-confusion.png")
                entry.figures.append(("confusion matrix (test set)", path))
            else:
                entry.notes.append("no confusion matrix was recorded for this cell")
        made[f"{row['run']}/{row['cell_id']}"] = [p for _, p in entry.figures]
        entries.append(entry)
    return entries, made


def _comparisons(runs: Runs) -> pd.DataFrame:
    """Paired comparisons on shared seeds (``bench.stats.compare``), within each run."""
    frames = []
    for run in runs.runs:
        results = runs.results[runs.results["run"] == run.label]
        table = stats.compare(results)
        if len(table):
            frames.append(table.assign(run=run.label) if runs.several else table)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _comparisons_shown(table: pd.DataFrame) -> pd.DataFrame:
    shown = pd.DataFrame({
        **({"run": table["run"]} if "run" in table else {}),
        "dataset": table["dataset"], "a": table["a"], "b": table["b"], "seeds": table["n"],
        "diff a-b": [_number(v, "+.4f") for v in table["diff"]],
        "95% CI": [f"[{_number(lo, '+.4f')}, {_number(hi, '+.4f')}]" for lo, hi in zip(table["ci_low"],
                                                                                     table["ci_high"])],
        "p": [_number(v, ".3g") for v in table["p"]],
        "p (Holm)": [_number(v, ".3g") for v in table["p_holm"]],
        "verdict": table["verdict"],
    })
    return shown


def _runs_table(runs: Runs) -> pd.DataFrame:
    rows = []
    for run in runs.runs:
        counts = runs.results.loc[runs.results["run"] == run.label, "status"].value_counts()
        rows.append({"run": run.label, "path": str(run.root),
                     "cells": ", ".join(f"{n} {s}" for s, n in counts.items()) or "none",
                     **{k: str(run.env.get(k, "")) for k in RUN_FACTS}})
    return pd.DataFrame(rows)


def default_out(run_dirs: list[Path]) -> Path:
    """``RUN_DIR/report`` for one run; for several, ``report-<first>-vs-<n-1 more>`` beside the first."""
    first = Path(run_dirs[0])
    if len(run_dirs) == 1:
        return first / "report"
    return first.parent / f"report-{first.name}-and-{len(run_dirs) - 1}-more"


def build_report(run_dirs: list[Path | str], out: Path | str | None = None) -> Report:
    """Read the run directories and write the report; returns where everything went."""
    runs = read_runs([Path(p) for p in run_dirs])
    out = Path(out) if out is not None else default_out([run.root for run in runs.runs])
    prepare_report_dir(out, [run.root for run in runs.runs])  # refuses a folder that is not a report
    tables = make_tables(runs)
    summary_shown = tables.display(tables.summary)
    if "error" in summary_shown and not summary_shown["error"].astype(bool).any():
        summary_shown = summary_shown.drop(columns="error")  # no failures: no empty column
    _write_tables(tables.summary, summary_shown, out, "summary", "summary")
    _write_tables(tables.cells, tables.display(tables.cells), out, "cells", "cells")
    comparisons = _comparisons(runs)
    if len(comparisons):
        _write_tables(comparisons, _comparisons_shown(comparisons), out, "comparisons", "comparisons")

    fig_dir = out / "figures"
    made = {
        "val_loss": figures.curves(runs, "val_loss", fig_dir / "val_loss.png"),
        "val_acc": figures.curves(runs, "val_acc", fig_dir / "val_acc.png"),
        "heatmap": figures.heatmap(runs, tables.summary, fig_dir / "accuracy_heatmap.png"),
        "accuracy_vs_time": figures.accuracy_vs_time(runs, fig_dir / "accuracy_vs_time.png"),
        "epoch_time": figures.epoch_time(runs, fig_dir / "epoch_time.png"),
    }
    captions = {
        "val_loss": "Validation loss per epoch (mean over seeds, 95% CI band): hue is the loss, style the model",
        "val_acc": "Validation accuracy per epoch (mean over seeds, 95% CI band)",
        "heatmap": "Mean test accuracy, model × loss, per dataset",
        "accuracy_vs_time": "Test accuracy vs training time, one point per cell; the Pareto front is circled",
        "epoch_time": "Median epoch time by model and device",
    }
    notes = [] if all(made.values()) else ["Figures without any finished cell to draw are left out."]
    cells, cell_figures = _cells(runs, out)
    title = "gridbench report: " + ", ".join(run.label for run in runs.runs)
    page = html.page(title, _runs_table(runs), summary_shown,
                     [(captions[k], p) for k, p in made.items() if p is not None], cells, notes,
                     _comparisons_shown(comparisons) if len(comparisons) else None)
    index = out / "index.html"
    atomic_write(index, page)
    atomic_write(out / REPORT_MARKER, json.dumps({"runs": [str(run.root.resolve()) for run in runs.runs]}, indent=1)
                 + "\n")
    return Report(out, index, tables, {k: p for k, p in made.items() if p is not None}, cell_figures,
                  runs.skipped_reports)
