"""Wall time of one grid through ``--executor local`` and ``--executor process --jobs N``, back to back.

Each run is a whole ``bench run`` process (start-up, worker spawning and dataset loading included),
on a grid of equal cells (one model, seeds 0..cells-1) on CPU. Prints both times and their ratio;
exits 1 when the ratio is above ``--max-ratio`` (issue 7 asks for <= 0.65 with --jobs 2 on 2 cores).

    python benchmarks/bench_executors.py                 # 8 linear cells, full MNIST train split, 10 epochs
    python benchmarks/bench_executors.py --repeats 2     # local, process, then process, local: a ratio per pair
    python benchmarks/bench_executors.py --model mlp --epochs 1 --local-threads 1

What ``process`` can win depends on how well one cell already uses both cores through torch's
threads. A batch-32 linear cell is dispatch-bound, a second thread hardly helps it, and two cells side
by side come close to twice as fast. A batch-256 linear cell gains ~1.1-1.4x and an MLP cell ~1.6x
from the second thread (training samples/s, 3 epochs, 1 vs 2 threads), while two one-thread cells
side by side slow each other by ~15-20% on this machine, so there the ratio stays near 0.75-0.8
however cheap the workers are. Pairs alternate their order (local first, then process first) so
that a drift in the machine's load favours neither.
Both runs get the same OpenMP wait policy, decided once the way ``bench`` decides (passive only on
an oversubscribed machine, see bench/threads.py): on a shared machine spinning OpenMP threads stall a 2-thread
``local`` run and would flatter ``process``; on a quiet one passive waiting would slow ``local``.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_grid(out: Path, args: argparse.Namespace, executor: list[str]) -> float:
    """Run the grid once as a real ``bench run`` process; returns its wall time in seconds."""
    seeds = ",".join(str(s) for s in range(args.cells))
    command = [sys.executable, "-m", "bench", "run", "--models", args.model, "--losses", "crossentropy",
               "--seeds", seeds, "--epochs", str(args.epochs), "--limit", str(args.limit),
               "--batch-size", str(args.batch_size), "--device", "cpu", "-q",
               "--out", str(out), *executor]
    env = {**os.environ, "PYTHONPATH": str(REPO), "BENCH_DISABLE_PLUGIN_AUTOLOAD": "1"}
    env.update(args.openmp_env)
    if executor[1] == "local" and args.local_threads:
        env["OMP_NUM_THREADS"] = str(args.local_threads)
    start = time.perf_counter()
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"{' '.join(command)} failed ({result.returncode}):\n{result.stderr}")
    with open(out / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    if len(rows) != args.cells or any(r["status"] != "ok" for r in rows):
        sys.exit(f"{out}: expected {args.cells} ok rows, got {[r['status'] for r in rows]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=8, help="grid size: seeds 0..cells-1 (default 8)")
    parser.add_argument("--model", default="linear", help="the model of every cell (default linear)")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--limit", type=int, default=0, help="training samples per cell (0: all 55k)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--jobs", type=int, default=2, help="worker processes for --executor process")
    parser.add_argument("--local-threads", type=int, default=0,
                        help="torch threads of the local run (default: torch's, one per core)")
    parser.add_argument("--repeats", type=int, default=1, help="back-to-back (local, process) pairs")
    parser.add_argument("--max-ratio", type=float, default=0.65)
    args = parser.parse_args()

    threads = args.local_threads or "default"
    sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]
    from process import shared_openmp_env

    args.openmp_env = shared_openmp_env()
    policy = args.openmp_env.get("OMP_WAIT_POLICY", os.environ.get("OMP_WAIT_POLICY", "default"))
    print(f"{args.cells} x {args.model}, {args.epochs} epoch(s), limit {args.limit or 'all'}, cpu, "
          f"local threads {threads}, "
          f"OMP_WAIT_POLICY={policy} "
          f"({os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} before)")
    ratios = []
    with tempfile.TemporaryDirectory(prefix="bench-executors-") as tmp:
        for repeat in range(args.repeats):
            runs = {"local": ["--executor", "local"],
                    "process": ["--executor", "process", "--jobs", str(args.jobs)]}
            order = list(runs) if repeat % 2 == 0 else list(runs)[::-1]
            times = {name: run_grid(Path(tmp) / f"{name}{repeat}", args, runs[name]) for name in order}
            local, process = times["local"], times["process"]
            ratios.append(process / local)
            print(f"pair {repeat + 1}: local {local:.1f} s, process --jobs {args.jobs} {process:.1f} s, "
                  f"ratio {process / local:.3f}")
    ratio = statistics.median(ratios)
    print(f"ratio (median of {len(ratios)}): {ratio:.3f} (target <= {args.max_ratio}); "
          f"load average {os.getloadavg()[0]:.1f} after")
    sys.exit(0 if ratio <= args.max_ratio else 1)


if __name__ == "__main__":
    main()
