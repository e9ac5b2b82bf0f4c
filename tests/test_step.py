"""The training step: static buffers (what a CUDA graph captures) give the plain step's losses, with a
learning-rate schedule and with a plugin's optimizer too; warm-up changes nothing; the trainer equals a
textbook torch.optim loop; the CLI options and records."""

import json

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from bench.cli import main
from bench.engine import Execution
from bench.errors import BenchError
from bench.grid import Cell, Recipe
from bench.host import Host
from bench.plugins.datasets import load_mnist
from bench.plugins.losses import make_crossentropy, make_mse
from bench.plugins.models import make_cnn, make_linear, make_mlp
from bench.recipe import recipe_factories
from tests.engine_helpers import train_cell

MODELS = {"linear": make_linear, "mlp": lambda s, c: make_mlp(s, c, hidden=64), "cnn": make_cnn}
LOSSES = {"mse": make_mse, "crossentropy": make_crossentropy}


@pytest.fixture(scope="module")
def mnist():
    return load_mnist(None)


def _train(mnist, model="linear", loss="crossentropy", optimizer="adam", mode=None, limit=1000, epochs=2, seed=0,
           lr=1e-2, registry=None, **recipe):
    # limit 1000 at batch 256: three full batches and a tail of 232, so two batch lengths
    cell = Cell(model, loss, "mnist", seed, "cpu",
                Recipe(epochs=epochs, batch_size=256, lr=lr, optimizer=optimizer, **recipe), limit)
    torch.manual_seed(seed)
    net = MODELS[model](mnist.input_shape, mnist.num_classes)
    # without a registry: train_cell's default, the built-in plugins
    factories = dict(zip(("make_optimizer", "make_schedule"), recipe_factories(registry, cell))) if registry else {}
    return train_cell(cell, net, LOSSES[loss](), mnist, torch.device("cpu"), execution=Execution(mode=mode),
                      **factories)


def _losses(result):
    return [h[k] for h in result.history for k in ("train_loss", "val_loss")]


@pytest.mark.parametrize("model,loss,optimizer", [("linear", "mse", "adam"), ("mlp", "crossentropy", "adam"),
                                                  ("mlp", "crossentropy", "sgd"), ("cnn", "crossentropy", "adam")])
def test_static_buffer_step_gives_the_plain_steps_losses(mnist, model, loss, optimizer):
    plain = _train(mnist, model, loss, optimizer, mode="plain")
    static = _train(mnist, model, loss, optimizer, mode="static")
    assert static.execution["step"] == "static" and plain.execution["step"] == "plain"
    assert _losses(static) == pytest.approx(_losses(plain), rel=1e-4, abs=1e-6)
    for name, weight in plain.state_dict.items():
        torch.testing.assert_close(static.state_dict[name], weight, rtol=1e-4, atol=1e-5)
    # the losses are those of training, not of an untouched model: a different seed gives others
    other = _train(mnist, model, loss, optimizer, mode="static", seed=1)
    assert _losses(other) != pytest.approx(_losses(static), rel=1e-3)
    assert static.history[-1]["train_loss"] < static.history[0]["train_loss"]


@pytest.mark.parametrize("optimizer,schedule,weight_decay", [("adam", "cosine", 0.0), ("adamw", "warmup-cosine", 0.01),
                                                              ("sgd", "cosine", 0.01)])
def test_static_step_with_a_schedule_gives_exactly_the_plain_steps_losses(mnist, optimizer, schedule, weight_decay):
    """static: the learning rate is a tensor that the schedule updates in place, as under a CUDA graph."""
    kwargs = dict(model="mlp", optimizer=optimizer, schedule=schedule, weight_decay=weight_decay, lr=3e-2)
    plain, static = _train(mnist, mode="plain", **kwargs), _train(mnist, mode="static", **kwargs)
    assert static.execution["step"] == "static"
    assert _losses(static) == _losses(plain)
    for name, weight in plain.state_dict.items():
        assert torch.equal(static.state_dict[name], weight), name
    # the schedule is in force: without it the training differs
    assert _losses(_train(mnist, mode="static", **{**kwargs, "schedule": "constant"})) != _losses(static)


@pytest.fixture(scope="module")
def plugin_registry():
    return Host(["tests.optimizer_test_plugin"], autoload=False).registry


def _textbook(mnist, net, opt, epochs=2, n=1000, schedule=None):
    x, y = mnist.train[0][:n], mnist.train[1][:n]
    gen = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        perm = torch.randperm(n, generator=gen)
        for start in range(0, n, 256):
            idx = perm[start:start + 256]
            opt.zero_grad()
            F.cross_entropy(net(x[idx]), y[idx]).backward()
            opt.step()
            if schedule is not None:
                schedule.step()
    return net


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_a_torch_optim_plugin_optimizer_trains_exactly_as_its_textbook_loop(mnist, plugin_registry, schedule):
    """A torch.optim.Optimizer subclass whose state appears on its first step: the warm-up snapshot
    restores it through state_dict()/load_state_dict(), so the warm-up leaves no momentum behind, in the
    plain step and in the static one."""
    from bench.plugins.schedules import cosine_factor
    from tests.optimizer_test_plugin import SignSGD

    kwargs = dict(model="mlp", optimizer="signsgd-test", schedule=schedule, lr=1e-3, registry=plugin_registry)
    plain, static = _train(mnist, mode="plain", **kwargs), _train(mnist, mode="static", **kwargs)
    torch.manual_seed(0)
    net = MODELS["mlp"](mnist.input_shape, mnist.num_classes)
    opt = SignSGD(net.parameters(), lr=1e-3)
    lambda_lr = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: cosine_factor(t, 8)) if schedule == "cosine" else None
    for name, weight in _textbook(mnist, net, opt, schedule=lambda_lr).state_dict().items():
        assert torch.equal(plain.state_dict[name], weight), name
        assert torch.equal(static.state_dict[name], weight), name
    assert plain.history[-1]["train_loss"] < plain.history[0]["train_loss"]
    assert plain.metrics["test_acc"] > 0.5


def test_trainer_equals_a_textbook_torch_optim_loop(mnist):
    """Warm-up runs on a snapshot that is restored: the result is that of the obvious loop, to the bit."""
    result = _train(mnist, "mlp", "crossentropy", "adam", mode="plain", epochs=2)
    torch.manual_seed(0)
    net = MODELS["mlp"](mnist.input_shape, mnist.num_classes)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2, fused=True)  # what the built-in adam runs on cpu
    for name, weight in _textbook(mnist, net, opt).state_dict().items():
        assert torch.equal(result.state_dict[name], weight), name
    assert result.timing["warmup_time_s"] > 0
    assert result.timing["train_time_s"] == pytest.approx(sum(h["epoch_time_s"] for h in result.history))


def test_step_modes_and_their_errors():
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    assert Execution().step_mode(cpu) == "plain"
    assert Execution(cuda_graphs="off").step_mode(cpu) == "plain"
    assert Execution().step_mode(cuda) == "graph"
    assert Execution(cuda_graphs="off").step_mode(cuda) == "plain"
    with pytest.raises(BenchError, match="cuda_graphs on needs a CUDA device"):
        Execution(cuda_graphs="on").step_mode(cpu)
    with pytest.raises(BenchError, match="CUDA graphs need a CUDA device"):
        Execution(mode="graph").step_mode(cpu)
    with pytest.raises(BenchError, match="cuda_graphs must be one of"):
        Execution(cuda_graphs="maybe")


def test_cli_records_phases_and_how_steps_ran(tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["run", "--models", "linear,mlp", "--device", "cpu", "--limit", "600",
                                       "--epochs", "2", "--cuda-graphs", "off", "--out", str(out), "-q"])
    assert result.exit_code == 0, result.output
    env = json.loads((out / "env.json").read_text())
    assert env["cuda_graphs"] == "off" and env["cuda_graphs_used"] is False and env["compile"] is False
    assert env["torch_threads"] == torch.get_num_threads() and env["torch"] == torch.__version__
    assert env["cpu"] and env["device_name"]
    import csv

    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [r["model"] for r in rows] == ["linear", "mlp"]
    for row in rows:
        assert row["step"] == "plain" and row["cuda_graphs"] == "False" and row["compiled"] == "False"
        for col in ("data_time_s", "warmup_time_s", "train_time_s", "eval_time_s", "epoch_time_s"):
            assert float(row[col]) > 0, col
    # the first cell loaded the dataset: its data phase includes that; the second reused it
    assert float(rows[0]["data_time_s"]) > 5 * float(rows[1]["data_time_s"])


def test_cli_cuda_graphs_on_without_cuda_is_one_clear_error(tmp_path):
    result = CliRunner().invoke(main, ["run", "--models", "linear", "--device", "cpu", "--cuda-graphs", "on",
                                       "--out", str(tmp_path / "run"), "-q"])
    assert result.exit_code == 2
    assert "Error: --cuda-graphs on needs a CUDA device, not cpu" in result.output
    assert not (tmp_path / "run").exists()
    result = CliRunner().invoke(main, ["run", "--cuda-graphs", "sometimes", "--out", str(tmp_path / "r2")])
    assert result.exit_code == 2 and "sometimes" in result.output


@pytest.mark.slow
def test_compile_gives_the_eager_losses(mnist):
    pytest.importorskip("torch._inductor")
    eager = _train(mnist, "linear", "crossentropy", mode="static", limit=512, epochs=1)
    cell = Cell("linear", "crossentropy", "mnist", 0, "cpu",
                Recipe(epochs=1, batch_size=256, lr=1e-2, optimizer="adam"), 512)
    torch.manual_seed(0)
    net = MODELS["linear"](mnist.input_shape, mnist.num_classes)
    compiled = train_cell(cell, net, LOSSES["crossentropy"](), mnist, torch.device("cpu"),
                          execution=Execution(compile=True))
    assert compiled.execution["compiled"] is True
    assert _losses(compiled) == pytest.approx(_losses(eager), rel=1e-4)
