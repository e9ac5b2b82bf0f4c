"""The built-in optimizers (plugins/optimizer_classes.py): torch.optim's arithmetic step by step, weight decay
included, a learning rate read at every step, state that restores in place, and no torch._dynamo."""

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from bench.cli import main
from bench.host import Host
from bench.optim import state_tensor_ptrs
from bench.plugins.optimizers import SGD, Adam, AdamW

ROOT = Path(__file__).resolve().parents[1]
OURS = {"adam": Adam, "adamw": AdamW}


def _model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(20, 16), nn.ReLU(), nn.Linear(16, 4))


def _train(model, opt, steps=6, skip_last_bias_at=None, lrs=None):
    """A few steps on random data; returns the losses. Optionally leaves one parameter without a gradient,
    and sets ``param_groups[0]["lr"]`` to ``lrs[i]`` before step ``i`` (as a schedule would)."""
    g = torch.Generator().manual_seed(1)
    losses = []
    for i in range(steps):
        if lrs is not None:
            lr = opt.param_groups[0]["lr"]
            if isinstance(lr, torch.Tensor):
                lr.fill_(lrs[i])
            else:
                opt.param_groups[0]["lr"] = lrs[i]
        x, y = torch.randn(32, 20, generator=g), torch.randint(0, 4, (32,), generator=g)
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        if skip_last_bias_at == i:
            model[2].bias.grad = None  # torch.optim skips a parameter without a gradient
        opt.step()
        losses.append(loss.item())
    return losses


def _max_diff(a, b):
    return max((p - q).abs().max().item() for p, q in zip(a.parameters(), b.parameters()))


@pytest.mark.parametrize("name", ["adam", "adamw"])
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
@pytest.mark.parametrize("lr", [1e-3, 3e-2])
@pytest.mark.parametrize("fused", [False, True])
def test_adam_and_adamw_match_torch_exactly(name, weight_decay, lr, fused):
    ref, ours = _model(), _model()
    kind = {"fused": True} if fused else {"foreach": True}
    torch_cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[name]
    ref_losses = _train(ref, torch_cls(ref.parameters(), lr=lr, weight_decay=weight_decay, **kind), skip_last_bias_at=2)
    our_losses = _train(ours, OURS[name](ours.parameters(), lr=lr, weight_decay=weight_decay, fused=fused),
                        skip_last_bias_at=2)
    assert our_losses == ref_losses
    assert _max_diff(ref, ours) == 0.0
    # ...and the training moved the weights (so equality above is not trivial)
    assert _max_diff(ours, _model()) > lr / 2


@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_weight_decay_is_l2_for_adam_and_decoupled_for_adamw(name):
    """The two differ exactly when there is weight decay, and each differs from no decay."""
    runs = {}
    for key, cls, wd in (("adam", Adam, 0.5), ("adamw", AdamW, 0.5), ("none", Adam, 0.0)):
        model = _model()
        _train(model, cls(model.parameters(), lr=3e-2, weight_decay=wd))
        runs[key] = model
    assert _max_diff(runs[name], runs["none"]) > 1e-3
    assert _max_diff(runs["adam"], runs["adamw"]) > 1e-3


@pytest.mark.parametrize("name", ["adam", "adamw"])
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_capturable_adam_matches_torch_to_float_tolerance(name, weight_decay):
    ref, ours = _model(), _model()
    torch_cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[name]
    ref_losses = _train(ref, torch_cls(ref.parameters(), lr=1e-2, weight_decay=weight_decay, foreach=True), steps=20)
    opt = OURS[name](ours.parameters(), lr=1e-2, weight_decay=weight_decay, capturable=True, fused=False)
    assert isinstance(opt.param_groups[0]["lr"], torch.Tensor)  # the learning rate lives on the device
    our_losses = _train(ours, opt, steps=20)
    # the device-side bias corrections round like the host's: equal on CPU, to float tolerance anywhere
    assert our_losses == pytest.approx(ref_losses, rel=1e-6)
    assert _max_diff(ref, ours) < 1e-6
    assert _max_diff(ours, _model()) > 1e-2


@pytest.mark.parametrize("momentum", [0.9, 0.0])
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
@pytest.mark.parametrize("capturable", [False, True])
def test_sgd_matches_torch_sgd(momentum, weight_decay, capturable):
    ref, ours = _model(), _model()
    ref_losses = _train(ref, torch.optim.SGD(ref.parameters(), lr=0.05, momentum=momentum, weight_decay=weight_decay,
                                             foreach=True), skip_last_bias_at=3)
    opt = SGD(ours.parameters(), lr=0.05, momentum=momentum, weight_decay=weight_decay, capturable=capturable)
    our_losses = _train(ours, opt, skip_last_bias_at=3)
    if capturable:  # the tensor learning rate multiplies on the device: the same rounding on CPU
        assert our_losses == pytest.approx(ref_losses, rel=1e-6)
        assert _max_diff(ref, ours) < 1e-6
    else:
        assert our_losses == ref_losses
        assert _max_diff(ref, ours) == 0.0
    assert _max_diff(ours, _model()) > 1e-2
    assert bool(opt.state_dict()["state"]) == bool(momentum)  # no buffers without momentum


@pytest.mark.parametrize("name,capturable", [("adam", False), ("adam", True), ("adamw", True), ("sgd", False),
                                             ("sgd", True)])
def test_a_learning_rate_written_into_param_groups_takes_effect_at_the_next_step(name, capturable):
    """What a schedule does: the same per-step rates given to torch.optim give the same training."""
    lrs = [0.05, 0.02, 0.04, 0.0, 0.01, 0.03]
    ref, ours = _model(), _model()
    if name == "sgd":
        ref_opt = torch.optim.SGD(ref.parameters(), lr=0.05, momentum=0.9, weight_decay=0.01, foreach=True)
        opt = SGD(ours.parameters(), lr=0.05, weight_decay=0.01, capturable=capturable)
    else:
        ref_opt = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[name](
            ref.parameters(), lr=0.05, weight_decay=0.01, fused=True)
        opt = OURS[name](ours.parameters(), lr=0.05, weight_decay=0.01, capturable=capturable)
    ref_losses = _train(ref, ref_opt, lrs=lrs)
    assert _train(ours, opt, lrs=lrs) == pytest.approx(ref_losses, rel=1e-6)
    assert _max_diff(ref, ours) < 1e-6
    # and the rates mattered: a constant 0.05 trains otherwise
    constant = _model()
    _train(constant, SGD(constant.parameters(), lr=0.05, weight_decay=0.01) if name == "sgd"
           else OURS[name](constant.parameters(), lr=0.05, weight_decay=0.01))
    assert _max_diff(constant, ours) > 1e-3


@pytest.mark.parametrize("cls,kwargs", [(Adam, {}), (Adam, {"capturable": True}), (Adam, {"fused": False}),
                                        (AdamW, {"capturable": True, "fused": False}), (SGD, {}),
                                        (SGD, {"capturable": True})])
def test_state_dict_round_trip_restores_in_place(cls, kwargs):
    model = _model()
    opt = cls(model.parameters(), lr=1e-2, weight_decay=0.01, **kwargs)
    _train(model, opt, steps=3)
    saved_model, saved_opt = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    ptrs = state_tensor_ptrs(opt)
    first = _train(model, opt, steps=3)
    opt.param_groups[0]["lr"] = 0.5 if not kwargs.get("capturable") else opt.param_groups[0]["lr"].fill_(0.5)
    model.load_state_dict(saved_model)
    opt.load_state_dict(saved_opt)
    assert state_tensor_ptrs(opt) == ptrs  # a captured graph still points at the live state
    assert float(opt.param_groups[0]["lr"]) == 1e-2
    assert _train(model, opt, steps=3) == first


def test_bad_hyper_parameters_are_refused_with_the_value():
    params = list(_model().parameters())
    for cls, kwargs, message in ((Adam, {"beta1": 1.5}, "beta1 must be in \\[0, 1\\), got 1.5"),
                                 (AdamW, {"eps": -1}, "eps must be >= 0"),
                                 (SGD, {"momentum": -0.1}, "momentum must be >= 0, got -0.1"),
                                 (SGD, {"weight_decay": float("nan")}, "weight_decay must be >= 0, got nan")):
        with pytest.raises(ValueError, match=message):
            cls(params, **kwargs)
    with pytest.raises(ValueError, match="no trainable parameters"):
        Adam([p.detach() for p in params])


def test_builtins_are_registered_through_the_optimizer_hook():
    registry = Host(autoload=False).registry
    assert registry.names("optimizer") == ["adam", "adamw", "sgd"]
    assert registry.get("optimizer", "sgd").params == {"momentum": 0.9}
    assert registry.get("optimizer", "adamw").params == {"beta1": 0.9, "beta2": 0.999, "eps": 1e-8}
    assert all(c.plugin == "bench.plugins.optimizers" for c in registry.all("optimizer"))
    # built as the step builds them: parameters, then lr and weight_decay as keywords, then params
    params = list(_model().parameters())
    opt = registry.get("optimizer", "adam").factory(params, lr=1e-3, weight_decay=0.0, beta1=0.8)
    assert opt.fused and opt.param_groups[0]["beta1"] == 0.8  # torch has a fused CPU Adam


def test_bench_run_on_cpu_never_imports_dynamo(tmp_path):
    """torch.optim's first construction imports torch._dynamo (1-2 s); a CPU run must not."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "bench", "run", "--models", "linear", "--device", "cpu",
         "--limit", "512", "--epochs", "1", "--out", str(tmp_path / "run"), "-q"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    imported = {line.split("|")[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    # (the plugins are imported with importlib, which -X importtime does not list; bench.recipe builds them)
    assert "torch" in imported and "bench.recipe" in imported
    assert "torch._dynamo" not in imported
    assert "torchvision" not in imported


# -- optimizers from a plugin, through the real CLI -------------------------------------------------

PLUGIN = "tests.optimizer_test_plugin"


def _results(out):
    import pandas as pd

    return pd.read_csv(out / "results.csv", keep_default_na=False, na_values=[""])


def test_a_plugin_optimizer_trains_through_bench_run(tmp_path):
    from tests.conftest import run_bench

    out = tmp_path / "run"
    proc = run_bench("-p", PLUGIN, "run", "--models", "linear", "--optimizer", "signsgd-test", "--lr", "1e-3",
                     "--limit", "2000", "--epochs", "1", "--device", "cpu", "-q", "--out", out, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    row = _results(out).iloc[0]
    assert row["status"] == "ok" and row["optimizer"] == "signsgd-test"
    assert row["test_acc"] > 0.5  # chance is 0.1


def test_torch_optim_registered_as_it_is_trains(cli, tmp_path):
    out = tmp_path / "run"
    result = cli("-p", PLUGIN, "run", "--models", "linear", "--optimizer", "rmsprop-test", "--lr", "1e-3",
                 "--param", "rmsprop-test.alpha=0.9", "--limit", "2000", "--epochs", "1", "--device", "cpu", "-q",
                 "--out", out)
    assert result.exit_code == 0, result.output
    row = _results(out).iloc[0]
    assert row["status"] == "ok" and row["test_acc"] > 0.5
    assert row["params"] == '{"rmsprop-test.alpha": 0.9}'


def test_bench_list_and_plugins_show_optimizers_and_schedules(cli):
    listing = cli("-p", PLUGIN, "list").output
    optimizers = listing[listing.index("optimizers:"):listing.index("schedules:")]
    for name in ("adam", "adamw", "sgd", "signsgd-test", "rmsprop-test"):
        assert f"  {name} " in optimizers, name
    assert "params: momentum=0.9   plugin: bench.plugins.optimizers" in optimizers
    schedules = listing[listing.index("schedules:"):listing.index("grids:")]
    for name in ("constant", "cosine", "warmup-cosine", "halving"):
        assert f"  {name} " in schedules, name
    assert "params: warmup=0.05   plugin: bench.plugins.schedules" in schedules
    plugins = cli("-p", PLUGIN, "plugins").output
    assert "registered optimizers: adam, adamw, sgd" in plugins
    assert "registered schedules: constant, cosine, warmup-cosine" in plugins
    assert "registered optimizers: broken-opt, fragile-opt, rmsprop-test, signsgd-test; schedules: halving" in plugins


def test_param_sweeps_an_optimizer_parameter(cli, tmp_path):
    out = tmp_path / "run"
    result = cli("run", "--models", "linear", "--optimizer", "sgd", "--lr", "0.05", "--param", "sgd.momentum=0,0.9",
                 "--limit", "2000", "--epochs", "1", "--device", "cpu", "-q", "--out", out)
    assert result.exit_code == 0, result.output
    table = _results(out)
    assert list(table["params"]) == ['{"sgd.momentum": 0.0}', '{"sgd.momentum": 0.9}']
    assert table["cell_id"].nunique() == 2
    assert table["test_acc"].iloc[0] != table["test_acc"].iloc[1]
    # an optimizer that is not this run's is not part of the grid
    result = CliRunner().invoke(main, ["run", "--models", "linear", "--param", "sgd.momentum=0",
                                       "--out", str(tmp_path / "r2")])
    assert result.exit_code == 2 and "'sgd' is not part of this grid" in result.stderr


def test_a_factory_that_always_raises_is_one_line_before_any_training(tmp_path):
    from tests.conftest import run_bench

    out = tmp_path / "run"
    proc = run_bench("-p", PLUGIN, "run", "--models", "linear", "--optimizer", "broken-opt", "--limit", "500",
                     "--epochs", "1", "--device", "cpu", "-q", "--out", out, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("Error: optimizer 'broken-opt' (plugin 'tests.optimizer_test_plugin') failed: "
                                   "RuntimeError: broken-opt refuses to optimise (strength 1.0)")
    assert not out.exists()


def test_a_factory_that_raises_in_training_gives_failed_rows_not_a_crash(cli, tmp_path):
    out = tmp_path / "run"
    result = cli("-p", PLUGIN, "run", "--models", "linear,mlp", "--optimizer", "fragile-opt", "--limit", "500",
                 "--epochs", "1", "--device", "cpu", "-q", "--out", out)
    assert result.exit_code == 1, result.output
    table = _results(out)
    assert list(table["status"]) == ["failed", "failed"]
    assert list(table["error"]) == [
        "optimizer 'fragile-opt' (plugin 'tests.optimizer_test_plugin') failed: ValueError: fragile-opt handles "
        f"one parameter tensor, got {n}" for n in (2, 4)]
