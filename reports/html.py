"""The report's index.html: one page, no server, every figure embedded, every name escaped."""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from html import escape
from pathlib import Path

import pandas as pd

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto; max-width: 1400px;
       padding: 0 1rem; color: #1d1d1f; }
h1 { margin-bottom: .2rem; } h2 { border-bottom: 2px solid #ddd; padding-bottom: .2rem; margin-top: 2.5rem; }
table { border-collapse: collapse; font-size: .9rem; margin: .5rem 0 1rem; }
th, td { border: 1px solid #ccc; padding: .25rem .5rem; text-align: left; vertical-align: top; }
th { background: #f2f2f2; } tr:nth-child(even) td { background: #fafafa; }
nav a { margin-right: 1rem; } .muted { color: #666; }
figure { margin: .5rem 0 1.5rem; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #555; font-size: .9rem; }
.cell { border: 1px solid #ddd; border-radius: 6px; padding: .5rem 1rem; margin: 1rem 0; }
.cell.failed, .cell.skipped { border-color: #c0392b; background: #fff6f5; }
.figs { display: flex; flex-wrap: wrap; gap: 1rem; align-items: flex-start; }
.figs figure { flex: 0 1 auto; max-width: 100%; }
.error { color: #a4271b; white-space: pre-wrap; font-family: ui-monospace, monospace; }
.badge { display: inline-block; padding: 0 .5rem; border-radius: 4px; font-size: .85rem; background: #2e7d32;
         color: white; } .badge.failed, .badge.skipped { background: #c0392b; }
"""


@dataclass
class CellEntry:
    """One cell's section: its title, status, facts, error and figures (caption -> PNG path)."""

    anchor: str
    title: str
    status: str
    facts: dict[str, str]
    error: str = ""
    figures: list[tuple[str, Path]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def image(path: Path, alt: str) -> str:
    """An <img> with the PNG embedded as a data URI, so the page stands alone."""
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{escape(alt)}">'


def figure(path: Path, caption: str) -> str:
    return f"<figure>{image(path, caption)}<figcaption>{escape(caption)}</figcaption></figure>"


def table(frame: pd.DataFrame, table_id: str) -> str:
    """A DataFrame as an HTML table; pandas escapes every cell and header."""
    return frame.to_html(index=False, escape=True, table_id=table_id, classes="data", na_rep="", border=0)


def standalone_table(frame: pd.DataFrame, table_id: str, title: str) -> str:
    """A small HTML document holding one table (UTF-8 declared, so '±' shows as such from disk)."""
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
            f"<style>{STYLE}</style></head><body>\n{table(frame, table_id)}\n</body></html>\n")


def page(title: str, runs_table: pd.DataFrame, summary: pd.DataFrame, figures: list[tuple[str, Path]],
         cells: list[CellEntry], notes: list[str], comparisons: pd.DataFrame | None = None) -> str:
    failed = [c for c in cells if c.status != "ok"]
    parts = [
        "<!doctype html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{escape(title)}</title><style>{STYLE}</style></head><body>",
        f"<h1>{escape(title)}</h1>",
        ('<nav><a href="#runs">Runs</a><a href="#summary-section">Summary</a><a href="#figures">Figures</a>'
         '<a href="#cells">Cells</a></nav>'),
        '<section id="runs"><h2>Runs</h2>', table(runs_table, "runs-table"), "</section>",
        '<section id="summary-section"><h2>Summary</h2>',
        ('<p class="muted">One row per model × loss × dataset × parameters (and run); seeds aggregated. '
         "Test accuracy: mean ± 95% Student-t confidence half-width over the seeds that finished "
         "(just the mean with one seed). Best first within each dataset.</p>"),
        table(summary, "summary"),
    ]
    if failed:
        parts.append(f'<p class="error">{len(failed)} cell(s) did not finish:</p><ul>')
        parts += [f'<li><a href="#{c.anchor}">{escape(c.title)}</a>: <span class="error">'
                  f"{escape(c.status)}: {escape(c.error)}</span></li>" for c in failed]
        parts.append("</ul>")
    if comparisons is not None:
        parts += [
            '<h3 id="comparisons-section">Paired comparisons</h3>',
            ('<p class="muted">Test accuracy of configurations that share a dataset and training recipe, '
             "compared seed by seed (paired t-test on shared seeds), p-values Holm-corrected across the table; "
             "tied = not significant at 0.05.</p>"),
            table(comparisons, "comparisons"),
        ]
    parts.append("</section>")
    parts.append('<section id="figures"><h2>Figures</h2>')
    parts += [f'<p class="muted">{escape(n)}</p>' for n in notes]
    parts.append('<div class="figs">' + "".join(figure(path, caption) for caption, path in figures) + "</div>")
    parts.append("</section>")
    parts.append('<section id="cells"><h2>Cells</h2>')
    parts += [_cell(c) for c in cells]
    parts.append("</section></body></html>")
    return "\n".join(parts) + "\n"


def _cell(c: CellEntry) -> str:
    facts = " · ".join(f"{escape(k)}: {escape(v)}" for k, v in c.facts.items() if v)
    out = [f'<article class="cell {escape(c.status)}" id="{escape(c.anchor)}">',
           f'<h3>{escape(c.title)} <span class="badge {escape(c.status)}">{escape(c.status)}</span></h3>',
           f'<p class="muted">{facts}</p>']
    if c.error:
        out.append(f'<p class="error">{escape(c.error)}</p>')
    out += [f'<p class="muted">{escape(n)}</p>' for n in c.notes]
    if c.figures:
        out.append('<div class="figs">' + "".join(figure(p, cap) for cap, p in c.figures) + "</div>")
    out.append("</article>")
    return "\n".join(out)
