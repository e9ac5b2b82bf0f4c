"""`bench compare BASE NEW`: the same command run twice, the second time with worse (or slower) code."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest
from click.testing import CliRunner

from bench.cli import main
from bench.stats import paired_test
from tests.report_test_plugin import NOISE_ENV, SLEEP_ENV

GRID = ["-p", "tests.report_test_plugin", "--models", "knob", "--datasets", "blobs", "--losses", "crossentropy",
        "--seeds", "0,1,2", "--epochs", "2", "--batch-size", "64", "--threads", "1", "--device", "cpu", "-q"]


def bench(*args, env=None) -> tuple[int, str]:
    result = CliRunner().invoke(main, [str(a) for a in args], env=env)
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """BASE, the same command again (same code), NEW with noisy inputs, SLOW with a sleep in each step."""
    root = tmp_path_factory.mktemp("compare")
    out = {}
    for name, env in (("base", {}), ("again", {}), ("new", {NOISE_ENV: "3"}), ("slow", {SLEEP_ENV: "0.02"})):
        code, output = bench("run", *GRID, "--lr", "0.05", "--out", root / name, env={NOISE_ENV: "", SLEEP_ENV: "",
                                                                                         **env})
        assert code == 0, output
        out[name] = root / name
    return out


def test_worse_code_fails_the_gate_with_the_paired_difference(runs, tmp_path):
    markdown = tmp_path / "compare.md"
    code, output = bench("compare", runs["base"], runs["new"], "--fail-on", "accuracy=0.01,time=100",
                         "--markdown", markdown)
    print(output)
    assert code == 1
    base = pd.read_csv(runs["base"] / "results.csv").sort_values("seed")
    new = pd.read_csv(runs["new"] / "results.csv").sort_values("seed")
    assert (base["cell_id"].values == new["cell_id"].values).all()  # the same configurations and seeds
    diff, half, p = paired_test(list(new["test_acc"]), list(base["test_acc"]))
    assert diff < -0.1  # the noise costs accuracy
    line = next(line for line in output.splitlines() if line.startswith("knob+crossentropy"))
    assert f"{diff:+.4f}" in line and f"[{diff - half:+.4f}, {diff + half:+.4f}]" in line
    assert "3/3/3" in line and "NEW worse" in line and f"FAIL: accuracy {diff:+.4f} < -0.01" in line
    assert "FAIL: NEW is worse than BASE beyond the margins (accuracy=0.01, time=100) in 1 of 1" in output
    text = markdown.read_text()
    assert text.startswith("## bench compare:") and "| knob+crossentropy" in text and "NEW worse" in text

    # The accuracy margin is a margin: a drop smaller than it passes.
    code, output = bench("compare", runs["base"], runs["new"], "--fail-on", f"accuracy={-diff + 0.01:.4f}")
    assert code == 0, output
    assert "ok: NEW is within the margins" in output


def test_the_same_code_twice_is_tied_and_passes(runs):
    code, output = bench("compare", runs["base"], runs["again"], "--fail-on", "accuracy=0.01")
    assert code == 0, output
    line = next(line for line in output.splitlines() if line.startswith("knob+crossentropy"))
    assert "+0.0000" in line and "tied" in line and " ok" in line  # bit-for-bit the same accuracies


def test_slower_code_fails_the_time_margin(runs):
    code, output = bench("compare", runs["base"], runs["slow"], "--fail-on", "time=1.2")
    assert code == 1, output
    base = pd.read_csv(runs["base"] / "results.csv")["epoch_time_s"].median()
    slow = pd.read_csv(runs["slow"] / "results.csv")["epoch_time_s"].median()
    assert slow / base > 1.2
    assert f"time ×{slow / base:.3f} > 1.2" in output
    # Same code and data: the accuracies are identical, only the time differs.
    assert "tied" in output


def test_a_report_folder_stands_for_its_run(runs, tmp_path):
    code, output = bench("report", runs["base"], "--out", tmp_path / "report")
    assert code == 0, output
    code, from_report = bench("compare", tmp_path / "report", runs["new"])
    code_runs, from_runs = bench("compare", runs["base"], runs["new"])
    assert code == code_runs == 0  # no margins: a table, never a failure
    table = [line for line in from_report.splitlines() if line.startswith("knob")]
    assert table == [line for line in from_runs.splitlines() if line.startswith("knob")]


def test_a_recipe_change_matches_only_when_its_key_is_ignored(runs, tmp_path):
    other = tmp_path / "lr"
    code, output = bench("run", *GRID, "--lr", "0.01", "--out", other)
    assert code == 0, output
    code, output = bench("compare", runs["base"], other)
    assert code == 0, output  # no margins: a table (here none), never a failure; both are listed
    assert "no configuration is in both runs" in output
    assert "only in BASE (1): knob+crossentropy lr=0.05" in output
    assert "only in NEW (1): knob+crossentropy lr=0.01" in output

    code, output = bench("compare", runs["base"], other, "--ignore", "lr")
    print(output)
    assert code == 0, output
    assert "ignored in the match: lr" in output
    line = next(line for line in output.splitlines() if line.startswith("knob+crossentropy"))
    assert "lr: 0.05 → 0.01" in line and "3/3/3" in line
    base = pd.read_csv(runs["base"] / "results.csv")["test_acc"].mean()
    new = pd.read_csv(other / "results.csv")["test_acc"].mean()
    assert f"{new - base:+.4f}" in line


def test_configurations_in_one_run_only_are_listed(runs, tmp_path):
    both = tmp_path / "both"
    shutil.copytree(runs["base"], both)
    code, output = bench("run", *GRID, "--lr", "0.05", "--models", "linear", "--out", both)
    assert code == 0, output
    code, output = bench("compare", runs["base"], both)
    assert code == 0, output
    assert "only in NEW (1): linear+crossentropy" in output and "knob+crossentropy" in output

    # Ignoring the key that tells two of its configurations apart would pool their seeds: refused.
    code, output = bench("compare", runs["base"], both, "--ignore", "model")
    assert code == 2 and "ignoring model leaves 2 configurations of NEW indistinguishable" in output


@pytest.mark.parametrize("args, message", [
    (["--ignore", "colour"], "cannot ignore 'colour': not a configuration key (valid: model, loss"),
    (["--fail-on", "accuracy"], "bad margin 'accuracy': expected NAME=VALUE"),
    (["--fail-on", "speed=2"], "bad margin 'speed=2'"),
    (["--fail-on", "accuracy=high"], "margin accuracy='high' is not a number"),
    (["--fail-on", "time=0"], "margin time=0 must be a finite number > 0"),
])
def test_bad_options_are_one_line_and_exit_2(runs, args, message):
    code, output = bench("compare", runs["base"], runs["new"], *args)
    assert code == 2 and output.startswith(f"Error: {message}") and output.count("\n") == 1, output


def test_a_folder_that_is_neither_a_run_nor_a_report_exits_2(runs, tmp_path):
    code, output = bench("compare", runs["base"], tmp_path)
    assert code == 2 and "is neither a run directory (no cells/ records) nor a report folder" in output
    code, output = bench("compare", tmp_path / "missing", runs["base"])
    assert code == 2 and "no such run directory or report folder" in output


def test_a_new_run_whose_cells_failed_is_worse(runs, tmp_path):
    """A configuration that NEW finished no seed of fails the gate, whatever the margins."""
    broken = tmp_path / "broken"
    # NaN inputs: the cell diverges. (One seed: bench run itself raises on several all-failed seeds today.)
    code, output = bench("run", *GRID, "--seeds", "0", "--lr", "0.05", "--out", broken, env={NOISE_ENV: "nan"})
    assert code == 1 and (pd.read_csv(broken / "results.csv")["status"] == "failed").all(), output
    code, output = bench("compare", runs["base"], broken, "--fail-on", "time=10")
    assert code == 1 and "NEW failed" in output and "FAIL: no seed finished in NEW" in output


def test_fail_on_fails_when_no_configuration_is_shared(runs, tmp_path):
    """A gate that checked nothing is not a pass: --fail-on with zero shared configurations exits 1."""
    other = tmp_path / "lr"
    code, output = bench("run", *GRID, "--lr", "0.01", "--out", other)
    assert code == 0, output
    code, output = bench("compare", runs["base"], other, "--fail-on", "accuracy=0.5", "--markdown", tmp_path / "c.md")
    assert code == 1, output
    assert "FAIL: no configuration is in both runs" in output and "ok:" not in output
    assert "in all 0 configuration(s)" not in output
    assert "FAIL: no configuration is in both runs" in (tmp_path / "c.md").read_text()


def test_tuned_runs_are_compared_by_their_final_rows(tmp_path):
    """Tuning trials repeat a configuration's first seed: they are not results and stay out of the match;
    each run's tuned configuration is matched at its own best values, the values chosen shown."""
    tune = ["--tune", "lr=1e-3:1e-1:log", "--seeds", "0,1", "--epochs", "1"]
    for name, trials in (("a", "3"), ("b", "4")):
        code, output = bench("run", *GRID, *tune, "--trials", trials, "--out", tmp_path / name, env={NOISE_ENV: ""})
        assert code == 0, output
    code, output = bench("compare", tmp_path / "a", tmp_path / "b", "--fail-on", "accuracy=1")
    assert code == 0, output
    assert "more than once" not in output
    rows = {}
    for name in ("a", "b"):
        frame = pd.read_csv(tmp_path / name / "results.csv")
        rows[name] = frame[frame["phase"] == "final"].sort_values("seed")
        assert (frame["phase"] == "tune").sum() >= 3  # trials on seed 0 beside the final seed-0 row
    line = next(line for line in output.splitlines() if line.startswith("knob+crossentropy"))
    assert "2/2/2" in line
    diff, _, _ = paired_test(list(rows["b"]["test_acc"]), list(rows["a"]["test_acc"]))
    assert f"{diff:+.4f}" in line
    chosen = (rows["a"]["lr"].iloc[0], rows["b"]["lr"].iloc[0])
    if chosen[0] != chosen[1]:  # the trials chose other rates: the table says which
        assert f"lr (tuned): {chosen[0]:g} → {chosen[1]:g}" in line
    assert "ok: NEW is within the margins (accuracy=1) in all 1 configuration(s)" in output


def test_markdown_cells_escape_newlines(tmp_path):
    """A parameter value holding a newline stays inside its Markdown table row (bench compare and the
    report's tables)."""
    base = tmp_path / "base"
    code, output = bench("run", "-p", "tests.stats_test_plugin", "--models", "linear", "--datasets", "dots",
                         "--losses", "crossentropy", "--seeds", "0,1", "--epochs", "1", "--device", "cpu", "-q",
                         "--threads", "1", "--param", "dots.note=two\nlines", "--out", base)
    assert code == 0, output
    md = tmp_path / "c.md"
    code, output = bench("compare", base, base, "--markdown", md)
    assert code == 0, output
    table = [line for line in md.read_text().splitlines() if line.startswith("|")]
    assert len(table) == 3  # header, rule, one configuration: the newline did not split its row
    assert "two<br>lines" in table[2]
    code, output = bench("report", base, "--out", tmp_path / "report")
    assert code == 0, output
    for name in ("summary.md", "cells.md"):
        lines = (tmp_path / "report" / name).read_text().splitlines()
        assert all(line.startswith("|") for line in lines if line), name
        assert any("two<br>lines" in line for line in lines), name


def test_compare_is_vectorised_over_configurations(tmp_path):
    """2,000 configurations (two seeds each), computed over whole columns rather than one configuration
    at a time (benchmarks/bench_compare.py measures 50,000): quick, the numbers scipy's, Holm over all."""
    import time

    from scipy.stats import ttest_rel

    from bench.reports.compare import compare_runs
    from benchmarks.bench_compare import synthetic_run

    base = synthetic_run(tmp_path / "base", 2000, seed=1)
    new = synthetic_run(tmp_path / "new", 2000, shift=-0.001, seed=2)
    start = time.perf_counter()
    result = compare_runs(base, new)
    took = time.perf_counter() - start
    assert took < 15, f"{took:.1f} s for 2,000 configurations"
    table = result.table
    assert len(table) == 2000 and set(table["family"]) == {2000} and set(table["n_shared"]) == {2}
    a, b = (pd.read_csv(p / "results.csv") for p in (base, new))
    for i in (0, 999, 1999):
        test = ttest_rel(list(b["test_acc"][2 * i:2 * i + 2]), list(a["test_acc"][2 * i:2 * i + 2]))
        assert table["p"][i] == pytest.approx(test.pvalue, rel=1e-6)
    from tests.test_stats import _holm_by_hand

    assert list(table["p_holm"]) == pytest.approx(_holm_by_hand(list(table["p"])))
