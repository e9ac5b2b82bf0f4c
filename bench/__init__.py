"""gridbench: a plugin-based benchmarking toolkit for training experiments in PyTorch.

Plugins implement the hooks in :mod:`bench.hookspecs` with the :data:`hookimpl` marker::

    from bench import hookimpl

    @hookimpl
    def bench_register_models(register):
        register("tiny", make_tiny, params={"width": 8}, description="a tiny model")
"""

import pluggy

from bench.data import DataSplits
from bench.errors import BenchError, DataCorrupt, DatasetUnavailable, IncompatibleCell

__version__ = "0.1.0"

#: The pluggy project name; also the entry-point group that installed plugins use.
PROJECT = "bench"

#: Marker for plugin hook implementations.
hookimpl = pluggy.HookimplMarker(PROJECT)

__all__ = [
    "PROJECT",
    "BenchError",
    "DataCorrupt",
    "DataSplits",
    "DatasetUnavailable",
    "IncompatibleCell",
    "hookimpl",
    "__version__",
]
