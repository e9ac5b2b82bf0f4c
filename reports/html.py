"""The report's HTML: pages that open from disk with no server and no network, every name escaped.

Tables are sortable (click a header; again to reverse) and filterable (a box under each header) by a
few lines of inline JavaScript: no library, nothing fetched. A filter keeps the rows whose cell contains
the text (case-insensitive); ``a|b`` keeps either; ``!a`` those without it; ``>0.9``, ``<=100``, ``=2``
compare numbers (numeric columns sort and compare by their value, not their text).
"""

from __future__ import annotations

import base64
import math
from collections.abc import Sequence
from html import escape
from pathlib import Path

import pandas as pd

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto; max-width: 1500px;
       padding: 0 1rem; color: #1d1d1f; }
h1 { margin-bottom: .2rem; } h2 { border-bottom: 2px solid #ddd; padding-bottom: .2rem; margin-top: 2.5rem; }
table { border-collapse: collapse; font-size: .85rem; margin: .5rem 0 1rem; }
th, td { border: 1px solid #ccc; padding: .2rem .3rem; text-align: left; vertical-align: top; }
th { background: #f2f2f2; } tbody tr:nth-child(even) td { background: #fafafa; }
table.sortable thead tr:first-child th { cursor: pointer; user-select: none; }
table.sortable th[aria-sort=ascending]::after { content: " \\25B2"; }
table.sortable th[aria-sort=descending]::after { content: " \\25BC"; }
tr.filters th { background: #fbfbfb; padding: .15rem; }
table#comparisons td:last-child, table#comparisons th:last-child { position: sticky; right: 0;
  box-shadow: -2px 0 3px rgba(0, 0, 0, .08); } table#comparisons tbody td:last-child { background: #fff; }
tr.filters input { width: 100%; min-width: 2.5rem; box-sizing: border-box; font-size: .8rem; }
.tools { font-size: .85rem; color: #555; margin-top: .8rem; }
.table-wrap { overflow-x: auto; }
table.data td { white-space: nowrap; } table.data td.wrap { white-space: normal; min-width: 8rem; }
table.data td.tight { white-space: normal; }
nav a { margin-right: 1rem; } .muted { color: #666; }
figure { margin: .5rem 0 1.5rem; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #555; font-size: .9rem; }
.config { border: 1px solid #ddd; border-radius: 6px; padding: .5rem 1rem; margin: 1rem 0; }
.config.failed { border-color: #c0392b; background: #fff6f5; }
.figs { display: flex; flex-wrap: wrap; gap: 1.5rem; align-items: flex-start; }
.templates { max-width: 560px; }
.tiles { display: grid; grid-template-columns: repeat(var(--cols, 5), max-content); gap: .4rem; }
figure.tile { margin: 0; text-align: center; } figure.tile img { border: 1px solid #ddd; }
.tiles img, img.pixels { image-rendering: pixelated; }
figure.tile figcaption { font-size: .8rem; max-width: 84px; overflow-wrap: anywhere; }
.scale { display: inline-flex; align-items: center; gap: .3rem; font-size: .8rem; margin-left: .5rem; }
.scale .bar { display: inline-block; width: 90px; height: .7rem; border: 1px solid #ccc;
              background: linear-gradient(to right, #053061, #4393c3, #f7f7f7, #d6604d, #67001f); }
table.cm { font-size: .75rem; } table.cm td { text-align: right; min-width: 1.8rem; }
table.cm th { font-weight: normal; } table.cm th.corner { font-size: .7rem; color: #666; }
""" + "".join(f".d{i} {{ background: rgba(33,102,172,{0.08 + 0.09 * i:.2f}) !important; }}\n" for i in range(10)) \
    + "".join(f".e{i} {{ background: rgba(214,96,77,{0.06 + 0.09 * i:.2f}) !important; }}\n" for i in range(10)) + """
.d7, .d8, .d9 { color: white; }
.error { color: #a4271b; white-space: pre-wrap; font-family: ui-monospace, monospace; }
.badge { display: inline-block; padding: 0 .5rem; border-radius: 4px; font-size: .85rem; background: #2e7d32;
         color: white; } .badge.failed, .badge.skipped { background: #c0392b; }
"""

SCRIPT = r"""
(function () {
  "use strict";
  var collator = new Intl.Collator(undefined, {numeric: true, sensitivity: "base"});
  function value(td) {
    var v = td.getAttribute("data-v");
    return v === null || v === "" ? NaN : Number(v);
  }
  function term(td, t) {
    var m = /^(<=|>=|!=|<|>|=)\s*(-?[0-9.]+(?:e-?[0-9]+)?)$/i.exec(t);
    if (m && td.hasAttribute("data-v")) {
      var x = value(td), y = Number(m[2]);
      if (isNaN(x)) return false;
      return {"<": x < y, "<=": x <= y, ">": x > y, ">=": x >= y, "=": x === y, "!=": x !== y}[m[1]];
    }
    var text = td.textContent.toLowerCase();
    if (t.charAt(0) === "!" && t.length > 1) return text.indexOf(t.slice(1)) < 0;
    return text.indexOf(t) >= 0;
  }
  function keep(td, filter) {
    return filter.split("|").some(function (t) { t = t.trim(); return t !== "" && term(td, t); });
  }
  function setup(table) {
    var head = table.tHead.rows[0], body = table.tBodies[0];
    var inputs = Array.prototype.slice.call(table.tHead.querySelectorAll("tr.filters input"));
    var count = document.querySelector('.count[data-for="' + table.id + '"]');
    var rows = Array.prototype.slice.call(body.rows);
    function refresh() {
      var shown = 0;
      rows.forEach(function (tr) {
        var ok = inputs.every(function (input, i) {
          var f = input.value.trim().toLowerCase();
          return f === "" || keep(tr.cells[i], f);
        });
        tr.hidden = !ok;
        if (ok) shown += 1;
      });
      if (count) count.textContent = shown + " of " + rows.length + " rows";
    }
    Array.prototype.forEach.call(head.cells, function (th, col) {
      th.title = "sort by " + th.textContent + " (click again to reverse)";
      th.addEventListener("click", function () {
        var dir = th.getAttribute("aria-sort") === "descending" ? "ascending" :
                  th.getAttribute("aria-sort") === "ascending" ? "descending" :
                  (th.hasAttribute("data-numeric") ? "descending" : "ascending");
        Array.prototype.forEach.call(head.cells, function (h) { h.removeAttribute("aria-sort"); });
        th.setAttribute("aria-sort", dir);
        var sign = dir === "ascending" ? 1 : -1, numeric = th.hasAttribute("data-numeric");
        var keyed = rows.map(function (tr, i) { return [tr, i]; });
        keyed.sort(function (a, b) {
          var x = a[0].cells[col], y = b[0].cells[col], c;
          if (numeric) {
            var p = value(x), q = value(y);
            c = isNaN(p) || isNaN(q) ? isNaN(p) - isNaN(q) : sign * (p - q);  // missing last either way
          } else {
            c = sign * collator.compare(x.textContent, y.textContent);
          }
          return c || a[1] - b[1];
        });
        rows = keyed.map(function (k) { return k[0]; });
        rows.forEach(function (tr) { body.appendChild(tr); });
      });
    });
    inputs.forEach(function (input) { input.addEventListener("input", refresh); });
    refresh();
  }
  Array.prototype.forEach.call(document.querySelectorAll("table.sortable"), setup);
})();
"""

#: Columns of long text, which wrap (every other column keeps to one line).
WRAP = {"error", "command", "source", "path", "reference (test error)", "gap to reference", "a", "b", "context",
        "fixed"}
#: Columns of a value and what is in brackets after it (``0.9123 [0.9001, 0.9245]``, ``mlp [hidden=64]``), which
#: may break before the bracket, never inside it.
TIGHT = {"test_acc (mean ± 95% CI)", "model"}
#: A column for :func:`table`: its texts, and the numbers it sorts and compares by (None: by text).
Column = tuple[Sequence[str], Sequence | None]


def markdown_cell(value) -> str:
    """``value`` as one cell of a Markdown table: text, never markup (HTML escaped), a ``|`` that does not
    end the cell, and line breaks as ``<br>`` so that a name or parameter holding a newline stays in its row."""
    text = escape(str(value), quote=False).replace("|", "\\|")
    return text.replace("\r\n", "<br>").replace("\r", "<br>").replace("\n", "<br>")


def markdown_table(frame: pd.DataFrame) -> str:
    """``frame`` as a Markdown (pipe) table, each cell through :func:`markdown_cell`; written directly,
    not padded: tabulate is slow on tens of thousands of rows."""
    header = "| " + " | ".join(markdown_cell(c) for c in frame.columns) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    rows = ("| " + " | ".join(markdown_cell(v) for v in row) + " |"
            for row in zip(*(frame[c].tolist() for c in frame.columns)))
    return "\n".join([header, rule, *rows])


def _number(value) -> str:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return ""
    return repr(number) if math.isfinite(number) else ""


def table(columns: dict[str, Column], table_id: str, links: dict[str, Sequence[str | None]] | None = None,
          sortable: bool = True, classes: dict[str, Sequence[str]] | None = None) -> str:
    """An HTML table of ``columns`` (name -> texts, sort values); ``links`` make a column's cells links.

    Sortable tables get a row of filter boxes and a row count; everything is escaped.
    """
    links, classes = links or {}, classes or {}
    names = list(columns)
    n = len(next(iter(columns.values()))[0]) if columns else 0
    head = "".join(f'<th{" data-numeric" if columns[c][1] is not None else ""}>{_header(c)}</th>' for c in names)
    parts = []
    if sortable:
        parts.append(f'<div class="tools"><span class="count" data-for="{escape(table_id)}">{n} rows</span> · '
                     "click a header to sort; type under it to filter (a|b, !a, &gt;0.9)</div>")
    parts.append(f'<div class="table-wrap"><table id="{escape(table_id)}" class="data'
                 f'{" sortable" if sortable else ""}"><thead><tr>{head}</tr>')
    if sortable:
        parts.append('<tr class="filters">' + "".join(
            f'<th><input type="search" aria-label="filter {escape(c)}" placeholder="filter"></th>' for c in names)
            + "</tr>")
    parts.append("</thead><tbody>")
    body = []
    for i in range(n):
        cells = []
        for name in names:
            texts, values = columns[name]
            text = escape(str(texts[i]))
            if name in TIGHT:
                text = text.replace(", ", ",\u00a0")  # what is in brackets stays on one line
            href = links.get(name, [None] * n)[i]
            if href:
                text = f'<a href="{escape(href)}">{text}</a>'
            attrs = f' data-v="{_number(values[i])}"' if values is not None else ""
            css = classes.get(name, [""] * n)[i] or ("wrap" if name in WRAP else "tight" if name in TIGHT else "")
            attrs += f' class="{escape(css)}"' if css else ""
            cells.append(f"<td{attrs}>{text}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    parts.append("\n".join(body))
    parts.append("</tbody></table></div>")
    return "\n".join(parts)


def _header(name: str) -> str:
    """A column's name, which may break after an underscore (``epoch_time_s``) as well as at a space."""
    return escape(name).replace("_", "_<wbr>")


def frame_columns(frame: pd.DataFrame, numeric: Sequence[str] = ()) -> dict[str, Column]:
    """A display DataFrame as :func:`table` columns; ``numeric`` columns sort by their parsed value."""
    out: dict[str, Column] = {}
    for name in frame.columns:
        texts = ["" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v) for v in frame[name]]
        out[str(name)] = (texts, [_parse(t) for t in texts] if name in numeric else None)
    return out


def _parse(text: str) -> float:
    try:
        return float(str(text).replace(",", "").replace("[", "").split()[0])
    except (ValueError, IndexError):
        return math.nan


def image(path: Path, alt: str, embed: bool = True, base: Path | None = None) -> str:
    """An <img>: the PNG embedded as a data URI (the page stands alone), or linked relative to ``base``."""
    if embed:
        data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
        return f'<img src="data:image/png;base64,{data}" alt="{escape(alt)}">'
    src = Path(path).relative_to(base).as_posix() if base is not None else Path(path).name
    return f'<img src="{escape(src)}" alt="{escape(alt)}" loading="lazy">'


def figure(path: Path, caption: str, embed: bool = True, base: Path | None = None) -> str:
    return f"<figure>{image(path, caption, embed, base)}<figcaption>{escape(caption)}</figcaption></figure>"


def document(title: str, body: Sequence[str], script: bool = True) -> str:
    """A whole HTML page (UTF-8 declared, so '±' shows as such from disk), with the inline sort/filter script."""
    return "\n".join([
        "<!doctype html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escape(title)}</title><style>{STYLE}</style></head><body>",
        *body,
        f"<script>{SCRIPT}</script>" if script else "",
        "</body></html>",
    ]) + "\n"


def standalone_table(columns: dict[str, Column], table_id: str, title: str,
                     links: dict[str, Sequence[str | None]] | None = None) -> str:
    """A page holding one sortable, filterable table."""
    return document(title, [f"<h1>{escape(title)}</h1>", table(columns, table_id, links)])
