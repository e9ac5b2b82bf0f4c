"""``bench compare BASE NEW``: did a change make things worse? Two runs, configuration by configuration.

BASE and NEW are run directories (their records, ``cells/*.json``) or report folders (their ``cells.csv``, which
carries every configuration column, so a report kept as a CI artifact is enough). Configurations are
matched by their identity (:mod:`bench.config`: components, parameters, recipe, ``limit``, device kind);
``ignore`` leaves columns out of the match (``limit`` to compare across a change of ``--limit``).

For each configuration in both: test accuracy on each side (mean ± 95% Student-t half-width over its
seeds), the difference NEW - BASE (paired on the seeds both finished, with its confidence interval and a
paired t-test, when at least two are shared; else the difference of the means), p-values Holm-corrected
across the table, and the ratio of median epoch times NEW / BASE. Configurations in one run only are
listed. With margins (``accuracy=0.01,time=1.2``), NEW fails where its accuracy is lower by more than
the accuracy margin (point estimate), its median epoch time is more than ``time`` times BASE's, or it
finished no seed of a configuration that BASE finished.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from bench.config import COLUMN_DEFAULTS, CONFIG_COLUMNS, config_frame, config_keys, row_config, varying_label
from bench.errors import BenchError
from bench.stats import holm, mean_ci, paired_test
from reports.load import REPORT_MARKER, is_report_dir

#: What a margin of ``fail_on`` may name.
MARGINS = {"accuracy": "largest drop in mean test accuracy allowed (e.g. 0.01)",
           "time": "largest ratio of median epoch times NEW/BASE allowed (e.g. 1.2)"}
ALPHA = 0.05


def parse_ignore(text: str | None) -> list[str]:
    """``"limit,lr"`` -> ``["limit", "lr"]``, each a configuration column."""
    keys = [k.strip() for k in (text or "").split(",") if k.strip()]
    for key in keys:
        if key not in CONFIG_COLUMNS:
            raise BenchError(f"cannot ignore '{key}': not a configuration key (valid: {', '.join(CONFIG_COLUMNS)})")
    return keys


def parse_fail_on(text: str | None) -> dict[str, float]:
    """``"accuracy=0.01,time=1.2"`` -> ``{"accuracy": 0.01, "time": 1.2}``."""
    margins: dict[str, float] = {}
    for item in (text or "").split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        key = key.strip()
        if key not in MARGINS or not sep:
            raise BenchError(f"bad margin '{item.strip()}': expected NAME=VALUE with NAME one of "
                             f"{', '.join(f'{k} ({v})' for k, v in MARGINS.items())}")
        try:
            number = float(value)
        except ValueError:
            raise BenchError(f"margin {key}={value.strip()!r} is not a number") from None
        if not math.isfinite(number) or number < 0 or (key == "time" and number <= 0):
            raise BenchError(f"margin {key}={value.strip()} must be a finite number "
                             f"{'> 0' if key == 'time' else '>= 0'}")
        margins[key] = number
    return margins


def load_cells(path: Path | str) -> pd.DataFrame:
    """One row per cell of a run directory (from its records, ``cells/*.json``; a damaged one is an error
    naming it) or a report folder (its ``cells.csv``). ``results.csv`` is read only in a folder without
    records (a table kept on its own)."""
    from bench.files import TABLE_MAX, read_bounded
    from bench.store import RunStore

    root = Path(path)
    if not root.is_dir():
        raise BenchError(f"{root}: no such run directory or report folder")
    store = RunStore(root)
    if store.cells_dir.exists() or store.is_run_dir() or (root / "results.csv").is_file():
        return store.results()
    if is_report_dir(root) and (root / "cells.csv").is_file():
        try:
            text = read_bounded(root / "cells.csv", TABLE_MAX).decode()
            cells = pd.read_csv(io.StringIO(text), keep_default_na=False, na_values=[""])
        except (OSError, UnicodeDecodeError, ValueError, pd.errors.ParserError) as exc:
            raise BenchError(f"{root / 'cells.csv'} is not a readable table ({' '.join(str(exc).split())[:200]})") \
                from None
        missing = [c for c in ("cell_id", "params", "seed", "status", "test_acc") if c not in cells]
        if missing:
            raise BenchError(f"{root} is a report from an older gridbench (its cells.csv has no "
                             f"{', '.join(missing)}): compare its run directory instead (listed in {REPORT_MARKER})")
        return cells
    raise BenchError(f"{root} is neither a run directory (no cells/ records) nor a report folder (no cells.csv and "
                     f"{REPORT_MARKER})")


@dataclass
class Comparison:
    base: Path
    new: Path
    ignore: list[str]
    margins: dict[str, float]
    table: pd.DataFrame  # one row per configuration present in both
    only_base: list[str] = field(default_factory=list)  # labels of configurations in BASE only
    only_new: list[str] = field(default_factory=list)

    @property
    def failures(self) -> pd.DataFrame:
        return self.table[self.table["gate"].str.startswith("FAIL")] if len(self.table) else self.table

    @property
    def failed(self) -> bool:
        return bool(len(self.failures))

    def shown(self) -> pd.DataFrame:
        """The table as people read it."""
        t = self.table
        if t.empty:
            return pd.DataFrame()
        columns = {
            "configuration": t["label"],
            "seeds base/new/shared": [f"{a}/{b}/{c}" for a, b, c in zip(t["n_base"], t["n_new"], t["n_shared"])],
            "base acc": [_acc(m, h) for m, h in zip(t["base_acc"], t["base_ci"])],
            "new acc": [_acc(m, h) for m, h in zip(t["new_acc"], t["new_ci"])],
            "Δ acc (new-base)": [_num(v, "+.4f") for v in t["diff"]],
            "95% CI": [f"[{_num(d - h, '+.4f')}, {_num(d + h, '+.4f')}]" if not _nan(h) else "-"
                       for d, h in zip(t["diff"], t["diff_ci"])],
            "p (Holm)": [_num(v, ".3g") for v in t["p_holm"]],
            "base epoch s": [_num(v, ".4g") for v in t["base_epoch_s"]],
            "new epoch s": [_num(v, ".4g") for v in t["new_epoch_s"]],
            "time ratio": [_num(v, ".3f") for v in t["time_ratio"]],
            "verdict": t["verdict"],
        }
        if t["changed"].astype(bool).any():
            columns = {"configuration": columns.pop("configuration"), "ignored, differs": t["changed"], **columns}
        if self.margins:
            columns["gate"] = t["gate"]
        return pd.DataFrame(columns)

    def _lines(self) -> list[str]:
        lines = []
        if self.only_base:
            lines.append(f"only in BASE ({len(self.only_base)}): " + "; ".join(self.only_base))
        if self.only_new:
            lines.append(f"only in NEW ({len(self.only_new)}): " + "; ".join(self.only_new))
        if self.margins:
            margins = ", ".join(f"{k}={v:g}" for k, v in self.margins.items())
            lines.append(f"FAIL: NEW is worse than BASE beyond the margins ({margins}) in {len(self.failures)} of "
                         f"{len(self.table)} configuration(s)" if self.failed else
                         f"ok: NEW is within the margins ({margins}) in all {len(self.table)} configuration(s)")
        return lines

    def terminal(self) -> str:
        head = f"BASE {self.base}\nNEW  {self.new}" + (f"\nignored in the match: {', '.join(self.ignore)}"
                                                       if self.ignore else "")
        shown = self.shown()
        body = (shown.to_markdown(index=False, tablefmt="simple", disable_numparse=True) if len(shown)
                else "no configuration is in both runs")
        return "\n".join([head, "", body, "", *self._lines()]).rstrip() + "\n"

    def markdown(self) -> str:
        shown = self.shown().map(lambda v: str(v).replace("|", "\\|"))
        body = (shown.to_markdown(index=False, disable_numparse=True) if len(shown)
                else "No configuration is in both runs.")
        head = [f"## bench compare: `{self.base}` → `{self.new}`", ""]
        if self.ignore:
            head += [f"Ignored in the match: {', '.join(f'`{k}`' for k in self.ignore)}.", ""]
        return "\n".join([*head, body, "", *(f"- {line}" for line in self._lines())]).rstrip() + "\n"


def _nan(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _num(value, fmt: str) -> str:
    return "-" if _nan(value) else format(value, fmt)


def _acc(mean, half) -> str:
    if _nan(mean):
        return "-"
    return f"{mean:.4f}" if _nan(half) else f"{mean:.4f} ± {half:.4f}"


def _keys(cells: pd.DataFrame, ignore: list[str], side: str) -> pd.Series:
    """Configuration keys with the ignored columns left out; an error where that merges configurations."""
    full = config_keys(cells)
    if not ignore:
        return full
    # Setting an ignored column to one value on both sides takes it out of the identity.
    keys = config_keys(cells.assign(**{c: COLUMN_DEFAULTS.get(c, "-") for c in ignore}))
    merged = full.groupby(keys).nunique()
    if (merged > 1).any():
        raise BenchError(f"ignoring {', '.join(ignore)} leaves {int(merged.max())} configurations of {side} "
                         "indistinguishable (their seeds would be pooled): ignore fewer keys")
    return keys


def _side(cells: pd.DataFrame) -> dict[str, dict]:
    """Per configuration: its config, ok seeds' accuracies and the median epoch time."""
    out = {}
    for key, group in cells.groupby("_key", sort=False):
        ok = group[group["status"] == "ok"]
        acc = {int(s): float(a) for s, a in zip(ok["seed"], pd.to_numeric(ok["test_acc"], errors="coerce"))
               if math.isfinite(float(a))}
        times = pd.to_numeric(ok.get("epoch_time_s", pd.Series(dtype=float)), errors="coerce").dropna()
        out[key] = {"config": row_config(config_frame(group.iloc[:1]).iloc[0]), "acc": acc, "cells": len(group),
                    "epoch_s": float(times.median()) if len(times) else math.nan}
    return out


def compare_runs(base: Path | str, new: Path | str, ignore: list[str] | str | None = None,
                 margins: dict[str, float] | str | None = None) -> Comparison:
    """Compare two runs (or reports) configuration by configuration; see the module's docstring."""
    ignore = parse_ignore(ignore) if isinstance(ignore, str) or ignore is None else list(ignore)
    margins = parse_fail_on(margins) if isinstance(margins, str) or margins is None else dict(margins)
    sides = []
    for path, name in ((base, "BASE"), (new, "NEW")):
        cells = load_cells(path)
        if cells.empty:
            raise BenchError(f"{path} has no cells")
        cells = cells.assign(_key=_keys(cells, ignore, name))
        twice = cells.assign(_seed=cells["seed"].astype(str)).duplicated(["_key", "_seed"])
        if twice.any():
            raise BenchError(f"{path} holds a configuration and seed more than once (a report over several runs?): "
                             "compare one run directory with another")
        sides.append(_side(cells))
    a, b = sides
    every = {**a, **b}
    # ignored columns are left out of the labels too (the "ignored, differs" column shows them)
    labels = dict(zip(every, varying_label([{**every[k]["config"], **dict.fromkeys(ignore, "*")} for k in every])))
    rows = []
    for key in [k for k in a if k in b]:
        rows.append(_row(a[key], b[key], labels[key], ignore))
    table = pd.DataFrame(rows)
    if len(table):
        table["p_holm"] = holm(list(table["p"]))
        table["verdict"] = [_verdict(r) for r in table.to_dict("records")]
        table["gate"] = [_gate(r, margins) for r in table.to_dict("records")]
    return Comparison(Path(base), Path(new), ignore, margins, table,
                      [labels[k] for k in a if k not in b], [labels[k] for k in b if k not in a])


def _row(base: dict, new: dict, label: str, ignore: list[str]) -> dict:
    shared = sorted(set(base["acc"]) & set(new["acc"]))
    base_acc, _, base_ci = mean_ci(list(base["acc"].values()))
    new_acc, _, new_ci = mean_ci(list(new["acc"].values()))
    if len(shared) >= 2:
        diff, diff_ci, p = paired_test([new["acc"][s] for s in shared], [base["acc"][s] for s in shared])
    else:
        diff, diff_ci, p = new_acc - base_acc, math.nan, math.nan
    changed = [f"{c}: {_value(base['config'][c])} → {_value(new['config'][c])}" for c in ignore
               if base["config"][c] != new["config"][c]]
    ratio = new["epoch_s"] / base["epoch_s"] if base["epoch_s"] > 0 else math.nan
    return {"label": label, "changed": "; ".join(changed), "n_base": len(base["acc"]), "n_new": len(new["acc"]),
            "n_shared": len(shared), "paired": len(shared) >= 2, "base_acc": base_acc, "base_ci": base_ci,
            "new_acc": new_acc, "new_ci": new_ci, "diff": diff, "diff_ci": diff_ci, "p": p,
            "base_epoch_s": base["epoch_s"], "new_epoch_s": new["epoch_s"], "time_ratio": ratio}


def _value(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _verdict(row: dict) -> str:
    if row["n_new"] == 0 and row["n_base"] > 0:
        return "NEW failed"
    if row["n_base"] == 0:
        return "BASE failed" if row["n_new"] else "both failed"
    if _nan(row["p_holm"]):
        return "n/a (< 2 paired seeds)"
    if row["p_holm"] >= ALPHA:
        return "tied"
    return "NEW better" if row["diff"] > 0 else "NEW worse"


def _gate(row: dict, margins: dict[str, float]) -> str:
    if not margins:
        return ""
    reasons = []
    if row["n_new"] == 0 and row["n_base"] > 0:
        reasons.append("no seed finished in NEW")
    if "accuracy" in margins and not _nan(row["diff"]) and row["diff"] < -margins["accuracy"]:
        reasons.append(f"accuracy {row['diff']:+.4f} < -{margins['accuracy']:g}")
    if "time" in margins and not _nan(row["time_ratio"]) and row["time_ratio"] > margins["time"]:
        reasons.append(f"time ×{row['time_ratio']:.3f} > {margins['time']:g}")
    return "FAIL: " + "; ".join(reasons) if reasons else "ok"
