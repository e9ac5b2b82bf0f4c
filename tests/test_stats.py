"""Seed statistics: Student-t intervals, Holm correction, paired comparisons between configurations."""

import json
import math

import pandas as pd
import pytest

from bench import stats


def test_mean_ci_matches_the_student_t_formula_by_hand():
    # values 1..4: mean 2.5, sample std sqrt(5/3); t(0.975, 3 dof) = 3.182446305284263
    mean, std, half = stats.mean_ci([1.0, 2.0, 3.0, 4.0])
    assert mean == pytest.approx(2.5)
    assert std == pytest.approx(math.sqrt(5 / 3))
    assert half == pytest.approx(3.182446305284263 * math.sqrt(5 / 3) / 2)


def test_mean_ci_other_confidence_and_degenerate_inputs():
    # t(0.95, 2 dof) = 2.919985580355516 for a 90% interval
    mean, std, half = stats.mean_ci([0.9, 0.92, 0.94], confidence=0.90)
    assert (mean, std) == (pytest.approx(0.92), pytest.approx(0.02))
    assert half == pytest.approx(2.919985580355516 * 0.02 / math.sqrt(3))
    mean, std, half = stats.mean_ci([0.5])
    assert mean == 0.5 and math.isnan(std) and math.isnan(half)
    assert all(math.isnan(v) for v in stats.mean_ci([]))
    assert stats.mean_ci([1.0, float("nan"), 3.0])[0] == pytest.approx(2.0)  # non-finite values are ignored


def test_holm_adjusts_in_rank_order_and_keeps_monotonicity():
    # sorted p: 0.01, 0.02, 0.04 -> 3*0.01=0.03, max(0.03, 2*0.02)=0.04, max(0.04, 1*0.04)=0.04
    assert stats.holm([0.04, 0.01, 0.02]) == pytest.approx([0.04, 0.03, 0.04])
    # capped at 1, NaN passes through and is not counted in m
    adjusted = stats.holm([0.5, float("nan"), 0.6])
    assert adjusted[0] == pytest.approx(1.0) and math.isnan(adjusted[1]) and adjusted[2] == pytest.approx(1.0)


def test_paired_test_agrees_with_the_t_statistic_by_hand():
    a, b = [0.91, 0.92, 0.95, 0.93], [0.90, 0.90, 0.92, 0.93]
    diffs = [x - y for x, y in zip(a, b)]  # 0.01, 0.02, 0.03, 0.00
    diff, half, p = stats.paired_test(a, b)
    assert diff == pytest.approx(0.015)
    sd = math.sqrt(sum((d - 0.015) ** 2 for d in diffs) / 3)
    assert half == pytest.approx(3.182446305284263 * sd / 2)
    # t = 0.015 / (sd / 2) = 2.3238; two-sided p with 3 dof
    from scipy.stats import t as student

    assert p == pytest.approx(2 * student.sf(0.015 / (sd / 2), 3))
    assert 0.05 < p < 0.2
    assert stats.paired_test([1, 2, 3], [1, 2, 3])[2] == 1.0  # identical: no evidence at all
    assert stats.paired_test([2, 3, 4], [1, 2, 3])[2] == 0.0  # a constant nonzero difference


def test_paired_test_p_and_interval_equal_scipy_stats_on_random_samples():
    """bench.stats uses scipy.special's t distribution (a cheaper import than scipy.stats): same numbers."""
    import random

    from scipy.stats import t as student
    from scipy.stats import ttest_rel

    rng = random.Random(7)
    for n in (2, 3, 5, 10):
        a = [rng.gauss(0.9, 0.01) for _ in range(n)]
        b = [x - rng.gauss(0.004, 0.006) for x in a]
        _, half, p = stats.paired_test(a, b)
        assert p == pytest.approx(ttest_rel(a, b).pvalue, rel=1e-9)
        _, std, half_ci = stats.mean_ci(a)
        assert half_ci == pytest.approx(student.ppf(0.975, n - 1) * std / math.sqrt(n), rel=1e-9)


def _results(accs: dict[tuple[str, str], list[float]], dataset="mnist", status=None) -> pd.DataFrame:
    rows = []
    for (model, loss), values in accs.items():
        for seed, acc in enumerate(values):
            rows.append({"model": model, "loss": loss, "dataset": dataset, "params": "{}", "seed": seed,
                         "device": "cpu", "status": (status or {}).get((model, loss, seed), "ok"),
                         "epochs": 2, "batch_size": 256, "lr": 0.001, "optimizer": "adam", "test_acc": acc})
    return pd.DataFrame(rows)


def test_aggregate_per_configuration_counts_only_finished_seeds():
    frame = _results({("linear", "mse"): [0.90, 0.91, 0.95], ("mlp", "crossentropy"): [0.97, 0.98, 0.5]},
                     status={("mlp", "crossentropy", 2): "failed"})
    summary = stats.aggregate(frame)
    assert list(summary["label"]) == ["linear+mse", "mlp+crossentropy"]
    lin, mlp = summary.iloc[0], summary.iloc[1]
    assert (lin["n"], lin["seeds"], lin["failed"]) == (3, "0,1,2", 0)
    assert lin["mean"] == pytest.approx(0.92) and lin["ci"] == pytest.approx(stats.mean_ci([0.90, 0.91, 0.95])[2])
    assert lin["ci_low"] == pytest.approx(0.92 - lin["ci"])
    assert (mlp["n"], mlp["seeds"], mlp["failed"]) == (2, "0,1", 1)
    assert mlp["mean"] == pytest.approx(0.975)  # the failed seed's number is not averaged in


def test_compare_all_pairs_flags_a_real_difference_and_ties_noise():
    frame = _results({
        ("linear", "mse"): [0.900, 0.905, 0.898, 0.903, 0.901],
        ("linear", "crossentropy"): [0.902, 0.903, 0.899, 0.904, 0.900],   # within noise of linear+mse
        ("mlp", "crossentropy"): [0.975, 0.978, 0.976, 0.979, 0.977],       # clearly better
    })
    table = stats.compare(frame)
    assert len(table) == 3  # every pair of three configurations
    by_pair = {(r.a, r.b): r for r in table.itertuples()}
    tie = by_pair[("linear+mse", "linear+crossentropy")]
    assert tie.verdict == "tied" and tie.n == 5 and tie.ci_low < 0 < tie.ci_high
    win = by_pair[("linear+mse", "mlp+crossentropy")]
    assert win.verdict == "mlp+crossentropy" and win.diff == pytest.approx(0.9014 - 0.977)
    assert win.p_holm < 0.05 and win.p_holm >= win.p
    assert win.ci_high < 0
    # Holm across the three: the smallest p is multiplied by 3
    smallest = table.sort_values("p").iloc[0]
    assert smallest["p_holm"] == pytest.approx(min(1.0, 3 * smallest["p"]))


def test_compare_pairs_only_shared_seeds_and_within_a_dataset():
    a = _results({("linear", "mse"): [0.90, 0.91, 0.92, 0.93]})
    b = _results({("mlp", "mse"): [0.95, 0.96, 0.97]})
    other = _results({("cnn", "mse"): [0.5, 0.6, 0.7]}, dataset="kmnist")
    table = stats.compare(pd.concat([a, b, other]))
    assert len(table) == 1  # kmnist has a single configuration: nothing to compare it with
    row = table.iloc[0]
    assert row["n"] == 3 and row["diff"] == pytest.approx(-0.05)


def test_compare_with_many_configurations_compares_each_with_the_best():
    accs = {(f"m{i}", "mse"): [0.5 + 0.01 * i + 0.001 * s for s in range(3)] for i in range(stats.ALL_PAIRS_MAX + 1)}
    table = stats.compare(_results(accs))
    assert len(table) == stats.ALL_PAIRS_MAX  # not 7*6/2 = 21
    assert set(table["a"]) == {f"m{stats.ALL_PAIRS_MAX}+mse"}
    assert len(stats.compare(_results(accs), pairs="all")) == 21


def test_single_seed_gives_no_verdict():
    table = stats.compare(_results({("linear", "mse"): [0.9], ("mlp", "mse"): [0.95]}))
    assert list(table["verdict"]) == ["n/a"] and table.iloc[0]["n"] == 1


def _two_datasets():
    accs = {"a": {"x": 0.9, "y": 0.8, "z": 0.85}, "b": {"x": 0.7, "y": 0.75, "z": 0.6}}
    rows = [{"model": m, "loss": "ce", "dataset": d, "params": "{}", "seed": s, "device": "cpu", "status": "ok",
             "epochs": 1, "batch_size": 256, "lr": 0.001, "optimizer": "adam", "test_acc": acc}
            for d, per in accs.items() for m, acc in per.items() for s in range(2)]
    return pd.DataFrame(rows)


def test_performance_profiles_count_datasets_within_a_factor_of_the_best_error():
    # errors on a: x 0.10, y 0.20, z 0.15 (ratios 1, 2, 1.5); on b: x 0.30, y 0.25, z 0.40 (1.2, 1, 1.6)
    profile = stats.performance_profiles(_two_datasets(), taus=[1, 1.5, 2])
    at = {(r.config, r.tau): r.fraction for r in profile.itertuples()}
    assert at[("x+ce", 1.0)] == 0.5 and at[("x+ce", 1.5)] == 1.0
    assert at[("y+ce", 1.0)] == 0.5 and at[("y+ce", 1.5)] == 0.5 and at[("y+ce", 2.0)] == 1.0
    assert at[("z+ce", 1.0)] == 0.0 and at[("z+ce", 1.5)] == 0.5 and at[("z+ce", 2.0)] == 1.0
    one = _two_datasets().query("dataset == 'a'")
    assert stats.performance_profiles(one).empty and stats.mean_ranks(one).empty


def test_mean_ranks_average_each_configurations_rank_over_datasets():
    ranks = stats.mean_ranks(_two_datasets())
    assert list(ranks["config"]) == ["x+ce", "y+ce", "z+ce"]
    assert list(ranks["mean_rank"]) == [1.5, 2.0, 2.5]
    assert list(ranks["a"]) == [1.0, 3.0, 2.0] and list(ranks["b"]) == [2.0, 1.0, 3.0]


# -- on real runs: comparison groups, the Holm family, intervals within bounds ----------------------------

def _bench(*args) -> tuple[int, str]:
    from click.testing import CliRunner

    from bench.cli import main

    result = CliRunner().invoke(main, [str(a) for a in args])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output


QUICK = ["--losses", "crossentropy", "--limit", "2000", "--epochs", "1", "--seeds", "0,1", "--device", "cpu",
         "--threads", "1", "-q"]


def _quick_run(tmp_path_factory, name, *args):
    out = tmp_path_factory.mktemp("stats") / name
    code, output = _bench("run", "--models", "linear,mlp", *args, *QUICK, "--out", out)
    assert code == 0, output
    return out, output


@pytest.fixture(scope="module")
def two_datasets(tmp_path_factory):
    """linear and mlp on MNIST and on a second dataset (``dots``, from a test plugin), two seeds."""
    return _quick_run(tmp_path_factory, "two", "-p", "tests.stats_test_plugin", "--datasets", "mnist,dots")


@pytest.fixture(scope="module")
def val_sizes(tmp_path_factory):
    """linear and mlp on MNIST with two validation sizes (a dataset parameter), two seeds."""
    return _quick_run(tmp_path_factory, "val", "--datasets", "mnist", "--param", "mnist.val_size=4000,5000")


def _holm_by_hand(ps):
    """Holm's step-down, written from the textbook: sort, multiply the r-th smallest by m - r, running max."""
    order = sorted(range(len(ps)), key=lambda i: ps[i])
    out, running = [0.0] * len(ps), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(ps) - rank) * ps[i]))
        out[i] = running
    return out


def _check_against_scipy(table, results):
    """Every comparison's p is scipy's paired t-test on the seeds of its two configurations, p_holm is
    Holm over the whole table, and its interval is scipy's at the reported level."""
    from scipy.stats import ttest_rel

    from bench.config import config_keys

    results = results.assign(_key=config_keys(results))
    summary = stats.aggregate(results)
    keys = dict(zip(zip(summary["label"], summary["dataset"]), config_keys(summary)))
    assert len(keys) == len(summary)  # (label, dataset) names one configuration here
    for row in table.itertuples():
        a, b = (results[results["_key"] == keys[(label, row.dataset)]].sort_values("seed") for label in (row.a, row.b))
        test = ttest_rel(list(a["test_acc"]), list(b["test_acc"]))
        assert row.p == pytest.approx(test.pvalue, rel=1e-6, abs=1e-12)
        low, high = test.confidence_interval(confidence_level=row.level)
        assert (row.ci_low, row.ci_high) == (pytest.approx(max(low, -1)), pytest.approx(min(high, 1)))
    assert list(table["p_holm"]) == pytest.approx(_holm_by_hand(list(table["p"])))
    assert set(table["family"]) == {len(table)}


def test_each_dataset_gets_its_comparisons_and_holm_counts_them_all(two_datasets):
    """A grid over two datasets whose recipes coincide compares within each dataset: two comparisons, one
    Holm family of two (not one dataset's comparison, the other's dropped)."""
    import bench

    out, output = two_datasets
    table = bench.load(out).comparisons()
    assert len(table) == 2 and sorted(table["dataset"]) == ["dots", "mnist"]
    assert list(table["axis"]) == ["recipe", "recipe"]
    assert list(table["family"]) == [2, 2] and "p (Holm over 2)" in output
    _check_against_scipy(table, bench.load(out).results)


def test_dataset_parameters_split_the_comparison_groups(val_sizes):
    """``--param mnist.val_size=4000,5000``: linear vs mlp at each validation size, 2 comparisons."""
    import bench

    out, output = val_sizes
    table = bench.load(out).comparisons()
    assert len(table) == 2
    assert sorted(table["context"]) == [f"mnist [val_size={v}], limit=2000, cpu" for v in (4000, 5000)]
    assert list(table["family"]) == [2, 2]
    _check_against_scipy(table, bench.load(out).results)
    lines = [line for line in output.splitlines() if line.startswith("mnist ") and " recipe " in line]
    assert len(lines) == 2 and "val_size=4000" in lines[0] + lines[1] and "val_size=5000" in lines[0] + lines[1]


def test_every_interval_of_a_two_seed_run_lies_in_0_1(val_sizes, tmp_path):
    """Two seeds: t(0.975, 1) = 12.7, so a Student-t interval of an accuracy easily passes 1. Clipped to
    [0, 1] everywhere: the API, the terminal, the report's tables and its figures' bands."""
    import re

    import bench

    out, output = val_sizes
    summary = bench.load(out).summary()
    assert (summary["n"] == 2).all()
    mean, ci = summary["test_acc_mean"], summary["test_acc_ci"]
    assert ((mean + ci) > 1).any() or ((mean - ci) < 0).any()
    assert ((summary["test_acc_ci_low"] >= 0) & (summary["test_acc_ci_high"] <= 1)).all()
    assert summary["test_acc_ci_low"].notna().all()
    for row in summary.itertuples():  # clipped, not moved: the clipped end is the bound, the other is t's
        assert row.test_acc_ci_low == pytest.approx(max(0.0, row.test_acc_mean - row.test_acc_ci))
        assert row.test_acc_ci_high == pytest.approx(min(1.0, row.test_acc_mean + row.test_acc_ci))
    printed = [float(v) for line in output.splitlines() if "]" in line and line.startswith(("linear", "mlp"))
               for v in re.findall(r"\[(-?\d+\.\d+), (-?\d+\.\d+)\]", line)[0]]
    assert len(printed) == 8 and all(0 <= v <= 1 for v in printed)
    comparisons = bench.load(out).comparisons()
    assert ((comparisons["ci_low"] >= -1) & (comparisons["ci_high"] <= 1)).all()

    code, text = _bench("report", out, "--out", tmp_path / "report")
    assert code == 0, text
    table = pd.read_csv(tmp_path / "report" / "summary.csv")
    assert ((table["test_acc_ci_low"] >= 0) & (table["test_acc_ci_high"] <= 1)).all()
    md = (tmp_path / "report" / "summary.md").read_text()
    for low, high in re.findall(r"\[(-?\d+\.\d+), (-?\d+\.\d+)\]", md):
        assert 0 <= float(low) <= float(high) <= 1
    for text in re.findall(r"(\d\.\d+) ± (\d\.\d+)", md):  # the symmetric form only where it fits
        assert 0 <= float(text[0]) - float(text[1]) and float(text[0]) + float(text[1]) <= 1
    # the figures' bands: validation accuracy per epoch over the two seeds, clipped the same way
    from bench.config import config_keys
    from bench.reports.figures import band

    run = bench.load(out)
    config = dict(zip(run.results["cell_id"], config_keys(run.results)))
    history = run.history.assign(config=lambda h: h["cell_id"].map(config))
    assert history.groupby(["config", "epoch"]).size().eq(2).all()  # two seeds per point
    for _, group in history.groupby(["config", "epoch"]):
        low, high = band("val_acc")(list(group["val_acc"]))
        assert 0 <= low <= high <= 1
    assert band("val_acc")([0.2, 0.9]) == (0.0, 1.0)  # t's interval is [-3.9, 5.0]
    assert band("val_loss")([0.1, 2.0])[0] == 0.0  # a loss is >= 0


def test_interval_and_verdict_come_from_the_same_correction():
    """Among six comparisons, one whose uncorrected 95% interval excludes zero (p = 0.045) is tied after
    Holm: each interval is at its Holm step's level and excludes zero exactly where the verdict is not tied."""
    from scipy.stats import ttest_rel

    base = [0.900, 0.905, 0.898, 0.903, 0.901]
    shifts = {"m1": [0.030, 0.031, 0.029, 0.030, 0.030], "m2": [0.004, 0.010, 0.001, 0.008, 0.002],
              "m3": [0.009, 0.001, 0.002, 0.011, 0.003]}
    accs = {("m0", "mse"): base, **{(m, "mse"): [b + d for b, d in zip(base, s)] for m, s in shifts.items()}}
    table = stats.compare(_results(accs))
    assert len(table) == 6
    uncorrected = [ttest_rel(accs[(r.a.split("+")[0], "mse")], accs[(r.b.split("+")[0], "mse")])
                   for r in table.itertuples()]
    assert any(row.verdict == "tied" and t.confidence_interval(0.95).high < 0
               for row, t in zip(table.itertuples(), uncorrected))  # what the table showed before
    assert "tied" in set(table["verdict"]) and len(set(table["verdict"])) > 1
    for row in table.itertuples():
        assert (row.ci_low > 0 or row.ci_high < 0) == (row.verdict != "tied"), row
    assert set(table["family"]) == {6}
    for row, test in zip(table.itertuples(), uncorrected):
        assert row.level == pytest.approx(1 - 0.05 * row.p / row.p_holm)
        low, high = test.confidence_interval(confidence_level=row.level)
        assert (row.ci_low, row.ci_high) == (pytest.approx(low), pytest.approx(high))
    assert "CI (Holm)" in stats.format_comparisons(table) and "CI level" in stats.format_comparisons(table)


def test_holm_levels_match_the_step_down_thresholds():
    # p sorted 0.01, 0.02, 0.04 of m=3: steps alpha/3, alpha/2, alpha/1; p_holm 0.03, 0.04, 0.04
    levels = stats.holm_levels([0.04, 0.01, 0.02], alpha=0.05)
    assert levels == pytest.approx([0.95, 1 - 0.05 / 3, 1 - 0.05 / 2])
    # an earlier step failed (p_holm raised by the running max): the level drops below that step's
    levels = stats.holm_levels([0.03, 0.03], alpha=0.05)
    assert levels == pytest.approx([1 - 0.05 / 2, 1 - 0.05 / 2])
    assert math.isnan(stats.holm_levels([float("nan"), 0.5])[0])


def test_recipe_groups_that_differ_in_optimizer_parameters_both_stay():
    """linear vs mlp under sgd with momentum 0 and with 0.9: two recipe groups (their texts once read
    alike and one replaced the other), and the optimizer axis within each model: four comparisons."""
    rows = [{"model": m, "loss": "ce", "dataset": "mnist", "params": json.dumps({"sgd.momentum": mom}), "seed": s,
             "device": "cpu", "status": "ok", "epochs": 2, "batch_size": 256, "lr": 0.01, "optimizer": "sgd",
             "test_acc": 0.5 + 0.1 * (m == "mlp") + 0.01 * s + mom / 10}
            for mom in (0, 0.9) for m in ("linear", "mlp") for s in range(3)]
    table = stats.compare(pd.DataFrame(rows))
    assert sorted(table["axis"]) == ["optimizer", "optimizer", "recipe", "recipe"]
    recipe = table[table["axis"] == "recipe"]
    assert sorted(recipe["fixed"].str.split(",").str[0]) == ["optimizer=sgd [momentum=0.9]",
                                                            "optimizer=sgd [momentum=0]"]
    assert set(table["family"]) == {4}
