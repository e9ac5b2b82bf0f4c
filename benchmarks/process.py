"""Whole-process comparison: ``bench run --grid seed`` against the notebook-style script, back to back.

Each command runs as a fresh process, forked by a tiny launcher that reads the command's wall time
and its peak resident memory (``os.wait4``: the kernel's ``ru_maxrss`` of that process alone). Rounds
alternate the two commands so that background load falls on both alike; medians are reported::

    python benchmarks/process.py --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class ProcessRun:
    """One finished process: wall seconds, peak RSS in bytes, exit status and output."""

    wall_s: float
    max_rss_bytes: int
    returncode: int
    output: str


#: A tiny launcher that forks the command itself and reports the command's own wall time and peak RSS.
#: Peak RSS must come from a small parent: a child forked from a big process (pytest with torch loaded)
#: inherits that process's memory in ``ru_maxrss`` across ``exec``.
_LAUNCHER = """
import json, os, sys, time
out, cmd = sys.argv[1], sys.argv[2:]
start = time.perf_counter()
pid = os.fork()
if pid == 0:
    try:
        os.execvp(cmd[0], cmd)
    finally:
        os._exit(127)
_, status, usage = os.wait4(pid, 0)
wall = time.perf_counter() - start
with open(out, "w") as f:
    json.dump({"wall_s": wall, "max_rss_kb": usage.ru_maxrss}, f)
sys.exit(os.waitstatus_to_exitcode(status))
"""


def measure(cmd: list[str], cwd: Path = ROOT, timeout: float = 900, env: dict[str, str] | None = None) -> ProcessRun:
    """Run ``cmd`` to completion as a fresh process; its wall time and its own peak RSS (``wait4``)."""
    env = {**os.environ, **(env or {}),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    with tempfile.TemporaryDirectory(prefix="gridbench-measure-") as tmp:
        stats = Path(tmp) / "stats.json"
        proc = subprocess.run([sys.executable, "-S", "-c", _LAUNCHER, str(stats), *cmd], cwd=cwd, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout)
        text = proc.stdout.decode(errors="replace")
        if not stats.exists():
            return ProcessRun(float("nan"), 0, proc.returncode or 1, text)
        data = json.loads(stats.read_text())
    return ProcessRun(data["wall_s"], data["max_rss_kb"] * 1024, proc.returncode, text)


def gridbench_cmd(out_dir: Path, epochs: int = 2, device: str = "cpu") -> list[str]:
    return [sys.executable, "-m", "bench", "run", "--grid", "seed", "--device", device, "--epochs", str(epochs),
            "--out", str(out_dir), "-q"]


def notebook_cmd(root: Path, epochs: int = 2, device: str = "cpu") -> list[str]:
    return [sys.executable, str(ROOT / "benchmarks" / "notebook_loop.py"), "--epochs", str(epochs),
            "--device", device, "--root", str(root)]


def shared_openmp_env() -> dict[str, str]:
    """The OpenMP wait policy both processes get, decided once, the way ``bench`` decides for itself
    (passive waiting only on an oversubscribed machine): neither process is favoured."""
    from bench.threads import USER_CHOICES, choose_passive

    if any(name in os.environ for name in USER_CHOICES):
        return {}
    return {"OMP_WAIT_POLICY": "PASSIVE"} if choose_passive(os.getloadavg()[0], os.cpu_count() or 1) else {}


def compare(rounds: int = 1, epochs: int = 2, device: str = "cpu",
            notebook_env: dict[str, str] | None = None) -> dict[str, list[ProcessRun]]:
    """Alternate the two whole processes ``rounds`` times; every run must succeed."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from notebook_loop import prepare_raw

    runs: dict[str, list[ProcessRun]] = {"gridbench": [], "notebook": []}
    shared = shared_openmp_env()
    with tempfile.TemporaryDirectory(prefix="gridbench-process-") as tmp:
        raw_root = prepare_raw(Path(tmp) / "mnist")  # decompressed once, outside the timed notebook runs
        for i in range(rounds):
            for name, cmd, env in (("gridbench", gridbench_cmd(Path(tmp) / f"run{i}", epochs, device), shared),
                                   ("notebook", notebook_cmd(raw_root, epochs, device),
                                    shared if notebook_env is None else notebook_env)):
                run = measure(cmd, env=env)
                if run.returncode != 0:
                    raise RuntimeError(f"{name} failed ({run.returncode}):\n{run.output[-3000:]}")
                runs[name].append(run)
    return runs


def report(runs: dict[str, list[ProcessRun]]) -> str:
    """A small table: median wall time, peak RSS and the notebook/gridbench ratio."""
    med = {k: statistics.median(r.wall_s for r in v) for k, v in runs.items()}
    lines = [f"{'process':<10} {'median_s':>9} {'runs_s':<28} {'peak_rss_MB':>11}"]
    for name, rs in runs.items():
        lines.append(f"{name:<10} {med[name]:>9.2f} {' '.join(f'{r.wall_s:.2f}' for r in rs):<28} "
                     f"{max(r.max_rss_bytes for r in rs) / 2**20:>11.0f}")
    lines.append(f"ratio notebook/gridbench (medians): {med['notebook'] / med['gridbench']:.1f}x")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--notebook-default-omp", action="store_true",
                        help="run the notebook script with OpenMP's default wait policy (unfair on a busy machine)")
    args = parser.parse_args(argv)
    print(report(compare(args.rounds, args.epochs, args.device, {} if args.notebook_default_omp else None)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
