"""Fused training: cells of one shape train as one stacked model, and each member stays its own cell.

The bar (issue 14): every member's final test accuracy within 0.002 of its unfused run and every epoch's
validation loss within 1e-3 (relative), for linear, mlp, deep-linear and cnn; a member that diverges
fails alone; a plugin model that vmap cannot run trains unfused, and says why.
"""

from __future__ import annotations

import csv
import dataclasses
import textwrap

import pytest
import torch

from bench.config import Cell, Recipe
from bench.engine import Execution, NonFiniteLoss, Unfusable
from bench.engine.plan import unfusable
from bench.errors import BenchError
from bench.fuse import batched_optimizer_for, fuse_key, group_cells
from bench.host import Host
from bench.plugins.batched_optimizers import BatchedAdam, BatchedAdamW, BatchedSGD
from tests.engine_helpers import factory_for, train_cell, train_stacked

CPU = torch.device("cpu")
#: The largest differences measured by the equivalence tests (printed at the end of the module with -s).
MEASURED: dict[str, tuple[float, float]] = {}


def loss_for(registry, loss="crossentropy"):
    component = registry.get("loss", loss)
    return component.factory(**component.params)


def alone(cell, factory, loss_fn, data):
    """The cell trained unfused, exactly as the runner does it."""
    torch.manual_seed(cell.seed)
    return train_cell(cell, factory(), loss_fn, data, CPU)


# -- grouping ---------------------------------------------------------------------------------------


def test_cells_fuse_when_they_differ_only_in_seed_lr_weight_decay_or_optimizer_params():
    base = Cell("mlp", "crossentropy", "mnist", 0, "cpu", Recipe(), 0, {"model": {"hidden": 64}})
    recipe = base.recipe
    same = [dataclasses.replace(base, seed=7), dataclasses.replace(base, recipe=dataclasses.replace(recipe, lr=0.1)),
            dataclasses.replace(base, recipe=dataclasses.replace(recipe, weight_decay=1e-4)),
            dataclasses.replace(base, overrides={**base.overrides, "optimizer": {"betas": (0.8, 0.99)}}),
            dataclasses.replace(base, overrides={**base.overrides, "schedule": {"warmup": 3}})]
    other = [dataclasses.replace(base, overrides={"model": {"hidden": 32}}),
             dataclasses.replace(base, loss="mse"), dataclasses.replace(base, dataset="kmnist"),
             dataclasses.replace(base, overrides={**base.overrides, "dataset": {"val_size": 10}}),
             dataclasses.replace(base, limit=100), dataclasses.replace(base, device="cuda:1"),
             *(dataclasses.replace(base, recipe=dataclasses.replace(recipe, **{name: value}))
               for name, value in [("optimizer", "sgd"), ("schedule", "cosine"), ("batch_size", 64), ("epochs", 3)])]
    assert {fuse_key(c) for c in [base, *same]} == {fuse_key(base)}
    assert len({fuse_key(c) for c in [base, *other]}) == len(other) + 1


def test_groups_keep_grid_order_and_split_into_even_chunks():
    def cell(model, seed):
        return Cell(model, "crossentropy", "mnist", seed, "cpu")

    cells = [cell("linear", 0), cell("mlp", 0), *(cell("linear", s) for s in range(1, 5)), cell("mlp", 1)]
    assert [[(c.model, c.seed) for c in g] for g in group_cells(cells)] == [
        [("linear", s) for s in range(5)], [("mlp", 0), ("mlp", 1)]]
    assert [[(c.model, c.seed) for c in g] for g in group_cells(cells, 2)] == [
        [("linear", 0), ("linear", 1)], [("linear", 2), ("linear", 3)], [("linear", 4)], [("mlp", 0), ("mlp", 1)]]
    assert [len(g) for g in group_cells([cell("linear", s) for s in range(7)], 3)] == [3, 2, 2]


# -- batched optimizers ------------------------------------------------------------------------------

#: Four members: the first two share every hyperparameter (one run of the stack), the others differ.
OPTIMIZER_CASES = [
    (BatchedAdam, torch.optim.Adam, {"fused": True}, {},
     [dict(lr=1e-2), dict(lr=1e-2), dict(lr=3e-2, weight_decay=0.1), dict(lr=1e-2, betas=(0.8, 0.99), eps=1e-6)]),
    (BatchedAdam, torch.optim.Adam, {"foreach": True}, {"fused": False},
     [dict(lr=1e-2), dict(lr=1e-2), dict(lr=3e-2, weight_decay=0.1), dict(lr=1e-2, betas=(0.8, 0.99))]),
    (BatchedAdamW, torch.optim.AdamW, {"fused": True}, {},
     [dict(lr=1e-2), dict(lr=1e-2), dict(lr=3e-2, weight_decay=0.5), dict(lr=1e-2, weight_decay=0.0)]),
    (BatchedSGD, torch.optim.SGD, {"foreach": True}, {},
     [dict(lr=0.1, momentum=0.9), dict(lr=0.1, momentum=0.9), dict(lr=0.05, momentum=0.9, weight_decay=0.1),
      dict(lr=0.2, momentum=0.0)]),
]


@pytest.mark.parametrize("ours, theirs, torch_kind, our_kind, members", OPTIMIZER_CASES,
                         ids=["adam-fused", "adam-foreach", "adamw-fused", "sgd"])
def test_batched_optimizers_step_each_member_as_torch_optim_does(ours, theirs, torch_kind, our_kind, members):
    shapes = [(7, 13), (5,), (3, 4, 5)]
    generator = torch.Generator().manual_seed(0)
    start = [torch.randn(len(members), *shape, generator=generator) for shape in shapes]
    refs = [[s[i].clone().requires_grad_() for s in start] for i in range(len(members))]
    ref_opts = [theirs(params, **member, **torch_kind) for params, member in zip(refs, members)]
    stacked = [s.clone().requires_grad_() for s in start]
    stacked[2] = stacked[2].detach().transpose(1, 3).contiguous().transpose(1, 3).requires_grad_()  # any dense layout
    opt = ours(stacked, members, **our_kind)
    for _ in range(8):
        grads = [torch.randn(len(members), *shape, generator=generator) for shape in shapes]
        for i, (params, ref_opt) in enumerate(zip(refs, ref_opts)):
            for p, g in zip(params, grads):
                p.grad = g[i].clone()
            ref_opt.step()
        for p, g in zip(stacked, grads):
            p.grad = g.clone()
        opt.step()
    for i, params in enumerate(refs):
        for p, s, first in zip(params, stacked, start):
            # torch.optim's arithmetic per member, up to the rounding of a differently vectorised chunk
            torch.testing.assert_close(s[i].detach(), p.detach(), rtol=1e-6, atol=1e-7)
            assert (p.detach() - first[i]).abs().max() > 1e-3  # the steps moved it: equality is not trivial
    assert len(opt.partitions) == 3 and opt.partitions[0][1] == [(0, 2)]
    assert opt.hyper["lr"].tolist() == [m["lr"] for m in members]


def test_an_optimizer_parameter_without_a_batched_form_is_named():
    with pytest.raises(BenchError, match="BatchedAdam has no batched form for the parameter.* amsgrad"):
        BatchedAdam([torch.zeros(2, 3, requires_grad=True)], [{"amsgrad": True}, {}])


# -- the engine -------------------------------------------------------------------------------------


@pytest.mark.parametrize("model, limit", [("linear", 6000), ("mlp", 6000), ("deep-linear", 6000), ("cnn", 1500)])
def test_each_member_trains_as_it_would_alone(model, limit, registry, small):
    factory, loss_fn = factory_for(registry, small, model), loss_for(registry)
    cells = [Cell(model, "crossentropy", "mnist", seed, "cpu", Recipe(lr=lr, epochs=2), limit)
             for seed, lr in [(0, 1e-3), (1, 2e-3), (2, 1e-3)]]
    fused = train_stacked(cells, factory, loss_fn, small, CPU, batched_optimizer_for(registry, "adam"))
    acc_diff = loss_diff = 0.0
    for cell, result in zip(cells, fused):
        reference = alone(cell, factory, loss_fn, small)
        assert result.execution["fused_size"] == 3 and result.execution["fused_group"] == fused[0].execution[
            "fused_group"]
        assert [h["epoch"] for h in result.history] == [1, 2]
        acc_diff = max(acc_diff, abs(result.metrics["test_acc"] - reference.metrics["test_acc"]))
        for ours, theirs in zip(result.history, reference.history, strict=True):
            loss_diff = max(loss_diff, abs(ours["val_loss"] - theirs["val_loss"]) / theirs["val_loss"])
        assert result.state_dict.keys() == reference.state_dict.keys() and result.n_params == reference.n_params
        assert sum(map(sum, result.confusion)) == 2000
    MEASURED[model] = (acc_diff, loss_diff)
    print(f"\n{model}: largest |test_acc difference| {acc_diff:.4g}, largest relative val_loss difference "
          f"{loss_diff:.3g}")
    assert acc_diff <= 0.002 and loss_diff <= 1e-3
    # the members are three different cells, not one model three times
    assert len({r.metrics["test_loss"] for r in fused}) == 3


def test_a_diverging_member_fails_alone_and_the_others_go_on(registry, small):
    """deep-linear with SGD at lr 10 overflows to NaN within its first epoch; its neighbours train on."""
    factory, loss_fn = factory_for(registry, small, "deep-linear"), loss_for(registry)
    cells = [Cell("deep-linear", "crossentropy", "mnist", seed, "cpu", Recipe(optimizer="sgd", lr=lr, epochs=2), 4000)
             for seed, lr in [(0, 0.01), (1, 10.0), (2, 0.02)]]
    sgd = batched_optimizer_for(registry, "sgd")
    fused = train_stacked(cells, factory, loss_fn, small, CPU, sgd)
    with pytest.raises(NonFiniteLoss) as unfused_error:
        alone(cells[1], factory, loss_fn, small)
    assert isinstance(fused[1], NonFiniteLoss) and str(fused[1]) == str(unfused_error.value)
    for i in (0, 2):
        reference = alone(cells[i], factory, loss_fn, small)
        assert len(fused[i].history) == 2
        assert abs(fused[i].metrics["test_acc"] - reference.metrics["test_acc"]) <= 0.002
        assert fused[i].metrics["test_acc"] > 0.8


class ItemInForward(torch.nn.Module):
    """Reads a value back to the host in forward: vmap cannot run it."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(784, 10)

    def forward(self, x):
        out = self.fc(x.flatten(1))
        return out * 0 if out.abs().max().item() > 1e9 else out


def test_a_model_vmap_cannot_run_is_unfusable_and_says_why(registry, small):
    loss_fn = loss_for(registry)
    cells = [Cell("item", "crossentropy", "mnist", seed, "cpu", Recipe(epochs=1), 2000) for seed in (0, 1)]
    with pytest.raises(Unfusable, match=r"^vmap cannot run this model: RuntimeError.*\.item\(\)"):
        train_stacked(cells, ItemInForward, loss_fn, small, CPU, batched_optimizer_for(registry, "adam"))


def test_the_plan_says_before_training_which_cells_train_one_at_a_time(registry, small):
    """Decided before anything trains, from the cell, the options and a probe of the model on two rows."""
    def cell(model="linear", **overrides):
        return Cell(model, "crossentropy", "mnist", 0, "cpu", Recipe(epochs=1), 512, overrides)

    assert unfusable(cell(), Execution(), registry, small) == ""
    assert unfusable(cell("cnn"), Execution(), registry, small).startswith("convolutions through vmap are slower")
    assert unfusable(cell("cnn"), Execution(fuse="on"), registry, small) == ""
    assert unfusable(cell(), Execution(compile=True), registry, small) == "compiled steps train one cell at a time"
    assert "amsgrad" in unfusable(cell(optimizer={"amsgrad": True}), Execution(), registry, small)
    plugin = Host(["tests.optimizer_test_plugin"]).registry
    signsgd = dataclasses.replace(cell(), recipe=Recipe(epochs=1, optimizer="signsgd-test"))
    assert unfusable(signsgd, Execution(), plugin, small) == "optimizer 'signsgd-test' has no batched form"


def test_a_group_larger_than_its_memory_budget_trains_in_chunks(registry, small, monkeypatch, tmp_path):
    from bench.engine import plan
    from bench.runner import DataCache, train_group_records

    factory, loss_fn = factory_for(registry, small, "linear"), loss_for(registry)
    cells = [Cell("linear", "crossentropy", "mnist", seed, "cpu", Recipe(epochs=1), 1000) for seed in range(5)]
    per_member = plan.member_bytes(factory(), loss_fn, *small.train, 256)
    assert 256 * 784 * 4 < per_member < 20 * 2**20  # at least its gathered batch, far less than a model's worth
    monkeypatch.setattr(plan, "HOST_MEMORY_BUDGET", 2 * per_member)
    records = train_group_records(list(enumerate(cells)), registry, DataCache(), CPU, tmp_path,
                                  execution=Execution(fuse="on"))
    # the last chunk is a group of one: the same engine, without a stack
    assert [r["row"].get("fused_size") for r in records] == [2, 2, 2, 2, None]
    assert len({r["row"]["fused_group"] for r in records[:4]}) == 2 and records[4]["row"]["status"] == "ok"


def test_a_worker_trains_a_fused_group_into_picklable_records():
    """What a process or Ray executor would run for a group: records as for single cells, weights as bytes."""
    import pickle

    from bench.runner import WorkSpec, execute_group

    cells = [Cell("linear", "crossentropy", "mnist", seed, "cpu", Recipe(epochs=1), 1000) for seed in (0, 1)]
    spec = WorkSpec((), "unused", "cpu", Execution(fuse="on"))
    records = pickle.loads(pickle.dumps(execute_group([(3, cells[0]), (5, cells[1])], spec)))
    assert [r.index for r in records] == [3, 5]
    assert [r.status for r in records] == ["ok", "ok"] and records[0].fused_size == 2
    assert all(isinstance(r.state_dict, bytes) and len(r.history) == 1 for r in records)


# -- bench run --------------------------------------------------------------------------------------


def rows(out):
    with open(out / "results.csv", newline="") as f:
        return list(csv.DictReader(f))


RUN = ["run", "--models", "linear", "--losses", "crossentropy", "--limit", "2000", "--epochs", "1", "--device", "cpu",
       "-q"]


def test_bench_run_fuses_seeds_into_one_group_with_the_unfused_results(cli, tmp_path):
    dry = cli(*RUN, "--seeds", "0,1,2", "--out", tmp_path / "on", "--dry-run")
    assert "fused groups: 1, holding 3 of the 3 cell(s) to run" in dry.stdout
    assert "3 cells  linear+crossentropy on mnist" in dry.stdout and "seeds 0,1,2" in dry.stdout
    assert cli(*RUN, "--seeds", "0,1,2", "--out", tmp_path / "on", "--fuse", "on").exit_code == 0
    assert cli(*RUN, "--seeds", "0,1,2", "--out", tmp_path / "off", "--fuse", "off").exit_code == 0
    fused, unfused = rows(tmp_path / "on"), rows(tmp_path / "off")
    assert [r["cell_id"] for r in fused] == [r["cell_id"] for r in unfused]
    assert {r["fused_size"] for r in fused} == {"3"} and len({r["fused_group"] for r in fused}) == 1
    assert {r["fused_size"] for r in unfused} == {""} and {r["fused_group"] for r in unfused} == {""}
    for ours, theirs in zip(fused, unfused):
        assert abs(float(ours["test_acc"]) - float(theirs["test_acc"])) <= 0.002
        assert (tmp_path / "on" / ours["weights"]).is_file() and ours["status"] == "ok"
    assert len({r["test_acc"] for r in fused}) == 3
    with open(tmp_path / "on" / "history.csv", newline="") as f:
        assert sorted(r["seed"] for r in csv.DictReader(f)) == ["0", "1", "2"]


def test_resume_in_the_middle_of_a_group_trains_only_the_rest(cli, tmp_path):
    out = tmp_path / "r"
    assert cli(*RUN, "--seeds", "0,1", "--out", out, "--fuse", "on").exit_code == 0
    records = {p.name: p.read_bytes() for p in (out / "cells").iterdir()}
    dry = cli(*RUN, "--seeds", "0,1,2,3", "--out", out, "--dry-run")
    assert "fused groups: 1, holding 2 of the 2 cell(s) to run" in dry.stdout and "seeds 2,3" in dry.stdout
    again = cli(*RUN, "--seeds", "0,1,2,3", "--out", out, "--fuse", "on")
    assert again.exit_code == 0 and "resume: 2 of 4 cell(s) already finished" in again.stderr
    assert {p.name: p.read_bytes() for p in (out / "cells").iterdir() if p.name in records} == records
    resumed = {r["seed"]: r for r in rows(out)}
    assert [resumed[s]["fused_size"] for s in "0123"] == ["2", "2", "2", "2"]
    assert resumed["0"]["fused_group"] != resumed["2"]["fused_group"]
    # the rest, trained as a group of two, are the cells that a group of four trains
    assert cli(*RUN, "--seeds", "0,1,2,3", "--out", tmp_path / "whole", "--fuse", "on").exit_code == 0
    whole = {r["seed"]: r for r in rows(tmp_path / "whole")}
    assert {r["fused_size"] for r in whole.values()} == {"4"}
    for seed in "0123":
        assert abs(float(whole[seed]["test_acc"]) - float(resumed[seed]["test_acc"])) <= 0.002


ITEM_PLUGIN = textwrap.dedent('''
    import torch
    from bench import hookimpl

    class ItemInForward(torch.nn.Module):
        def __init__(self, input_shape, num_classes):
            super().__init__()
            self.fc = torch.nn.Linear(784, num_classes)

        def forward(self, x):
            out = self.fc(x.flatten(1))
            return out * 0 if out.abs().max().item() > 1e9 else out

    @hookimpl
    def bench_register_models(register):
        register("item-model", ItemInForward)
''')


def test_fuse_on_refuses_what_auto_trains_unfused(cli, tmp_path, monkeypatch):
    (tmp_path / "item_plugin.py").write_text(ITEM_PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    args = ["run", "-p", "item_plugin", "--models", "item-model", "--losses", "crossentropy", "--seeds", "0,1",
            "--limit", "1000", "--epochs", "1", "--device", "cpu", "-q"]
    auto = cli(*args, "--out", tmp_path / "auto")
    assert auto.exit_code == 0
    notes = {r["execution_note"] for r in rows(tmp_path / "auto")}
    assert len(notes) == 1 and notes.pop().startswith("not fused: vmap cannot run this model")
    on = cli(*[a.replace("item-model", "item-model,linear") for a in args], "--out", tmp_path / "on", "--fuse", "on")
    assert on.exit_code == 1
    by_model = {(r["model"], r["status"], r["error"].split(":")[0]) for r in rows(tmp_path / "on")}
    assert by_model == {("item-model", "failed", "2 item-model cells cannot be fused"), ("linear", "ok", "")}
