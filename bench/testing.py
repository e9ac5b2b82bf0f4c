"""Helpers for testing gridbench plugins: a fresh plugin host and a tiny grid run.

Plain functions::

    from bench.testing import make_host, run_grid

    host = make_host(my_plugin)                       # built-ins + my_plugin, nothing installed
    table = run_grid(host, models=["my-model"], losses=["crossentropy"], datasets=["my-data"])
    assert table.loc[0, "test_acc"] > 0.9

or the pytest fixtures ``bench_host`` and ``bench_run`` (add ``pytest_plugins = ["bench.testing"]``
to a ``conftest.py``)::

    def test_my_model(bench_host, bench_run):
        table = bench_run(bench_host(my_plugin), models=["my-model"], datasets=["my-data"])

The host never loads installed plugins (autoload off) and is strict: a plugin that fails to load
or whose hook raises is an error with its traceback, not a warning.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from bench.api import run
from bench.host import Host

if TYPE_CHECKING:
    import pandas

__all__ = ["make_host", "run_grid", "bench_host", "bench_run"]


def make_host(*plugins: object, modules: Iterable[str] = (), builtins: bool = True, strict: bool = True) -> Host:
    """A fresh plugin host with the built-in plugins (unless ``builtins=False``) and ``plugins``.

    ``plugins`` are plugin objects (modules, classes or instances with ``@hookimpl`` functions);
    ``modules`` are ``-p`` arguments (import paths, or ``no:NAME`` to block a plugin). Installed
    plugins are never loaded. Components are collected before it returns, so a broken plugin
    fails here.
    """
    host = Host(modules, autoload=False, builtins=builtins, strict=strict)
    for plugin in plugins:
        host.register_plugin(plugin)
    host.registry  # noqa: B018 -- collect now: a broken plugin raises here, not in the middle of a test
    return host


def run_grid(
    host: Host,
    *,
    grid: str | None = None,
    models: list[str] | None = None,
    losses: list[str] | None = None,
    datasets: list[str] | None = None,
    params: Iterable[str] = (),
    seeds: Iterable[int] = (0,),
    epochs: int = 1,
    batch_size: int = 256,
    lr: float = 1e-3,
    optimizer: str | None = None,
    limit: int = 0,
    device: str = "cpu",
    out: Path | str | None = None,
    data_dir: Path | str | None = None,
    check: bool = True,
    **options,
) -> pandas.DataFrame:
    """Run a (tiny) grid on ``host`` through ``bench.run`` (exactly what ``bench run`` does) and return
    its results table.

    The arguments are ``bench.run``'s (``params`` are ``NAME.KEY=V1,V2`` strings; any other option of
    ``bench.run``, e.g. ``weight_decay`` or ``schedule``, passes through); ``epochs`` defaults to 1 and
    ``device`` to ``cpu`` to keep tests fast and deterministic. The table is ``results.csv`` read back
    with pandas: one row per cell. ``out`` keeps the run directory (otherwise a temporary one is
    removed); ``check`` raises ``AssertionError`` naming every cell whose status is ``failed``.
    """
    with tempfile.TemporaryDirectory(prefix="gridbench-test-") as tmp:
        root = Path(out) if out is not None else Path(tmp) / "run"
        data = Path(data_dir) if data_dir is not None else Path(tmp) / "data"
        result = run(host=host, grid=grid, models=models, losses=losses, datasets=datasets, params=list(params),
                     seeds=list(seeds), epochs=epochs, batch_size=batch_size, lr=lr, optimizer=optimizer,
                     limit=limit, device=device, out=root, data_dir=data, quiet=True, echo=lambda message: None,
                     **options)
        table = result.results
    if check and result.failed:
        lines = [f"{r.model}+{r.loss} on {r.dataset} seed={r.seed}: {r.error}" for r in result.failed]
        raise AssertionError(f"{len(lines)} cell(s) failed:\n" + "\n".join(lines))
    return table


try:
    import pytest
except ImportError:  # pragma: no cover - the fixtures need pytest, the functions do not
    pass
else:

    @pytest.fixture
    def bench_host():
        """A factory for fresh hosts: ``bench_host(*plugins, modules=(), builtins=True)``."""
        return make_host

    @pytest.fixture
    def bench_run(tmp_path):
        """:func:`run_grid` with the run directory under the test's ``tmp_path``."""
        counter = iter(range(1_000_000))

        def run(host: Host, **kwargs):
            kwargs.setdefault("out", tmp_path / f"run-{next(counter)}")
            kwargs.setdefault("data_dir", tmp_path / "data")
            return run_grid(host, **kwargs)

        return run
