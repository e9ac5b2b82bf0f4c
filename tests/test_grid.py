"""Grid expansion: presets, restrictions, parameter sweeps, seeds."""

import pytest

from bench import BenchError
from bench.grid import Recipe, expand
from bench.host import Host


@pytest.fixture(scope="module")
def registry():
    return Host(autoload=False).registry


def triples(cells):
    return [(c.model, c.loss, c.dataset) for c in cells]


def test_seed_grid_is_the_notebooks_three_cells(registry):
    assert triples(expand(registry, grid="seed")) == [
        ("linear", "mse", "mnist"), ("linear", "crossentropy", "mnist"), ("mlp", "crossentropy", "mnist")]
    assert triples(expand(registry)) == triples(expand(registry, grid="seed"))  # the default


def test_all_is_the_full_product_and_axes_restrict_it(registry):
    cells = expand(registry, grid="all", datasets=["mnist"])
    assert len(cells) == 4 * 3
    assert len(set(triples(cells))) == 12
    restricted = expand(registry, grid="all", models=["linear", "mlp"], losses=["mse"], datasets=["mnist"])
    assert triples(restricted) == [("linear", "mse", "mnist"), ("mlp", "mse", "mnist")]
    assert triples(expand(registry, grid="seed", models=["mlp"])) == [("mlp", "crossentropy", "mnist")]


def test_explicit_axes_default_to_crossentropy_on_mnist(registry):
    assert triples(expand(registry, models=["cnn"])) == [("cnn", "crossentropy", "mnist")]


def test_param_sweep_crosses_only_the_cells_it_applies_to(registry):
    cells = expand(registry, grid="seed", params=["mlp.hidden=64,256,1024", "mlp.depth=1,2"], seeds=[0, 1])
    linear = [c for c in cells if c.model == "linear"]
    mlp = [c for c in cells if c.model == "mlp"]
    assert len(linear) == 2 * 2  # two losses x two seeds, not multiplied by the mlp sweep
    assert len(mlp) == 3 * 2 * 2
    assert {(c.override("model")["hidden"], c.override("model")["depth"]) for c in mlp} == {
        (h, d) for h in (64, 256, 1024) for d in (1, 2)}
    assert all(isinstance(c.override("model")["hidden"], int) for c in mlp)
    assert mlp[0].params == {"mlp.depth": 1, "mlp.hidden": 64}
    assert len({c.cell_id for c in cells}) == len(cells)


def test_param_values_take_the_type_of_the_default(registry):
    cells = expand(registry, models=["mlp"], losses=["hinge"], params=["hinge.margin=2", "mlp.activation=tanh"])
    assert cells[0].override("loss") == {"margin": 2.0} and isinstance(cells[0].override("loss")["margin"], float)
    assert cells[0].override("model") == {"activation": "tanh"}


def test_cell_id_depends_on_configuration_not_order(registry):
    a = expand(registry, grid="all", datasets=["mnist"], models=["linear", "mlp"])
    b = expand(registry, grid="all", datasets=["mnist"], models=["mlp", "linear"])
    assert {c.cell_id for c in a} == {c.cell_id for c in b}
    c = expand(registry, grid="all", datasets=["mnist"], models=["linear", "mlp"], epochs=3)
    assert not {x.cell_id for x in a} & {x.cell_id for x in c}


@pytest.mark.parametrize("kwargs, message", [
    ({"grid": "everything"}, r"unknown grid 'everything'; valid: all, seed"),
    ({"models": ["lineer"]}, r"unknown model 'lineer' \(did you mean 'linear'\?\)"),
    ({"params": ["mlp.hidden"]}, r"param mlp.hidden: expected NAME.KEY=V1,V2 \(missing '='\)"),
    ({"params": ["hidden=3"]}, r"missing '.'"),
    ({"params": ["mlp.width=3"]}, r"model 'mlp' has no parameter 'width'; valid: activation, depth, hidden"),
    ({"params": ["mlp.hidden=big"]}, r"param mlp.hidden=big: 'big' is not an integer"),
    ({"params": ["mlp.hidden=1,,2"]}, r"empty value"),
    ({"params": ["cnn.c1=3"]}, r"'cnn' is not part of this grid"),
    ({"params": ["nosuch.x=1"]}, r"unknown component"),
    ({"seeds": []}, r"seeds needs comma-separated integers"),
])
def test_bad_grid_input_is_a_clear_error(registry, kwargs, message):
    with pytest.raises(BenchError, match=message):
        expand(registry, **{"grid": "seed", **kwargs})


@pytest.mark.parametrize("kwargs, message", [
    ({"epochs": 0}, "epochs must be >= 1"),
    ({"batch_size": -1}, "batch_size must be >= 1"),
    ({"lr": 0.0}, "lr must be a finite number > 0"),
    ({"lr": float("inf")}, "lr must be a finite number > 0"),
    ({"weight_decay": float("nan")}, "weight_decay must be a finite number >= 0"),
])
def test_bad_training_config_is_a_clear_error(kwargs, message):
    with pytest.raises(BenchError, match=message):
        Recipe(**kwargs)
