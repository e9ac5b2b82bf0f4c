"""Progress bars on the terminal (or tqdm's widgets in Jupyter): a built-in plugin on the lifecycle hooks.

One bar for the grid (cells trained) and one for the epochs of the cell that is training. ``quiet``
runs show none, and neither does a run whose stderr is not a terminal (a log file, a pipe, CI): there a
bar would only write its control characters into the log. In Jupyter the bars are widgets. Block the
plugin with ``-p no:bench.plugins.progress``.
"""

from __future__ import annotations

import sys

from bench import hookimpl
from bench.safe_text import printable

#: The bars of the run in progress (runs in one process happen one after another).
_bars: dict = {}


def _bar(**kwargs):
    from tqdm.auto import tqdm

    return tqdm(file=sys.stderr, dynamic_ncols=True, **kwargs)


def _shown() -> bool:
    """Bars on a terminal, or as widgets where tqdm.auto picked its notebook form (Jupyter)."""
    import warnings

    from tqdm.std import tqdm as plain

    with warnings.catch_warnings():  # in Jupyter it warns that it picked the notebook form, as tqdm.auto hides
        warnings.simplefilter("ignore")
        from tqdm import autonotebook  # its tqdm is the notebook one in Jupyter, the plain one elsewhere

    return autonotebook.tqdm is not plain or (hasattr(sys.stderr, "isatty") and sys.stderr.isatty())


@hookimpl
def bench_run_start(run):
    _close_all()
    if not run.quiet and _shown():
        _bars["grid"] = _bar(total=run.to_train, desc="grid", unit="cell")


@hookimpl
def bench_cell_start(cell):
    if "grid" in _bars:
        _bars["cell"] = _bar(total=cell.recipe.epochs, desc=printable(cell.label, newlines=False), unit="epoch",
                             leave=False, position=1)


@hookimpl
def bench_epoch_end(cell, row):
    if "cell" in _bars:
        _bars["cell"].update(1)


@hookimpl
def bench_cell_end(cell, record):
    if "cell" in _bars:
        _bars.pop("cell").close()
    if "grid" in _bars:
        _bars["grid"].update(1)
        status = f"{cell.model}+{cell.loss}: {record['row']['status']}"
        _bars["grid"].set_postfix_str(printable(status, newlines=False))


@hookimpl
def bench_run_end(run, results):
    _close_all()


def _close_all() -> None:
    for key in ("cell", "grid"):
        bar = _bars.pop(key, None)
        if bar is not None:
            bar.close()
