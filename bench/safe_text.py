"""Text that leaves gridbench for programs that interpret it: spreadsheets (the CSV files) and terminals.

Names come from plugins (models, losses, datasets, parameter values, error messages), so they may hold
anything a name may: a model called ``@SUM(A1:A9)`` or ``-2+3`` is a formula to a spreadsheet that opens
``results.csv``, and a name holding ``ESC ]0;...BEL`` retitles (or clears, or recolours) the terminal that
prints it. Every CSV file gridbench writes goes through :func:`csv_frame` / :func:`csv_cell`, and everything
it prints on a terminal through :func:`printable`.

CSV cells: a text cell that starts with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return gets a
leading single quote (``'@SUM(A1:A9)``), which spreadsheets show as text; so does a text cell that already
starts with a quote, so that :func:`read_csv_cell` gives back exactly the text written. Numbers, and text
that reads as a plain number (``-0.5``, ``+1e-3``), stay as they are.
"""

from __future__ import annotations

import re
from typing import Any

#: A spreadsheet reads a cell starting with one of these as a formula (tab and CR: OWASP's list).
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
#: The prefix that makes such a cell text.
QUOTE = "'"
_PLAIN_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
#: Control characters (C0, DEL, C1) and the Unicode bidirectional overrides that reorder what a terminal shows.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
_CONTROL_BUT_NEWLINE = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def csv_cell(value: Any) -> Any:
    """``value`` as a CSV cell no spreadsheet runs as a formula (see the module's docstring)."""
    if not isinstance(value, str) or not value:
        return value
    if value[0] == QUOTE or (value[0] in FORMULA_START and not _PLAIN_NUMBER.fullmatch(value)):
        return QUOTE + value
    return value


def read_csv_cell(value: Any) -> Any:
    """The text :func:`csv_cell` was given (a cell of a CSV file gridbench wrote)."""
    return value[1:] if isinstance(value, str) and value.startswith(QUOTE) else value


def _map_text(frame, fn):
    from pandas.api.types import is_bool_dtype, is_numeric_dtype

    out = frame.rename(columns=fn)
    for i, dtype in enumerate(out.dtypes):
        if not (is_numeric_dtype(dtype) or is_bool_dtype(dtype)):
            out.isetitem(i, out.iloc[:, i].map(fn))
    return out


def csv_frame(frame):
    """A DataFrame whose text cells (and column names) are :func:`csv_cell`-escaped, for ``to_csv``."""
    return _map_text(frame, csv_cell)


def csv_text(frame) -> str:
    """A DataFrame as the text of a CSV file (no index), its text cells escaped (:func:`csv_cell`)."""
    return csv_frame(frame).to_csv(index=False)


def read_csv_frame(frame):
    """A DataFrame read from a CSV file gridbench wrote, with :func:`csv_frame`'s escaping undone."""
    return _map_text(frame, read_csv_cell)


def _escaped(match: re.Match) -> str:
    code = ord(match.group(0))
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: Any, newlines: bool = True) -> str:
    """``text`` with every control character written out as an escape (``\\x1b``, ``\\u202e``), so that
    printing it cannot move the cursor, recolour, clear or retitle the terminal. ``newlines``: keep line
    breaks (a whole table); otherwise they are escaped too (one name, one error line)."""
    return (_CONTROL_BUT_NEWLINE if newlines else _CONTROL).sub(_escaped, str(text))
