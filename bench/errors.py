"""Errors that reach the user as one clear line instead of a traceback."""


class BenchError(Exception):
    """A user-facing error: bad input, an unknown name, a missing resource.

    The CLI prints its message on one line and exits with status 2.
    """


class OptionError(BenchError):
    """A bad value for one option of a run (``bench.run(epochs=0)``, ``--epochs 0``, ``epochs: 0`` in a study).

    ``option`` is the library's name for it (``batch_size``); the message reads "OPTION TEXT". Front ends
    word it their own way: the CLI names its flag (``--batch-size``), a study file its key.
    """

    def __init__(self, option: str, text: str):
        self.option, self.text = option, text
        super().__init__(f"{option} {text}")


class DatasetUnavailable(BenchError):
    """A dataset cannot be loaded here (not cached and cannot be downloaded).

    The message says why and how to get it; ``short`` (optional) is the why in a few words, for a line
    that only mentions it (a grid leaving the dataset out).
    """

    def __init__(self, message: str, short: str = ""):
        super().__init__(message)
        self.short = short


class IncompatibleCell(BenchError):
    """A component cannot be combined with another (e.g. a CNN on 2-D points).

    Raised by a factory; the grid records the cell as ``skipped`` with the reason.
    """


class DataCorrupt(BenchError):
    """A data file fails its checksum or its structure check; the message names the file and the fix.

    Unlike a cell's failure it stops the run (exit status 2): every cell on that data would fail.
    """


class StopCell(Exception):
    """Raised by whatever watches a cell's evaluation points (its ``bench_epoch_end`` row as it is made)
    to stop that cell early, e.g. a tuning trial that the pruner gives up on.

    The engine stops training that cell (in a fused group, the member stops costing compute; the others go
    on), keeps its history up to that point, and writes its record with ``status`` (``"pruned"``) and
    ``reason`` in its ``error`` column. Not a failure: it is how such a cell is meant to end.
    """

    def __init__(self, status: str = "pruned", reason: str = ""):
        self.status, self.reason = status, reason
        super().__init__(reason or status)


def one_line(value: object, limit: int | None = None, first: bool = False) -> str:
    """``value`` as one line for a message: whitespace collapsed (``first``: only its first non-empty line),
    an exception other than a :class:`BenchError` prefixed by its type name, cut at ``limit`` characters."""
    text = str(value)
    if first:
        text = next((line for line in text.splitlines() if line.strip()), "")
    text = " ".join(text.split())
    if isinstance(value, BaseException) and not isinstance(value, BenchError):
        text = f"{type(value).__name__}: {text}"
    return text if limit is None else text[:limit]
