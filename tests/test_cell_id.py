"""A cell's id comes from its full configuration, whatever order the grid lists it in."""

import dataclasses

import pytest

from bench.grid import Cell, Recipe, expand
from bench.host import Host


@pytest.fixture(scope="module")
def registry():
    return Host(autoload=False).registry


def ids(cells):
    return {c.cell_id: c.label for c in cells}


def test_the_order_of_the_grid_does_not_change_the_ids(registry):
    a = expand(registry, models=["linear", "mlp"], losses=["mse", "crossentropy"], seeds=[0, 1],
               params=["mlp.hidden=16,32", "mlp.depth=1"])
    b = expand(registry, models=["mlp", "linear"], losses=["crossentropy", "mse"], seeds=[1, 0],
               params=["mlp.depth=1", "mlp.hidden=32,16"])
    assert len(a) == 12 and len(ids(a)) == 12  # all distinct
    assert ids(a) == ids(b)
    assert [c.cell_id for c in a] != [c.cell_id for c in b]  # the lists really were in another order


BASE = Cell("mlp", "crossentropy", "mnist", 0, "cpu", Recipe(), 0, {"model": {"hidden": 64}})
CHANGES = {
    "model": dict(model="linear"),
    "loss": dict(loss="mse"),
    "dataset": dict(dataset="kmnist"),
    "params": dict(overrides={"model": {"hidden": 65}}),
    "a parameter of another component": dict(overrides={"model": {"hidden": 64}, "dataset": {"val_size": 10}}),
    "seed": dict(seed=1),
    "device kind": dict(device="cuda:0"),
    "epochs": dict(recipe=Recipe(epochs=3)),
    "batch size": dict(recipe=Recipe(batch_size=128)),
    "lr": dict(recipe=Recipe(lr=1e-2)),
    "optimizer": dict(recipe=Recipe(optimizer="sgd")),
    "weight decay": dict(recipe=Recipe(weight_decay=1e-4)),
    "schedule": dict(recipe=Recipe(schedule="cosine")),
    "an optimizer parameter": dict(overrides={"model": {"hidden": 64}, "optimizer": {"beta1": 0.8}}),
    "limit": dict(limit=100),
}


@pytest.mark.parametrize("change", CHANGES.values(), ids=CHANGES.keys())
def test_every_part_of_the_configuration_changes_the_id(change):
    assert dataclasses.replace(BASE, **change).cell_id != BASE.cell_id


def test_the_device_index_does_not_change_the_id():
    """cuda:0 and cuda:1 are the same kind of device: a run resumed on another GPU skips finished cells."""
    assert dataclasses.replace(BASE, device="cuda:0").cell_id == dataclasses.replace(BASE, device="cuda:1").cell_id
    assert dataclasses.replace(BASE, recipe=Recipe(lr=0.001)).cell_id == BASE.cell_id  # 1e-3 == 0.001
