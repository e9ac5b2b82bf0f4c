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
multiple-testing correction does not eat all the power. The p-values of every comparison in the
table are Holm-corrected together; a difference whose corrected p-value is not below ``alpha`` is
reported as ``tied``.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Sequence

import pandas as pd

from bench.config import CONFIG_COLUMNS, axes, config_frame, config_label, varying_label
from bench.tune import tuned_keys

#: Columns that open the comparisons table (before ``a``, ``b``): where and along which axis.
GROUP_COLUMNS = ["dataset", "axis", "fixed"]
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
    (half-width), ``ci_low`` and ``ci_high``, in first-seen order."""
    columns = [*CONFIG_COLUMNS, "label", "tuned", "n", "seeds", "failed", "mean", "std", "ci", "ci_low", "ci_high"]
    results = results_only(results)
    if results.empty:
        return pd.DataFrame(columns=columns)
    _, groups = _configs(results)
    rows = []
    for key, group in groups:
        ok = _ok(group, metric)
        mean, std, half = mean_ci(ok[metric], confidence)
        tuning = group["tuning"].dropna().astype(str) if "tuning" in group else pd.Series([], dtype=str)
        rows.append({**dict(zip(CONFIG_COLUMNS, key)), "tuned": ",".join(tuned_keys(next(iter(tuning), ""))),
                     "n": len(ok),
                     "seeds": ",".join(str(s) for s in sorted(ok["seed"].astype(int))),
                     "failed": int((group["status"] == "failed").sum()), "mean": mean, "std": std, "ci": half,
                     "ci_low": mean - half, "ci_high": mean + half})
    labels = varying_label(rows)
    for row, label in zip(rows, labels):
        row["label"] = label
    return pd.DataFrame(rows, columns=columns)


def compare(results: pd.DataFrame, metric: str = "test_acc", alpha: float = 0.05, confidence: float = 0.95,
            pairs: str = "auto") -> pd.DataFrame:
    """Paired comparisons of configurations on their shared seeds, Holm-corrected together.

    Only comparable configurations are paired (:func:`bench.config.comparable`): the same dataset,
    ``--limit`` and device kind, and either the same recipe (axis ``recipe``) or one differing recipe
    axis (axis ``lr``, ``optimizer``, ...). A *group* is a set of configurations that differ only along
    one axis; ``fixed`` describes what they share. ``pairs``: ``all`` (every pair within a group),
    ``best`` (each against the group's best) or ``auto`` (``all`` for groups of at most
    :data:`ALL_PAIRS_MAX`, else ``best``). Columns: ``dataset``, ``axis``, ``fixed``, ``a``, ``b``, ``n``
    (shared seeds), ``diff`` (mean of a - b), ``ci`` (half-width), ``ci_low``, ``ci_high``, ``p``,
    ``p_holm`` and ``verdict``: the better label when ``p_holm < alpha``, ``tied`` when not, ``n/a``
    with fewer than two shared seeds.
    """
    if pairs not in ("auto", "all", "best"):
        raise ValueError(f"pairs must be auto, all or best, not {pairs!r}")
    columns = [*GROUP_COLUMNS, "a", "b", "n", "diff", "ci", "ci_low", "ci_high", "p", "p_holm", "verdict"]
    rows = []
    ok = _ok(results, metric) if not results.empty else results
    if not ok.empty:
        summary = aggregate(ok, metric, confidence)
        configs = [dict(r) for _, r in summary.iterrows()]
        per_seed = _per_seed(ok, metric)
        for (axis, fixed), members in _groups(configs).items():
            if len(members) < 2:
                continue
            mode = pairs if pairs != "auto" else ("all" if len(members) <= ALL_PAIRS_MAX else "best")
            if mode == "all":
                chosen = list(itertools.combinations(members, 2))
            else:
                best = max(members, key=lambda c: -math.inf if math.isnan(c["mean"]) else c["mean"])
                chosen = [(best, c) for c in members if c is not best]
            for a, b in chosen:
                va, vb = per_seed[_ckey(a)], per_seed[_ckey(b)]
                shared = sorted(set(va) & set(vb))
                xa, xb = [va[s] for s in shared], [vb[s] for s in shared]
                diff, half, p = paired_test(xa, xb, confidence) if shared else (math.nan, math.nan, math.nan)
                rows.append({"dataset": a["dataset"], "axis": axis, "fixed": fixed, "a": a["label"], "b": b["label"],
                             "n": len(shared), "diff": diff, "ci": half, "ci_low": diff - half,
                             "ci_high": diff + half, "p": p})
    adjusted = holm([r["p"] for r in rows])
    for row, p_holm in zip(rows, adjusted):
        row["p_holm"] = p_holm
        if math.isnan(p_holm):
            row["verdict"] = "n/a"
        elif p_holm < alpha:
            row["verdict"] = row["a"] if row["diff"] > 0 else row["b"]
        else:
            row["verdict"] = "tied"
    return pd.DataFrame(rows, columns=columns)


def _ckey(config) -> tuple:
    return tuple(str(config[c]) for c in CONFIG_COLUMNS)


def _groups(configs: list[dict]) -> dict[tuple[str, str], list[dict]]:
    """Configurations by (axis, what they share): each group varies along that one axis only.

    Bucketed in one pass per axis (not pair by pair), so that a thousand configurations stay quick:
    ``recipe`` groups share the context and the whole recipe; an ``lr`` group shares everything but ``lr``.
    """
    from bench.config import COMPONENT_AXES, RECIPE_AXES

    seen = [_untuned(c) for c in configs]
    split = [axes(c) for c in seen]
    buckets: dict[tuple, list[int]] = {}
    for i, parts in enumerate(split):
        recipe_key = ("recipe", parts["_context"], tuple(str(parts[a]) for a in RECIPE_AXES))
        buckets.setdefault(recipe_key, []).append(i)
        for axis in RECIPE_AXES:
            others = tuple(str(parts[a]) for a in (*COMPONENT_AXES, *RECIPE_AXES) if a != axis)
            buckets.setdefault((axis, parts["_context"], others), []).append(i)
    groups: dict[tuple[str, str], list[dict]] = {}
    for (axis, *_), members in buckets.items():
        values = {str(split[i][axis]) for i in members} if axis != "recipe" else {
            tuple(str(split[i][a]) for a in COMPONENT_AXES) for i in members}
        if len(members) < 2 or len(values) < 2:
            continue
        first = members[0]
        varying = COMPONENT_AXES if axis == "recipe" else (axis,)
        fixed = ", ".join(f"{k}={_show(seen[first], k)}" for k in split[first]
                          if k not in varying and not k.startswith("_") and k not in COMPONENT_AXES)
        if axis != "recipe":
            fixed = f"{config_label(configs[first])}; " + fixed
        groups[(axis, fixed)] = [configs[i] for i in members]
    return groups


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


def _show(config, axis: str) -> str:
    if axis in ("optimizer", "schedule"):
        return config_label(config, (axis,)).split(" [")[0]
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
    from bench.safe_text import printable

    table = [[printable(cell, newlines=False) for cell in row] for row in (header, *body)]  # aligned as printed
    header, body = table[0], table[1:]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]

    def line(cells):
        padded = (c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))
        return "  ".join(padded).rstrip()

    return "\n".join([line(header), "  ".join("-" * w for w in widths), *(line(r) for r in body)])


def _num(value: float, fmt: str) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, fmt)


def format_aggregate(summary: pd.DataFrame, metric: str = "test_acc", confidence: float = 0.95) -> str:
    """``label  dataset  n  mean ± half-width  [low, high]  std`` per configuration."""
    pct = f"{confidence:.0%}"
    body = []
    for r in summary.itertuples(index=False):
        body.append([r.label, str(r.dataset), str(r.n) + (f" ({r.failed} failed)" if r.failed else ""),
                     f"{_num(r.mean, '.4f')} ± {_num(r.ci, '.4f')}",
                     f"[{_num(r.ci_low, '.4f')}, {_num(r.ci_high, '.4f')}]", _num(r.std, '.4f')])
    header = ["cell", "dataset", "seeds", f"{metric} mean ± {pct} CI", f"{pct} CI", "std"]
    return _table(header, body, right={2})


def format_comparisons(table: pd.DataFrame, alpha: float = 0.05, confidence: float = 0.95) -> str:
    """``a  b  n  diff [CI]  p  p_holm  verdict`` per comparison."""
    body = []
    for r in table.itertuples(index=False):
        body.append([str(r.dataset), str(r.axis), r.a, r.b, str(r.n), f"{_num(r.diff, '+.4f')}",
                     f"[{_num(r.ci_low, '+.4f')}, {_num(r.ci_high, '+.4f')}]", _num(r.p, '.3g'),
                     _num(r.p_holm, '.3g'), r.verdict])
    header = ["dataset", "axis", "a", "b", "n", "diff a-b", f"{confidence:.0%} CI", "p", "p (Holm)",
              f"verdict (alpha={alpha:g})"]
    return _table(header, body, right={4, 5, 7, 8})


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
