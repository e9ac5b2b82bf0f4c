"""Failure isolation: a diverging (NaN) model, a CUDA out-of-memory error and a plugin bug each become a
failed row; the rest of the grid completes; the summary lists the failures; exit 1; a rerun retries them."""

from __future__ import annotations

import csv
import textwrap

import pytest
import torch
from click.testing import CliRunner

from bench.cli import main
from bench.engine import group as trainer

PLUGIN = textwrap.dedent('''
    """Test plugin: models that fail in the ways real cells fail."""
    import torch
    from torch import nn

    from bench import hookimpl

    class Flat(nn.Module):
        def __init__(self, input_shape, num_classes):
            super().__init__()
            self.fc = nn.Linear(int(torch.tensor(input_shape).prod()), num_classes)
            self.calls = 0

    class NaNModel(Flat):
        """Diverges from the first step: every logit is NaN."""
        def forward(self, x):
            return self.fc(x.flatten(1)) * float("nan")

    class InfLater(Flat):
        """Finite for 5 training steps, then +inf (a model that blows up mid-epoch)."""
        def forward(self, x):
            if self.training:
                self.calls += 1
            out = self.fc(x.flatten(1))
            return out * float("inf") if self.calls > 5 else out

    class OOMModel(Flat):
        def forward(self, x):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    class HogModel(Flat):
        """Asks the device for twice its memory: a real CUDA out-of-memory error on a GPU."""
        def forward(self, x):
            if x.is_cuda:
                free, total = torch.cuda.mem_get_info(x.device)
                torch.empty(2 * total, dtype=torch.uint8, device=x.device)
            return self.fc(x.flatten(1))

    class BuggyModel(Flat):
        def forward(self, x):
            return self.fc(x)  # bug: forgot to flatten -> shape error

    @hookimpl
    def bench_register_models(register):
        register("nan-model", NaNModel)
        register("inf-later", InfLater)
        register("oom-model", OOMModel)
        register("buggy-model", BuggyModel)
        register("hog-model", HogModel)
''')


@pytest.fixture
def failing_plugin(tmp_path, monkeypatch):
    name = "failing_models_plugin"
    (tmp_path / f"{name}.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def read_rows(path):
    with open(path, newline="") as f:
        return {r["model"]: r for r in csv.DictReader(f)}


def test_failing_cells_become_rows_the_grid_goes_on_and_the_exit_code_is_1(tmp_path, failing_plugin):
    out = tmp_path / "run"
    # 2000 samples / batch 50 = 40 steps per epoch; the NaN check runs every FINITE_CHECK_EVERY (32) steps
    args = ["run", "-p", failing_plugin, "--models", "linear,nan-model,inf-later,oom-model,buggy-model",
            "--epochs", "3", "--batch-size", "50", "--limit", "2000", "--device", "cpu", "-q", "--out", str(out)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1, result.output
    assert trainer.FINITE_CHECK_EVERY == 32
    rows = read_rows(out / "results.csv")
    assert len(rows) == 5
    # 8 Adam steps on 2000 images: 0.6052 on cpu and on an H100, against 0.1 for chance
    assert rows["linear"]["status"] == "ok" and float(rows["linear"]["test_acc"]) > 0.5

    nan = rows["nan-model"]
    assert nan["status"] == "failed"
    # stopped early: at the first check (step 32 of epoch 1), not at the end of the epoch or of 3 epochs
    assert nan["error"] == ("NonFiniteLoss: the training loss became nan by step 32 of epoch 1: the cell diverged "
                            "and was stopped (try a smaller --lr)")
    assert nan["test_acc"] == "" and nan["weights"] == ""
    assert "became nan by step 32 of epoch 1" in rows["inf-later"]["error"]  # inf logits -> NaN cross-entropy
    oom = rows["oom-model"]
    assert oom["status"] == "failed"
    assert oom["error"].startswith("OutOfMemoryError: CUDA out of memory. Tried to allocate 20.00 GiB")
    assert "try a smaller --batch-size" in oom["error"]
    bug = rows["buggy-model"]
    assert bug["status"] == "failed" and bug["error"].startswith("RuntimeError: mat1 and mat2 shapes cannot be")

    with open(out / "history.csv", newline="") as f:
        history = list(csv.DictReader(f))
    assert [h["model"] for h in history] == ["linear"] * 3  # failed cells leave no epochs behind

    stdout_lines = result.stdout.splitlines()
    assert sum(1 for line in stdout_lines if " failed " in f" {line} ") == 4
    err = result.stderr
    assert "4 cell(s) failed:" in err
    for model in ("nan-model", "inf-later", "oom-model", "buggy-model"):
        assert f"  {model}+crossentropy on mnist seed=0: " in err
    assert "Traceback" not in result.output

    # the record keeps the traceback of an unexpected error for debugging, the row stays one line
    import json

    record = json.loads(next((out / "cells").glob(f"{bug['cell_id']}.json")).read_text())
    assert "Traceback" in record["traceback"] and "\n" not in bug["error"]

    # a rerun retries exactly the failed cells; the finished one is skipped
    linear_record = out / "cells" / f"{rows['linear']['cell_id']}.json"
    stamp = linear_record.stat().st_mtime_ns
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 1
    assert "resume: 1 of 5 cell(s) already finished" in again.stderr
    assert linear_record.stat().st_mtime_ns == stamp
    assert len(read_rows(out / "results.csv")) == 5


def test_a_diverging_learning_rate_is_caught_with_the_builtin_plugins(tmp_path):
    """No test plugin: plain SGD with an absurd learning rate overflows the linear model to inf/NaN."""
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["run", "--models", "linear", "--losses", "crossentropy", "--optimizer", "sgd",
                                       "--lr", "1e36", "--batch-size", "50", "--limit", "2000", "--epochs", "2",
                                       "--device", "cpu", "-q", "--out", str(out)])
    assert result.exit_code == 1
    row = next(iter(read_rows(out / "results.csv").values()))
    assert row["status"] == "failed" and row["error"].startswith("NonFiniteLoss: the training loss became")
    assert "of epoch 1" in row["error"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_real_cuda_out_of_memory_is_a_failed_row_and_the_next_cell_runs(tmp_path, failing_plugin):
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["run", "-p", failing_plugin, "--models", "hog-model,linear", "--limit", "2000",
                                       "--epochs", "1", "--device", "cuda", "-q", "--out", str(out)])
    assert result.exit_code == 1, result.output
    rows = read_rows(out / "results.csv")
    assert rows["hog-model"]["status"] == "failed"
    assert rows["hog-model"]["error"].startswith("OutOfMemoryError: CUDA out of memory")
    assert "out of device memory" in rows["hog-model"]["error"]
    # 8 Adam steps on 2000 images: 0.6052 on cpu and on an H100, against 0.1 for chance
    assert rows["linear"]["status"] == "ok" and float(rows["linear"]["test_acc"]) > 0.5
