"""Builds a report directory from run directories: tables, figures and index.html.

The page stays small whatever the number of cells: figures are drawn per *configuration* (templates
averaged over its seeds, confusion counts summed over them) rather than per cell, and cheaply (see
:mod:`bench.reports.cellfigs`); everything is embedded as long as ``index.html`` stays under
:data:`PAGE_LIMIT`, and what does not fit goes to pages and files of its own, linked from it.
Per-cell figures are drawn only on demand (``cell_figures``), on one page per cell.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from html import escape
from pathlib import Path

import numpy as np
import pandas as pd

from bench import stats
from bench.config import config_keys
from bench.reports import cellfigs, html, protocol
from bench.reports.latex import summary_latex
from bench.reports.load import REPORT_MARKER, VARIANT_COLUMNS, Runs, prepare_report_dir, read_runs
from bench.reports.tables import Tables, make_tables, terminal_table
from bench.safe_text import csv_text
from bench.store import atomic_write

RUN_FACTS = ("device", "device_name", "torch", "gridbench", "cpu", "torch_threads", "command", "started")
#: The most index.html may weigh, in bytes; what would not fit is linked instead of embedded.
PAGE_LIMIT = 10_000_000
#: A comparative figure larger than this is linked rather than embedded.
FIGURE_EMBED_MAX = 1_500_000

FIGURES = {
    "val_loss": ("val_loss.png", "Validation loss per epoch (mean over seeds, 95% CI band): hue is the loss, "
                 "style the model; rows are runs and recipes where they vary"),
    "val_acc": ("val_acc.png", "Validation accuracy per epoch (mean over seeds, 95% CI band)"),
    "heatmap": ("accuracy_heatmap.png", "Mean test accuracy, model × loss, per dataset"),
    "accuracy_vs_time": ("accuracy_vs_time.png", "Test accuracy vs training time, one point per cell; "
                         "the Pareto front is circled"),
    "epoch_time": ("epoch_time.png", "Median epoch time by model and device"),
}


@dataclass
class Report:
    out: Path
    index: Path
    tables: Tables
    figures: dict[str, Path]  # name -> comparative figure
    config_pages: dict[str, str]  # configuration anchor -> where its section is: "#anchor" or "configs/anchor.html"
    cell_pages: dict[str, Path] = field(default_factory=dict)  # "run/cell_id" -> its page (cell_figures)
    skipped_reports: list[Path] = field(default_factory=list)  # report directories given as runs, left out
    notes: list[str] = field(default_factory=list)

    def terminal(self) -> str:
        """The summary table as plain text, for the terminal."""
        shown = self.tables.display(self.tables.summary)
        if not len(shown):
            return "(no cells)"
        return terminal_table(shown)


# -- tables ----------------------------------------------------------------------------------------

def _write_tables(csv: str, out: Path, stem: str, columns: dict[str, html.Column],
                  links: dict | None = None) -> None:
    """``stem.csv`` (every column), ``stem.md`` and ``stem.html`` (the displayed ``columns``)."""
    atomic_write(out / f"{stem}.csv", csv)
    shown = pd.DataFrame({name: texts for name, (texts, _) in columns.items()})
    # plugin names and errors are text, never markup; a '|' would split the column, a newline the row
    cells = shown.map(html.markdown_cell)
    markdown = cells.to_markdown(index=False, disable_numparse=True) if len(shown) else "(no cells)"
    atomic_write(out / f"{stem}.md", markdown + "\n")
    atomic_write(out / f"{stem}.html", html.standalone_table(columns, stem, f"gridbench {stem}", links))


def _number(value, fmt: str) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, fmt)


def _comparisons(runs: Runs) -> pd.DataFrame:
    """Paired comparisons on shared seeds (``bench.stats.compare``), within each run."""
    frames = []
    for run in runs.runs:
        results = runs.results[runs.results["run"] == run.label]
        table = stats.compare(results)
        if len(table):
            frames.append(table.assign(run=run.label) if runs.several else table)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _comparisons_columns(table: pd.DataFrame) -> dict[str, html.Column]:
    columns: dict[str, html.Column] = {}
    if "run" in table:
        columns["run"] = (list(table["run"]), None)
    columns.update({
        "dataset": (list(table["dataset"]), None), "context": (list(table["context"]), None),
        "axis": (list(table["axis"]), None), "a": (list(table["a"]), None), "b": (list(table["b"]), None),
        "seeds": ([str(v) for v in table["n"]], list(table["n"])),
        "diff a-b": ([_number(v, "+.4f") for v in table["diff"]], list(table["diff"])),
        "CI (Holm)": ([f"[{_number(lo, '+.4f')}, {_number(hi, '+.4f')}]" for lo, hi in zip(table["ci_low"],
                                                                                        table["ci_high"])], None),
        "CI level": ([_number(v, ".2%") for v in table["level"]], list(table["level"])),
        "p": ([_number(v, ".3g") for v in table["p"]], list(table["p"])),
        "p (Holm)": ([_number(v, ".3g") for v in table["p_holm"]], list(table["p_holm"])),
        "family": ([str(v) for v in table["family"]], list(table["family"])),
        "verdict": (list(table["verdict"]), None),
    })
    return columns


def _runs_table(runs: Runs) -> pd.DataFrame:
    rows = []
    for run in runs.runs:
        counts = runs.results.loc[runs.results["run"] == run.label, "status"].value_counts()
        rows.append({"run": run.label, "path": str(run.root),
                     "cells": ", ".join(f"{n} {s}" for s, n in counts.items()) or "none",
                     **{k: str(run.env.get(k, "")) for k in RUN_FACTS}, "git": git_label(run.env.get("git"))})
    return pd.DataFrame(rows)


def git_label(git) -> str:
    """``b861127 (uncommitted changes)``: the project's commit as env.json records it ("" where none)."""
    if not isinstance(git, dict):
        return ""
    commit = str(git.get("commit") or "no commit yet")[:12]
    return commit + (" (uncommitted changes)" if git.get("dirty") else "")


def _software_table(runs: Runs) -> pd.DataFrame:
    """The distributions that ran: gridbench's dependencies and every loaded plugin, from each run's env.json."""
    rows = []
    for run in runs.runs:
        packages = run.env.get("packages") if isinstance(run.env.get("packages"), dict) else {}
        plugins = run.env.get("plugins") if isinstance(run.env.get("plugins"), dict) else {}
        for name, info in plugins.items():
            info = info if isinstance(info, dict) else {}
            origin = f"{info.get('distribution', '')} {info.get('version', '')}".strip() or info.get("file", "")
            rows.append({"run": run.label, "kind": f"plugin ({info.get('source', '?')})", "name": str(name),
                         "distribution": str(origin), "status": str(info.get("status", ""))})
        for name, version in packages.items():
            rows.append({"run": run.label, "kind": "package", "name": str(name), "distribution": f"{name} {version}",
                         "status": ""})
    frame = pd.DataFrame(rows)
    return frame.drop(columns=["run"]) if len(frame) and not runs.several else frame


def _references_table(runs: Runs) -> pd.DataFrame:
    """Every published reference recorded by the runs, for the datasets they ran."""
    rows, seen = [], set()
    datasets = set(runs.results["dataset"].astype(str)) if len(runs.results) else set()
    for run in runs.runs:
        for dataset, refs in (run.env.get("references") or {}).items():
            for ref in refs:
                key = json.dumps([dataset, {k: v for k, v in ref.items() if k != "defaults"}], sort_keys=True)
                if dataset not in datasets or key in seen:
                    continue
                seen.add(key)
                family = [f"model={ref['model']}"] + ([f"loss={ref['loss']}"] if ref.get("loss") else [])
                family += [f"{k}={v}" for k, v in (ref.get("params") or {}).items()]
                published = ", ".join(f"{k}={v}" for k, v in (ref.get("published") or {}).items())
                rows.append({"dataset": dataset, "reference": ref["label"], "applies to": ", ".join(family),
                             "published model": published, "test error": f"{ref['test_error']:.2%}",
                             "source": ref["source"]})
    return pd.DataFrame(rows)


# -- configurations and cells ------------------------------------------------------------------------

@dataclass
class Section:
    """One configuration's (or cell's) section: its anchor, whether it failed, and its HTML."""

    anchor: str
    title: str
    html: str
    failed: bool = False


def _anchor(*parts: str) -> str:
    return "cfg-" + hashlib.sha256("\0".join(parts).encode()).hexdigest()[:12]


def _recipe_text(row) -> str:
    """``optimizer=adam lr=0.001 ... limit=1000 device=cpu``: the recipe columns and ``limit``, with labels."""
    return " ".join(f"{c}={_value(row, c)}" for c in (*VARIANT_COLUMNS, "device"))


def _value(row, column: str) -> str:
    value = row.get(f"{column}_label", row[column])
    return f"{value:g}" if isinstance(value, float) else str(value)


def _figures_html(runs: Runs, cells: pd.DataFrame, what: str) -> tuple[str, list[str]]:
    """Templates (mean over the finished cells') and confusion matrix (counts summed) of ``cells``."""
    parts, notes = [], []
    ok = cells[cells["status"] == "ok"]
    templates, kinds, confusions, classes, why = [], set(), [], [], ""
    for _, row in ok.iterrows():
        record = runs.record(row["run"], row["cell_id"])
        classes = classes or [str(c) for c in (record.classes if record is not None else [])]
        values, kind, reason = runs.templates(row["run"], row["cell_id"])
        if values is not None and (not templates or values.shape == templates[0].shape):
            templates.append(values.astype(np.float64))
            kinds.add(kind)
        else:
            why = why or reason or "templates of another shape"
        if record is not None and record.confusion:
            confusions.append(np.asarray(record.confusion, dtype=np.int64))
    several = len(ok) > 1
    if templates:
        note = f"; mean over {len(templates)} {what}" if len(templates) > 1 else ""
        parts.append(cellfigs.templates_html(np.mean(templates, axis=0), classes, "/".join(sorted(kinds)), note))
    elif len(ok):
        notes.append(f"no template figure: {why}")
    shapes = {c.shape for c in confusions}
    if confusions and len(shapes) == 1:
        note = f"; counts summed over {len(confusions)} {what}" if len(confusions) > 1 else ""
        parts.append(cellfigs.confusion_html(np.sum(confusions, axis=0), classes, note))
    elif len(ok):
        notes.append("no confusion matrix was recorded" + (" for these cells" if several else " for this cell"))
    return '<div class="figs">' + "".join(parts) + "</div>" if parts else "", notes


def _section(anchor: str, title: str, facts: dict[str, str], figures: str, notes: list[str], errors: list[str],
             status: str) -> str:
    facts_html = " · ".join(f"{escape(k)}: {escape(v)}" for k, v in facts.items() if v)
    kind = status if status in ("ok", "pruned") else "failed"
    out = [f'<article class="config {kind}" id="{escape(anchor)}">',
           f'<h3>{escape(title)} <span class="badge {kind}">{escape(status)}</span></h3>',
           f'<p class="muted">{facts_html}</p>']
    out += [f'<p class="error">{escape(e)}</p>' for e in errors]
    out += [f'<p class="muted">{escape(n)}</p>' for n in notes]
    out.append(figures)
    out.append("</article>")
    return "\n".join(out)


def _config_sections(runs: Runs, tables: Tables) -> list[Section]:
    """One section per configuration (row of the summary), in the summary's order."""
    summary = tables.summary
    if summary.empty:
        return []
    results = runs.results
    groups = {key: group for key, group in results.groupby(["run", "config"], sort=False)}
    keys = config_keys(summary)
    sections = []
    for i, row in summary.iterrows():
        run = row["run"]
        cells = groups[(run, keys[i])]
        anchor = _anchor(str(run), keys[i])
        title = f"{row['label']} on {row['dataset_label']}" + (f" ({run})" if runs.several else "")
        facts = {"seeds finished": row["seeds"],
                 "test accuracy": _acc_text(row["test_acc"], row["test_acc_ci95"]),
                 "recipe": _recipe_text(row), "median epoch time (s)": _number(row["epoch_time_s"], ".4g"),
                 "parameters": _number(row["n_params"], ",.0f")}
        if "reference" in row and row["reference"]:
            facts["reference"] = f"{row['reference_test_error']:.2%} test error, {row['reference']}"
            gap = row["reference_gap"]
            facts["gap"] = (f"not comparable: {row['not_comparable']}" if row["not_comparable"] else
                            _number(gap * 100, "+.2f") + " pts of test error"
                            + (" — far below its reference" if row["far_below"] is True else ""))
        figures, notes = _figures_html(runs, cells, "seeds")
        errors = [f"seed {s}: {st}: {e}" for s, st, e in zip(cells["seed"], cells["status"], cells["error"])
                  if st != "ok"]
        status = str(row["status"])  # "ok", or e.g. "1 failed, 2 ok"
        sections.append(Section(anchor, title, _section(anchor, title, facts, figures, notes, errors, status),
                                failed=status != "ok"))
    return sections


def _acc_text(mean, half) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return ""
    return stats.interval_text(mean, math.nan if half is None else half, stats.metric_range("test_acc"))


def _cell_stem(runs: Runs, run: str, cell_id: str) -> str:
    index = {r.label: i for i, r in enumerate(runs.runs)}[run]
    return f"r{index}-" + re.sub(r"[^0-9A-Za-z_-]", "_", str(cell_id))


def _cell_pages(runs: Runs, out: Path) -> dict[str, Path]:
    """With ``cell_figures``: one page per cell with its own templates and confusion matrix."""
    pages = {}
    for _, row in runs.results.iterrows():
        stem = _cell_stem(runs, row["run"], row["cell_id"])
        title = f"{row['label']} on {row['dataset_label']}, seed {row['seed']}" + (
            f" ({row['run']})" if runs.several else "")
        facts = {"cell": str(row["cell_id"]), "device": str(row["device"]),
                 "test accuracy": _number(row.get("test_acc"), ".4f"),
                 "test loss": _number(row.get("test_loss"), ".4g"),
                 "median epoch time (s)": _number(row.get("epoch_time_s"), ".4g"),
                 "parameters": _number(row.get("n_params"), ",.0f")}
        figures, notes = _figures_html(runs, runs.results.loc[[row.name]], "cells")
        error = "" if pd.isna(row["error"]) else str(row["error"])
        body = _section(stem, title, facts, figures, notes, [error] if error else [], str(row["status"]))
        path = out / "cells" / f"{stem}.html"
        atomic_write(path, html.document(title, ['<p><a href="../index.html">report</a></p>', body], script=False))
        pages[f"{row['run']}/{row['cell_id']}"] = path
    return pages


# -- the page ----------------------------------------------------------------------------------------

@dataclass
class Part:
    """A piece of index.html: embedded, or (if it does not fit) ``fallback``, which links it."""

    html: str
    fallback: str | None = None  # None: always embedded
    priority: int = 0  # lower is placed first when space runs short
    on_fallback: Callable[[], None] | None = None  # writes what the fallback links to

    @property
    def size(self) -> int:
        return len(self.html.encode())


def _fit(parts: list[Part], limit: int) -> list[str]:
    """The parts' HTML, each embedded if it fits in ``limit`` bytes (by priority), else its fallback."""
    used = sum(p.size if p.fallback is None else len(p.fallback.encode()) for p in parts)
    chosen = {}
    for i in sorted(range(len(parts)), key=lambda i: parts[i].priority):
        part = parts[i]
        if part.fallback is None:
            continue
        extra = part.size - len(part.fallback.encode())
        if used + extra <= limit:
            chosen[i] = part.html
            used += extra
        else:
            chosen[i] = part.fallback
            if part.on_fallback is not None:
                part.on_fallback()
    return [chosen.get(i, p.html) for i, p in enumerate(parts)]


def default_out(run_dirs: list[Path]) -> Path:
    """``RUN_DIR/report`` for one run; for several, ``report-<first>-vs-<n-1 more>`` beside the first."""
    first = Path(run_dirs[0])
    if len(run_dirs) == 1:
        return first / "report"
    return first.parent / f"report-{first.name}-and-{len(run_dirs) - 1}-more"


def build_report(run_dirs: list[Path | str], out: Path | str | None = None, cell_figures: bool = False) -> Report:
    """Read the run directories and write the report; returns where everything went.

    ``cell_figures``: also draw every cell's own templates and confusion matrix, one page per cell.
    """
    from bench.reports import figures

    runs = read_runs([Path(p) for p in run_dirs])
    out = Path(out) if out is not None else default_out([run.root for run in runs.runs])
    prepare_report_dir(out, [run.root for run in runs.runs])  # refuses a folder that is not a report
    tables = make_tables(runs)
    sections = _config_sections(runs, tables)
    anchors = [s.anchor for s in sections]
    cell_pages = _cell_pages(runs, out) if cell_figures else {}

    # Tables: CSV with every column, Markdown and HTML with what people read, LaTeX for papers.
    summary_columns = tables.columns(tables.summary)
    summary_links = {"model": [f"#{a}" for a in anchors]}  # the section, or the stub that links its page
    _write_tables(tables.csv(tables.summary), out, "summary", summary_columns,
                  {"model": [f"index.html#{a}" for a in anchors]})
    atomic_write(out / "summary.tex", summary_latex(tables))
    cells_columns = tables.columns(tables.cells)
    cell_links = {"cell": [cell_pages[f"{r}/{c}"].relative_to(out).as_posix() for r, c in
                           zip(tables.cells["run"], tables.cells["cell_id"])]} if cell_pages else {}
    _write_tables(tables.csv(tables.cells), out, "cells", cells_columns, cell_links)
    comparisons = _comparisons(runs)
    if len(comparisons):
        _write_tables(csv_text(comparisons), out, "comparisons", _comparisons_columns(comparisons))

    notes: list[str] = []
    fig_dir = out / "figures"
    made = {
        "val_loss": figures.curves(runs, "val_loss", fig_dir / FIGURES["val_loss"][0], notes),
        "val_acc": figures.curves(runs, "val_acc", fig_dir / FIGURES["val_acc"][0], []),
        "heatmap": figures.heatmap(runs, tables.summary, fig_dir / FIGURES["heatmap"][0], notes),
        "accuracy_vs_time": figures.accuracy_vs_time(runs, fig_dir / FIGURES["accuracy_vs_time"][0], notes),
        "epoch_time": figures.epoch_time(runs, fig_dir / FIGURES["epoch_time"][0], notes),
    }
    protocol_figures = {
        "sensitivity": (protocol.sensitivity_figure(runs.results, fig_dir / "sensitivity.png"),
                        "Tuning: validation accuracy of every trial against each tuned value; the chosen value "
                        "circled."),
        **{f"search-{i}": figure for i, figure in enumerate(protocol.search_figures(
            runs.results, fig_dir, protocol.declared_log_keys([run.root for run in runs.runs])))},
        "profiles": (protocol.profile_figure(runs.results, fig_dir / "performance_profiles.png"),
                     "Performance profiles across datasets: the fraction of datasets on which a configuration's "
                     "test error is within a factor tau of the best."),
    }
    made = {k: p for k, p in made.items() if p is not None}
    if len(made) < len(FIGURES):
        notes.append("Figures without any finished cell to draw are left out.")

    title = "gridbench report: " + ", ".join(run.label for run in runs.runs)
    parts = [
        Part(f"<h1>{escape(title)}</h1>"),
        Part('<nav><a href="#runs">Runs</a><a href="#summary-section">Summary</a><a href="#references">References'
             '</a><a href="#software">Software</a><a href="#figures">Figures</a><a href="#configurations">'
             'Configurations</a><a href="#cells-section">Cells</a></nav>'),
        Part('<section id="runs"><h2>Runs</h2>' + html.table(html.frame_columns(_runs_table(runs)), "runs-table",
                                                             sortable=False) + "</section>"),
        Part('<section id="summary-section"><h2>Summary</h2>'
             '<p class="muted">One row per configuration (model, loss, dataset, parameters, training recipe, '
             "--limit, device kind; and run): its seeds aggregated. Test accuracy: mean ± 95% Student-t confidence "
             "half-width over the seeds that finished (just the mean with one seed; [low, high] where the interval is "
             "clipped to [0, 1]). Best first within each dataset."
             f"{escape(_common_recipe(tables))} A model opens its configuration's figures.</p>"),
        Part(html.table(summary_columns, "summary", summary_links),
             '<p><a href="summary.html">The summary table</a> (its own page: too large to embed).</p>', priority=0),
    ]
    failed = [s for s in sections if s.failed]
    if failed:
        parts.append(Part(f'<p class="error">{len(failed)} configuration(s) with cells that did not finish:</p><ul>'
                          + "".join(f'<li><a href="#{s.anchor}">{escape(s.title)}</a></li>' for s in failed[:100])
                          + (f"<li>and {len(failed) - 100} more</li>" if len(failed) > 100 else "") + "</ul>"))
    if len(comparisons):
        parts.append(Part(
            '<h3 id="comparisons-section">Paired comparisons</h3><p class="muted">Test accuracy of configurations '
            "that share a context (the dataset with its parameters, --limit, device kind) and a training recipe (or "
            "differ in one recipe axis only), compared seed by seed (paired t-test on shared seeds), p-values "
            "Holm-corrected across the run's table (family: how many); tied = not significant at 0.05. Each "
            "interval is at the level of its Holm step (CI level), so it excludes zero exactly where the verdict "
            "is not tied.</p>" + html.table(_comparisons_columns(comparisons), "comparisons"),
            '<p><a href="comparisons.html">Paired comparisons</a> (their own page: too large to embed).</p>',
            priority=3))
    parts.append(Part("</section>"))
    for title, anchor, frame, blurb in (
            ("Tuning", "tuning", protocol.tuning_table(runs.results),
             "Each configuration got the same budget of trials (sampled values of the tuned keys, trained on the "
             "first seed, or the mean over the first seeds with --tune-seeds, scored on the validation split; "
             "with --prune, trials that fell behind were stopped early and count as pruned); the best finished "
             "trial's values were then trained with every seed: those final rows are what the summary shows. The "
             "test split was never used to choose. The Figures section shows what each search found."),
            ("Time to target", "time-to-target", protocol.target_table(runs.results),
             "Training time until the validation metric first reached the target, median over the seeds that "
             "reached it (evaluation time excluded)."),
            ("Across datasets", "across-datasets", protocol.ranks_table(runs.results),
             "Rank of each configuration on each dataset by mean test accuracy (1 = best), and the mean rank.")):
        if len(frame):
            atomic_write(out / f"{anchor}.csv", csv_text(frame))
            parts.append(Part(f'<section id="{anchor}"><h2>{title}</h2><p class="muted">{escape(blurb)}</p>'
                              + html.table(html.frame_columns(frame), f"{anchor}-table") + "</section>"))
    references = _references_table(runs)
    parts.append(Part('<section id="references"><h2>References</h2>' + (
        '<p class="muted">Published test errors that the datasets declare (recorded in each run\'s env.json). '
        "Each applies to the configurations of its model (and loss, and parameters, where it names them); the "
        "summary and cells tables show it beside them with the gap: their test error minus the reference's, in "
        "percentage points. A configuration whose test error is more than twice its reference's plus one "
        "point is flagged far below. The gap is shown only where the training is comparable with the published "
        "one: the whole training set (no --limit) of the dataset with its registered parameters; elsewhere it "
        "reads not comparable, with the reason.</p>"
        + html.table(html.frame_columns(references), "references-table", sortable=False)
        if len(references) else '<p class="muted">No dataset of these runs declares reference results.</p>')
        + "</section>"))
    software = _software_table(runs)
    parts.append(Part('<section id="software"><h2>Software</h2>' + (
        '<p class="muted">What code ran (from each run\'s env.json): the project\'s git commit is in the Runs '
        "table; here every loaded plugin with the distribution it came from, and gridbench's dependencies.</p>"
        + html.table(html.frame_columns(software), "software-table", sortable=False)
        if len(software) else '<p class="muted">These runs recorded no versions (an older gridbench).</p>')
        + "</section>"))
    parts.append(Part('<section id="figures"><h2>Figures</h2>'
                      + "".join(f'<p class="muted">{escape(n)}</p>' for n in dict.fromkeys(notes))
                      + '<div class="figs">'))
    for path, caption in protocol_figures.values():
        if path is not None:
            parts.append(Part(html.figure(path, caption), html.figure(path, caption, embed=False, base=out),
                              priority=1))
    for key, path in made.items():
        caption = FIGURES[key][1]
        linked = html.figure(path, caption, embed=False, base=out)
        if path.stat().st_size <= FIGURE_EMBED_MAX:
            parts.append(Part(html.figure(path, caption), linked, priority=1))
        else:
            parts.append(Part(linked))
    parts.append(Part("</div></section>"))
    parts.append(Part('<section id="configurations"><h2>Configurations</h2><p class="muted">Per configuration: its '
                      "class templates (the weights of a linear model, else the input gradient; averaged over its "
                      "seeds) and its test confusion matrix (counts summed over its seeds)."
                      + (" Every cell's own figures: the links in the cells table." if cell_pages else
                         " Every cell's own figures: bench report --cell-figures.") + "</p>"))
    config_note = len(parts)
    parts.append(Part(""))
    for old in (out / "configs").glob("cfg-*.html"):
        old.unlink()
    where = {a: f"#{a}" for a in anchors}
    for section in sections:
        page = f"configs/{section.anchor}.html"

        def write(section=section, page=page):
            where[section.anchor] = page
            atomic_write(out / page, html.document(section.title, ['<p><a href="../index.html">report</a></p>',
                                                                   section.html], script=False))

        parts.append(Part(section.html, f'<p><a id="{section.anchor}" href="{page}">{escape(section.title)}</a> '
                                        "(its own page)</p>", priority=4, on_fallback=write))
    parts.append(Part("</section>"))
    parts.append(Part(
        '<section id="cells-section"><h2>Cells</h2><p class="muted">Every cell, failed and skipped ones included.'
        "</p>" + html.table(cells_columns, "cells", cell_links) + "</section>",
        '<section id="cells-section"><h2>Cells</h2><p><a href="cells.html">Every cell</a> (its own page: too large '
        "to embed here).</p></section>", priority=5))
    chosen = _fit(parts, PAGE_LIMIT - len(html.document(title, []).encode()) - len(parts) - 1024)
    moved = sum(1 for a in anchors if not where[a].startswith("#"))
    if moved:
        note = (f"{moved} of {len(anchors)} configurations are on pages of their own (configs/), to keep index.html "
                f"under {PAGE_LIMIT / 1e6:g} MB: keep the report folder together.")
        notes.append(note)
        chosen[config_note] = f'<p class="muted">{escape(note)}</p>'
    index = out / "index.html"
    atomic_write(index, html.document(title, chosen))
    atomic_write(out / REPORT_MARKER, json.dumps({"runs": [str(run.root.resolve()) for run in runs.runs]}, indent=1)
                 + "\n")
    return Report(out, index, tables, made, where, cell_pages, runs.skipped_reports, list(dict.fromkeys(notes)))


def _common_recipe(tables: Tables) -> str:
    """' Recipe shared by every configuration: optimizer=adam, lr=0.001, ...' (the columns that do not vary)."""
    summary = tables.summary
    fixed = [c for c in VARIANT_COLUMNS if c not in tables.varying]
    if summary.empty or not fixed:
        return ""
    row = summary.iloc[0]
    return " Recipe shared by every configuration: " + ", ".join(f"{c}={_value(row, c)}" for c in fixed) + "."
