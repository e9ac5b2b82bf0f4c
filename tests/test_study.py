"""Studies: recipe axes crossed like components, zip and exclude, study files, validation before training,
and the Python API (``bench.run`` / ``bench.load``) that the CLI is a thin layer over."""

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml
from click.testing import CliRunner

import bench
from bench import stats
from bench.cli import main
from bench.config import CONFIG_COLUMNS, comparable, row_config
from bench.grid import expand
from bench.host import Host
from bench.study import Study, from_mapping
from tests.conftest import REPO

QUICK = ["--device", "cpu", "--limit", "1000", "--epochs", "1", "-q"]


@pytest.fixture(scope="module")
def registry():
    return Host(autoload=False).registry


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def one_error_line(result) -> str:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    return lines[0]


# -- expansion ------------------------------------------------------------------------------------------

def test_recipe_axes_are_crossed_like_components(registry):
    cells = expand(registry, models="linear", losses="mse,crossentropy", lr="1e-3,1e-2,1e-1", optimizer="adam,sgd",
                   seeds="0,1,2", limit=5000)
    assert len(cells) == 36
    configs = {c.config_key for c in cells}
    assert len(configs) == 12
    assert {(c.recipe.optimizer, c.recipe.lr) for c in cells} == {
        (o, lr) for o in ("adam", "sgd") for lr in (1e-3, 1e-2, 1e-1)}
    assert all(c.limit == 5000 for c in cells)


def test_zip_ties_axes_element_by_element_and_exclude_drops_partial_cells(registry):
    study = from_mapping({"models": ["linear", "mlp"], "losses": ["mse", "crossentropy"],
                          "recipe": {"optimizer": ["adam", "sgd"], "lr": [0.001, 0.1]},
                          "zip": [["optimizer", "lr"]], "exclude": [{"model": "mlp", "loss": "mse"}],
                          "seeds": [0, 1]})
    cells = expand(registry, study)
    recipes = {(c.recipe.optimizer, c.recipe.lr) for c in cells}
    assert recipes == {("adam", 0.001), ("sgd", 0.1)}  # two recipes, not four
    assert {(c.model, c.loss) for c in cells} == {("linear", "mse"), ("linear", "crossentropy"),
                                                   ("mlp", "crossentropy")}
    assert len(cells) == 3 * 2 * 2


def test_an_optimizer_parameter_sweeps_only_the_cells_that_use_that_optimizer(registry):
    cells = expand(registry, models="linear", optimizer="adam,sgd", params=["sgd.momentum=0,0.9"])
    assert sorted((c.recipe.optimizer, json.dumps(c.params)) for c in cells) == [
        ("adam", "{}"), ("sgd", '{"sgd.momentum": 0.0}'), ("sgd", '{"sgd.momentum": 0.9}')]


def test_defaults_come_from_plugins_not_from_the_core(registry):
    (cell,) = expand(registry, models="linear")
    assert (cell.loss, cell.dataset, cell.recipe.optimizer, cell.recipe.schedule) == (
        "crossentropy", "mnist", "adam", "constant")
    builtins = {"linear", "mlp", "cnn", "mnist", "mse", "crossentropy", "adam", "adamw", "sgd",
                "constant", "cosine", "local", "process", "ray"}
    for path in (REPO / "bench").glob("*.py"):
        named = {value for value in code_strings(path.read_text())} & builtins
        assert not named, f"{path.name} names built-in components {named} (that knowledge belongs in plugins/)"


def code_strings(source: str) -> list[str]:
    """The string constants of a module's code: docstrings (which may show examples) left out."""
    import ast

    tree = ast.parse(source)
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docstrings.add(id(first.value))
    return [n.value for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings]


def test_equal_cells_have_equal_ids_and_overrides_count(registry):
    a = expand(registry, models="mlp", params=["mlp.hidden=64"])[0]
    b = expand(registry, models="mlp", params=["mlp.hidden=65"])[0]
    assert a != b and a.cell_id != b.cell_id  # Cell.__eq__ used to ignore overrides
    assert a == expand(registry, models="mlp", params={"mlp.hidden": [64]})[0]


# -- which configurations are compared ------------------------------------------------------------------

def test_comparisons_pair_only_configurations_that_differ_along_one_axis(registry):
    cells = expand(registry, models="linear", losses="mse,crossentropy", lr="1e-3,1e-2", optimizer="adam,sgd")
    configs = [c.config() for c in cells]
    base = next(c for c in configs if (c["loss"], c["lr"], c["optimizer"]) == ("mse", 1e-3, "adam"))
    axes = {}
    for other in configs:
        if other is not base:
            axes[(other["loss"], other["lr"], other["optimizer"])] = comparable(base, other)
    assert axes == {("crossentropy", 1e-3, "adam"): "recipe", ("mse", 1e-2, "adam"): "lr",
                    ("mse", 1e-3, "sgd"): "optimizer", ("crossentropy", 1e-2, "adam"): None,
                    ("crossentropy", 1e-3, "sgd"): None, ("mse", 1e-2, "sgd"): None,
                    ("crossentropy", 1e-2, "sgd"): None}


# -- study files through the CLI ------------------------------------------------------------------------

def write(path: Path, data) -> Path:
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return path


STUDY = {"models": ["linear"], "losses": ["mse", "crossentropy"], "recipe": {"lr": [0.001, 0.01], "epochs": 1},
         "seeds": [0], "limit": 1000, "device": "cpu"}


def test_a_study_file_runs_keeps_its_resolved_study_and_resumes_from_it(tmp_path):
    path = write(tmp_path / "s.yaml", STUDY)
    out = tmp_path / "run"
    first = invoke("run", "--study", path, "--out", out, "-q")
    assert first.exit_code == 0, first.output
    results = pd.read_csv(out / "results.csv")
    assert len(results) == 4 and sorted(set(results["lr"])) == [0.001, 0.01]
    kept = yaml.safe_load((out / "study.yaml").read_text())
    assert kept["recipe"]["lr"] == [0.001, 0.01] and kept["recipe"]["optimizer"] == "adam"  # defaults filled in
    assert kept["models"] == ["linear"] and kept["seeds"] == [0] and kept["limit"] == 1000

    again = invoke("run", "--out", out, "--dry-run")  # no grid options: the study the directory keeps
    assert again.exit_code == 0, again.output
    assert "4 cell(s)" in again.output and "0 to run, 4 done" in again.output


def test_command_line_options_override_the_study_file(tmp_path):
    path = write(tmp_path / "s.yaml", STUDY)
    result = invoke("run", "--study", path, "--lr", "0.1", "--losses", "mse", "--out", tmp_path / "r", "--dry-run")
    assert result.exit_code == 0, result.output
    assert "1 cell(s)" in result.output and "linear+mse lr=0.1" not in result.output
    assert "linear+mse" in result.output


BAD_STUDIES = {
    "unknown key": ({"modles": ["linear"]}, "unknown key 'modles' (did you mean 'models'?)"),
    "wrong type": ({"models": 3}, "models: must be a list of names"),
    "recipe key": ({"recipe": {"learning_rate": 0.1}}, "recipe: unknown key 'learning_rate'"),
    "bad number": ({"recipe": {"lr": "fast"}}, "recipe.lr: needs numbers, got 'fast'"),
    "non-finite lr": ({"recipe": {"lr": float("inf")}}, "recipe.lr: must be a finite number > 0"),
    "zip lengths": ({"recipe": {"optimizer": ["adam", "sgd"], "lr": [0.1]}, "zip": [["optimizer", "lr"]]},
                    "zip: group ['optimizer', 'lr'] has lists of different lengths (optimizer: 2, lr: 1)"),
    "zip unknown axis": ({"zip": [["optimizer", "momentum"]]}, "zip: names 'momentum', which is not an axis"),
    "unknown model": ({"models": ["mpl"]}, "models: unknown model 'mpl' (did you mean 'mlp'?)"),
    "unknown optimizer": ({"recipe": {"optimizer": "adamm"}}, "recipe.optimizer: unknown optimizer 'adamm'"),
    "exclude key": ({"exclude": [{"modle": "cnn"}]}, "exclude: entry {'modle': 'cnn'} has an unknown key 'modle'"),
    "not a mapping": ("- linear\n- mlp\n", "a study must be a mapping of keys"),
    "not yaml": ("models: [linear\n", "not valid YAML"),
}


@pytest.mark.parametrize("data, message", BAD_STUDIES.values(), ids=BAD_STUDIES.keys())
def test_a_bad_study_file_is_one_line_naming_the_file_and_the_key(tmp_path, data, message):
    path = write(tmp_path / "bad.yaml", data)
    line = one_error_line(invoke("run", "--study", path, "--out", tmp_path / "r", "-q"))
    assert line.startswith(f"Error: study {path}: ") and message in line
    assert not (tmp_path / "r").exists()


# -- validation before training ------------------------------------------------------------------------

@pytest.mark.parametrize("param, message", [
    ("mlp.activation=swish", "model 'mlp' with activation='swish' is refused by its factory: ValueError: "
                             "activation must be one of"),
    ("mlp.hidden=0", "model 'mlp' with hidden=0 is refused by its factory: ValueError: hidden must be >= 1"),
])
def test_a_bad_component_value_is_exit_2_before_anything_trains(tmp_path, param, message):
    line = one_error_line(invoke("run", "--models", "mlp", "--param", param, *QUICK, "--out", tmp_path / "r"))
    assert message in line
    assert not (tmp_path / "r" / "cells").exists() or not list((tmp_path / "r" / "cells").iterdir())


# -- the Python API -------------------------------------------------------------------------------------

def test_bench_run_returns_the_run_with_dataframes_equal_to_the_csvs(tmp_path):
    run = bench.run(models="linear", losses=["mse", "crossentropy"], lr=[1e-3, 1e-2], seeds=[0, 1], device="cpu",
                    limit=1000, epochs=1, out=tmp_path / "run", quiet=True, echo=lambda m: None)
    assert isinstance(run, bench.Run) and run.path == tmp_path / "run"
    csv = pd.read_csv(tmp_path / "run" / "results.csv", keep_default_na=False, na_values=[""])
    pd.testing.assert_frame_equal(run.results, csv)
    pd.testing.assert_frame_equal(run.history, pd.read_csv(tmp_path / "run" / "history.csv"))
    assert len(run.results) == 8 and set(run.results["status"]) == {"ok"}
    assert list(run.results.columns[:len(CONFIG_COLUMNS) + 2]) == ["cell_id", *CONFIG_COLUMNS, "seed"]
    summary = run.summary()
    assert len(summary) == 4 and list(summary["n"]) == [2, 2, 2, 2]
    assert (summary["test_acc_mean"] > 0.3).all() and (summary["test_acc_mean"] <= 1).all()
    assert [c for c in summary.columns if c.startswith("test_acc")] == [
        "test_acc_mean", "test_acc_std", "test_acc_ci", "test_acc_ci_low", "test_acc_ci_high"]
    assert "mean" not in summary.columns and "ci" not in summary.columns
    by_hand = run.results.groupby(["loss", "lr"])["test_acc"].mean()
    for row in summary.itertuples():  # the mean over the seeds, under the metric's name
        assert row.test_acc_mean == pytest.approx(by_hand[(row.loss, row.lr)])
    val = run.summary("val_acc")
    assert list(val["val_acc_mean"]) == pytest.approx(list(run.results.groupby(["loss", "lr"], sort=False)["val_acc"]
                                                           .mean()))
    assert "<table" in run._repr_html_() and "linear+mse lr=0.01" in run._repr_html_()
    loaded = bench.load(tmp_path / "run")
    pd.testing.assert_frame_equal(loaded.results, run.results)
    assert loaded.study.recipe["lr"] == [0.001, 0.01]


def test_bench_run_without_out_says_where_it_writes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    notes: list[str] = []
    run = bench.run(models="linear", losses="mse", device="cpu", limit=500, epochs=1, quiet=True, echo=notes.append)
    (folder,) = (tmp_path / "runs").iterdir()
    assert (tmp_path / run.path).resolve() == folder.resolve() and (folder / "results.csv").is_file()
    assert notes == [f"note: no out given: writing {Path('runs') / folder.name} in the current folder ({tmp_path})"]


def test_one_out_written_twice_with_different_lr_holds_two_configurations(tmp_path):
    out = tmp_path / "run"
    for lr in ("0.001", "0.01"):
        result = invoke("run", "--models", "linear", "--lr", lr, "--seeds", "0,1", *QUICK, "--out", out)
        assert result.exit_code == 0, result.output
    results = pd.read_csv(out / "results.csv")
    assert len(results) == 4
    summary = stats.aggregate(results)
    assert sorted(summary["lr"]) == [0.001, 0.01] and list(summary["n"]) == [2, 2]  # not one config of 4 "seeds"
    comparisons = stats.compare(results)
    assert list(comparisons["axis"]) == ["lr"] and list(comparisons["n"]) == [2]


def test_older_results_without_recipe_columns_still_group_by_configuration():
    old = pd.DataFrame([{"model": "linear", "loss": "mse", "dataset": "mnist", "params": "", "seed": s,
                         "device": "cpu", "status": "ok", "epochs": 2, "batch_size": 256, "lr": 0.001,
                         "optimizer": "adam", "test_acc": 0.9 + s / 100} for s in range(3)])
    summary = stats.aggregate(old)
    assert len(summary) == 1 and summary.loc[0, "n"] == 3
    assert row_config(old.iloc[0])["weight_decay"] == 0.0 and row_config(old.iloc[0])["limit"] == 0


def test_bad_options_from_python_raise_bench_error_naming_the_option():
    with pytest.raises(bench.OptionError, match=r"^epochs must be >= 1, got 0$"):
        bench.run(epochs=0, dry_run=True, echo=lambda m: None)
    with pytest.raises(bench.BenchError, match="unknown optimizer 'adamx'"):
        bench.run(optimizer="adamx", dry_run=True, echo=lambda m: None)
    assert Study().merged(Study(models=["mlp"])).models == ["mlp"]
