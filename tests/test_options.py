"""Options defined once: bench run's flags, bench.run's keywords and study-file keys come from one definition
each; bench.run and bench run share one data folder, which BENCH_DATA_DIR chooses for both."""

from __future__ import annotations

import inspect
import shutil

import pytest

import bench
from bench.cli import RUN_SECTIONS, run_options
from bench.errors import OptionError
from bench.options import RunOptions, options_of
from bench.plugins.datasets import mnist_folder
from bench.study import STUDY_KEYS, Study, from_mapping


def test_every_option_is_a_flag_a_keyword_and_in_a_help_section():
    flags = {o.name for o in run_options()}
    keywords = set(inspect.signature(bench.run).parameters)
    listed = {name for names in RUN_SECTIONS.values() for name in names}
    assert {"eval_every", "weight_decay", "fuse_max", "lr", "threads", "executor_options"} <= flags & keywords
    assert flags <= listed | {"study"} and listed - {"wide"} <= flags
    assert {o.name for o in options_of(RunOptions)} <= keywords  # host, argv and echo are bench.run's only
    assert {"zip", "exclude", "recipe"} <= set(STUDY_KEYS) - keywords  # study-file keys only


def test_a_study_key_and_its_keyword_are_checked_by_the_same_check():
    with pytest.raises(OptionError, match="eval_every must be an integer >= 0, got -1"):
        Study.from_options(eval_every=-1)
    with pytest.raises(bench.BenchError, match="^study: eval_every: must be an integer >= 0, got -1$"):
        from_mapping({"eval_every": -1})
    assert Study.from_options(eval_every=50).eval_every == from_mapping({"eval_every": 50}).eval_every == 50


def test_an_unknown_keyword_of_bench_run_is_one_clear_error(tmp_path):
    with pytest.raises(OptionError, match="eval_evry is not an option of bench.run.*eval_every"):
        bench.run(models="linear", eval_evry=5, out=tmp_path / "r", dry_run=True)


def test_bench_run_and_the_cli_find_a_dataset_in_bench_data_dir(tmp_path, monkeypatch, cli):
    """fashion-mnist is never downloaded here: its files are placed (MNIST's, renamed) in $BENCH_DATA_DIR."""
    cache = tmp_path / "cache"
    raw = cache / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for path in mnist_folder().glob("*.gz"):
        shutil.copy(path, raw / path.name)
    monkeypatch.setenv("BENCH_DATA_DIR", str(cache))
    run = bench.run(models="linear", losses="crossentropy", datasets="fashion-mnist", limit=500, epochs=1,
                    device="cpu", out=tmp_path / "api", quiet=True, echo=lambda line: None)
    assert [r.status for r in run.records] == ["ok"], run.records
    result = cli("run", "--models", "linear", "--losses", "crossentropy", "--datasets", "fashion-mnist", "--limit",
                 "500", "--epochs", "1", "--device", "cpu", "-q", "--out", tmp_path / "cli")
    assert result.exit_code == 0, result.output
    same = bench.load(tmp_path / "cli").records[0]
    assert same.test_acc == run.records[0].test_acc  # the same files, the same numbers
    monkeypatch.setenv("BENCH_DATA_DIR", str(tmp_path / "empty"))
    missing = bench.run(models="linear", losses="crossentropy", datasets="fashion-mnist", limit=500, epochs=1,
                        device="cpu", out=tmp_path / "api2", quiet=True, echo=lambda line: None)
    assert str(tmp_path / "empty" / "FashionMNIST" / "raw") in missing.failed[0].error
