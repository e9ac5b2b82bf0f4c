"""Time ``bench report`` on a 20-cell and a 200-cell run, against the report code before issue 15.

The runs are real and quick: 20 configurations (linear and mlp with 9 hidden sizes, MSE and cross-entropy,
``--limit 1000 --epochs 1``), with 1 seed (20 cells) and 10 seeds (200 cells); they are made once under
``--work`` and reused. Each report is a whole ``python -m bench report`` process (start-up included): the
current checkout ("after") and the baseline revision ("before", by default the last commit before the
report rewrite, extracted with ``git archive``) alternate, the order swapped every round, so that a drift
in the machine's load favours neither. Prints the median wall time and index.html size of each, and the
ratios before/after.

    python benchmarks/bench_report.py                       # 20 and 200 cells, 3 rounds
    python benchmarks/bench_report.py --sizes 20 --repeats 5
    python benchmarks/bench_report.py --baseline HEAD~3     # another "before"

Issue 15 asks for <= 30 s on 200 cells on the 2-core development box and index.html <= 10 MB.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tarfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: The last commit before the report rewrite of issue 15: "today's" report.
BASELINE = "71600d9"
HIDDEN = "8,16,32,64,128,256,512,1024,2048"


def env_for(tree: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(tree), "BENCH_DISABLE_PLUGIN_AUTOLOAD": "1", "MPLBACKEND": "Agg"}


def make_run(out: Path, seeds: int) -> None:
    """20 configurations x ``seeds`` seeds, quickly, with the current checkout."""
    if (out / "results.csv").is_file() and (out / "complete").is_file():
        return
    command = [sys.executable, "-m", "bench", "run", "--models", "linear,mlp", "--losses", "mse,crossentropy",
               "--param", f"mlp.hidden={HIDDEN}", "--limit", "1000", "--epochs", "1", "--device", "cpu",
               "--seeds", ",".join(str(s) for s in range(seeds)), "--out", str(out), "-q"]
    print(f"making {out} ({20 * seeds} cells) ...", flush=True)
    result = subprocess.run(command, cwd=REPO, env=env_for(REPO), capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{result.stderr[-2000:]}")
    (out / "complete").write_text("")


def extract(revision: str, into: Path) -> Path:
    """The ``bench`` and ``reports`` packages at ``revision`` (what ``bench report`` needs), via git archive."""
    tree = into / f"baseline-{revision}"
    if (tree / "reports" / "build.py").is_file():
        return tree
    archive = subprocess.run(["git", "archive", "--format=tar", revision, "bench", "reports"], cwd=REPO,
                             capture_output=True, check=True).stdout
    tree.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(tree, filter="data")
    return tree


def report(tree: Path, run: Path, out: Path) -> tuple[float, int]:
    """One ``bench report`` process of the code in ``tree``: (wall seconds, index.html bytes)."""
    command = [sys.executable, "-m", "bench", "report", str(run), "--out", str(out)]
    start = time.perf_counter()
    result = subprocess.run(command, cwd=tree, env=env_for(tree), capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"{' '.join(command)} (in {tree}) failed:\n{result.stderr[-2000:]}")
    return elapsed, (out / "index.html").stat().st_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="20,200", help="cells per run: 20 per seed (default: 20,200)")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of before/after per size (default 3)")
    parser.add_argument("--baseline", default=BASELINE, help=f"the 'before' revision (default {BASELINE})")
    parser.add_argument("--work", type=Path, default=Path("/tmp/gridbench-bench-report"),
                        help="where the runs and reports go (reused between invocations)")
    parser.add_argument("--json", type=Path, help="also write every measurement here")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    if any(s % 20 for s in sizes):
        sys.exit("--sizes: multiples of 20 (20 configurations x seeds)")
    args.work.mkdir(parents=True, exist_ok=True)
    trees = {"before": extract(args.baseline, args.work), "after": REPO}
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"load average at start: {load:.2f} on {os.cpu_count()} cores", flush=True)
    results: dict[int, dict[str, list[tuple[float, int]]]] = {}
    for size in sizes:
        run = args.work / f"run-{size}"
        make_run(run, size // 20)
        results[size] = {"before": [], "after": []}
        for round_ in range(args.repeats):
            order = ["before", "after"] if round_ % 2 == 0 else ["after", "before"]
            for which in order:
                seconds, size_bytes = report(trees[which], run, args.work / f"report-{size}-{which}")
                results[size][which].append((seconds, size_bytes))
                print(f"{size} cells, {which:<6} round {round_ + 1}: {seconds:6.1f} s, "
                      f"index.html {size_bytes / 1e6:.2f} MB", flush=True)
    print(f"\nbench report, whole process; median of {args.repeats} alternating rounds "
          f"(before = {args.baseline}, after = this checkout); load average now {os.getloadavg()[0]:.2f}")
    print(f"{'cells':>5}  {'before s':>9}  {'after s':>8}  {'before/after':>12}  {'before MB':>9}  {'after MB':>8}  "
          f"{'MB ratio':>8}")
    for size, by in results.items():
        before = statistics.median(s for s, _ in by["before"])
        after = statistics.median(s for s, _ in by["after"])
        mb_before = statistics.median(b for _, b in by["before"]) / 1e6
        mb_after = statistics.median(b for _, b in by["after"]) / 1e6
        print(f"{size:>5}  {before:>9.1f}  {after:>8.1f}  {before / after:>11.1f}x  {mb_before:>9.2f}  "
              f"{mb_after:>8.2f}  {mb_before / mb_after:>7.1f}x")
    if args.json:
        args.json.write_text(json.dumps({str(k): v for k, v in results.items()}, indent=1))


if __name__ == "__main__":
    main()
