"""The summary table (one row per configuration, seeds aggregated) and the per-cell table."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from bench.stats import mean_ci
from reports.load import Runs

#: What identifies a configuration: every cell of one group differs only by its seed.
GROUP = ["dataset_label", "model_label", "loss_label", "device"]


@dataclass
class Tables:
    summary: pd.DataFrame  # numeric, for CSV
    cells: pd.DataFrame  # numeric, for CSV

    def display(self, frame: pd.DataFrame) -> pd.DataFrame:
        """``frame`` formatted for people: accuracy as mean ± CI, rounded numbers, blanks for missing."""
        out = pd.DataFrame(index=frame.index)
        for col in frame.columns:
            if col in ("test_acc_std", "test_acc_ci95"):
                continue
            if col == "test_acc" and "test_acc_ci95" in frame:
                out[col] = [_acc(m, h) for m, h in zip(frame["test_acc"], frame["test_acc_ci95"])]
            else:
                out[col] = [_fmt(col, v) for v in frame[col]]
        return out.rename(columns={"test_acc": "test_acc (mean ± 95% CI)"} if "test_acc_ci95" in frame else {})


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value == ""


def _acc(mean, half) -> str:
    if _missing(mean):
        return ""
    return f"{mean:.4f}" if _missing(half) else f"{mean:.4f} ± {half:.4f}"


def _fmt(col: str, value) -> str:
    if _missing(value):
        return ""
    if col in ("test_acc", "val_acc"):
        return f"{value:.4f}"
    if col in ("test_loss", "val_loss", "epoch_time_s", "train_time_s"):
        return f"{value:.4g}"
    if col == "samples_per_s":
        return f"{value:,.0f}"
    if col in ("n_params", "seed") and isinstance(value, float) and value.is_integer():
        return f"{int(value):,}" if col == "n_params" else str(int(value))
    if col == "n_params":
        return f"{value:,}"
    return str(value)


def _summarise(group: pd.DataFrame) -> pd.Series:
    ok = group[group["status"] == "ok"]
    mean, std, half = mean_ci(ok["test_acc"].tolist())
    if len(ok) < 2:
        std = half = math.nan  # one seed says nothing about the spread
    statuses = group["status"].value_counts()
    status = "ok" if list(statuses.index) == ["ok"] else ", ".join(f"{n} {s}" for s, n in statuses.items())
    errors = group.loc[group["status"] != "ok", "error"].dropna().astype(str)
    return pd.Series({
        "seeds": f"{len(ok)}/{len(group)}",
        "test_acc": mean, "test_acc_std": std, "test_acc_ci95": half,
        "test_loss": ok["test_loss"].mean() if len(ok) else math.nan,
        "epoch_time_s": ok["epoch_time_s"].median() if len(ok) else math.nan,
        "samples_per_s": ok["samples_per_s"].median() if len(ok) else math.nan,
        "n_params": ok["n_params"].iloc[0] if len(ok) else math.nan,
        "status": status,
        "error": "; ".join(dict.fromkeys(errors)) if len(errors) else "",
    })


def _best_first(frame: pd.DataFrame, acc: str) -> pd.DataFrame:
    """Datasets in the order they first appear; within each, best accuracy first, failures last."""
    order = {name: i for i, name in enumerate(dict.fromkeys(frame["dataset"]))}
    return (frame.assign(_d=frame["dataset"].map(order))
            .sort_values(["_d", acc], ascending=[True, False], na_position="last", kind="stable")
            .drop(columns="_d").reset_index(drop=True))


def make_tables(runs: Runs) -> Tables:
    results = runs.results
    keys = (["run"] if runs.several else []) + GROUP
    if results.empty:
        return Tables(pd.DataFrame(columns=keys), pd.DataFrame())
    summary = (results.groupby(keys, sort=False, dropna=False)[list(results.columns)]
               .apply(_summarise).reset_index())
    summary = summary.rename(columns={"dataset_label": "dataset", "model_label": "model", "loss_label": "loss"})
    summary = _best_first(summary, "test_acc")
    cell_cols = (["run"] if runs.several else []) + [
        "dataset_label", "model_label", "loss_label", "seed", "device", "status", "test_acc", "test_loss",
        "epoch_time_s", "samples_per_s", "n_params", "error", "cell_id"]
    cells = results[cell_cols].rename(columns={"dataset_label": "dataset", "model_label": "model",
                                               "loss_label": "loss"})
    cells = _best_first(cells, "test_acc")
    return Tables(summary, cells)
