"""Tuning's costs and choices, measured with whole ``bench run`` processes.

``prune``: the same study with and without ``--prune`` (alternating, ``--fuse off`` both ways unless told):
the training time of the tuning phase (sum of the trials' ``train_time_s``; a pruned trial's is its epochs'),
its wall time (first trial started to last trial ended), the epochs trained, and the learning rate chosen
per configuration, with the ratios.

``seeds``: ``--tune-seeds K`` against ``--tune-seeds 1`` on the same study, repeated with different first
seeds (``--seeds S,S+1,S+2``): the wall time of the tuning phase, and the spread of the chosen value across
the repetitions (the standard deviation of log10 of the chosen learning rate), each way.

``replay``: how soon and how hard successive halving may cut, without retraining for each rule. The study
is run once per first seed with every trial trained to the end and its value recorded at every evaluation
point (``--prune median``, which in a fused group prunes nothing); then each rule (reduction factor r, first
rung m: ``bench.tune.halving_pruner``, through an Optuna study in memory) is replayed on those curves as the
engine runs it: at each point every trial still in reports, then each is judged against all that reached it;
a trial's last point is not judged; and again one trial after another (``--fuse off``), each judged against
those before it. Reported per rule: how many configurations chose the unpruned run's value,
how many one more than 2x away, and the training the rule keeps, in trial-points (all trials' points / those
trained).

    python benchmarks/bench_tuning.py prune --limit 10000 [--epochs 2] [--prune asha] [--pairs 1] [--tune-seeds 1]
    python benchmarks/bench_tuning.py seeds --limit 5000 [--k 3] [--starts 0,10,20] [--fuse auto]
    python benchmarks/bench_tuning.py replay [--starts 0,10,20,30,40,50] [--rules 2:1,2:2,4:2] [--runs DIR,...]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STUDY = ["--models", "linear,mlp", "--losses", "mse,crossentropy", "--tune", "lr=1e-4:1e-0:log", "--trials", "16",
         "--device", "cpu", "-q"]


def bench_run(out: Path, args: list[str]) -> float:
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "bench", "run", *args, "--out", str(out)], cwd=REPO,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"bench run failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return time.perf_counter() - started


def measure(out: Path) -> dict:
    """The tuning phase of a finished run directory, from its records."""
    records = [json.loads(p.read_text()) for p in (out / "cells").glob("*.json")]
    tune = [r for r in records if r["row"].get("phase") == "tune"]
    final = [r for r in records if r["row"].get("phase") == "final"]
    chosen = {}
    for r in final:
        row = r["row"]
        chosen[f"{row['model']}+{row['loss']}"] = row["lr"]
    return {"train_s": sum(float(r["row"].get("train_time_s") or 0.0) for r in tune),
            "wall_s": max(r["ended_at"] for r in tune) - min(r["started_at"] for r in tune),
            "epochs": sum(len(r.get("history", [])) for r in tune),
            "pruned": sum(r["row"]["status"] == "pruned" for r in tune), "trials": len(tune), "chosen": chosen}


def load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def prune(args) -> None:
    extra = ["--limit", str(args.limit)] if args.limit else []
    extra += ["--epochs", str(args.epochs), "--seeds", "0,1,2", "--fuse", args.fuse,
              "--tune-seeds", str(args.tune_seeds)]
    sides = {"none": [], args.prune: ["--prune", args.prune]}
    results = {side: [] for side in sides}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.pairs):
            order = list(sides) if i % 2 == 0 else list(sides)[::-1]
            for side in order:
                out = Path(tmp) / f"{side}-{i}"
                bench_run(out, [*STUDY, *extra, *sides[side]])
                results[side].append(measure(out))
                print(f"pair {i} {side}: {results[side][-1]} (load {load()})", flush=True)
                shutil.rmtree(out)
    base, pruned = results["none"], results[args.prune]
    print("\n| --prune | tuning training s (median) | tuning wall s (median) | epochs trained | pruned trials |")
    print("|---|---|---|---|---|")
    for side, rows in results.items():
        print(f"| {side} | {statistics.median(r['train_s'] for r in rows):.1f} | "
              f"{statistics.median(r['wall_s'] for r in rows):.1f} | {rows[0]['epochs']} | "
              f"{rows[0]['pruned']}/{rows[0]['trials']} |")
    def median(rows, key):
        return statistics.median(r[key] for r in rows)

    print(f"\nratio (none / {args.prune}): training {median(base, 'train_s') / median(pruned, 'train_s'):.2f}x, "
          f"wall {median(base, 'wall_s') / median(pruned, 'wall_s'):.2f}x")
    print(f"\n| configuration | lr chosen, none | lr chosen, {args.prune} | factor |")
    print("|---|---|---|---|")
    for config, lr in sorted(base[0]["chosen"].items()):
        other = pruned[0]["chosen"].get(config, math.nan)
        factor = max(lr, other) / min(lr, other)
        print(f"| {config} | {lr:.3g} | {other:.3g} | {factor:.2f} |")


def seeds(args) -> None:
    extra = ["--limit", str(args.limit)] if args.limit else []
    extra += ["--epochs", str(args.epochs), "--fuse", args.fuse]
    study = [*STUDY[:STUDY.index("--models") + 2], "--losses", args.losses, *STUDY[STUDY.index("--tune"):]]
    study[study.index("linear,mlp")] = args.models
    results: dict[int, list] = {1: [], args.k: []}
    with tempfile.TemporaryDirectory() as tmp:
        for i, start in enumerate(int(s) for s in args.starts.split(",")):
            seed_list = ",".join(str(start + j) for j in range(max(3, args.k)))
            order = [1, args.k] if i % 2 == 0 else [args.k, 1]
            for k in order:
                out = Path(tmp) / f"k{k}-{start}"
                bench_run(out, [*study, *extra, "--seeds", seed_list, "--tune-seeds", str(k)])
                results[k].append(measure(out))
                print(f"first seed {start}, --tune-seeds {k}: {results[k][-1]} (load {load()})", flush=True)
                shutil.rmtree(out)
    print("\n| --tune-seeds | tuning wall s (median) | tuning training s (median) | chosen lr per repetition | "
          "std of log10 lr |")
    print("|---|---|---|---|---|")
    for k, rows in results.items():
        configs = sorted(rows[0]["chosen"])
        for config in configs:
            lrs = [r["chosen"][config] for r in rows]
            spread = statistics.stdev(math.log10(x) for x in lrs) if len(lrs) > 1 else math.nan
            print(f"| {k} ({config}) | {statistics.median(r['wall_s'] for r in rows):.1f} | "
                  f"{statistics.median(r['train_s'] for r in rows):.1f} | {', '.join(f'{x:.3g}' for x in lrs)} | "
                  f"{spread:.3f} |")
    ratio = statistics.median(r["wall_s"] for r in results[args.k]) / statistics.median(r["wall_s"]
                                                                                          for r in results[1])
    print(f"\nwall time ratio (--tune-seeds {args.k} / 1): {ratio:.2f}x")


def curves(run: Path) -> dict[str, list[tuple[float, dict[int, float]]]]:
    """Per configuration of a run's ``tuning.db``: each trial's learning rate and value at each point."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = optuna.storages.RDBStorage(f"sqlite:///{run / 'tuning.db'}")
    out = {}
    for summary in optuna.get_all_study_summaries(storage):
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        out[summary.study_name.split(" on ")[0]] = [(t.params["lr"], dict(t.intermediate_values))
                                                    for t in study.trials]
    return out


def replay_rule(trials: list[tuple[float, dict[int, float]]], reduction_factor: int, first: int,
                together: bool = True) -> tuple[float, int]:
    """The value the rule chooses (best last value among the trials it keeps to the end) and the trial-points
    trained, judging as :class:`bench.tune.PruneWatch` and the engine do: ``together``, the trials of a fused
    group (at each point all report, then each is judged); otherwise one trial after another (``--fuse off``),
    each judged against the trials before it."""
    import optuna

    from bench.tune import halving_pruner

    pruner = halving_pruner(reduction_factor, min_resource=first)
    study = optuna.create_study(direction="maximize", storage=optuna.storages.InMemoryStorage())
    last = max(max(values) for _, values in trials)
    kept, trained = [], 0
    for group in [list(range(len(trials)))] if together else [[i] for i in range(len(trials))]:
        handles = {i: study.ask() for i in group}
        alive = list(group)
        for point in range(1, last + 1):
            trained += len(alive)
            for i in alive:
                handles[i].report(trials[i][1][point], point)
            if point == last:
                break
            frozen = {i: study._storage.get_trial(handles[i]._trial_id) for i in alive}
            alive = [i for i in alive if not pruner.prune(study, frozen[i])]
        kept += alive
    best = max(kept, key=lambda i: (trials[i][1][last], -i))
    return trials[best][0], trained


def replay(args) -> None:
    runs = [Path(r) for r in args.runs.split(",")] if args.runs else []
    rules = [tuple(int(x) for x in rule.split(":")) for rule in args.rules.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        if not runs:
            extra = (["--limit", str(args.limit)] if args.limit else []) + ["--epochs", str(args.epochs)]
            for start in (int(s) for s in args.starts.split(",")):
                out = Path(tmp) / f"seed{start}"
                bench_run(out, [*STUDY, *extra, "--seeds", str(start), "--prune", "median"])
                print(f"first seed {start}: recorded (load {load()})", flush=True)
                runs.append(out)
        studies = [(run, config, trials) for run in runs for config, trials in sorted(curves(run).items())]
        print("\n| judged | reduction factor | first rung | same value as unpruned | more than 2x away | "
              "largest factor | trial-points, all / trained (median) |")
        print("|---|---|---|---|---|---|---|")
        for (reduction_factor, first), together in [(rule, t) for t in (True, False) for rule in rules]:
            factors, savings = [], []
            for run, config, trials in studies:
                last = max(max(values) for _, values in trials)
                full = max(range(len(trials)), key=lambda i: (trials[i][1][last], -i))
                lr, trained = replay_rule(trials, reduction_factor, first, together)
                factors.append(max(lr, trials[full][0]) / min(lr, trials[full][0]))
                savings.append(len(trials) * last / trained)
                if args.verbose:
                    print(f"{run.name} {config}: unpruned {trials[full][0]:.3g}, chosen {lr:.3g}, "
                          f"{len(trials) * last / trained:.2f}x")
            print(f"| {'together' if together else 'one after another'} | {reduction_factor} | {first} | "
                  f"{sum(f == 1 for f in factors)}/{len(factors)} | "
                  f"{sum(f > 2 for f in factors)} | {max(factors):.2f}x | {statistics.median(savings):.2f}x |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("prune")
    p.add_argument("--limit", type=int, default=0)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--prune", default="asha")
    p.add_argument("--pairs", type=int, default=1)
    p.add_argument("--fuse", default="off")
    p.add_argument("--tune-seeds", type=int, default=1)
    s = sub.add_parser("seeds")
    s.add_argument("--limit", type=int, default=0)
    s.add_argument("--epochs", type=int, default=2)
    s.add_argument("--k", type=int, default=3)
    s.add_argument("--starts", default="0,10,20")
    s.add_argument("--models", default="linear")
    s.add_argument("--losses", default="crossentropy")
    s.add_argument("--fuse", default="auto")
    r = sub.add_parser("replay")
    r.add_argument("--limit", type=int, default=0)
    r.add_argument("--epochs", type=int, default=2)
    r.add_argument("--starts", default="0,10,20,30,40,50")
    r.add_argument("--rules", default="2:1,2:2,2:3,3:1,3:2,3:3,4:1,4:2,4:3")
    r.add_argument("--runs", default="", help="run directories recorded before (instead of running the study)")
    r.add_argument("--verbose", action="store_true")
    args = parser.parse_args()
    {"prune": prune, "seeds": seeds, "replay": replay}[args.what](args)


if __name__ == "__main__":
    main()
