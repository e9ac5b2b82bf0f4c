"""Statistics over seeds: mean and Student-t confidence intervals, paired comparisons with Holm.

A *configuration* is a cell without its seed, as :mod:`bench.config` defines it (components,
parameters, recipe, ``--limit``, device kind). Its seeds are independent repeats, so a metric is
summarised per configuration as mean, sample standard deviation and a Student-t confidence interval.

Two configurations are compared *paired*: on the seeds that both finished, seed by seed (same
initialisation seed, same data order), which removes the variance the seed itself causes. Which
pairs are compared (see :func:`compare` and :func:`bench.config.comparable`): on the same dataset,
``--limit`` and device kind, configurations that share the whole recipe (axis ``recipe``: they
differ in model and/or loss), and configurations that differ in exactly one recipe axis (``lr``,
``optimizer`` with its parameters, ...) and nothing else. Within each such group, every pair is
compared when there are at most :data:`ALL_PAIRS_MAX` configurations, otherwise each against the
group's best (highest mean of the metric), so that the table stays readable and the
multiple-testing correction does not eat all the power. A group never spans two contexts: the dataset
with its parameters, ``--limit``, the device kind and parameters of no compared axis are part of its
key, so two datasets (or one dataset with two ``val_size``) each get their own comparisons.

The p-values of every comparison in the table are Holm-corrected together (the family is the whole
table; its size is the ``family`` column); a difference whose corrected p-value is not below ``alpha``
is reported as ``tied``. Each comparison's interval comes from the same correction (see
:func:`holm_levels`): it excludes zero exactly when the verdict is not ``tied``.

Intervals of a bounded metric (an accuracy lies in [0, 1], see :func:`metric_range`) are the
Student-t interval clipped to the metric's range: clipping removes only impossible values, so the
interval covers at least as often as the unclipped one, and with two seeds it no longer reads
``[0.29, 1.49]``.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from bench.config import COMPONENT_AXES, CONFIG_COLUMNS, RECIPE_AXES, axes, config_frame, config_label, varying_label
from bench.safe_text import printable
from bench.tune import tuned_keys

#: Columns that open the comparisons table (before ``a``, ``b``): where (the dataset and its
#: ``context``: dataset parameters, ``--limit``, device kind) and along which axis.
GROUP_COLUMNS = ["dataset", "context", "axis", "fixed"]
#: With more configurations than this in a group, each is compared with the group's best only.
ALL_PAIRS_MAX = 6


def mean_ci(values, confidence: float = 0.95) -> tuple[float, float, float]:
    """``(mean, std, half_width)`` of ``values``: sample standard deviation (ddof=1) and the
    half-width of the Student-t confidence interval ``mean ± half_width``.

    With fewer than two finite values the spread is unknown: ``std`` and ``half_width`` are NaN
    (and everything is NaN for no values). Non-finite values are ignored.
    """
    from scipy.special import stdtrit  # not scipy.stats: that import alone costs ~0.5 s more

    xs = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    n = len(xs)
    if n == 0:
        return math.nan, math.nan, math.nan
    mean = math.fsum(xs) / n
    if n < 2:
        return mean, math.nan, math.nan
    std = math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (n - 1))
    half = float(stdtrit(n - 1, 0.5 + confidence / 2)) * std / math.sqrt(n)
    return mean, std, half


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (same order as given; NaN stays NaN and is not counted)."""
    valid = sorted((p, i) for i, p in enumerate(p_values) if not math.isnan(p))
    m = len(valid)
    adjusted = [math.nan] * len(p_values)
    running = 0.0
    for rank, (p, i) in enumerate(valid):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[i] = running
    return adjusted


def metric_range(metric: str) -> tuple[float, float]:
    """The values ``metric`` can take, by its name: ``[0, 1]`` for an accuracy (``test_acc``, ``val_acc``),
    ``[0, inf)`` for a loss or a time in seconds, else unbounded."""
    if metric.endswith("acc"):
        return 0.0, 1.0
    if metric.endswith("loss") or metric.endswith("_s"):
        return 0.0, math.inf
    return -math.inf, math.inf


def interval(mean: float, half: float, bounds: tuple[float, float] = (-math.inf, math.inf)) -> tuple[float, float]:
    """``mean ± half`` clipped to ``bounds`` (NaN where ``half`` is: no interval with fewer than two seeds)."""
    if half is None or math.isnan(half) or math.isnan(mean):
        return math.nan, math.nan
    return max(bounds[0], mean - half), min(bounds[1], mean + half)


def interval_text(mean: float, half: float, bounds: tuple[float, float] = (-math.inf, math.inf),
                  fmt: str = ".4f") -> str:
    """``0.9733 ± 0.0876``, or ``0.6385 [0.2516, 1.0000]`` where the interval is clipped to ``bounds``;
    just the mean without an interval, ``-`` without a mean."""
    if mean is None or math.isnan(mean):
        return "-"
    low, high = interval(mean, half, bounds)
    if math.isnan(low):
        return format(mean, fmt)
    if low == mean - half and high == mean + half:
        return f"{mean:{fmt}} ± {half:{fmt}}"
    return f"{mean:{fmt}} [{low:{fmt}}, {high:{fmt}}]"


def holm_levels(p_values: Sequence[float], alpha: float = 0.05) -> list[float]:
    """The confidence level of each comparison's interval, from the same Holm step-down as its verdict.

    Holm compares the ``r``-th smallest p-value with ``alpha / (m - r + 1)`` while every smaller one
    passed; the level ``1 - alpha * p / p_holm`` is that step's level where it applies and lower where an
    earlier step failed, so that a t-interval at it excludes zero exactly when ``p_holm < alpha``
    (the verdict). NaN where ``p`` is; ``1 - alpha / m`` (Bonferroni) where ``p_holm`` is 0.
    """
    adjusted = holm(p_values)
    m = sum(not math.isnan(p) for p in p_values)
    levels = []
    for p, p_holm in zip(p_values, adjusted):
        if math.isnan(p):
            levels.append(math.nan)
        elif p_holm <= 0.0:
            levels.append(1.0 - alpha / m)
        else:
            levels.append(1.0 - alpha * p / p_holm)
    return levels


def corrected(pairs: Sequence[tuple[Sequence[float], Sequence[float]]], alpha: float = 0.05,
              bounds: tuple[float, float] = (-math.inf, math.inf)) -> list[dict]:
    """Paired tests of ``a - b`` for each ``(a, b)`` in ``pairs`` (equal-length lists of finite values),
    Holm-corrected together: :func:`corrected_frame` on their differences, as one dict per pair."""
    rows = []
    for a, b in pairs:
        diff, sd, _ = mean_ci([x - y for x, y in zip(a, b)])
        rows.append({"n": len(a), "diff": diff, "sd": sd})
    frame = corrected_frame(pd.DataFrame(rows, columns=["n", "diff", "sd"]), alpha, bounds)
    return frame.drop(columns="sd").to_dict("records")


def corrected_frame(tests: pd.DataFrame, alpha: float = 0.05,
                    bounds: tuple[float, float] = (-math.inf, math.inf)) -> pd.DataFrame:
    """Paired t-tests from their summaries, Holm-corrected together, each with its interval from the
    same correction (:func:`holm_levels`), clipped to the range a difference of a metric in ``bounds``
    can take.

    ``tests`` has one row per comparison: ``n`` (pairs), ``diff`` (mean difference) and ``sd`` (sample
    standard deviation of the differences). Returned with ``p`` (two-sided, as :func:`paired_test`),
    ``p_holm``, ``family`` (how many p-values were corrected together), ``level``, ``ci`` (half-width),
    ``ci_low`` and ``ci_high`` added; NaN for all of them with fewer than two pairs. Computed over
    whole columns, for tables of tens of thousands of comparisons (``bench compare``).
    """
    from scipy.special import stdtr, stdtrit

    n = tests["n"].to_numpy(dtype=float)
    diff = tests["diff"].to_numpy(dtype=float)
    sd = tests["sd"].to_numpy(dtype=float)
    with np.errstate(all="ignore"):
        se = sd / np.sqrt(n)
        p = 2 * stdtr(n - 1, -np.abs(diff / se))
        p = np.where(sd == 0, np.where(diff == 0, 1.0, 0.0), p)  # the t statistic is 0/0 or infinite
        p = np.where(n < 2, np.nan, p)
        p_list = [float(v) for v in p]
        level = np.array(holm_levels(p_list, alpha), dtype=float)
        half = np.where(sd == 0, 0.0, stdtrit(n - 1, 0.5 + level / 2) * se)
        half = np.where(np.isnan(level), np.nan, half)
    span = bounds[1] - bounds[0]
    out = tests.copy()
    out["p"] = p
    out["p_holm"] = holm(p_list)
    out["family"] = int(np.sum(~np.isnan(p)))
    out["level"] = level
    out["ci"] = half
    out["ci_low"] = np.maximum(diff - half, -span)  # NaN stays NaN
    out["ci_high"] = np.minimum(diff + half, span)
    return out


def paired_test(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """``(mean difference a-b, CI half-width, two-sided p of the paired t-test)`` for paired samples.

    Zero variance of the differences gives p = 1 when they are all zero and p = 0 otherwise (the
    t statistic is infinite); fewer than two pairs give NaN for the half-width and p.
    """
    from scipy.special import stdtr

    diffs = [x - y for x, y in zip(a, b)]
    mean, std, half = mean_ci(diffs, confidence)
    if len(diffs) < 2:
        return mean, math.nan, math.nan
    if std == 0.0:
        return mean, 0.0, 1.0 if mean == 0.0 else 0.0
    n = sum(math.isfinite(d) for d in diffs)
    t = mean / (std / math.sqrt(n))  # the paired t statistic (what scipy.stats.ttest_rel computes)
    return mean, half, float(2 * stdtr(n - 1, -abs(t)))


def results_only(results: pd.DataFrame) -> pd.DataFrame:
    """The rows that are results: tuning trials (``phase == "tune"``) left out."""
    if "phase" in results:
        return results[results["phase"].fillna("final").astype(str) != "tune"]
    return results


def _ok(results: pd.DataFrame, metric: str) -> pd.DataFrame:
    results = results_only(results)
    frame = results[results["status"] == "ok"].copy()
    if metric not in frame:  # e.g. every cell failed: no metric was ever written
        frame[metric] = pd.Series(dtype=float)
    frame[metric] = pd.to_numeric(frame[metric], errors="coerce")
    return frame


def _configs(results: pd.DataFrame) -> tuple[pd.DataFrame, list[tuple[tuple, pd.DataFrame]]]:
    """The canonical configuration columns of ``results`` and its rows grouped by configuration."""
    frame = config_frame(results)
    joined = pd.concat([frame, results.drop(columns=[c for c in CONFIG_COLUMNS if c in results])], axis=1)
    return joined, list(joined.groupby(CONFIG_COLUMNS, sort=False, dropna=False))


def aggregate(results: pd.DataFrame, metric: str = "test_acc", confidence: float = 0.95) -> pd.DataFrame:
    """One row per configuration: its configuration columns (canonical, see :func:`bench.config.config_frame`),
    ``label``, ``n`` (finished seeds), ``seeds``, ``failed``, and the metric's ``mean``, ``std``, ``ci``
    (the Student-t half-width), ``ci_low`` and ``ci_high`` (``mean ± ci`` clipped to the metric's range,
    :func:`metric_range`), in first-seen order."""
    columns = [*CONFIG_COLUMNS, "label", "tuned", "n", "seeds", "failed", "mean", "std", "ci", "ci_low", "ci_high"]
    results = results_only(results)
    if results.empty:
        return pd.DataFrame(columns=columns)
    _, groups = _configs(results)
    bounds = metric_range(metric)
    rows = []
    for key, group in groups:
        ok = _ok(group, metric)
        mean, std, half = mean_ci(ok[metric], confidence)
        low, high = interval(mean, half, bounds)
        tuning = group["tuning"].dropna().astype(str) if "tuning" in group else pd.Series([], dtype=str)
        rows.append({**dict(zip(CONFIG_COLUMNS, key)), "tuned": ",".join(tuned_keys(next(iter(tuning), ""))),
                     "n": len(ok),
                     "seeds": ",".join(str(s) for s in sorted(ok["seed"].astype(int))),
                     "failed": int((group["status"] == "failed").sum()), "mean": mean, "std": std, "ci": half,
                     "ci_low": low, "ci_high": high})
    labels = varying_label(rows)
    for row, label in zip(rows, labels):
        row["label"] = label
    return pd.DataFrame(rows, columns=columns)


def compare(results: pd.DataFrame, metric: str = "test_acc", alpha: float = 0.05, confidence: float = 0.95,
            pairs: str = "auto") -> pd.DataFrame:
    """Paired comparisons of configurations on their shared seeds, Holm-corrected together.

    Only comparable configurations are paired (:func:`bench.config.comparable`): the same dataset with
    the same parameters, ``--limit`` and device kind (the ``context``), and either the same recipe (axis
    ``recipe``) or one differing recipe axis (axis ``lr``, ``optimizer``, ...). A *group* is a set of
    configurations of one context that differ only along one axis; ``fixed`` describes what they share.
    ``pairs``: ``all`` (every pair within a group), ``best`` (each against the group's best) or ``auto``
    (``all`` for groups of at most :data:`ALL_PAIRS_MAX`, else ``best``). Columns: ``dataset``,
    ``context``, ``axis``, ``fixed``, ``a``, ``b``, ``n`` (shared seeds), ``diff`` (mean of a - b), ``p``,
    ``p_holm``, ``family`` (the number of p-values Holm corrected together: every comparison of the
    table), ``level`` (the confidence level of the interval under the same correction, see
    :func:`holm_levels`; ``confidence`` is not used here), ``ci`` (half-width), ``ci_low``, ``ci_high``
    and ``verdict``: the better label when ``p_holm < alpha``, ``tied`` when not, ``n/a`` with fewer
    than two shared seeds. The interval excludes zero exactly when the verdict names a label.
    """
    if pairs not in ("auto", "all", "best"):
        raise ValueError(f"pairs must be auto, all or best, not {pairs!r}")
    columns = [*GROUP_COLUMNS, "a", "b", "n", "diff", "ci", "ci_low", "ci_high", "level", "p", "p_holm", "family",
               "verdict"]
    rows, samples = [], []
    ok = _ok(results, metric) if not results.empty else results
    if not ok.empty:
        summary = aggregate(ok, metric, confidence)
        configs = [dict(r) for _, r in summary.iterrows()]
        per_seed = _per_seed(ok, metric)
        for axis, context, fixed, members in _groups(configs):
            mode = pairs if pairs != "auto" else ("all" if len(members) <= ALL_PAIRS_MAX else "best")
            if mode == "all":
                chosen = list(itertools.combinations(members, 2))
            else:
                best = max(members, key=lambda c: -math.inf if math.isnan(c["mean"]) else c["mean"])
                chosen = [(best, c) for c in members if c is not best]
            for a, b in chosen:
                va, vb = per_seed[_ckey(a)], per_seed[_ckey(b)]
                shared = sorted(set(va) & set(vb))
                samples.append(([va[s] for s in shared], [vb[s] for s in shared]))
                rows.append({"dataset": a["dataset"], "context": context, "axis": axis, "fixed": fixed,
                             "a": a["label"], "b": b["label"]})
    low, high = metric_range(metric)
    for row, tested in zip(rows, corrected(samples, alpha, (low, high))):
        row.update(tested)
        if math.isnan(row["p_holm"]):
            row["verdict"] = "n/a"
        elif row["p_holm"] < alpha:
            row["verdict"] = row["a"] if row["diff"] > 0 else row["b"]
        else:
            row["verdict"] = "tied"
    return pd.DataFrame(rows, columns=columns)


def _ckey(config) -> tuple:
    return tuple(str(config[c]) for c in CONFIG_COLUMNS)


def _groups(configs: list[dict]) -> list[tuple[str, str, str, list[dict]]]:
    """Configurations grouped by axis, context and everything else: ``(axis, context, fixed, members)``
    per group, where the members vary along that one axis only, within one context (the dataset with its
    parameters, ``--limit``, device kind, parameters of no axis) and ``fixed`` says what they share.

    Bucketed in one pass per axis (not pair by pair), so that a thousand configurations stay quick:
    ``recipe`` groups share the context and the whole recipe; an ``lr`` group shares everything but ``lr``.
    """
    seen = [_untuned(c) for c in configs]
    split = [axes(c) for c in seen]
    buckets: dict[tuple, list[int]] = {}
    for i, parts in enumerate(split):
        recipe_key = ("recipe", parts["_context"], tuple(str(parts[a]) for a in RECIPE_AXES))
        buckets.setdefault(recipe_key, []).append(i)
        for axis in RECIPE_AXES:
            others = tuple(str(parts[a]) for a in (*COMPONENT_AXES, *RECIPE_AXES) if a != axis)
            buckets.setdefault((axis, parts["_context"], others), []).append(i)
    groups: list[tuple[str, str, str, list[dict]]] = []
    for (axis, *_), members in buckets.items():
        values = {str(split[i][axis]) for i in members} if axis != "recipe" else {
            tuple(str(split[i][a]) for a in COMPONENT_AXES) for i in members}
        if len(members) < 2 or len(values) < 2:
            continue
        first = members[0]
        varying = COMPONENT_AXES if axis == "recipe" else (axis,)
        fixed = ", ".join(f"{k}={_show(seen[first], k, split[first])}" for k in split[first]
                          if k not in varying and not k.startswith("_") and k not in COMPONENT_AXES)
        if axis != "recipe":
            fixed = f"{config_label(configs[first])}; " + fixed
        # one group per bucket, whatever its texts read like: texts that coincided once dropped a group
        groups.append((axis, _context_text(split[first]["_context"]), fixed, [configs[i] for i in members]))
    return groups


def _context_text(context: str) -> str:
    """``mnist [val_size=4000], limit=2000, cpu``: what a group of comparisons never crosses, for people."""
    parts = json.loads(context)
    dataset = json.loads(parts["dataset"])
    own = ",".join(f"{k.split('.', 1)[-1]}={v}" for k, v in sorted(dataset["params"].items()))
    other = ",".join(f"{k}={v}" for k, v in sorted(parts["other"].items()))
    text = dataset["name"] + (f" [{own}]" if own else "")
    text += f", limit={parts['limit']}" if parts["limit"] else ""
    return f"{text}, {parts['device']}" + (f", {other}" if other else "")


def _untuned(config: dict) -> dict:
    """A tuned configuration as comparisons see it: its tuned keys are "tuned", not a value (each
    configuration is compared at its own best values)."""
    keys = [k for k in str(config.get("tuned") or "").split(",") if k]
    if not keys:
        return config
    out = dict(config)
    params = json.loads(out["params"]) if isinstance(out["params"], str) else dict(out["params"])
    for key in keys:
        if key in out:
            out[key] = "tuned"
        params.pop(key, None)
    out["params"] = json.dumps(params, sort_keys=True)
    return out


def _show(config, axis: str, split: dict | None = None) -> str:
    if axis in ("optimizer", "schedule"):
        part = json.loads(split[axis]) if split else {"name": config[axis], "params": {}}
        own = ",".join(f"{k.split('.', 1)[-1]}={v}" for k, v in sorted(part["params"].items()))
        return part["name"] + (f" [{own}]" if own else "")
    value = config[axis]
    return f"{value:g}" if isinstance(value, float) else str(value)


def _per_seed(ok: pd.DataFrame, metric: str) -> dict[tuple, dict[int, float]]:
    """Per configuration (keyed as :func:`_ckey`), the metric of each finished seed."""
    _, groups = _configs(ok)
    out = {}
    for key, group in groups:
        out[tuple(str(k) for k in key)] = {int(s): float(v) for s, v in zip(group["seed"], group[metric])
                                           if math.isfinite(float(v))}
    return out


# -- text tables for the terminal ------------------------------------------------------------------

def _table(header: list[str], body: list[list[str]], right: set[int] = frozenset()) -> str:
    table = [[printable(cell, newlines=False) for cell in row] for row in (header, *body)]  # aligned as printed
    header, body = table[0], table[1:]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]

    def line(cells):
        padded = (c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))
        return "  ".join(padded).rstrip()

    return "\n".join([line(header), "  ".join("-" * w for w in widths), *(line(r) for r in body)])


def _num(value: float, fmt: str) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, fmt)


def _range_text(bounds: tuple[float, float]) -> str:
    return f"[{bounds[0]:g}, {bounds[1]:g}]".replace("inf", "∞")


def format_aggregate(summary: pd.DataFrame, metric: str = "test_acc", confidence: float = 0.95) -> str:
    """``label  dataset  n  mean ± half-width  [low, high]  std`` per configuration (an interval clipped
    to the metric's range shows as ``mean [low, high]``)."""
    pct = f"{confidence:.0%}"
    bounds = metric_range(metric)
    body = []
    for r in summary.itertuples(index=False):
        body.append([r.label, str(r.dataset), str(r.n) + (f" ({r.failed} failed)" if r.failed else ""),
                     interval_text(r.mean, r.ci, bounds),
                     f"[{_num(r.ci_low, '.4f')}, {_num(r.ci_high, '.4f')}]", _num(r.std, '.4f')])
    clipped = f", clipped to {_range_text(bounds)}" if bounds != (-math.inf, math.inf) else ""
    header = ["cell", "dataset", "seeds", f"{metric} mean ± {pct} CI", f"{pct} CI (Student t{clipped})", "std"]
    return _table(header, body, right={2})


def format_comparisons(table: pd.DataFrame, alpha: float = 0.05, confidence: float = 0.95) -> str:
    """``dataset  context  axis  a  b  n  diff [CI] (level)  p  p_holm  verdict`` per comparison; the
    interval and the verdict come from the same Holm correction (``confidence`` is not used)."""
    body = []
    for r in table.itertuples(index=False):
        body.append([str(r.dataset), str(r.context), str(r.axis), r.a, r.b, str(r.n), f"{_num(r.diff, '+.4f')}",
                     f"[{_num(r.ci_low, '+.4f')}, {_num(r.ci_high, '+.4f')}]", _num(r.level, '.2%'),
                     _num(r.p, '.3g'), _num(r.p_holm, '.3g'), r.verdict])
    family = int(table["family"].max()) if len(table) else 0
    header = ["dataset", "context", "axis", "a", "b", "n", "diff a-b", "CI (Holm)", "CI level", "p",
              f"p (Holm over {family})", f"verdict (alpha={alpha:g})"]
    return _table(header, body, right={5, 6, 8, 9, 10})


# -- across datasets ---------------------------------------------------------------------------------------

def _per_dataset_scores(results: pd.DataFrame, metric: str) -> tuple[pd.DataFrame, bool]:
    """Mean ``metric`` per (configuration without its dataset, dataset), and whether higher is better.

    Accuracies become errors (1 - accuracy) so that every score is a cost: smaller is better.
    """
    summary = aggregate(results, metric)
    if summary.empty:
        return pd.DataFrame(columns=["config", "dataset", "cost"]), False
    others = [c for c in CONFIG_COLUMNS if c not in ("dataset",)]
    labels = varying_label([{**r, "dataset": ""} for r in summary.to_dict("records")])
    frame = summary.assign(config=[lbl for lbl in labels], key=summary[others].astype(str).agg("|".join, axis=1))
    higher = metric.endswith("acc")
    frame["cost"] = (1 - frame["mean"]) if higher else frame["mean"]
    return frame[["key", "config", "dataset", "cost"]], higher


def performance_profiles(results: pd.DataFrame, metric: str = "test_acc", taus: Sequence[float] | None = None
                         ) -> pd.DataFrame:
    """AlgoPerf-style performance profiles across datasets.

    For each configuration (its dataset left out) and dataset, the cost is the test error (or the
    metric when lower is better, e.g. a time to target); its ratio to the best cost on that dataset is
    ``r >= 1`` (infinite where the configuration did not finish there). A configuration's profile at
    ``tau`` is the fraction of datasets with ``r <= tau``: 1 at ``tau = 1`` means best everywhere.
    Columns: ``config``, ``tau``, ``fraction``. Empty with fewer than two datasets.
    """
    frame, _ = _per_dataset_scores(results, metric)
    datasets = list(dict.fromkeys(frame["dataset"]))
    if len(datasets) < 2:
        return pd.DataFrame(columns=["config", "tau", "fraction"])
    best = frame.groupby("dataset")["cost"].min()
    ratios: dict[str, dict[str, float]] = {}
    labels: dict[str, str] = {}
    for row in frame.itertuples(index=False):
        labels[row.key] = row.config
        b = best[row.dataset]
        if not math.isfinite(row.cost):
            r = math.inf
        elif b <= 0:
            r = 1.0 if row.cost <= 0 else math.inf
        else:
            r = row.cost / b
        ratios.setdefault(row.key, {})[row.dataset] = r
    finite = [r for per in ratios.values() for r in per.values() if math.isfinite(r)]
    if taus is None:
        top = max([*finite, 1.0]) * 1.05
        taus = [1 + (top - 1) * i / 49 for i in range(50)]
    rows = []
    for key, per in ratios.items():
        for tau in taus:
            hits = sum(per.get(d, math.inf) <= tau * (1 + 1e-9) for d in datasets)  # ratios carry rounding
            rows.append({"config": labels[key], "tau": float(tau), "fraction": hits / len(datasets)})
    return pd.DataFrame(rows, columns=["config", "tau", "fraction"])


def mean_ranks(results: pd.DataFrame, metric: str = "test_acc") -> pd.DataFrame:
    """Rank of each configuration (dataset left out) on each dataset by its mean metric (1 = best; a
    configuration missing on a dataset ranks last there), and the mean rank across datasets.
    Columns: ``config``, one per dataset, ``mean_rank``; best first. Empty with fewer than two datasets."""
    frame, _ = _per_dataset_scores(results, metric)
    datasets = list(dict.fromkeys(frame["dataset"]))
    if len(datasets) < 2:
        return pd.DataFrame(columns=["config", "mean_rank"])
    table = frame.pivot_table(index=["key", "config"], columns="dataset", values="cost", aggfunc="first")
    ranks = table.rank(axis=0, method="average", na_option="bottom")
    ranks["mean_rank"] = ranks[datasets].mean(axis=1)
    out = ranks.reset_index().drop(columns="key")[["config", *datasets, "mean_rank"]]
    return out.sort_values("mean_rank", kind="stable").reset_index(drop=True)


def time_to_target(results: pd.DataFrame) -> pd.DataFrame:
    """Per configuration with a ``target``: how many finished seeds reached it, and over those the median
    training seconds, steps and epoch at which they did. Columns: the configuration columns, ``label``,
    ``target``, ``reached`` (e.g. ``2/3``), ``time_s``, ``steps``, ``epoch``. Empty without targets."""
    columns = [*CONFIG_COLUMNS, "label", "target", "reached", "time_s", "steps", "epoch"]
    results = results_only(results)
    if results.empty or "target" not in results or results["target"].isna().all():
        return pd.DataFrame(columns=columns)
    ok = results[(results["status"] == "ok") & results["target"].notna()]
    if ok.empty:
        return pd.DataFrame(columns=columns)
    _, groups = _configs(ok)
    rows = []
    for key, group in groups:
        hit = group[pd.to_numeric(group["target_time_s"], errors="coerce").notna()]
        rows.append({**dict(zip(CONFIG_COLUMNS, key)), "target": str(group["target"].iloc[0]),
                     "reached": f"{len(hit)}/{len(group)}",
                     "time_s": pd.to_numeric(hit["target_time_s"]).median() if len(hit) else math.nan,
                     "steps": pd.to_numeric(hit["target_steps"]).median() if len(hit) else math.nan,
                     "epoch": pd.to_numeric(hit["target_epoch"]).median() if len(hit) else math.nan})
    for row, label in zip(rows, varying_label(rows)):
        row["label"] = label
    return pd.DataFrame(rows, columns=columns)


def format_time_to_target(table: pd.DataFrame) -> str:
    """``cell  dataset  target  reached  median s  median steps  median epoch`` per configuration."""
    body = [[r.label, str(r.dataset), r.target, r.reached, _num(r.time_s, ".3g"), _num(r.steps, ".0f"),
             _num(r.epoch, ".0f")] for r in table.itertuples(index=False)]
    header = ["cell", "dataset", "target", "reached", "median s", "median steps", "median epoch"]
    return _table(header, body, right={3, 4, 5, 6})
