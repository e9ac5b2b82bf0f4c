"""Start-up time of the commands that only print (``bench --help``, ``bench run --help``, ``bench plugins``,
``bench list``): whole processes, the given ``bench`` executables alternated, medians.

    python benchmarks/bench_startup.py [--rounds 5] [--bench PATH ...]

With two ``--bench`` executables (e.g. two checkouts' ``.venv/bin/bench``) it compares them command by
command; without, it times the ``bench`` on PATH.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import time

COMMANDS = (["--help"], ["run", "--help"], ["plugins"], ["list"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--bench", action="append", help="a bench executable (repeatable; default: the one on PATH)")
    args = parser.parse_args()
    executables = args.bench or [shutil.which("bench") or "bench"]
    times: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.rounds):
        for command in COMMANDS:
            for exe in executables:  # alternated, so that the machine's load falls on each alike
                start = time.perf_counter()
                subprocess.run([exe, *command], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
                times.setdefault((" ".join(command), exe), []).append(time.perf_counter() - start)
    for command in COMMANDS:
        name = " ".join(command)
        cells = [f"{exe}: median {statistics.median(times[name, exe]):.2f} s "
                 f"({min(times[name, exe]):.2f}-{max(times[name, exe]):.2f})" for exe in executables]
        print(f"bench {name:<12} " + " | ".join(cells))


if __name__ == "__main__":
    main()
