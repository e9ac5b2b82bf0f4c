"""Plain-text tables that fit a terminal: drop the columns whose value is the same in every row (said once
below the table; an outcome such as a verdict or a status stays), then shorten the widest text columns
with "…", until each line fits.

It works on what the commands print: "simple" tables (a header line, a line of dashes under each column,
then the rows, as tabulate and ``bench run``'s summary write them), found anywhere in a block of text;
every other line is left as it is. ``--wide`` prints the tables whole.
"""

from __future__ import annotations

import re
import textwrap

#: Terminal tables are fitted to this many columns unless --wide is given.
TABLE_WIDTH = 120
#: A shortened column keeps at least this many characters.
MIN_COLUMN = 12
#: Columns that say how a row came out stay even where every row says the same.
_OUTCOME = re.compile(r"^(verdict|status|gate)\b")
_RULE = re.compile(r"^ *-+(?: +-+)* *$")
#: Numbers, intervals ("0.97 ± 0.01", "[-0.05, +0.01]"), counts ("3/3/3"): never shortened.
_NUMBER = re.compile(r"^[-+]?[\d,]*\.?\d+(?:e[-+]?\d+)?%?$|^-$|^$|^[\d\s.,+\-±\[\]/x×%e]+$", re.I)


def _spans(rule: str) -> list[tuple[int, int]]:
    return [m.span() for m in re.finditer(r"-+", rule)]


def _cells(line: str, spans: list[tuple[int, int]]) -> list[str]:
    """A row's cells: each column runs from its rule's start to the next column's start."""
    starts = [s for s, _ in spans] + [None]
    return [line[starts[i]:starts[i + 1]].strip() for i in range(len(spans))]


def _fit(header: list[str], rows: list[list[str]], width: int) -> tuple[list[str], list[list[str]], list[str]]:
    constant = []
    if len(rows) > 1:
        keep = [i for i in range(len(header)) if len({r[i] for r in rows}) > 1 or _OUTCOME.match(header[i])]
        constant = [f"{header[i]}={rows[0][i]}" for i in range(len(header)) if i not in keep and rows[0][i]]
        if keep:
            header, rows = [header[i] for i in keep], [[r[i] for i in keep] for r in rows]
    widths = [max(len(c) for c in col) for col in zip(header, *rows)]
    numeric = [all(_NUMBER.match(r[i]) for r in rows) for i in range(len(header))]
    while sum(widths) + 2 * (len(widths) - 1) > width:  # narrow the widest text column, one character at a time
        shrinkable = [i for i in range(len(widths)) if not numeric[i] and widths[i] > MIN_COLUMN]
        if not shrinkable:
            break
        widths[max(shrinkable, key=lambda j: widths[j])] -= 1

    def cut(text: str, w: int) -> str:
        """Shortened in the middle: labels differ at their ends (``mlp+mse lr=0.01``)."""
        if len(text) <= w:
            return text
        head = (w - 1 + 1) // 2
        return text[:head] + "…" + text[len(text) - (w - 1 - head):]

    def line(cells: list[str]) -> str:
        return "  ".join(cut(c, w).rjust(w) if numeric[i] else cut(c, w).ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    out = [line(header), "  ".join("-" * w for w in widths)] + [line(r) for r in rows]
    return out, constant, widths


def fit_tables(text: str, width: int = TABLE_WIDTH) -> str:
    """``text`` with each simple table in it fitted to ``width`` columns (unchanged where it fits)."""
    lines = text.split("\n")
    out, i = [], 0
    while i < len(lines):
        if i + 1 < len(lines) and _RULE.match(lines[i + 1]) and lines[i].strip():
            spans = _spans(lines[i + 1])
            end = i + 2
            gaps = [range(a, b) for (_, a), (b, _) in zip(spans, spans[1:])]
            while end < len(lines) and lines[end].strip() and not _RULE.match(lines[end]) and all(
                    lines[end][k:k + 1] in ("", " ") for gap in gaps for k in gap):  # a row leaves the gaps blank
                end += 1
            block = lines[i:end]
            if max(len(b) for b in block) <= width:
                out += block
            elif end - i == 3:  # one row: as "column  value" lines, which fit whatever the columns
                header, (row,) = _cells(lines[i], spans), [_cells(lines[i + 2], spans)]
                key = max(len(h) for h in header)
                out += [f"{h.ljust(key)}  {v}".rstrip() for h, v in zip(header, row)]
            else:
                header = _cells(lines[i], spans)
                rows = [_cells(r, spans) for r in lines[i + 2:end]]
                fitted, constant, _ = _fit(header, rows, width)
                out += fitted
                if constant:
                    out += textwrap.wrap(f"(the same in every row: {', '.join(constant)}; --wide shows every "
                                         "column)", width, break_on_hyphens=False)
            i = end
        else:
            out.append(lines[i])
            i += 1
    return "\n".join(out)
