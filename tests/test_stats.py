"""Seed statistics: Student-t intervals, Holm correction, paired comparisons between configurations."""

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
