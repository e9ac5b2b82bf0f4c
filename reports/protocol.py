"""The report's protocol sections: tuning (chosen values and sensitivity), time to target, and scores
across datasets (performance profiles and mean ranks). Each reads the results table only."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from bench import stats
from bench.config import CONFIG_COLUMNS, config_label
from bench.record import format_value
from bench.tune import tuned_keys


def tuning_table(results: pd.DataFrame) -> pd.DataFrame:
    """One row per tuned configuration: its label, the tuned keys, the trials run, the best validation
    score and the values chosen for the final seeds."""
    columns = ["configuration", "tuned", "trials", "best val_acc", "best val_loss", "chosen", "final seeds"]
    if "phase" not in results or not (results["phase"] == "tune").any():
        return pd.DataFrame(columns=columns)
    rows = []
    for tuning, group in results[results["tuning"].notna()].groupby("tuning", sort=False):
        trials = group[group["phase"] == "tune"]
        final = group[group["phase"] != "tune"]
        keys = tuned_keys(str(tuning))
        chosen = final.iloc[0] if len(final) else None
        ok = trials[trials["status"] == "ok"]
        all_failed = len(trials) and (trials["status"] == "failed").all()
        values = _values(chosen, keys) if chosen is not None else "(every trial failed)" if all_failed else "(not yet)"
        rows.append({"configuration": _configuration(trials.iloc[0] if len(trials) else group.iloc[0], keys),
                     "tuned": ", ".join(keys), "trials": f"{len(ok)}/{len(trials)} ok",
                     "best val_acc": format_value("val_acc", best(ok, "val_acc", "max")),
                     "best val_loss": format_value("val_loss", best(ok, "val_loss", "min")),
                     "chosen": values, "final seeds": ",".join(str(int(s)) for s in final["seed"])})
    return pd.DataFrame(rows, columns=columns)


def _configuration(row, keys: list[str]) -> str:
    """The label of a tuned configuration from one of its rows, without the values of its tuned keys."""
    return config_label({**row, "params": {k: v for k, v in _params(row).items() if k not in keys}})


def _params(row) -> dict:
    return json.loads(row["params"]) if isinstance(row.get("params"), str) and row["params"] else {}


def _values(row, keys: list[str]) -> str:
    params = _params(row)
    shown = []
    for key in keys:
        value = row[key] if key in row.index and key not in ("params",) and key in CONFIG_COLUMNS else params.get(key)
        shown.append(f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}")
    return ", ".join(shown)


def best(ok: pd.DataFrame, column: str, which: str) -> float:
    """The best value of ``column`` over the finished trials ``ok`` (``which``: "max" or "min"), NaN for none."""
    return float(getattr(pd.to_numeric(ok[column]), which)()) if len(ok) else math.nan


def sensitivity_figure(results: pd.DataFrame, path: Path) -> Path | None:
    """Validation accuracy of every trial against each tuned value (log axis for positive ranges that span a
    decade or more), one line per tuned configuration, its chosen value circled."""
    if "phase" not in results or not (results["phase"] == "tune").any():
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    trials = results[(results["phase"] == "tune") & (results["status"] == "ok")].copy()
    keys = list(dict.fromkeys(k for t in trials["tuning"].dropna() for k in tuned_keys(str(t))))
    if not keys or trials.empty:
        return None
    fig, axes = plt.subplots(1, len(keys), figsize=(5.5 * len(keys), 3.8), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for tuning, group in trials.groupby("tuning", sort=False):
            if key not in tuned_keys(str(tuning)):
                continue
            xs = [_value_of(r, key) for _, r in group.iterrows()]
            frame = pd.DataFrame({"x": xs, "y": pd.to_numeric(group["val_acc"])}).dropna().sort_values("x")
            if frame.empty:
                continue
            label = _configuration(group.iloc[0], tuned_keys(str(tuning)))
            line, = ax.plot(frame["x"], frame["y"], marker="o", label=label)
            final = results[(results["tuning"] == tuning) & (results["phase"] != "tune")]
            if len(final):
                chosen = _value_of(final.iloc[0], key)
                best = frame.loc[frame["x"] == chosen, "y"]
                if len(best):
                    ax.plot([chosen], [best.iloc[0]], marker="o", markersize=14, markerfacecolor="none",
                            markeredgecolor=line.get_color(), linewidth=0)
        xs = [_value_of(r, key) for _, r in trials.iterrows()]
        numeric = [x for x in xs if isinstance(x, (int, float))]
        if numeric and min(numeric) > 0 and max(numeric) / min(numeric) >= 10:
            ax.set_xscale("log")
        ax.set_xlabel(key)
        ax.set_ylabel("validation accuracy")
        ax.set_title(f"sensitivity to {key} (chosen value circled)")
        ax.legend(fontsize="small")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)
    return path


def _value_of(row, key: str):
    if key in row.index and key in CONFIG_COLUMNS:
        value = row[key]
    else:
        value = _params(row).get(key)
    try:
        return float(value)
    except (TypeError, ValueError):
        return value


def target_table(results: pd.DataFrame) -> pd.DataFrame:
    """Time to target per configuration: ``stats.time_to_target``, for people."""
    table = stats.time_to_target(results)
    if table.empty:
        return pd.DataFrame()
    return pd.DataFrame({"configuration": table["label"], "dataset": table["dataset"], "target": table["target"],
                         "reached (seeds)": table["reached"],
                         "median training s": [_num(v, ".3g") for v in table["time_s"]],
                         "median steps": [_num(v, ".0f") for v in table["steps"]],
                         "median epoch": [_num(v, ".0f") for v in table["epoch"]]})


def _num(value, fmt: str) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, fmt)


def ranks_table(results: pd.DataFrame) -> pd.DataFrame:
    """Mean rank across datasets (``stats.mean_ranks``), for people; empty with fewer than two datasets."""
    ranks = stats.mean_ranks(results)
    if ranks.empty:
        return ranks
    return ranks.assign(**{c: [f"{v:g}" for v in ranks[c]] for c in ranks.columns if c != "config"}).rename(
        columns={"config": "configuration", "mean_rank": "mean rank"})


def profile_figure(results: pd.DataFrame, path: Path) -> Path | None:
    """Performance profiles (``stats.performance_profiles``): for each configuration, the fraction of
    datasets on which its test error is within a factor tau of the best; None with fewer than two datasets."""
    profile = stats.performance_profiles(results)
    if profile.empty:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for config, group in profile.groupby("config", sort=False):
        ax.step(group["tau"], group["fraction"], where="post", label=config)
    ax.set_xlabel("tau (test error within tau x the best on a dataset)")
    ax.set_ylabel("fraction of datasets")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("performance profiles")
    ax.legend(fontsize="small")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)
    return path
