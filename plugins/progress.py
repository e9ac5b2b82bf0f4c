"""Progress bars on the terminal (or tqdm's widgets in Jupyter): a built-in plugin on the lifecycle hooks.

One bar for the grid (cells trained) and one for the epochs of the cell that is training. ``quiet``
runs show none, and neither does a run whose stderr is not a terminal (a log file, a pipe, CI): there a
bar would only write its control characters into the log. In Jupyter the bars are widgets. The host
registers a :class:`ProgressBars` object of its own (``make_plugin``), fed by the lifecycle hooks like
any observer. Block the plugin with ``-p no:bench.plugins.progress``.
"""

from __future__ import annotations

import sys

from bench import hookimpl
from bench.safe_text import printable


def make_plugin() -> ProgressBars:
    """The plugin object the host registers: bars of its own for each host."""
    return ProgressBars()


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


class ProgressBars:
    """The bars of the run in progress (a host's runs happen one after another): the grid's and the cell's."""

    def __init__(self) -> None:
        self.grid = None
        self.cell = None

    @hookimpl
    def bench_run_start(self, run):
        self.close()
        if not run.quiet and _shown():
            self.grid = _bar(total=run.to_train, desc="grid", unit="cell")

    @hookimpl
    def bench_cell_start(self, cell):
        if self.grid is not None:
            if self.cell is not None:
                self.cell.close()
            self.cell = _bar(total=cell.recipe.epochs, desc=printable(cell.label, newlines=False), unit="epoch",
                             leave=False, position=1)

    @hookimpl
    def bench_epoch_end(self, cell, row):
        if self.cell is not None:
            self.cell.update(1)

    @hookimpl
    def bench_cell_end(self, cell, record):
        if self.cell is not None:
            self.cell.close()
            self.cell = None
        if self.grid is not None:
            self.grid.update(1)
            status = f"{cell.model}+{cell.loss}: {record['row']['status']}"
            self.grid.set_postfix_str(printable(status, newlines=False))

    @hookimpl
    def bench_run_end(self, run, results):
        self.close()

    def close(self) -> None:
        for bar in (self.cell, self.grid):
            if bar is not None:
                bar.close()
        self.cell = self.grid = None
