"""gridbench: a plugin-based benchmarking toolkit for training experiments in PyTorch.

Run a study from Python (the command line ``bench run`` is a thin layer over the same call)::

    import bench
    run = bench.run(models="linear", losses="mse,crossentropy", lr=[1e-3, 1e-2], seeds=[0, 1, 2])
    run.summary()                      # seeds aggregated per configuration
    bench.load("runs/20260101-120000") # a finished run directory

Plugins implement the hooks in :mod:`bench.hookspecs` with the :data:`hookimpl` marker::

    from bench import hookimpl

    @hookimpl
    def bench_register_models(register):
        register("tiny", make_tiny, params={"width": 8}, description="a tiny model")
"""

import pluggy

from bench.data import DataSplits
from bench.errors import BenchError, DataCorrupt, DatasetUnavailable, IncompatibleCell, OptionError

__version__ = "0.1.0"

#: The pluggy project name; also the entry-point group that installed plugins use.
PROJECT = "bench"

#: Marker for plugin hook implementations.
hookimpl = pluggy.HookimplMarker(PROJECT)

#: Imported on first use, so that ``import bench`` (what every plugin does) stays light.
_LAZY = {"run": "bench.api", "load": "bench.api", "Run": "bench.api", "Study": "bench.study"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'bench' has no attribute {name!r}")


__all__ = [
    "PROJECT",
    "Run",
    "Study",
    "load",
    "run",
    "BenchError",
    "DataCorrupt",
    "DataSplits",
    "DatasetUnavailable",
    "IncompatibleCell",
    "OptionError",
    "hookimpl",
    "__version__",
]
