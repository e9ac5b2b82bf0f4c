"""A single cell's epoch on the engine against an earlier commit's step, alternating in one process.

The earlier commit's ``bench/step.py`` (a module of the old single-cell trainer) is loaded from git as a
module of its own; both train the same model, optimizer and permutations on the embedded MNIST (cpu,
batch 256, Adam 1e-3), epoch by epoch in turn, ``--rounds`` times; prints the medians and their ratio::

    python benchmarks/epoch_against.py --ref 7c7dca3 --models linear,mlp --rounds 5
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]

from bench.threads import prefer_passive_openmp  # noqa: E402

prefer_passive_openmp()  # the wait policy that `bench` itself would choose
BATCH = 256


def old_step_module(ref: str):
    source = subprocess.run(["git", "show", f"{ref}:bench/step.py"], cwd=ROOT, check=True, capture_output=True,
                            text=True).stdout
    path = Path(tempfile.mkdtemp()) / "old_step.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("old_step", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["old_step"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def compare(ref: str, model_name: str, rounds: int) -> tuple[float, float]:
    import torch

    from bench.engine.steps import ModelStep
    from bench.host import Host
    from bench.plugins.datasets import load_mnist
    from bench.recipe import optimizer_factory

    old = old_step_module(ref)
    registry = Host().registry
    data = load_mnist(None)
    x, y = data.train
    n = len(x)
    model_c, loss_c = registry.get("model", model_name), registry.get("loss", "crossentropy")
    loss_fn = loss_c.factory(**loss_c.params)

    def model():
        torch.manual_seed(0)
        return model_c.factory(data.input_shape, data.num_classes, **model_c.params)

    ours = ModelStep("plain", model(), loss_fn, x, y, optimizer_factory(registry, "adam", 1e-3, 0.0))
    ours.prepare([BATCH, n % BATCH])
    theirs = old.Step(model(), loss_fn, x, y, optimizer_factory(registry, "adam", 1e-3, 0.0))
    theirs.prepare([BATCH, n % BATCH])
    times: dict[str, list[float]] = {"engine": [], ref: []}
    for round_ in range(rounds):
        perm = torch.randperm(n)
        pair = [("engine", ours, perm[None]), (ref, theirs, perm)]
        for name, step, indices in pair if round_ % 2 == 0 else pair[::-1]:  # ABBA: load drift favours neither
            start = time.perf_counter()
            for first in range(0, n, BATCH):
                step(indices[..., first:first + BATCH])
            float(step.loss_sum.sum())
            times[name].append(time.perf_counter() - start)
    return statistics.median(times["engine"]), statistics.median(times[ref])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ref", required=True, help="the commit whose bench/step.py to compare with")
    parser.add_argument("--models", default="linear,mlp")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    for model in args.models.split(","):
        ours, theirs = compare(args.ref, model, args.rounds)
        print(f"{model}: epoch on the engine {ours:.3f} s, on {args.ref} {theirs:.3f} s (medians of {args.rounds}): "
              f"{ours / theirs:.3f}x", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
