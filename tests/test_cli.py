"""The real CLI end to end on (a subset of) the embedded MNIST."""

import csv
import json
import textwrap

import pytest
import torch

from tests.conftest import run_bench

RESULT_COLUMNS = ["model", "loss", "dataset", "params", "seed", "device", "status", "error", "epochs", "test_acc",
                  "test_loss", "val_acc", "val_loss", "train_time_s", "epoch_time_s", "samples_per_s", "n_params"]
HISTORY_COLUMNS = ["model", "loss", "dataset", "params", "seed", "epoch", "train_loss", "train_acc", "val_loss",
                   "val_acc", "epoch_time_s"]


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """The seed grid on 3000 training images, 2 epochs, two seeds."""
    from click.testing import CliRunner

    from bench.cli import main

    out = tmp_path_factory.mktemp("run") / "r"
    result = CliRunner().invoke(main, ["run", "--grid", "seed", "--limit", "3000", "--seeds", "0,1", "--device", "cpu",
                                       "--out", str(out), "-q"], catch_exceptions=False)
    return out, result


def test_run_writes_the_results_contract(small_run):
    out, result = small_run
    assert result.exit_code == 0, result.output
    rows = read_csv(out / "results.csv")
    assert set(RESULT_COLUMNS) <= set(rows[0])
    assert [(r["model"], r["loss"], r["seed"]) for r in rows] == [
        ("linear", "mse", "0"), ("linear", "mse", "1"), ("linear", "crossentropy", "0"),
        ("linear", "crossentropy", "1"), ("mlp", "crossentropy", "0"), ("mlp", "crossentropy", "1")]
    for row in rows:
        assert row["status"] == "ok" and row["error"] == "" and row["device"] == "cpu" and row["epochs"] == "2"
        # 3000 images are enough for a linear model to beat 80% on the full 10k test set
        assert 0.80 < float(row["test_acc"]) < 1.0
        assert float(row["epoch_time_s"]) > 0 and float(row["samples_per_s"]) > 0
    assert {r["n_params"] for r in rows if r["model"] == "linear"} == {"7850"}
    history = read_csv(out / "history.csv")
    assert set(HISTORY_COLUMNS) <= set(history[0]) and len(history) == 6 * 2
    assert [h["epoch"] for h in history[:2]] == ["1", "2"]
    env = json.loads((out / "env.json").read_text())
    assert {"torch", "python", "cpu", "torch_threads", "device_name", "command"} <= set(env)
    assert "--grid seed" in env["command"]
    # the summary table is printed
    assert "linear  mse" in result.output and "results:" in result.output


def test_weights_are_tensors_only_and_reproduce_the_test_accuracy(small_run, mnist):
    import torch
    from safetensors.torch import load_file

    from bench.plugins.models import make_linear

    out, _ = small_run
    row = next(r for r in read_csv(out / "results.csv") if r["model"] == "linear" and r["loss"] == "crossentropy")
    state = load_file(out / row["weights"])
    assert state["fc.weight"].shape == (10, 784)
    model = make_linear((1, 28, 28), 10)
    model.load_state_dict(state)
    with torch.no_grad():
        acc = (model(mnist.test[0]).argmax(1) == mnist.test[1]).float().mean().item()
    assert acc == pytest.approx(float(row["test_acc"]), abs=1e-6)


def test_same_command_twice_gives_identical_metrics(small_run, cli, tmp_path):
    out, _ = small_run
    again = tmp_path / "again"
    result = cli("run", "--grid", "seed", "--limit", "3000", "--seeds", "0,1", "--device", "cpu", "--out", again, "-q")
    assert result.exit_code == 0
    metrics = ["test_acc", "test_loss", "val_acc", "val_loss"]
    first, second = read_csv(out / "results.csv"), read_csv(again / "results.csv")
    assert [[r[m] for m in metrics] for r in first] == [[r[m] for m in metrics] for r in second]
    assert [r["cell_id"] for r in first] == [r["cell_id"] for r in second]
    # and different seeds really differ
    assert first[0]["test_loss"] != first[1]["test_loss"]


def test_param_sweep_end_to_end(cli, tmp_path):
    result = cli("run", "--models", "mlp", "--param", "mlp.hidden=16,32", "--limit", "1000", "--epochs", "1",
                 "--device", "cpu", "--out", tmp_path / "r", "-q")
    assert result.exit_code == 0, result.output
    rows = read_csv(tmp_path / "r" / "results.csv")
    assert [json.loads(r["params"]) for r in rows] == [{"mlp.hidden": 16}, {"mlp.hidden": 32}]
    assert [int(r["n_params"]) for r in rows] == [784 * 16 + 16 + 170, 784 * 32 + 32 + 330]


def test_list_and_plugins(cli):
    listing = cli("list").output
    for name in ["linear", "mlp", "deep-linear", "cnn", "mse", "crossentropy", "hinge", "mnist", "fashion-mnist",
                 "kmnist"]:
        assert f"  {name} " in listing
    assert "hidden=256, depth=1, activation='relu'" in listing and "plugin: bench.plugins.models" in listing
    plugins = cli("plugins").output
    assert "bench.plugins.models" in plugins and "models: cnn, deep-linear, linear, mlp" in plugins


NAN_PLUGIN = textwrap.dedent("""
    import torch
    from bench import hookimpl

    class NaNModel(torch.nn.Module):
        def __init__(self, features, classes):
            super().__init__()
            self.fc = torch.nn.Linear(features, classes)

        def forward(self, x):
            return self.fc(x.flatten(1)) * float("nan")

    @hookimpl
    def bench_register_models(register):
        register("nan-model", lambda shape, classes: NaNModel(shape[0] * shape[1] * shape[2], classes))
""")


def test_a_failing_cell_is_recorded_and_the_grid_goes_on(cli, tmp_path, monkeypatch):
    (tmp_path / "nan_plugin.py").write_text(NAN_PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    result = cli("run", "-p", "nan_plugin", "--models", "nan-model,linear", "--limit", "2000", "--batch-size", "64",
                 "--epochs", "1",
                 "--device", "cpu", "--out", tmp_path / "r", "-q")
    assert result.exit_code == 1
    rows = {r["model"]: r for r in read_csv(tmp_path / "r" / "results.csv")}
    assert rows["nan-model"]["status"] == "failed"
    assert "the training loss became nan by step" in rows["nan-model"]["error"]
    assert rows["linear"]["status"] == "ok" and float(rows["linear"]["test_acc"]) > 0.7
    assert "1 cell(s) failed" in result.output and "nan-model+crossentropy" in result.output


@pytest.mark.parametrize("args, message", [
    (["--models", "lineer"], "Error: unknown model 'lineer' (did you mean 'linear'?); valid: cnn, deep-linear, "
                             "linear, mlp"),
    (["--losses", "mse,", "--models", "linear"], "Error: --losses needs a comma-separated list of names"),
    (["--param", "mlp.hidden"], "Error: --param mlp.hidden: expected NAME.KEY=V1,V2 (missing '=')"),
    (["--param", "mlp.hidden=x"], "Error: --param mlp.hidden=x: 'x' is not an integer"),
    (["--epochs", "-1"], "Error: --epochs must be >= 1, got -1"),
    (["--seeds", "a"], "Error: --seeds needs comma-separated integers, got 'a'"),
    pytest.param(["--device", "cuda"], "Error: --device cuda: CUDA is not available here",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")),
    (["--device", "tpu"], "Error: --device tpu: unknown device; valid: auto, cpu, cuda, cuda:N, mps"),
    (["--grid", "al"], "Error: unknown grid 'al' (did you mean 'all'?); valid: all, seed"),
])
def test_bad_input_is_one_clear_line_and_exit_2(args, message, tmp_path):
    result = run_bench("run", *args, "--out", tmp_path / "r", "-q")
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert not (tmp_path / "r").exists()  # nothing was started


def test_out_that_is_a_file_is_refused_and_kept(cli, tmp_path):
    target = tmp_path / "results.txt"
    target.write_text("precious")
    result = cli("run", "--out", target, "--limit", "100", "-q")
    assert result.exit_code == 2 and "exists and is not a directory" in result.output
    assert target.read_text() == "precious"


@pytest.mark.slow
def test_seed_grid_on_full_mnist_reaches_the_notebooks_accuracy(tmp_path):
    result = run_bench("run", "--grid", "seed", "--device", "cpu", "--out", tmp_path / "r", "-q")
    assert result.returncode == 0, result.stderr
    acc = {(r["model"], r["loss"]): float(r["test_acc"]) for r in read_csv(tmp_path / "r" / "results.csv")}
    assert acc[("linear", "mse")] >= 0.90
    assert acc[("linear", "crossentropy")] >= 0.91
    assert acc[("mlp", "crossentropy")] >= 0.96
