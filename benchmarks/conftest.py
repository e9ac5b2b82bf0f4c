"""Shared fixtures for the benchmark suite, and the ratio table printed at the end of the run.

Run with ``python -m pytest benchmarks --benchmark-json=bench.json`` (not part of the default test run).
"""

from __future__ import annotations

import statistics
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from bench.threads import prefer_passive_openmp  # noqa: E402

# gridbench and the notebook loop run in this process: both get the wait policy that `bench` uses
prefer_passive_openmp()

#: (kind, name) -> median seconds, filled by the benchmarks of this run
MEDIANS: dict[tuple[str, str], float] = {}
#: name -> peak RSS in bytes of whole-process runs
PEAK_RSS: dict[str, int] = {}


def record(benchmark, kind: str, name: str) -> float:
    """Remember the median of the benchmark that just ran, for the ratio table."""
    median = statistics.median(benchmark.stats.stats.data)
    MEDIANS[(kind, name)] = median
    benchmark.extra_info["median_s"] = median
    return median


@pytest.fixture(scope="session")
def mnist_cpu():
    from bench.plugins.datasets import load_mnist

    return load_mnist(None)


@pytest.fixture(scope="session")
def raw_mnist_root():
    """Decompressed MNIST where torchvision's ``MNIST(root)`` finds it."""
    from notebook_loop import prepare_raw

    with tempfile.TemporaryDirectory(prefix="gridbench-raw-mnist-") as tmp:
        yield prepare_raw(Path(tmp))


def pytest_terminal_summary(terminalreporter):
    if not MEDIANS:
        return
    write = terminalreporter.write_line
    terminalreporter.section("gridbench vs the notebook-style loop (medians of this run)")
    for scope in ("epoch", "process"):
        names = sorted({name for kind, name in MEDIANS if kind.endswith(scope)})
        if not names:
            continue
        write(f"{scope:<8} {'name':<12} {'gridbench_s':>12} {'notebook_s':>11} {'ratio':>7}")
        for name in names:
            ours, theirs = MEDIANS.get((f"gridbench-{scope}", name)), MEDIANS.get((f"notebook-{scope}", name))
            ratio = f"{theirs / ours:.1f}x" if ours and theirs else "-"
            write(f"{scope:<8} {name:<12} {ours or float('nan'):>12.3f} {theirs or float('nan'):>11.3f} {ratio:>7}")
    for name, rss in PEAK_RSS.items():
        write(f"peak RSS of the {name} process: {rss / 2**20:.0f} MB")
