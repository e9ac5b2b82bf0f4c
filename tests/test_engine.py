"""One engine: every feature trains fused, and each member of a group is the cell it would be alone.

The bar: every member's test accuracy within 0.002 and every validation loss within 1e-3 (relative) of the
same cell trained as a group of one, for linear, mlp, deep-linear and cnn, with cosine and warmup-cosine
schedules, time to target with evaluations every few steps (the same target epoch and step), and members
that share a seed (hence one index stream, one gathered batch, one wide first product).
"""

from __future__ import annotations

import csv
import textwrap

import pytest
import torch

from bench.config import Cell, Recipe
from bench.engine import Execution
from bench.engine.steps import StackedStep
from bench.errors import StopCell
from bench.fuse import batched_optimizer_for
from tests.engine_helpers import factory_for, train_cell, train_stacked

CPU = torch.device("cpu")


def loss_for(registry):
    component = registry.get("loss", "crossentropy")
    return component.factory(**component.params)


def compare(cells, factory, loss_fn, data, execution, batched):
    """Train ``cells`` as one group and each alone; return the group's results and the largest differences."""
    fused = train_stacked(cells, factory, loss_fn, data, CPU, batched, execution)
    acc = loss = 0.0
    for cell, result in zip(cells, fused):
        torch.manual_seed(cell.seed)
        alone = train_cell(cell, factory(), loss_fn, data, CPU, execution)
        assert not isinstance(result, Exception), result
        assert [h["epoch"] for h in result.history] == [h["epoch"] for h in alone.history]
        acc = max(acc, abs(result.metrics["test_acc"] - alone.metrics["test_acc"]))
        for ours, theirs in zip(result.history, alone.history, strict=True):
            loss = max(loss, abs(ours["val_loss"] - theirs["val_loss"]) / theirs["val_loss"])
        for column in ("target_epoch", "target_steps"):
            assert result.timing.get(column) == alone.timing.get(column), (cell.label, column)
    return fused, acc, loss


# members sharing seeds: 0,0,1,1 (two index streams of two members each)
SHARED = [(0, 1e-3), (0, 3e-3), (1, 1e-3), (1, 3e-3)]


@pytest.mark.parametrize("schedule", ["cosine", "warmup-cosine"])
@pytest.mark.parametrize("model, limit", [("linear", 4000), ("mlp", 4000), ("deep-linear", 4000),
                                          pytest.param("cnn", 1200, marks=pytest.mark.slow)])
def test_each_member_with_a_schedule_and_a_target_trains_as_it_would_alone(model, limit, schedule, registry, small):
    factory, loss_fn = factory_for(registry, small, model), loss_for(registry)
    cells = [Cell(model, "crossentropy", "mnist", seed, "cpu", Recipe(lr=lr, epochs=2, schedule=schedule), limit)
             for seed, lr in SHARED]
    execution = Execution(fuse="on", target=("val_acc", 0.85), eval_every=5)
    fused, acc, loss = compare(cells, factory, loss_fn, small, execution, batched_optimizer_for(registry, "adam"))
    print(f"\n{model} {schedule}: largest |test_acc difference| {acc:.4g}, relative val_loss {loss:.3g}")
    assert acc <= 0.002 and loss <= 1e-3
    assert len({r.metrics["test_loss"] for r in fused}) == 4  # four different cells
    if model != "cnn":  # a target that the faster members reach and is recorded for them
        assert any(r.timing["target_epoch"] is not None for r in fused)


def test_a_schedule_changes_what_a_fused_member_learns(registry, small):
    """The schedule is in force inside the group: constant and cosine members differ."""
    factory, loss_fn = factory_for(registry, small, "linear"), loss_for(registry)
    adam = batched_optimizer_for(registry, "adam")
    runs = {}
    for schedule in ("constant", "cosine"):
        cells = [Cell("linear", "crossentropy", "mnist", s, "cpu", Recipe(lr=1e-2, schedule=schedule, epochs=1), 2000)
                 for s in (0, 1)]
        runs[schedule] = train_stacked(cells, factory, loss_fn, small, CPU, adam)
    assert runs["constant"][0].metrics["val_loss"] != pytest.approx(runs["cosine"][0].metrics["val_loss"], rel=1e-3)


def test_members_sharing_a_seed_share_one_gathered_batch(registry, small):
    """Four members on two seeds gather two batches a step, not four, and run each seed's members on its batch."""
    factory, loss_fn = factory_for(registry, small, "linear"), loss_for(registry)
    cells = [Cell("linear", "crossentropy", "mnist", seed, "cpu", Recipe(lr=lr), 1000) for seed, lr in SHARED]
    models = [factory() for _ in cells]
    x, y = small.train
    step = StackedStep("static", models, loss_fn, x, y, [0, 0, 1, 1], batched_optimizer_for(registry, "adam"), cells)
    step.prepare([256])
    assert step.buffers(256)[1].shape[0] == 2 * 256
    adam = batched_optimizer_for(registry, "adam")
    _, acc, loss = compare(cells, factory, loss_fn, small, Execution(fuse="on"), adam)
    assert acc <= 0.002 and loss <= 1e-3


def test_members_of_a_seed_train_side_by_side_whatever_their_order(registry, small, monkeypatch):
    """A trial over two seeds after another (seeds 0, 1, 0, 1, as ``--tune-seeds 2`` orders them): the step still
    gathers one batch per seed, and each result is its own member's, in the order given."""
    factory, loss_fn = factory_for(registry, small, "linear"), loss_for(registry)
    cells = [Cell("linear", "crossentropy", "mnist", seed, "cpu", Recipe(lr=lr), 1000)
             for seed, lr in [(0, 1e-3), (1, 1e-3), (0, 3e-3), (1, 3e-3)]]
    built = []
    init = StackedStep.__init__

    def recorded_init(self, mode, models, loss_fn, x, y, streams, *args, **kwargs):  # the real one, its streams kept
        built.append(list(streams))
        init(self, mode, models, loss_fn, x, y, streams, *args, **kwargs)

    monkeypatch.setattr(StackedStep, "__init__", recorded_init)
    fused, acc, loss = compare(cells, factory, loss_fn, small, Execution(fuse="on"),
                               batched_optimizer_for(registry, "adam"))
    assert built == [[0, 0, 1, 1]]  # members of one seed adjacent: two gathers a step, each seed's two side by side
    assert acc <= 0.002 and loss <= 1e-3 and len({r.metrics["test_loss"] for r in fused}) == 4


def test_one_seed_for_every_member_as_a_tuning_run_has(registry, small):
    factory, loss_fn = factory_for(registry, small, "mlp"), loss_for(registry)
    cells = [Cell("mlp", "crossentropy", "mnist", 0, "cpu", Recipe(lr=lr, epochs=1), 2000)
             for lr in (1e-4, 1e-3, 3e-3, 1e-2)]
    fused, acc, loss = compare(cells, factory, loss_fn, small, Execution(fuse="on"),
                               batched_optimizer_for(registry, "adam"))
    assert acc <= 0.002 and loss <= 1e-3 and len({r.metrics["test_loss"] for r in fused}) == 4


def test_a_stopped_member_leaves_the_stack_and_the_others_go_on_exactly(registry, small):
    """A member stopped after epoch 1 is dropped from the stack (it costs no more compute); the others carry their
    weights, optimizer state and schedule over and end as they would alone."""
    factory, loss_fn = factory_for(registry, small, "linear"), loss_for(registry)
    cells = [Cell("linear", "crossentropy", "mnist", seed, "cpu", Recipe(lr=lr, epochs=3, schedule="cosine"), 1000)
             for seed, lr in [(0, 1e-3), (0, 3e-3), (1, 1e-3), (2, 2e-3)]]
    seen = []

    def watcher(i, row):
        seen.append((i, row["epoch"]))
        if i == 1 and row["epoch"] == 1:
            raise StopCell("pruned", "pruned at epoch 1")

    fused = train_stacked(cells, factory, loss_fn, small, CPU, batched_optimizer_for(registry, "adam"),
                          on_epoch=watcher)
    assert [len(r.history) for r in fused] == [3, 1, 3, 3] and (1, 2) not in seen
    assert fused[1].stopped.status == "pruned" and fused[0].stopped is None and fused[1].metrics["test_acc"] is None
    torch.manual_seed(cells[1].seed)
    stopped_alone = train_cell(cells[1], factory(), loss_fn, small, CPU)
    assert fused[1].history[0]["val_loss"] == pytest.approx(stopped_alone.history[0]["val_loss"], rel=1e-3)
    for i in (0, 2, 3):
        torch.manual_seed(cells[i].seed)
        alone = train_cell(cells[i], factory(), loss_fn, small, CPU)
        assert abs(fused[i].metrics["test_acc"] - alone.metrics["test_acc"]) <= 0.002
        for ours, theirs in zip(fused[i].history, alone.history, strict=True):
            assert ours["val_loss"] == pytest.approx(theirs["val_loss"], rel=1e-3)


def test_a_member_stopped_inside_an_epoch_leaves_the_stack_there_and_the_others_train_as_before(registry, small,
                                                                                              monkeypatch):
    """Four evaluations an epoch (what a pruned tuning run asks): a member stopped at the first leaves the stack at
    once, in the middle of the epoch, and reports that evaluation; the others end exactly as with no stop."""
    factory, loss_fn = factory_for(registry, small, "linear"), loss_for(registry)
    cells = [Cell("linear", "crossentropy", "mnist", seed, "cpu", Recipe(lr=lr, epochs=2), 80 * 256)
             for seed, lr in [(0, 1e-3), (1, 3e-3), (0, 3e-3), (2, 2e-3)]]
    execution = Execution(fuse="on", eval_points=4)
    adam = batched_optimizer_for(registry, "adam")
    points = []

    def watcher(i, point):
        points.append((i, point["epoch"], point["step"]))
        if i == 1:
            raise StopCell("pruned", f"pruned at step {point['step']}")

    sizes = []
    without = StackedStep.without

    def recorded_without(self, drop, lengths):  # the real method, with the sizes it went from and to
        smaller = without(self, drop, lengths)
        sizes.append((self.size, smaller.size))
        return smaller

    monkeypatch.setattr(StackedStep, "without", recorded_without)
    stopped = train_stacked(cells, factory, loss_fn, small, CPU, adam, execution, on_eval=watcher)
    # 80 steps an epoch: evaluations after steps 20, 40 and 60 (and at the end)
    assert [p for p in points if p[0] == 1] == [(1, 1, 20)] and sizes == [(4, 3)]
    assert sorted({step for _, _, step in points}) == [20, 40, 60, 100, 120, 140]
    assert stopped[1].stopped.reason == "pruned at step 20" and stopped[1].history == [] and stopped[1].reached == 1
    assert stopped[1].metrics["val_acc"] > 0.1 and stopped[1].metrics["test_acc"] is None
    monkeypatch.setattr(StackedStep, "without", without)
    free = train_stacked(cells, factory, loss_fn, small, CPU, adam, execution)
    for i in (0, 2, 3):
        assert stopped[i].stopped is None and stopped[i].metrics["test_acc"] == free[i].metrics["test_acc"]
        for ours, theirs in zip(stopped[i].history, free[i].history, strict=True):
            assert ours["val_loss"] == pytest.approx(theirs["val_loss"], rel=1e-6)
            assert ours["train_loss"] == pytest.approx(theirs["train_loss"], rel=1e-6)


# -- through the runner ---------------------------------------------------------------------------------


class PruneSeedOne:
    """A tiny watcher of evaluation points, as the runner announces them (what a tuning driver does)."""

    def cell_start(self, cell):
        pass

    def epoch_end(self, cell, row):
        if cell.seed == 1 and row["epoch"] == 1:
            raise StopCell("pruned", "seed 1 pruned after epoch 1")


def test_a_watcher_stops_one_member_of_a_group_and_the_runner_records_it(registry, tmp_path):
    from bench.runner import DataCache, train_group_records

    cells = [Cell("linear", "crossentropy", "mnist", seed, "cpu", Recipe(epochs=3), 1000) for seed in (0, 1, 2)]
    records = train_group_records(list(enumerate(cells)), registry, DataCache(), CPU, tmp_path, PruneSeedOne(),
                                  Execution(fuse="on"))
    pruned = records[1]
    assert (pruned["row"]["status"], pruned["row"]["error"]) == ("pruned", "seed 1 pruned after epoch 1")
    assert [h["epoch"] for h in pruned["history"]] == [1]
    assert pruned["row"]["val_acc"] == pruned["history"][0]["val_acc"]
    assert [r["row"]["status"] for r in records] == ["ok", "pruned", "ok"]
    assert [len(r["history"]) for r in records] == [3, 1, 3] and records[0]["row"]["fused_size"] == 3


def rows(out):
    with open(out / "results.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_a_rows_timing_columns_sum_to_its_share_of_the_groups_wall_time(cli, tmp_path):
    # --datasets named: the dataset loads inside the group's time (a grid's datasets load before any group)
    result = cli("run", "--models", "linear", "--losses", "crossentropy", "--datasets", "mnist", "--seeds", "0,1,2,3",
                 "--limit", "2000", "--epochs", "2", "--device", "cpu", "-q", "--out", tmp_path / "t")
    assert result.exit_code == 0, result.output
    import json

    records = [json.loads(p.read_text()) for p in (tmp_path / "t" / "cells").glob("*.json")]
    wall = max(r["ended_at"] for r in records) - min(r["started_at"] for r in records)
    columns = ("train_time_s", "eval_time_s", "data_time_s", "warmup_time_s", "setup_time_s")
    accounted = sum(r["row"][c] for r in records for c in columns)
    assert accounted == pytest.approx(wall, rel=0.05), (accounted, wall)


# -- what a plugin author sees: the plan, the rows and --fuse on agree ------------------------------------

AUTHOR_PLUGIN = textwrap.dedent('''
    import torch
    from torch import nn
    from bench import hookimpl

    class Block(nn.Module):
        def __init__(self, width):
            super().__init__()
            self.conv1, self.bn1 = nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width)
            self.conv2, self.bn2 = nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width)

        def forward(self, x):
            out = torch.relu(self.bn1(self.conv1(x)))
            return torch.relu(x + self.bn2(self.conv2(out)))

    class TinyResNet(nn.Module):
        """A ResNet's shape (stem, a residual block with BatchNorm, pooling, a linear head), tiny."""

        def __init__(self, input_shape, num_classes, width=4):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(input_shape[0], width, 3, padding=1, bias=False),
                                      nn.BatchNorm2d(width), nn.ReLU())
            self.block, self.head = Block(width), nn.Linear(width, num_classes)

        def forward(self, x):
            return self.head(self.block(self.stem(x)).mean((2, 3)))

    def rmsprop(params, lr, weight_decay):
        return torch.optim.RMSprop(params, lr=lr, weight_decay=weight_decay)

    @hookimpl
    def bench_register_models(register):
        register("tiny-resnet", TinyResNet)

    @hookimpl
    def bench_register_optimizers(register):
        register("rms-plugin", rmsprop)
''')


@pytest.mark.slow
def test_dry_run_rows_and_fuse_on_agree_for_a_plugin_optimizer_and_a_resnet_on_cpu(cli, tmp_path, monkeypatch):
    (tmp_path / "author_plugin.py").write_text(AUTHOR_PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    args = ["run", "-p", "author_plugin", "--models", "linear,tiny-resnet", "--losses", "crossentropy",
            "--optimizer", "adam,rms-plugin", "--seeds", "0,1", "--limit", "512", "--epochs", "1", "--device", "cpu",
            "-q"]
    dry = cli(*args, "--out", tmp_path / "auto", "--dry-run").stdout
    assert "fused groups: 1, holding 2 of the 8 cell(s) to run" in dry
    assert "not fused: 6 cell(s) will train one at a time" in dry
    assert "[rms-plugin lr=0.001 constant batch=256 epochs=1 limit=512]: optimizer 'rms-plugin' has no batched " \
           "form" in dry
    assert "convolutions through vmap are slower than one cell at a time on a cpu" in dry
    assert cli(*args, "--out", tmp_path / "auto").exit_code == 0
    for row in rows(tmp_path / "auto"):
        fused = row["model"] == "linear" and row["optimizer"] == "adam"
        assert row["status"] == "ok" and (row["fused_size"] == "2") == fused
        reason = ("" if fused else "not fused: optimizer 'rms-plugin' has no batched form" if row["optimizer"] ==
                  "rms-plugin" else "not fused: convolutions through vmap are slower than one cell at a time on a cpu")
        assert row["execution_note"].startswith(reason) and (reason or not row["execution_note"])
        assert reason.removeprefix("not fused: ")[:40] in dry
    # --fuse on: what cannot fuse fails, and the dry run said so; the ResNet fuses (or fails) as its plan says
    dry_on = cli(*args, "--out", tmp_path / "on", "--fuse", "on", "--dry-run").stdout
    on = cli(*args, "--out", tmp_path / "on", "--fuse", "on")
    assert on.exit_code == 1
    resnet_fails = "tiny-resnet+crossentropy on mnist [adam" in dry_on.split("not fused:")[-1]
    for row in rows(tmp_path / "on"):
        fails = row["optimizer"] == "rms-plugin" or (row["model"] == "tiny-resnet" and resnet_fails)
        assert (row["status"] == "failed") == fails, row
        if fails:
            assert row["error"].startswith(f"2 {row['model']} cells cannot be fused: ")
            assert row["error"].split(": ", 1)[1][:40] in dry_on
        else:
            assert row["fused_size"] == "2"
