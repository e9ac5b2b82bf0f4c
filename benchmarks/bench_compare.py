"""``bench compare`` on two large synthetic runs: N configurations (N mlp widths x 1 loss), two seeds each.

Each run is a bare ``results.csv`` (no ``cells/``: what a run from before records, or a hand-made table,
looks like), written once per size; NEW is BASE with its accuracies shifted by noise. Times
:func:`bench.reports.compare.compare_runs` in-process (loading included) and prints seconds per size.

    python benchmarks/bench_compare.py [--sizes 1000,50000] [--out /tmp/bench-compare]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.store import RESULT_COLUMNS  # noqa: E402


def synthetic_run(root: Path, configs: int, seeds: int = 2, shift: float = 0.0, seed: int = 0) -> Path:
    """A run directory holding only ``results.csv``: ``configs`` mlp widths, ``seeds`` seeds each."""
    rng = random.Random(seed)
    rows = []
    for i in range(configs):
        for s in range(seeds):
            rows.append({"cell_id": f"{i:08x}{s:04x}", "model": "mlp", "loss": "crossentropy", "dataset": "mnist",
                         "params": json.dumps({"mlp.hidden": i + 1}), "optimizer": "adam", "lr": 0.001,
                         "weight_decay": 0.0, "schedule": "constant", "batch_size": 256, "epochs": 2, "limit": 0,
                         "device": "cpu", "seed": s, "phase": "final", "status": "ok", "error": "",
                         "test_acc": min(1.0, max(0.0, 0.9 + shift + rng.gauss(0, 0.01))), "test_loss": 0.3,
                         "epoch_time_s": 1.0 + rng.random() * 0.01})
    root.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).reindex(columns=RESULT_COLUMNS).to_csv(root / "results.csv", index=False)
    return root


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,50000")
    parser.add_argument("--out", default="/tmp/bench-compare")
    args = parser.parse_args(argv)
    from bench.reports.compare import compare_runs

    for size in (int(s) for s in args.sizes.split(",")):
        base = Path(args.out) / f"base-{size}"
        new = Path(args.out) / f"new-{size}"
        if not (base / "results.csv").exists():
            synthetic_run(base, size, seed=1)
        if not (new / "results.csv").exists():
            synthetic_run(new, size, shift=-0.001, seed=2)
        start = time.perf_counter()
        result = compare_runs(base, new, margins="accuracy=0.01")
        seconds = time.perf_counter() - start
        print(f"{size} configurations: {seconds:.2f} s ({seconds / size * 1000:.3f} ms each), "
              f"{len(result.table)} compared, failed={result.failed}")


if __name__ == "__main__":
    main()
