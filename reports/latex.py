"""``summary.tex``: the summary as a booktabs table for a paper, best value per dataset in bold.

Written with pandas' LaTeX writer (``Styler.to_latex``); it needs ``\\usepackage{booktabs}``.
"""

from __future__ import annotations

import math

import pandas as pd

from bench.reports.tables import Tables
from bench.stats import interval, metric_range

#: Metric columns, each with its heading, format and whether larger is better.
METRICS = [("test_acc", "test accuracy", ".4f", True), ("test_loss", "test loss", ".4g", False),
           ("epoch_time_s", "epoch time (s)", ".3g", False)]


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def summary_latex(tables: Tables) -> str:
    """The summary (names and the recipe columns that vary, then the metrics) as a LaTeX tabular.

    Accuracy is the mean over seeds ± the 95% confidence half-width (``[low, high]`` where the interval
    is clipped to [0, 1]); in each dataset (and run) the best
    accuracy (highest), test loss and epoch time (lowest) are bold.
    """
    summary = tables.summary
    shown = tables.display(summary) if len(summary) else pd.DataFrame()
    names = [c for c in (["run"] if tables.several else []) + ["dataset", "model", "loss", *tables.varying]
             if c in shown]
    frame = shown[names].copy() if len(summary) else pd.DataFrame(columns=names)
    bold = pd.DataFrame(False, index=frame.index, columns=[])
    keys = ["run", "dataset"] if tables.several else "dataset"
    groups = summary.groupby(keys, sort=False).groups if len(summary) else {}
    for column, heading, fmt, larger in METRICS:
        values = summary[column] if len(summary) else pd.Series(dtype=float)
        texts = []
        for i, value in values.items():
            if _missing(value):
                texts.append("--")
                continue
            text = format(value, fmt)
            half = summary.at[i, "test_acc_ci95"] if column == "test_acc" else math.nan
            if _missing(half):
                texts.append(text)
            elif column == "test_acc" and (value - half < 0 or value + half > 1):  # clipped to [0, 1]
                low, high = interval(value, half, metric_range("test_acc"))
                texts.append(f"{text} [{low:.4f}, {high:.4f}]")
            else:
                texts.append(f"{text} $\\pm$ {half:.4f}")
        frame[heading] = texts
        best = pd.Series(False, index=frame.index)
        for index in groups.values():
            part = values.loc[index].dropna()
            if len(part):
                target = part.max() if larger else part.min()
                best.loc[part.index[part == target]] = True
        bold[heading] = best
    styler = frame.style.hide(axis="index")
    styler = styler.format(escape="latex", subset=names).format_index(escape="latex", axis=1)
    styler = styler.apply(lambda _: bold.reindex(columns=frame.columns, fill_value=False)
                          .map(lambda b: "textbf:--rwrap;" if b else ""), axis=None)
    column_format = "l" * len(names) + "r" * len(METRICS)
    return styler.to_latex(hrules=True, column_format=column_format)
