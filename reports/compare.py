"""``bench compare BASE NEW``: did a change make things worse? Two runs, configuration by configuration.

BASE and NEW are run directories (their records, ``cells/*.json``) or report folders (their ``cells.csv``,
which carries every configuration column, so a report kept as a CI artifact is enough). Their final rows
are compared (tuning trials are not results); configurations are matched by their identity
(:mod:`bench.config`: components, parameters, recipe, ``limit``, device kind), a tuned configuration
without its tuned keys (each run at its own best values); ``ignore`` leaves columns out of the match
(``limit`` to compare across a change of ``--limit``).

For each configuration in both: test accuracy on each side (mean ± 95% Student-t half-width over its
seeds, clipped to [0, 1]), the difference NEW - BASE (paired on the seeds both finished, with a paired
t-test, when at least two are shared; else the difference of the means), p-values Holm-corrected across
the table with each interval from the same correction (:func:`bench.stats.corrected_frame`), and the
ratio of median epoch times NEW / BASE. Configurations in one run only are listed. With margins
(``accuracy=0.01,time=1.2``), NEW fails where its accuracy is lower by more than the accuracy margin
(point estimate), its median epoch time is more than ``time`` times BASE's, or it finished no seed of a
configuration that BASE finished; and the comparison fails when no configuration is in both runs
(nothing was checked). Everything after loading is vectorised over configurations.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.special import stdtrit

from bench.config import CONFIG_COLUMNS, config_frame, varying_label
from bench.errors import BenchError
from bench.files import TABLE_MAX, read_bounded
from bench.reports.html import markdown_table
from bench.reports.load import REPORT_MARKER, is_report_dir
from bench.safe_text import printable, read_csv_frame
from bench.stats import corrected_frame, interval_text, metric_range, results_only
from bench.store import RunStore
from bench.tune import tuned_keys

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
    root = Path(path)
    if not root.is_dir():
        raise BenchError(f"{root}: no such run directory or report folder")
    store = RunStore(root)
    if store.cells_dir.exists() or store.is_run_dir() or (root / "results.csv").is_file():
        return store.results()
    if is_report_dir(root) and (root / "cells.csv").is_file():
        try:
            text = read_bounded(root / "cells.csv", TABLE_MAX).decode()
            cells = read_csv_frame(pd.read_csv(io.StringIO(text), keep_default_na=False, na_values=[""]))
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
        """Worse beyond the margins somewhere, or margins given and no configuration to check them on."""
        return bool(len(self.failures)) or bool(self.margins and self.table.empty)

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
            "CI (Holm)": [f"[{_num(lo, '+.4f')}, {_num(hi, '+.4f')}]" if not _nan(lo) else "-"
                          for lo, hi in zip(t["diff_low"], t["diff_high"])],
            "CI level": [_num(v, ".2%") for v in t["level"]],
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
        if self.margins and self.table.empty:
            margins = ", ".join(f"{k}={v:g}" for k, v in self.margins.items())
            lines.append(f"FAIL: no configuration is in both runs, so none could be checked against the margins "
                         f"({margins})")
        elif self.margins:
            margins = ", ".join(f"{k}={v:g}" for k, v in self.margins.items())
            lines.append(f"FAIL: NEW is worse than BASE beyond the margins ({margins}) in {len(self.failures)} of "
                         f"{len(self.table)} configuration(s)" if self.failed else
                         f"ok: NEW is within the margins ({margins}) in all {len(self.table)} configuration(s)")
        return lines

    def terminal(self) -> str:
        head = f"BASE {self.base}\nNEW  {self.new}" + (f"\nignored in the match: {', '.join(self.ignore)}"
                                                       if self.ignore else "")
        shown = self.shown()
        body = (_text_table(shown.map(lambda v: printable(v, newlines=False))) if len(shown)
                else "no configuration is in both runs")
        return "\n".join([head, "", body, "", *self._lines()]).rstrip() + "\n"

    def markdown(self) -> str:
        shown = self.shown()
        body = (markdown_table(shown) if len(shown)
                else "No configuration is in both runs.")
        head = [f"## bench compare: `{self.base}` → `{self.new}`", ""]
        if self.ignore:
            head += [f"Ignored in the match: {', '.join(f'`{k}`' for k in self.ignore)}.", ""]
        return "\n".join([*head, body, "", *(f"- {line}" for line in self._lines())]).rstrip() + "\n"


def _text_table(frame: pd.DataFrame) -> str:
    """``frame`` as a plain-text table (header, a rule, one line per row, columns padded to their widest
    cell), written directly: tabulate is slow on tens of thousands of rows."""
    columns = [[str(c), *map(str, frame[c].tolist())] for c in frame.columns]
    widths = [max(map(len, column)) for column in columns]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in zip(*columns)]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


def _nan(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _num(value, fmt: str) -> str:
    return "-" if _nan(value) else format(value, fmt)


def _acc(mean, half) -> str:
    return interval_text(mean, math.nan if half is None else half, metric_range("test_acc"))


def _prepared(cells: pd.DataFrame, ignore: list[str], path, side: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The final rows of one run (tuning trials are not results) with a ``_key`` per configuration, and
    the canonical configuration columns of those rows (what the table shows and ``changed`` compares).

    A tuned configuration is matched with its tuned keys left out (each run is compared at its own best
    values; the values chosen show under ``ignored, differs``); ``ignore`` leaves columns out of the
    match, an error where that merges configurations of one run.
    """
    finals = results_only(cells).reset_index(drop=True)
    if finals.empty:
        raise BenchError(f"{path} has no cells" + (" but tuning trials" if len(cells) else ""))
    cells = finals
    canon = config_frame(cells)
    tuned = [tuned_keys(t) for t in cells["tuning"]] if "tuning" in cells else [[]] * len(cells)
    matched = canon.astype(object)
    if any(tuned):
        params = list(matched["params"])
        for i, keys in enumerate(tuned):
            if keys:
                parsed = json.loads(params[i])
                for key in keys:
                    if key in CONFIG_COLUMNS:
                        matched.at[i, key] = "tuned"
                    parsed.pop(key, None)
                params[i] = json.dumps(parsed, sort_keys=True)
        matched["params"] = params
    full = _joined(matched)
    if ignore:
        matched[ignore] = "*"  # one value on both sides takes a column out of the identity
        keys = _joined(matched)
        merged = full.groupby(keys).nunique()
        if (merged > 1).any():
            raise BenchError(f"ignoring {', '.join(ignore)} leaves {int(merged.max())} configurations of {side} "
                             "indistinguishable (their seeds would be pooled): ignore fewer keys")
    else:
        keys = full
    cells = cells.assign(_key=keys, _seed=pd.to_numeric(cells["seed"], errors="coerce"),
                         _tuned=[",".join(k) for k in tuned])
    if cells.duplicated(["_key", "_seed"]).any():
        raise BenchError(f"{path} holds a configuration and seed more than once (a report over several runs?): "
                         "compare one run directory with another")
    return cells, canon


def _joined(frame: pd.DataFrame) -> pd.Series:
    """One string per row of canonical configuration columns: equal strings, same configuration."""
    return pd.Series(["\x1f".join(map(str, values)) for values in zip(*(frame[c].tolist() for c in CONFIG_COLUMNS))],
                     index=frame.index, dtype=object)


def _side(cells: pd.DataFrame, canon: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per configuration (index ``_key``, first-seen order): its first row's canonical configuration,
    tuned keys, finished seeds ``n``, mean accuracy, its Student-t half-width and the median epoch time;
    and the finished seeds' accuracies (``_key``, ``_seed``, ``_acc``), to pair."""
    acc = pd.to_numeric(cells["test_acc"], errors="coerce") if "test_acc" in cells else pd.Series(math.nan,
                                                                                                   index=cells.index)
    ok = cells.assign(_acc=acc)[(cells["status"] == "ok") & np.isfinite(acc)]
    first = ~cells["_key"].duplicated()
    out = canon[first].assign(_key=cells.loc[first, "_key"], _tuned=cells.loc[first, "_tuned"]).set_index("_key")
    by = ok.groupby("_key")["_acc"]
    out["n"] = by.count().reindex(out.index, fill_value=0)
    out["mean"] = by.mean().reindex(out.index)
    out["std"] = by.std(ddof=1).reindex(out.index)
    times = pd.to_numeric(ok["epoch_time_s"], errors="coerce") if "epoch_time_s" in ok else pd.Series(dtype=float)
    out["epoch_s"] = times.groupby(ok["_key"]).median().reindex(out.index)
    with np.errstate(all="ignore"):
        out["ci"] = np.where(out["n"] >= 2, stdtrit(out["n"] - 1, 0.975) * out["std"] / np.sqrt(out["n"]), np.nan)
    return out, ok[["_key", "_seed", "_acc"]]


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
        sides.append(_side(*_prepared(cells, ignore, path, name)))
    (a, a_ok), (b, b_ok) = sides
    every = pd.concat([a, b[~b.index.isin(a.index)]])
    # ignored columns are left out of the labels too (the "ignored, differs" column shows them)
    configs = every[CONFIG_COLUMNS].assign(params=[json.loads(v) for v in every["params"]],
                                           **dict.fromkeys(ignore, "*"))
    labels = dict(zip(every.index, varying_label(configs.to_dict("records"))))
    shared = [k for k in a.index if k in b.index]
    table = _table(a.loc[shared], b.loc[shared], [labels[k] for k in shared], ignore, a_ok, b_ok)
    if len(table):
        records = table.to_dict("records")
        table["verdict"] = [_verdict(r) for r in records]
        table["gate"] = [_gate(r, margins) for r in records]
    return Comparison(Path(base), Path(new), ignore, margins, table,
                      [labels[k] for k in a.index if k not in b.index],
                      [labels[k] for k in b.index if k not in a.index])


def _table(base: pd.DataFrame, new: pd.DataFrame, labels: list[str], ignore: list[str], base_ok: pd.DataFrame,
           new_ok: pd.DataFrame) -> pd.DataFrame:
    """One row per shared configuration: both sides, and NEW - BASE paired on the seeds both finished
    (with at least two of them; else the difference of the means, without a test)."""
    if not len(base):
        return pd.DataFrame()
    pairs = base_ok.merge(new_ok, on=["_key", "_seed"], suffixes=("_base", "_new"))
    diffs = (pairs["_acc_new"] - pairs["_acc_base"]).groupby(pairs["_key"])
    n_shared = diffs.count().reindex(base.index, fill_value=0)
    paired = n_shared >= 2
    tests = pd.DataFrame({"n": n_shared,
                          "diff": diffs.mean().reindex(base.index).where(paired, new["mean"] - base["mean"]),
                          "sd": diffs.std(ddof=1).reindex(base.index).where(paired)})
    tests = corrected_frame(tests, ALPHA, metric_range("test_acc"))
    changed = [""] * len(base)
    if ignore or (base["_tuned"] != "").any() or (new["_tuned"] != "").any():
        for i, (was, now) in enumerate(zip(base.to_dict("records"), new.to_dict("records"))):
            items = [f"{c}: {_value(was[c])} → {_value(now[c])}" for c in ignore if was[c] != now[c]]
            for tuned in dict.fromkeys(filter(None, f"{was['_tuned']},{now['_tuned']}".split(","))):
                before, after = _tuned_value(was, tuned), _tuned_value(now, tuned)
                items += [f"{tuned} (tuned): {_value(before)} → {_value(after)}"] if before != after else []
            changed[i] = "; ".join(items)
    ratio = (new["epoch_s"] / base["epoch_s"]).where(base["epoch_s"] > 0)
    return pd.DataFrame({"label": labels, "changed": changed, "n_base": base["n"].to_numpy(),
                         "n_new": new["n"].to_numpy(), "n_shared": n_shared.to_numpy(), "paired": paired.to_numpy(),
                         "base_acc": base["mean"].to_numpy(), "base_ci": base["ci"].to_numpy(),
                         "new_acc": new["mean"].to_numpy(), "new_ci": new["ci"].to_numpy(),
                         "diff": tests["diff"].to_numpy(), "diff_ci": tests["ci"].to_numpy(),
                         "diff_low": tests["ci_low"].to_numpy(), "diff_high": tests["ci_high"].to_numpy(),
                         "level": tests["level"].to_numpy(), "p": tests["p"].to_numpy(),
                         "p_holm": tests["p_holm"].to_numpy(), "family": tests["family"].to_numpy(),
                         "base_epoch_s": base["epoch_s"].to_numpy(), "new_epoch_s": new["epoch_s"].to_numpy(),
                         "time_ratio": ratio.to_numpy()})


def _tuned_value(config: dict, key: str):
    return config[key] if key in CONFIG_COLUMNS else json.loads(config["params"]).get(key)


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
