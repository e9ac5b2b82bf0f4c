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
        per_trial = trial_table(results, str(tuning))
        n_ok, n_pruned = (int((per_trial["status"] == s).sum()) for s in ("ok", "pruned"))
        rows.append({"configuration": _configuration(trials.iloc[0] if len(trials) else group.iloc[0], keys),
                     "tuned": ", ".join(keys),
                     "trials": f"{n_ok}/{len(per_trial)} ok" + (f", {n_pruned} pruned" if n_pruned else ""),
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


#: Finished trials a configuration needs before its importance panel is drawn (fANOVA on fewer is noise).
IMPORTANCE_MIN_TRIALS = 10


def trial_table(results: pd.DataFrame, tuning: str) -> pd.DataFrame:
    """One row per trial of the tuned configuration ``tuning``: its number, status (ok, pruned or failed:
    a trial over several seeds is pruned or failed when one of its cells is), the mean validation accuracy
    of its cells (a pruned cell's at its last evaluation), the epoch it reached, and each tuned key's value."""
    keys = tuned_keys(tuning)
    trials = results[(results["phase"] == "tune") & (results["tuning"] == tuning)]
    rows = []
    for number, cells in trials.groupby("trial", sort=True):
        status = set(cells["status"])
        first = cells.iloc[0]
        rows.append({"trial": int(number),
                     "status": "failed" if "failed" in status else "pruned" if "pruned" in status else "ok",
                     "val_acc": pd.to_numeric(cells["val_acc"], errors="coerce").mean(),
                     "epochs": pd.to_numeric(cells["epochs"], errors="coerce").min(),
                     **{key: _value_of(first, key) for key in keys}})
    return pd.DataFrame(rows, columns=["trial", "status", "val_acc", "epochs", *keys])


def _is_log(values) -> bool:
    numeric = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]
    return bool(numeric) and len(numeric) == len(values) and min(numeric) > 0 and max(numeric) / min(numeric) >= 10


def _numeric(values) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def importance(table: pd.DataFrame, keys: list[str]) -> dict[str, float] | None:
    """fANOVA importance of each tuned key (Optuna's ``optuna.importance``, seeded) over the finished trials;
    None with one key or fewer than :data:`IMPORTANCE_MIN_TRIALS` finished trials."""
    ok = table[(table["status"] == "ok") & table["val_acc"].notna()]
    if len(keys) < 2 or len(ok) < IMPORTANCE_MIN_TRIALS:
        return None
    from bench.tune import _optuna

    optuna = _optuna()
    d = optuna.distributions
    distributions = {}
    for key in keys:
        values = list(table[key])
        if _numeric(values) and len(set(values)) > 1:
            distributions[key] = d.FloatDistribution(float(min(values)), float(max(values)), log=_is_log(values))
        else:
            distributions[key] = d.CategoricalDistribution(sorted({str(v) for v in values}))
    study = optuna.create_study(direction="maximize")
    study.add_trials([optuna.trial.create_trial(
        params={k: (float(r[k]) if isinstance(distributions[k], d.FloatDistribution) else str(r[k])) for k in keys},
        distributions=distributions, value=float(r["val_acc"])) for _, r in ok.iterrows()])
    found = optuna.importance.get_param_importances(
        study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0))
    return {k: float(found.get(k, 0.0)) for k in keys}


def declared_log_keys(roots: list[Path]) -> set[str] | None:
    """The tuned keys whose range the runs' ``study.yaml`` declares on a log scale; None where no run says."""
    from bench import study as study_mod
    from bench.tune import parse_space

    found, said = set(), False
    for root in roots:
        try:
            study = study_mod.load(Path(root) / "study.yaml") if (Path(root) / "study.yaml").is_file() else None
        except Exception:  # noqa: BLE001 -- a damaged study.yaml: the figure guesses from the values instead
            study = None
        for key, spec in (study.tune if study is not None else {}).items():
            try:
                said = True
                if parse_space(key, spec).log:
                    found.add(key)
            except Exception:  # noqa: BLE001
                continue
    return found if said else None


def search_figures(results: pd.DataFrame, fig_dir: Path, log_keys: set[str] | None = None) -> list[tuple[Path, str]]:
    """Per tuned configuration, what the search saw: validation accuracy of every trial against each tuned
    key (log axis where ``log_keys`` has it; without ``log_keys``, for a positive range over a decade or
    more), the best so far against the trial number,
    parallel coordinates with two or more keys, and fANOVA importance with enough finished trials. Finished
    trials are filled dots, pruned ones grey crosses at their last evaluation, failed ones red marks on the
    axis. One PNG per configuration, with its caption."""
    if "phase" not in results or not (results["phase"] == "tune").any():
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for old in fig_dir.glob("search-*.png"):  # an earlier report's, of configurations that may be gone
        old.unlink()
    out = []
    tunings = list(dict.fromkeys(results.loc[results["phase"] == "tune", "tuning"].dropna()))
    for index, tuning in enumerate(tunings):
        keys = tuned_keys(str(tuning))
        table = trial_table(results, str(tuning))
        if table.empty or not keys:
            continue
        logs = {k: (k in log_keys if log_keys is not None else _is_log(list(table[k]))) and _numeric(list(table[k]))
                and (table[k] > 0).all() for k in keys}
        weights = importance(table, keys)
        final = results[(results["tuning"] == tuning) & (results["phase"] != "tune")]
        chosen = int(final["trial"].iloc[0]) if len(final) and pd.notna(final["trial"].iloc[0]) else None
        panels = [*keys, "best"] + (["parallel"] if len(keys) >= 2 else []) + (["importance"] if weights else [])
        columns = min(3, len(panels))
        rows = math.ceil(len(panels) / columns)
        fig, axes = plt.subplots(rows, columns, figsize=(4.4 * columns, 3.4 * rows), squeeze=False)
        for ax in axes.flat[len(panels):]:
            ax.set_visible(False)
        ok, pruned, failed = (table[table["status"] == s] for s in ("ok", "pruned", "failed"))
        low = table["val_acc"].min() if table["val_acc"].notna().any() else 0.0
        for ax, panel in zip(axes.flat, panels):
            if panel in keys:
                _draw_against(ax, panel, ok, pruned, failed, low, log=logs[panel], chosen=chosen)
            elif panel == "best":
                _draw_best(ax, table)
            elif panel == "parallel":
                _draw_parallel(ax, table, keys, logs)
            else:
                ax.barh(list(weights), list(weights.values()), color="#4c72b0")
                ax.set_xlim(0, 1)
                ax.set_title(f"importance (fANOVA, {len(ok)} trials)")
        label = _configuration(results[results["tuning"] == tuning].iloc[0], keys)
        counts = ", ".join(f"{n} {s}" for s, n in (("finished", len(ok)), ("pruned", len(pruned)),
                                                     ("failed", len(failed))) if n)
        fig.suptitle(f"{label}: {len(table)} trials ({counts})", fontsize="medium", y=1.02)
        path = fig_dir / f"search-{index + 1}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.tight_layout()
        fig.savefig(path, dpi=80, bbox_inches="tight")
        plt.close(fig)
        out.append((path, f"What the search found for {label}: validation accuracy of each trial against "
                          f"{', '.join(keys)} (filled: finished; grey x: pruned, at its last evaluation; red: failed), "
                          "the best so far by trial number"
                          + (", parallel coordinates (each line a trial; colour: validation accuracy)"
                             if len(keys) >= 2 else "")
                          + (", each key's fANOVA importance" if weights else "") + "."))
    return out


def _draw_against(ax, key: str, ok, pruned, failed, low: float, log: bool, chosen: int | None) -> None:
    ax.scatter(ok[key], ok["val_acc"], s=18, color="#4c72b0", label="finished", zorder=3)
    if len(pruned):
        ax.scatter(pruned[key], pruned["val_acc"], s=18, marker="x", color="#999999", label="pruned", zorder=2)
    if len(failed):
        ax.scatter(failed[key], [low] * len(failed), s=30, marker="|", color="#c44e52", label="failed", zorder=2)
    best = ok[ok["trial"] == chosen]
    if len(best):
        ax.scatter([best[key].iloc[0]], [best["val_acc"].iloc[0]], s=120, facecolors="none", edgecolors="#dd8452",
                   linewidths=1.5, label="chosen", zorder=4)
    if log:
        ax.set_xscale("log")
    ax.set_xlabel(key)
    ax.set_ylabel("validation accuracy")
    ax.set_title(f"trials vs {key}")
    ax.legend(fontsize="x-small", loc="lower right")


def _draw_best(ax, table: pd.DataFrame) -> None:
    finished = table["val_acc"].where(table["status"] == "ok")
    ax.step(table["trial"], finished.cummax().ffill(), where="post", color="#dd8452", label="best so far")
    ax.scatter(table["trial"], finished, s=10, color="#4c72b0", label="finished")
    pruned = table[table["status"] == "pruned"]
    if len(pruned):
        ax.scatter(pruned["trial"], pruned["val_acc"], s=12, marker="x", color="#999999", label="pruned")
    ax.set_xlabel("trial")
    ax.set_ylabel("validation accuracy")
    ax.set_title("best so far")
    ax.legend(fontsize="x-small", loc="lower right")


def _draw_parallel(ax, table: pd.DataFrame, keys: list[str], logs: dict[str, bool]) -> None:
    import matplotlib

    axes = [*keys, "val_acc"]
    scaled = {}
    for key in axes:
        values = list(table[key])
        if _numeric(values):
            x = pd.to_numeric(table[key], errors="coerce")
            x = x.apply(math.log10) if logs.get(key) else x
            span = (x.max() - x.min()) or 1.0
            scaled[key] = (x - x.min()) / span
        else:
            order = {v: i for i, v in enumerate(sorted({str(v) for v in values}))}
            scaled[key] = table[key].map(lambda v, order=order: order[str(v)] / max(1, len(order) - 1))
    colours = matplotlib.colormaps["viridis"]
    accs = table["val_acc"]
    finished = accs[table["status"] == "ok"]  # the colour scale spans the finished trials
    lo, hi = (finished.min(), finished.max()) if finished.notna().any() else (0.0, 1.0)
    for i in table.sort_values("val_acc", na_position="first").index:
        ys = [scaled[k][i] for k in axes]
        if table.at[i, "status"] == "ok":
            ax.plot(range(len(axes)), ys, color=colours((accs[i] - lo) / ((hi - lo) or 1.0)), linewidth=1,
                    alpha=0.8, zorder=3)
        else:
            ax.plot(range(len(axes)), ys, color="#bbbbbb", linewidth=0.6, linestyle="--", alpha=0.6)
    ax.set_xticks(range(len(axes)), [("log " if logs.get(k) else "") + k for k in axes], fontsize="small")
    ax.set_yticks([0, 1], ["low", "high"], fontsize="small")
    ax.set_title("parallel coordinates (dashed: pruned/failed)")
