"""Comparative figures (seaborn), drawn headless: curves, accuracy heatmap, accuracy vs time, epoch time."""

from __future__ import annotations

import math
import re
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.ticker import MaxNLocator

from bench.reports.load import Runs
from bench.safe_text import printable
from bench.stats import interval, mean_ci, metric_range

plt.switch_backend("Agg")  # reports are files: never open a window, never need a display

DPI = 110


def text(name) -> str:
    """A plugin-provided name made safe for matplotlib (``$`` would start mathtext; a control character has no
    glyph, and matplotlib's warning about it would print the character on the terminal)."""
    return printable(name, newlines=False).replace("$", r"\$")


def natural(label) -> list:
    """A sort key that orders ``mlp [hidden=16]`` before ``mlp [hidden=128]``."""
    return [(0, float(part), "") if part.replace(".", "", 1).isdigit() else (1, 0.0, part)
            for part in re.split(r"(\d+(?:\.\d+)?)", str(label)) if part]


def student_ci(values, bounds: tuple[float, float] = (-math.inf, math.inf)) -> tuple[float, float]:
    """The 95% Student-t interval of the mean over seeds (as in the tables), clipped to ``bounds`` (the
    metric's range), for seaborn's ``errorbar``; cheaper than its bootstrap, and honest with two or three
    seeds, where a bootstrap is not."""
    mean, _, half = mean_ci(values)
    return (mean, mean) if math.isnan(half) else interval(mean, half, bounds)


def band(metric: str):
    """:func:`student_ci` clipped to ``metric``'s range (an accuracy band stays within [0, 1])."""
    bounds = metric_range(metric)
    return lambda values: student_ci(values, bounds)


def _theme(style: str = "whitegrid") -> None:
    sns.set_theme(context="notebook", style=style)


def save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return path


def _safe_frame(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.copy()
    for col in ("run", "dataset_label", "model_label", "loss_label", "device"):
        if col in frame:
            frame[col] = frame[col].map(text)
    return frame


#: At most this many rows of panels (runs x recipe variants) in one figure; the best ones are drawn.
MAX_ROWS = 6
#: At most this many model rows in one heatmap panel (the best are drawn).
MAX_HEATMAP_ROWS = 40
#: At most this many models (with their parameters) per panel in the curves and epoch-time figures, and
#: as marker styles in accuracy vs time; beyond it the most accurate are drawn (a legend of hundreds of
#: entries says nothing, and costs more to draw than everything else).
MAX_MODELS = 12


def _best_models(runs: Runs, frame: pd.DataFrame, notes: list[str] | None, what: str) -> pd.DataFrame:
    """``frame`` restricted, per dataset, to the :data:`MAX_MODELS` model labels with the best test accuracy."""
    ok = runs.results[runs.results["status"] == "ok"]
    if frame.empty or ok.empty or frame.groupby("dataset_label")["model_label"].nunique().max() <= MAX_MODELS:
        return frame
    best = ok.groupby(["dataset_label", "model_label"])["test_acc"].max().reset_index()
    best = best.sort_values("test_acc", ascending=False).groupby("dataset_label").head(MAX_MODELS)
    keep = set(zip(best["dataset_label"].map(text), best["model_label"].map(text)))
    if notes is not None:
        notes.append(f"{what}: the {MAX_MODELS} models (with their parameters) with the best test accuracy of "
                     "each dataset are drawn.")
    return frame[[(d, m) in keep for d, m in zip(frame["dataset_label"], frame["model_label"])]]


def _facet_rows(runs: Runs, frame: pd.DataFrame, notes: list[str] | None, what: str) -> tuple[pd.DataFrame, str | None]:
    """``frame`` with a ``facet`` column (run and recipe variant, where they vary), keeping the
    :data:`MAX_ROWS` facets whose best accuracy is highest; a note says what was left out."""
    parts = []
    if runs.several:
        parts.append(frame["run"].astype(str))
    if runs.varying:
        parts.append(frame["variant"].astype(str))
    if not parts:
        return frame, None
    facet = parts[0] if len(parts) == 1 else parts[0] + " · " + parts[1]
    frame = frame.assign(facet=facet.map(text))
    order = list(dict.fromkeys(frame["facet"]))
    ok = runs.results[runs.results["status"] == "ok"]
    if len(order) > MAX_ROWS and not ok.empty:
        best = ok.assign(facet=(ok["run"].astype(str) + " · " + ok["variant"].astype(str) if len(parts) == 2
                                else ok[("run" if runs.several else "variant")].astype(str)).map(text))
        ranked = best.groupby("facet")["test_acc"].max().sort_values(ascending=False)
        order = [f for f in ranked.index if f in set(order)][:MAX_ROWS]
        if notes is not None:
            notes.append(f"{what}: the {MAX_ROWS} of {frame['facet'].nunique()} runs/recipes with the best test "
                         "accuracy are drawn.")
        frame = frame[frame["facet"].isin(order)]
    return frame, "facet"


def curves(runs: Runs, metric: str, path: Path, notes: list[str] | None = None) -> Path | None:
    """Validation ``metric`` per epoch for every configuration (mean over seeds, 95% CI band).

    Columns are datasets; rows are runs and recipe variants (``lr=0.01``), where they vary; hue is the
    loss, style the model.
    """
    hist = runs.history
    if hist.empty or hist[metric].dropna().empty:
        return None
    _theme()
    hist, row = _facet_rows(runs, _best_models(runs, _safe_frame(hist), notes, "curves"), notes, "curves")
    grid = sns.relplot(
        data=hist, kind="line", x="epoch", y=metric, hue="loss_label", style="model_label",
        col="dataset_label", row=row, markers=True, dashes=True,
        errorbar=band(metric), height=3.6, aspect=1.3, facet_kws={"sharey": False, "sharex": False},
    )
    name = {"val_loss": "Validation loss", "val_acc": "Validation accuracy"}.get(metric, metric)
    grid.set_axis_labels("epoch", name.lower())
    grid.set_titles(row_template="{row_name}", col_template="{col_name}")
    for ax in grid.axes.flat:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    grid.legend.set_title("")
    _rename_legend(grid.legend, {"loss_label": "loss", "model_label": "model"})
    grid.figure.suptitle(f"{name} per epoch", y=1.03)
    return save(grid.figure, path)


def _rename_legend(legend, names: dict[str, str]) -> None:
    if legend is None:
        return
    for label in legend.get_texts():
        if label.get_text() in names:
            label.set_text(names[label.get_text()])


def heatmap(runs: Runs, summary: pd.DataFrame, path: Path, notes: list[str] | None = None) -> Path | None:
    """Mean test accuracy, model x loss, one panel per dataset (and run); failures are marked. A model
    row is the model with its parameters and the recipe variant (``mlp [hidden=64] · lr=0.01``)."""
    if summary.empty:
        return None
    _theme("white")
    summary = summary.assign(run=summary["run"].map(text), dataset=summary["dataset_label"].map(text),
                             loss=summary["loss_label"].map(text),
                             model=[text(m if not v else f"{m} · {v}") for m, v in zip(summary["model_label"],
                                                                                         summary["variant"])])
    facets = summary[["run", "dataset"] if runs.several else ["dataset"]].drop_duplicates().values.tolist()
    n = len(facets)
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    frames = []
    for facet in facets:
        part = summary
        for key, value in zip(["run", "dataset"] if runs.several else ["dataset"], facet):
            part = part[part[key] == value]
        if part["model"].nunique() > MAX_HEATMAP_ROWS:  # the models whose best accuracy is highest
            keep = part.groupby("model")["test_acc"].max().sort_values(ascending=False).index[:MAX_HEATMAP_ROWS]
            part = part[part["model"].isin(set(keep))]
            if notes is not None:
                notes.append(f"heatmap: the {MAX_HEATMAP_ROWS} best model rows of each panel are drawn.")
        frames.append(part)
    width = max(max(len(f["loss"].unique()) for f in frames) * 1.6 + 2.5, 5)
    height = max(max(len(f["model"].unique()) for f in frames) * 0.6 + 1.5, 3)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    for ax, facet, part in zip(axes.flat, facets, frames):
        acc = part.pivot_table(index="model", columns="loss", values="test_acc", aggfunc="first", dropna=False)
        acc = acc.reindex(index=sorted(acc.index, key=natural), columns=list(dict.fromkeys(part["loss"])))
        notes = part.pivot_table(index="model", columns="loss", values="status", aggfunc="first", dropna=False)
        notes = notes.reindex(index=acc.index, columns=acc.columns)
        annot = np.empty(acc.shape, dtype=object)
        for (i, j), value in np.ndenumerate(acc.values):
            status = notes.values[i, j]
            annot[i, j] = (f"{value:.3f}" if isinstance(value, float) and not math.isnan(value) else "")
            if isinstance(status, str) and status != "ok":
                annot[i, j] = (annot[i, j] + "\n" if annot[i, j] else "") + status
        ax.set_facecolor("#eeeeee")  # configurations that were not run
        sns.heatmap(acc.astype(float), annot=annot, fmt="", cmap="viridis", vmin=None, vmax=None, ax=ax,
                    cbar_kws={"label": "test accuracy"}, linewidths=0.5, linecolor="white")
        for (i, j), value in np.ndenumerate(acc.values):
            if math.isnan(value) and annot[i, j]:  # heatmap leaves NaN cells blank: mark the failures
                ax.text(j + 0.5, i + 0.5, annot[i, j], ha="center", va="center", color="#a4271b",
                        fontweight="bold")
        ax.set_yticklabels([t.get_text() for t in ax.get_yticklabels()], rotation=0)  # text() above
        ax.set_xticklabels([t.get_text() for t in ax.get_xticklabels()], rotation=20, ha="right")
        ax.set_title(" · ".join(facet))
        ax.set_xlabel("loss")
        ax.set_ylabel("model")
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    fig.suptitle("Test accuracy (mean over seeds): model × loss")
    fig.tight_layout()
    return save(fig, path)


def pareto_front(times: np.ndarray, accs: np.ndarray) -> np.ndarray:
    """Indices of the points no other point beats on both time (lower) and accuracy (higher), by time."""
    order = np.lexsort((-accs, times))
    front, best = [], -np.inf
    for i in order:
        if accs[i] > best:
            front.append(i)
            best = accs[i]
    return np.array(front, dtype=int)


def accuracy_vs_time(runs: Runs, path: Path, notes: list[str] | None = None) -> Path | None:
    """One point per cell: test accuracy against training time, the Pareto front drawn as a step line."""
    ok = runs.results[runs.results["status"] == "ok"].dropna(subset=["test_acc", "train_time_s"])
    if ok.empty:
        return None
    _theme()
    ok, row = _facet_rows(runs, _safe_frame(ok), notes, "accuracy vs time")
    many = ok["model_label"].nunique() > MAX_MODELS  # every point stays; only the marker styles go
    if many and notes is not None:
        notes.append(f"accuracy vs time: more than {MAX_MODELS} models, so one marker for all (hue: the loss).")
    grid = sns.relplot(
        data=ok, kind="scatter", x="train_time_s", y="test_acc", hue="loss_label",
        style=None if many else "model_label",
        col="dataset_label", row=row, s=90, height=3.8, aspect=1.3,
        facet_kws={"sharex": False, "sharey": False},
    )

    def front(data, **_kwargs):
        idx = pareto_front(data["train_time_s"].to_numpy(float), data["test_acc"].to_numpy(float))
        pts = data.iloc[idx]
        ax = plt.gca()
        ax.step(pts["train_time_s"], pts["test_acc"], where="post", color="black", lw=1, ls="--", zorder=1,
                label="Pareto front")
        ax.scatter(pts["train_time_s"], pts["test_acc"], s=220, facecolors="none", edgecolors="black", zorder=3)

    grid.map_dataframe(front)
    times = ok["train_time_s"]
    log = bool((times > 0).all() and times.max() / times.min() > 20)
    if log:
        for ax in grid.axes.flat:
            ax.set_xscale("log")
    grid.set_axis_labels("training time (s" + (", log scale)" if log else ")"), "test accuracy")
    grid.set_titles(row_template="{row_name}", col_template="{col_name}")
    _rename_legend(grid.legend, {"loss_label": "loss", "model_label": "model"})
    grid.figure.suptitle("Accuracy vs training time (circled, dashed: the Pareto front)", y=1.03)
    return save(grid.figure, path)


def epoch_time(runs: Runs, path: Path, notes: list[str] | None = None) -> Path | None:
    """Median epoch time by model, coloured by device (and run, when several), per dataset."""
    ok = runs.results[runs.results["status"] == "ok"].dropna(subset=["epoch_time_s"])
    if ok.empty:
        return None
    _theme()
    ok = _best_models(runs, _safe_frame(ok), notes, "epoch time")
    hue = ok["run"] + ": " + ok["device"] if runs.several else ok["device"]
    if runs.varying and ok["variant"].nunique() <= MAX_ROWS:  # batch size, epochs ... change epoch time
        hue = hue + " · " + ok["variant"].map(text)
    ok = ok.assign(where=hue)
    grid = sns.catplot(
        data=ok, kind="bar", x="model_label", y="epoch_time_s", hue="where", col="dataset_label",
        errorbar=band("epoch_time_s"), height=3.8, aspect=1.3, sharey=False,
    )
    grid.set_axis_labels("model", "epoch time (s)")
    grid.set_titles(col_template="{col_name}")
    for ax in grid.axes.flat:
        ax.tick_params(axis="x", rotation=20)
    if grid.legend is not None:
        grid.legend.set_title("run: device" if runs.several else "device")
    grid.figure.suptitle("Epoch time by model and device", y=1.03)
    return save(grid.figure, path)
