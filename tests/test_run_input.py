"""What a run is told to do, checked before it does anything: ``exclude`` entries, a run directory that lost
its study, and the types of ``bench.run``'s arguments."""

from pathlib import Path

import pytest
import yaml

import bench
from tests.test_study import QUICK, invoke, one_error_line

STUDY = {"models": ["linear", "mlp"], "params": {"mlp.hidden": [8, 16]}, "recipe": {"lr": [0.001, 0.01]},
         "device": "cpu"}

BAD_EXCLUDES = {
    "misspelled model": ({"model": "linaer"}, "entry {'model': 'linaer'}: unknown model 'linaer' (did you mean "
                                               "'linear'?)"),
    "lr not a number": ({"lr": "abc"}, "entry {'lr': 'abc'}: lr: needs numbers, got 'abc'"),
    "unknown loss": ({"loss": "hnige"}, "unknown loss 'hnige' (did you mean 'hinge'?)"),
    "unknown optimizer": ({"optimizer": "adamm"}, "unknown optimizer 'adamm' (did you mean 'adam'?)"),
    "seed not an integer": ({"seed": "x"}, "seed: needs an integer"),
    "fractional batch size": ({"batch_size": 1.5}, "batch_size: needs integers, got 1.5"),
    "param of the wrong type": ({"mlp.hidden": "wide"}, "mlp.hidden: 'wide' is not an integer"),
    "a list, not a value": ({"model": ["linear"]}, "model must be one value, got ['linear']"),
}


@pytest.mark.parametrize("entry, message", BAD_EXCLUDES.values(), ids=BAD_EXCLUDES.keys())
def test_an_exclude_entry_with_an_unknown_name_or_a_wrong_type_is_exit_2_naming_it(tmp_path, entry, message):
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({**STUDY, "exclude": [entry]}))
    line = one_error_line(invoke("run", "--study", path, "--out", tmp_path / "r", "--dry-run"))
    assert line.startswith(f"Error: study {path}: exclude: ") and message in line, line
    with pytest.raises(bench.BenchError, match="exclude: "):  # the same from Python
        bench.run({**STUDY, "exclude": [entry]}, dry_run=True, out=tmp_path / "r", echo=lambda m: None)
    assert not (tmp_path / "r").exists()


def test_a_valid_exclude_entry_still_excludes_its_cells(tmp_path):
    run = bench.run({**STUDY, "exclude": [{"lr": "1e-2"}, {"model": "mlp", "mlp.hidden": 16}]}, dry_run=True,
                    out=tmp_path / "r", echo=lambda m: None)
    cells = [cell for _, cell in run.plan]
    assert {(c.model, c.recipe.lr, c.params.get("mlp.hidden")) for c in cells} == {("linear", 0.001, None),
                                                                                  ("mlp", 0.001, 8)}


def test_a_run_directory_without_its_study_yaml_and_no_grid_options_is_exit_2(tmp_path):
    out = tmp_path / "run"
    assert invoke("run", "--models", "linear", "--losses", "mse", *QUICK, "--out", out).exit_code == 0
    (out / "study.yaml").unlink()
    before = sorted(p.name for p in (out / "cells").iterdir())
    line = one_error_line(invoke("run", "--out", out, "--device", "cpu", "-q"))
    assert f"{out} is a run directory without its study.yaml" in line and "--study FILE" in line
    assert sorted(p.name for p in (out / "cells").iterdir()) == before  # the default grid did not train into it
    with pytest.raises(bench.BenchError, match="without its study.yaml"):
        bench.run(out=out, device="cpu", echo=lambda m: None)
    # saying what to run again resumes it
    result = invoke("run", "--models", "linear", "--losses", "mse", *QUICK, "--out", out)
    assert result.exit_code == 0 and "1 of 1 cell(s) already finished" in result.output
    assert (out / "study.yaml").is_file()


def test_a_new_or_empty_out_without_grid_options_still_runs_the_default_grid(tmp_path):
    run = bench.run(out=tmp_path / "new", dry_run=True, echo=lambda m: None)
    assert len(run.plan) >= 1


BAD_ARGUMENTS = {
    "study a list": ({"study": [1, 2]}, "study must be a study file's path, a mapping or a bench.study.Study"),
    "study a number": ({"study": 3}, "study must be"),
    "out a number": ({"out": 5}, "out must be a path"),
    "data_dir a list": ({"data_dir": ["a"]}, "data_dir must be a path"),
    "device a number": ({"device": 5}, "device must be a string"),
    "params a number": ({"params": 5}, "params must be a list"),
    "plugins a number": ({"plugins": 5}, "plugins must be a list of module names"),
    "plugins of numbers": ({"plugins": [5]}, "plugins must be a list of module names"),
    "executor a number": ({"executor": 5}, "executor must be a string"),
    "tune a number": ({"tune": 5}, "tune must be a list"),
    "threads a string": ({"threads": "4"}, "threads must be an integer >= 0"),
    "quiet a string": ({"quiet": "yes"}, "quiet must be True or False"),
    "dry_run a string": ({"dry_run": "no"}, "dry_run must be True or False"),
    "argv a string": ({"argv": 5}, "argv must be a list of strings"),
    "echo not callable": ({"echo": 5}, "echo must be a function"),
    "host not a host": ({"host": 5}, "host must be a bench.host.Host"),
}


@pytest.mark.parametrize("kwargs, message", BAD_ARGUMENTS.values(), ids=BAD_ARGUMENTS.keys())
def test_bench_run_raises_bench_error_for_an_argument_of_the_wrong_type(tmp_path, kwargs, message):
    options = {"out": tmp_path / "r", "dry_run": True, "echo": lambda m: None, **kwargs}
    with pytest.raises(bench.BenchError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        bench.run(**options)
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("value", [5, [1], None])
def test_bench_load_raises_bench_error_for_a_path_of_the_wrong_type(value):
    with pytest.raises(bench.BenchError, match="run_dir must be a path"):
        bench.load(value)


def test_a_path_like_out_and_study_are_accepted(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("models: linear\ndevice: cpu\n")
    run = bench.run(str(path), out=Path(tmp_path / "r"), dry_run=True, plugins="bench.plugins.models",
                    echo=lambda m: None)
    assert [c.model for _, c in run.plan] == ["linear"]
