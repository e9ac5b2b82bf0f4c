"""Learning-rate schedules: the built-ins' rates at known steps, in-place updates of tensor rates, the
trainer stepping them once per optimizer step, and a plugin's schedule through the real runner."""

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from bench.config import Cell, Recipe
from bench.engine import Execution
from bench.errors import BenchError
from bench.grid import expand
from bench.host import Host
from bench.plugins.models import make_mlp
from bench.plugins.optimizers import SGD, Adam
from bench.plugins.schedules import cosine_factor
from bench.recipe import check_recipe, recipe_factories
from bench.runner import run_cells
from bench.store import RunStore
from tests.engine_helpers import train_cell

PLUGIN = "tests.optimizer_test_plugin"


@pytest.fixture(scope="module")
def registry():
    return Host([PLUGIN], autoload=False).registry


def _schedule(registry, name, optimizer, total_steps, **params):
    component = registry.get("schedule", name)
    return component.factory(optimizer, total_steps, **{**component.params, **params})


def _rates(schedule, optimizer, steps):
    """The learning rate in force at each optimizer step 0..steps (the schedule stepped after each)."""
    rates = []
    for _ in range(steps + 1):
        rates.append(float(optimizer.param_groups[0]["lr"]))
        schedule.step()
    return rates


def _weight():
    return [torch.zeros(3, requires_grad=True)]


def test_builtins_are_registered_through_the_schedule_hook(registry):
    assert [n for n in registry.names("schedule") if n != "halving"] == ["constant", "cosine", "warmup-cosine"]
    assert registry.get("schedule", "warmup-cosine").params == {"warmup": 0.05}
    assert registry.get("schedule", "cosine").plugin == "bench.plugins.schedules"


def test_constant_is_no_scheduler_at_all(registry):
    optimizer = Adam(_weight(), lr=0.1)
    assert _schedule(registry, "constant", optimizer, 100) is None
    assert optimizer.param_groups[0]["lr"] == 0.1


def test_cosine_starts_at_the_rate_is_half_way_at_half_and_zero_at_the_end(registry):
    optimizer = SGD(_weight(), lr=0.2)
    rates = _rates(_schedule(registry, "cosine", optimizer, 100), optimizer, 100)
    assert rates[0] == 0.2
    assert rates[50] == pytest.approx(0.1, rel=1e-12)
    assert rates[25] == pytest.approx(0.2 * (1 + math.cos(math.pi / 4)) / 2, rel=1e-12)
    assert rates[99] == pytest.approx(0.2 * (1 + math.cos(math.pi * 99 / 100)) / 2) and 0 < rates[99] < 1e-4
    assert rates[100] == 0.0
    assert all(a > b for a, b in zip(rates, rates[1:]))  # strictly decreasing


def test_warmup_cosine_ramps_linearly_then_decays(registry):
    optimizer = Adam(_weight(), lr=1.0)
    schedule = _schedule(registry, "warmup-cosine", optimizer, 100, warmup=0.1)  # 10 warm-up steps
    rates = _rates(schedule, optimizer, 100)
    assert rates[:10] == pytest.approx([(t + 1) / 10 for t in range(10)], rel=1e-12)
    assert rates[10] == 1.0  # the cosine starts at the full rate...
    assert rates[55] == pytest.approx(0.5, rel=1e-12)  # ...is half-way after half of the 90 remaining steps
    assert rates[100] == 0.0
    # the default: 5% of the steps
    optimizer = Adam(_weight(), lr=1.0)
    rates = _rates(_schedule(registry, "warmup-cosine", optimizer, 200), optimizer, 12)
    assert rates[:11] == pytest.approx([(t + 1) / 10 for t in range(10)] + [1.0], rel=1e-12)


def test_a_tensor_learning_rate_is_updated_in_place(registry):
    """What a captured CUDA graph needs: the same tensor, a new value."""
    optimizer = Adam(_weight(), lr=0.2, capturable=True)
    lr = optimizer.param_groups[0]["lr"]
    schedule = _schedule(registry, "cosine", optimizer, 10)
    for t in range(1, 6):
        schedule.step()
        assert optimizer.param_groups[0]["lr"] is lr
        assert float(lr) == pytest.approx(0.2 * cosine_factor(t, 10), rel=1e-12)


def test_check_recipe_reports_bad_names_and_values_without_training(registry):
    check_recipe(registry, Recipe(optimizer="sgd", schedule="warmup-cosine"), {"optimizer": {"momentum": 0.0}})
    cases = [
        (Recipe(schedule="linear"), {}, "unknown schedule 'linear'; valid: constant, cosine, halving, warmup-cosine"),
        (Recipe(optimizer="lion"), {}, "unknown optimizer 'lion'"),
        (Recipe(schedule="warmup-cosine"), {"schedule": {"warmup": 1.5}},
         "schedule 'warmup-cosine' (plugin 'bench.plugins.schedules') failed: ValueError: warmup must be a fraction"),
        (Recipe(optimizer="adam"), {"optimizer": {"beta2": 1.0}},
         "optimizer 'adam' (plugin 'bench.plugins.optimizers') failed: ValueError: beta2 must be in [0, 1), got 1.0"),
        (Recipe(optimizer="broken-opt"), {}, "optimizer 'broken-opt' (plugin 'tests.optimizer_test_plugin') failed: "
                                            "RuntimeError: broken-opt refuses to optimise (strength 1.0)"),
    ]
    for recipe, overrides, message in cases:
        with pytest.raises(BenchError) as info:
            check_recipe(registry, recipe, overrides)
        assert message in str(info.value)


def test_trainer_with_a_cosine_schedule_equals_a_textbook_torch_loop(mnist, registry):
    """The schedule is stepped once after every optimizer step, over epochs x batches steps, to the bit."""
    cell = Cell("mlp", "crossentropy", "mnist", 0, "cpu",
                Recipe(epochs=2, batch_size=256, lr=1e-2, weight_decay=1e-3, schedule="cosine"), 1000)
    torch.manual_seed(0)
    net = make_mlp(mnist.input_shape, mnist.num_classes, hidden=64)
    make_optimizer, make_schedule = recipe_factories(registry, cell)
    result = train_cell(cell, net, F.cross_entropy, mnist, torch.device("cpu"), execution=Execution(mode="plain"),
                        make_optimizer=make_optimizer, make_schedule=make_schedule)

    torch.manual_seed(0)
    ref = make_mlp(mnist.input_shape, mnist.num_classes, hidden=64)
    opt = torch.optim.Adam(ref.parameters(), lr=1e-2, weight_decay=1e-3, fused=True)
    total = 2 * 4  # 1000 samples at batch 256: 4 steps per epoch
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: cosine_factor(t, total))
    x, y = mnist.train[0][:1000], mnist.train[1][:1000]
    gen = torch.Generator().manual_seed(0)
    for _ in range(2):
        perm = torch.randperm(1000, generator=gen)
        for start in range(0, 1000, 256):
            idx = perm[start:start + 256]
            opt.zero_grad()
            F.cross_entropy(ref(x[idx]), y[idx]).backward()
            opt.step()
            sched.step()
    for name, weight in ref.state_dict().items():
        assert torch.equal(result.state_dict[name], weight), name
    # the schedule mattered: at a constant rate the weights differ
    constant = Cell("mlp", "crossentropy", "mnist", 0, "cpu",
                    Recipe(epochs=2, batch_size=256, lr=1e-2, weight_decay=1e-3), 1000)
    torch.manual_seed(0)
    net = make_mlp(mnist.input_shape, mnist.num_classes, hidden=64)
    flat = train_cell(constant, net, F.cross_entropy, mnist, torch.device("cpu"), execution=Execution(mode="plain"),
                      make_optimizer=recipe_factories(registry, constant)[0])
    assert not all(torch.equal(flat.state_dict[k], w) for k, w in result.state_dict.items())


def test_a_plugin_schedule_and_its_param_run_through_the_runner(tmp_path, registry):
    """``halving.at`` swept like any component's parameter; the scheduler is stepped once per step."""
    from tests.optimizer_test_plugin import Halving

    Halving.instances.clear()
    cells = expand(registry, models=["linear"], params=["halving.at=0.25,0.5"], device="cpu", limit=2000,
                   epochs=1, lr=1e-2, schedule="halving")
    assert [c.params for c in cells] == [{"halving.at": 0.25}, {"halving.at": 0.5}]
    store = RunStore(tmp_path / "run")
    store.create()
    summary = run_cells(cells, registry, store, torch.device("cpu"), tmp_path / "data")
    assert [r.status for r in summary.records] == ["ok", "ok"], summary.records
    assert all(r.config["schedule"] == "halving" for r in summary.records)
    assert summary.records[0].test_acc != summary.records[1].test_acc
    trained = [h for h in Halving.instances if h.total_steps == 8]  # 2000 samples at batch 256: 8 steps
    assert [(h.at, h.calls) for h in trained] == [(2, 8), (4, 8)]


def test_the_documented_optimizer_and_schedule_work(cli, tmp_path, monkeypatch):
    import re
    import sys

    doc = (Path(__file__).resolve().parents[1] / "docs" / "plugins.md").read_text()
    section = doc.split("\n## An optimizer and a schedule\n", 1)[1].split("\n## ", 1)[0]
    (source,) = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    (tmp_path / "doc_optim.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "doc_optim", raising=False)
    out = tmp_path / "run"
    result = cli("-p", "doc_optim", "run", "--models", "linear", "--optimizer", "signsgd", "--lr", "1e-3",
                 "--limit", "2000", "--epochs", "1", "--device", "cpu", "-q", "--out", out)
    assert result.exit_code == 0, result.output
    import csv

    (row,) = csv.DictReader((out / "results.csv").open())
    assert row["optimizer"] == "signsgd" and float(row["test_acc"]) > 0.5  # chance is 0.1
    registry = Host(["doc_optim"], autoload=False).registry
    optimizer = Adam(_weight(), lr=1.0)
    rates = _rates(_schedule(registry, "step-decay", optimizer, 10), optimizer, 7)
    assert rates == pytest.approx([1, 1, 1, 0.1, 0.1, 0.1, 0.01, 0.01], rel=1e-12)
    monkeypatch.delitem(sys.modules, "doc_optim")
