"""Time to target (--target, --eval-every) and the across-datasets statistics, on a grid of two datasets:
the embedded MNIST and a small test dataset (tests/report_test_plugin.py's three 2-D blobs)."""

import pandas as pd
import pytest
from click.testing import CliRunner

from bench import stats
from bench.cli import main

ARGS = ["-p", "tests.report_test_plugin", "run", "--models", "linear,mlp", "--datasets", "mnist,blobs",
        "--seeds", "0,1", "--device", "cpu", "--limit", "2000", "--epochs", "2", "-q"]


@pytest.fixture(scope="module")
def two_datasets(tmp_path_factory):
    out = tmp_path_factory.mktemp("ttt") / "run"
    result = CliRunner().invoke(main, [*ARGS, "--target", "val_acc=0.6", "--eval-every", "2", "--out", str(out)],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return out, result.output


def test_each_cell_records_when_its_validation_accuracy_first_reached_the_target(two_datasets):
    out, output = two_datasets
    rows = pd.read_csv(out / "results.csv")
    history = pd.read_csv(out / "history.csv")
    assert set(rows["target"]) == {"val_acc>=0.6"}
    for row in rows.itertuples():
        epochs = history[history["cell_id"] == row.cell_id].sort_values("epoch")
        first = epochs.loc[epochs["val_acc"] >= 0.6, "epoch"]
        if pd.isna(row.target_epoch):  # never met: not at any epoch's end either
            assert first.empty and pd.isna(row.target_time_s) and pd.isna(row.target_steps)
            continue
        # met at or before the first epoch end that shows it, never after; within the training time so far
        assert first.empty or row.target_epoch <= first.iloc[0]
        assert 0 < row.target_time_s <= row.train_time_s + 1e-9
        if row.dataset == "mnist":  # --limit 2000 at batch 256: 8 steps per epoch
            steps_per_epoch = 8
            assert row.target_steps <= row.target_epoch * steps_per_epoch
            assert row.target_steps % 2 == 0 or row.target_steps % steps_per_epoch == 0  # --eval-every 2
    table = stats.time_to_target(rows)
    assert len(table) == 4 and set(table["target"]) == {"val_acc>=0.6"}
    assert all(r.endswith("/2") for r in table["reached"])
    assert "time to target" in output and "median steps" in output


def test_performance_profiles_and_mean_ranks_need_and_use_both_datasets(two_datasets):
    out, _ = two_datasets
    rows = pd.read_csv(out / "results.csv")
    profile = stats.performance_profiles(rows)
    assert set(profile["config"]) == {"linear+crossentropy", "mlp+crossentropy"}
    at_one = profile[profile["tau"] == profile["tau"].min()].set_index("config")["fraction"]
    assert at_one.sum() >= 1.0  # on each dataset some configuration is the best (ties count for both)
    assert (profile.groupby("config")["fraction"].max() == 1.0).all()  # every config is within some tau
    ranks = stats.mean_ranks(rows)
    assert list(ranks.columns) == ["config", "mnist", "blobs", "mean_rank"]
    assert sorted(ranks["mean_rank"]) == sorted(ranks[["mnist", "blobs"]].mean(axis=1))


def test_a_bad_target_is_one_line_and_exit_2(tmp_path):
    for bad, message in [("val_acc", "--target expected val_acc=VALUE"),
                         ("test_acc=0.9", "must be val_acc or val_loss"), ("val_acc=nan", "is not a finite number")]:
        result = CliRunner().invoke(main, ["run", "--models", "linear", "--target", bad, "--out", str(tmp_path / "r")])
        assert result.exit_code == 2 and message in result.output, result.output


def test_the_report_shows_time_to_target_ranks_and_performance_profiles(two_datasets, tmp_path):
    from bench.reports import build_report

    out, _ = two_datasets
    report = build_report([out], tmp_path / "report")
    page = report.index.read_text()
    for section in ('id="time-to-target"', 'id="across-datasets"', "Performance profiles across datasets"):
        assert section in page
    assert (tmp_path / "report" / "figures" / "performance_profiles.png").stat().st_size > 1000
    ranks = pd.read_csv(tmp_path / "report" / "across-datasets.csv")
    assert list(ranks.columns) == ["configuration", "mnist", "blobs", "mean rank"] and len(ranks) == 2
    target = pd.read_csv(tmp_path / "report" / "time-to-target.csv")
    assert len(target) == 4 and set(target["target"]) == {"val_acc>=0.6"}
