"""Built-in executors: where a grid's cells train.

- ``local``: in this process, one cell after another (the default).
- ``process``: ``--jobs N`` worker processes on this machine; on cpu the cores are shared out
  (``torch.set_num_threads``), on cuda each worker gets its own GPU.
- ``ray``: each cell a Ray task (``num_gpus=1`` on cuda), on a local Ray instance or a cluster
  (``--address auto|HOST:PORT``); needs the optional extra ``pip install 'gridbench[ray]'``.

Workers rebuild the plugin host and load the data themselves (:func:`bench.runner.execute_cell`)
and send back records; the driver writes them, so resume and reports do not care who trained a
cell. A worker that dies takes only its own cell with it: that cell becomes a ``failed`` row,
which a rerun retries.

The classes live in plugins/executor_classes.py (and bench/runner.py, ``local``): each is registered as a
:class:`bench.lazy.LazyFactory` that imports it on first use, so that loading the plugin does not import torch.
"""

from __future__ import annotations

from bench import hookimpl
from bench.lazy import LazyFactory

CLASSES = "bench.plugins.executor_classes"
RAY_INSTALL_HINT = "pip install 'gridbench[ray]'"


def __getattr__(name: str):
    """``ProcessExecutor``, ``RayExecutor`` and ``start_method`` by their former names here: imports torch."""
    if name in ("ProcessExecutor", "RayExecutor", "start_method"):
        from bench.plugins import executor_classes

        return getattr(executor_classes, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@hookimpl
def bench_register_executors(register):
    register("local", LazyFactory("bench.runner:LocalExecutor"),
             description="in this process, one cell after another (the default)", default=True)
    register("process", LazyFactory(f"{CLASSES}:ProcessExecutor"), params={"jobs": None},
             description="--jobs N worker processes here (default: one per core, or per GPU on cuda)")
    register("ray", LazyFactory(f"{CLASSES}:RayExecutor"), params={"address": None},
             description=f"each cell a Ray task, --address auto|HOST:PORT (default: a local instance); "
                         f"needs {RAY_INSTALL_HINT}")
