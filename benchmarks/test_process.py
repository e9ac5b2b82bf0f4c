"""Whole processes, back to back: ``bench run --grid seed --device cpu`` (2 epochs) and the notebook-style
script over the same three cells; wall time and peak RSS of each."""

from __future__ import annotations

import tempfile
from pathlib import Path

from conftest import PEAK_RSS, record
from process import gridbench_cmd, measure, notebook_cmd, shared_openmp_env

#: Both processes get the same OpenMP wait policy, decided once for the session.
SHARED_ENV = shared_openmp_env()


def _bench_process(benchmark, name, make_cmd, rounds, env=None):
    runs = []

    def once():
        run = measure(make_cmd(), env=env)
        assert run.returncode == 0, run.output[-3000:]
        runs.append(run)

    benchmark.pedantic(once, rounds=rounds, iterations=1)
    PEAK_RSS[name] = max(r.max_rss_bytes for r in runs)
    benchmark.extra_info["peak_rss_mb"] = PEAK_RSS[name] / 2**20
    record(benchmark, f"{name}-process", "grid-seed")


def test_gridbench_process(benchmark):
    with tempfile.TemporaryDirectory(prefix="gridbench-run-") as tmp:
        counter = iter(range(100))
        _bench_process(benchmark, "gridbench", lambda: gridbench_cmd(Path(tmp) / f"run{next(counter)}"), rounds=3,
                       env=SHARED_ENV)


def test_notebook_process(benchmark, raw_mnist_root):
    _bench_process(benchmark, "notebook", lambda: notebook_cmd(raw_mnist_root), rounds=1, env=SHARED_ENV)
