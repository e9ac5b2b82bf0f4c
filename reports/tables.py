"""The summary table (one row per configuration, seeds aggregated) and the per-cell table.

A configuration is what :mod:`bench.config` says it is (components, parameters, recipe, ``--limit``,
device kind): rows of one configuration differ only by seed. The CSV tables carry every configuration
column; the tables shown to people (terminal, Markdown, HTML) show the recipe columns only where they
vary (see :func:`Tables.display`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import pandas as pd

from bench.config import CONFIG_COLUMNS, row_config
from bench.record import format_value
from bench.references import differences, far_below, matching, not_comparable
from bench.reports.load import LABELLED, Runs
from bench.safe_text import csv_text, printable
from bench.stats import interval, interval_text, mean_ci, metric_range, results_only

#: Recipe columns shown under their component's label (with its parameters) rather than the bare name.
LABEL_OF = {kind: f"{kind}_label" for kind in LABELLED}
#: Reference columns of the CSV tables (present when a reference applies to some row). ``reference_gap``
#: and ``far_below`` are empty and ``not_comparable`` says why where the training is not comparable with
#: the published one (:func:`bench.references.not_comparable`).
REFERENCE_COLUMNS = ["reference", "reference_test_error", "reference_gap", "far_below", "not_comparable"]


@dataclass
class Tables:
    summary: pd.DataFrame  # one row per configuration: configuration columns, labels, metrics (for CSV)
    cells: pd.DataFrame  # one row per cell (for CSV)
    varying: list[str] = field(default_factory=list)  # the recipe columns (and limit) that vary
    several: bool = False  # more than one run: a run column leads

    def csv(self, frame: pd.DataFrame) -> str:
        """``frame`` as CSV: every column (the run's only with several runs), text cells spreadsheet-safe."""
        return csv_text(frame if self.several else frame.drop(columns=["run"], errors="ignore"))

    def display(self, frame: pd.DataFrame) -> pd.DataFrame:
        """``frame`` for people: component labels with their parameters, the recipe columns that vary,
        accuracy as mean ± CI, the reference and the gap to it, rounded numbers, blanks for missing."""
        return pd.DataFrame({name: values for name, (values, _) in self.columns(frame).items()})

    def columns(self, frame: pd.DataFrame) -> dict[str, tuple[list[str], list | None]]:
        """The displayed columns, each as ``(texts, sort values or None)``: the numbers a browser sorts by."""
        out: dict[str, tuple[list[str], list | None]] = {}
        names = ["run"] if self.several else []
        names += ["dataset", "model", "loss", *self.varying]
        names += ["seed", "device"] if "seed" in frame else ["device", "seeds"]
        for name in names:
            column = frame[LABEL_OF.get(name, name)]
            out[name] = ([format_value(name, v) for v in column], list(column) if _numeric(column) else None)
        if "seed" in frame:
            out["status"] = ([str(v) for v in frame["status"]], None)
        if "test_acc_ci95" in frame:
            out["test_acc (mean ± 95% CI)"] = ([_acc(m, h) for m, h in zip(frame["test_acc"], frame["test_acc_ci95"])],
                                                list(frame["test_acc"]))
        else:
            out["test_acc"] = ([format_value("test_acc", v) for v in frame["test_acc"]], list(frame["test_acc"]))
        if "reference" in frame and frame["reference"].astype(bool).any():
            out["reference (test error)"] = ([_reference(r, e) for r, e in zip(frame["reference"],
                                                                               frame["reference_test_error"])],
                                             list(frame["reference_test_error"]))
            out["gap to reference"] = ([_gap(g, f, n) for g, f, n in zip(frame["reference_gap"], frame["far_below"],
                                                                          frame["not_comparable"])],
                                       list(frame["reference_gap"]))
        for name in ("test_loss", "epoch_time_s", "samples_per_s", "n_params"):
            out[name] = ([format_value(name, v) for v in frame[name]], list(frame[name]))
        if "seed" not in frame:
            out["status"] = ([str(v) for v in frame["status"]], None)
        if frame["error"].astype(bool).any():
            out["error"] = ([format_value("error", v) for v in frame["error"]], None)
        if "cell_id" in frame:
            out["cell"] = ([str(v) for v in frame["cell_id"]], None)
        return out


def terminal_table(frame: pd.DataFrame) -> str:
    """``frame`` as a plain-text table for the terminal, each cell :func:`~bench.safe_text.printable` (so that
    the columns line up as printed)."""
    shown = frame.map(lambda v: printable(v, newlines=False)).rename(columns=lambda c: printable(c, newlines=False))
    return shown.to_markdown(index=False, tablefmt="simple", disable_numparse=True)


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value == ""


def _acc(mean, half) -> str:
    """``0.9733 ± 0.0876``, or ``0.6385 [0.2516, 1.0000]`` where the interval is clipped to [0, 1]."""
    return "" if _missing(mean) else interval_text(mean, math.nan if _missing(half) else half, metric_range("test_acc"))


def _reference(label, error) -> str:
    return "" if _missing(error) or not label else f"{error:.2%} {label}"


def _gap(gap, flagged, why="") -> str:
    if why and not _missing(why):
        return f"not comparable: {why}"
    if _missing(gap):
        return ""
    return f"{gap * 100:+.2f} pts" + (" ⚠ far below" if flagged is True else "")


def _numeric(column: pd.Series) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in column if not _missing(v))


def _reference_of(runs: Runs, run: str, config: dict) -> dict:
    """The first published reference (``env.json``) that applies to the configuration, or ``{}``."""
    found = matching(runs.run(run).env.get("references") or {}, config)
    return dict(found[0]) if found else {}


def _reference_columns(reference: dict, config: dict, accuracy: float) -> dict:
    if not reference:
        return {"reference": "", "reference_test_error": math.nan, "reference_gap": math.nan, "far_below": "",
                "not_comparable": ""}
    label = reference["label"]
    changed = differences(reference, config)
    if changed:
        label += " (published " + ", ".join(f"{k}={want}" for k, (want, _) in changed.items()) + "; here " + \
                 ", ".join(f"{k}={here}" for k, (_, here) in changed.items()) + ")"
    why = not_comparable(config)
    error = 1.0 - accuracy if not _missing(accuracy) and not why else math.nan
    gap = error - reference["test_error"] if not math.isnan(error) else math.nan
    return {"reference": label, "reference_test_error": reference["test_error"], "reference_gap": gap,
            "far_below": far_below(error, reference) if not math.isnan(error) else "", "not_comparable": why}


def _summarise(group: pd.DataFrame) -> dict:
    ok = group[group["status"] == "ok"]
    mean, std, half = mean_ci(ok["test_acc"].tolist())
    low, high = interval(mean, half, metric_range("test_acc"))
    statuses = group["status"].value_counts()
    status = "ok" if list(statuses.index) == ["ok"] else ", ".join(f"{n} {s}" for s, n in statuses.items())
    errors = group.loc[group["status"] != "ok", "error"].dropna().astype(str)
    return {
        "seeds": f"{len(ok)}/{len(group)}",
        "test_acc": mean, "test_acc_std": std, "test_acc_ci95": half, "test_acc_ci_low": low, "test_acc_ci_high": high,
        "test_loss": ok["test_loss"].mean() if len(ok) else math.nan,
        "epoch_time_s": ok["epoch_time_s"].median() if len(ok) else math.nan,
        "samples_per_s": ok["samples_per_s"].median() if len(ok) else math.nan,
        "n_params": ok["n_params"].iloc[0] if len(ok) else math.nan,
        "status": status,
        "error": "; ".join(dict.fromkeys(errors)) if len(errors) else "",
    }


def _best_first(frame: pd.DataFrame, acc: str) -> pd.DataFrame:
    """Datasets in the order they first appear; within each, best accuracy first, failures last."""
    order = {name: i for i, name in enumerate(dict.fromkeys(frame["dataset"]))}
    return (frame.assign(_d=frame["dataset"].map(order))
            .sort_values(["_d", acc], ascending=[True, False], na_position="last", kind="stable")
            .drop(columns="_d").reset_index(drop=True))


LABELS = ["label", "variant", *LABEL_OF.values()]


def make_tables(runs: Runs) -> Tables:
    results = runs.results
    lead = ["run"]  # always here; the CSV files leave it out for a single run (see Tables.csv)
    summary_columns = [*lead, *CONFIG_COLUMNS, *LABELS, "seeds", "test_acc", "test_acc_std", "test_acc_ci95",
                       "test_acc_ci_low", "test_acc_ci_high",
                       *REFERENCE_COLUMNS, "test_loss", "epoch_time_s", "samples_per_s", "n_params", "status", "error"]
    cell_columns = [*lead, "cell_id", *CONFIG_COLUMNS, "seed", *LABELS, "status", "test_acc", *REFERENCE_COLUMNS,
                    "test_loss", "epoch_time_s", "samples_per_s", "n_params", "error"]
    if results.empty:
        return Tables(pd.DataFrame(columns=summary_columns), pd.DataFrame(columns=cell_columns), [], runs.several)
    rows, cell_refs = [], {}
    finals = results_only(results)  # tuning trials are not results: the summary holds final rows only
    for index in results.index.difference(finals.index):
        cell_refs[index] = _reference_columns(None, row_config(results.loc[index]), math.nan)
    for _, group in finals.groupby(["run", "config"], sort=False, dropna=False):
        first = group.iloc[0]
        config = row_config(first)
        reference = _reference_of(runs, first["run"], config)
        stats = _summarise(group)
        rows.append({"run": first["run"], **config, "params": json.dumps(config["params"], sort_keys=True),
                     **{c: first[c] for c in LABELS}, **stats,
                     **_reference_columns(reference, config, stats["test_acc"])})
        for index, status, acc in zip(group.index, group["status"], group["test_acc"]):
            cell_refs[index] = _reference_columns(reference, config, acc if status == "ok" else math.nan)
    summary = _best_first(pd.DataFrame(rows)[summary_columns], "test_acc")
    cells = results.copy()
    refs = pd.DataFrame.from_dict(cell_refs, orient="index").reindex(results.index)
    cells = pd.concat([cells.drop(columns=[c for c in REFERENCE_COLUMNS if c in cells]), refs], axis=1)
    cells["error"] = cells["error"].astype(object).fillna("").astype(str)
    cells = _best_first(cells[cell_columns], "test_acc")
    if not summary["reference"].astype(bool).any():
        summary = summary.drop(columns=REFERENCE_COLUMNS)
        cells = cells.drop(columns=REFERENCE_COLUMNS)
    return Tables(summary, cells, list(runs.varying), runs.several)
