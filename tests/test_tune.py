"""Tuning: a budget of trials per configuration on the validation split, then the best values with every seed;
resumable after SIGKILL through Optuna's SQLite storage, and the same command gives the same trials."""

import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
from click.testing import CliRunner

from bench import stats
from bench.cli import main
from tests.conftest import REPO, bench_env

optuna = pytest.importorskip("optuna")

QUICK = ["--device", "cpu", "--limit", "1000", "--epochs", "1", "-q"]
TUNE = ["run", "--models", "linear", "--losses", "mse,crossentropy", "--tune", "lr=1e-4:1e-1:log", "--trials", "4",
        "--seeds", "0,1", *QUICK]


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def results(out) -> pd.DataFrame:
    return pd.read_csv(out / "results.csv", keep_default_na=False, na_values=[""])


def check_complete(out, trials=4, seeds=(0, 1)):
    table = results(out)
    tune, final = table[table["phase"] == "tune"], table[table["phase"] == "final"]
    assert tune.groupby("loss").size().to_dict() == {"crossentropy": trials, "mse": trials}
    assert set(tune["seed"]) == {seeds[0]}  # trials train on the first seed
    assert final.groupby("loss").size().to_dict() == {"crossentropy": len(seeds), "mse": len(seeds)}
    for loss, rows in final.groupby("loss"):
        trial_rows = tune[tune["loss"] == loss]
        best = trial_rows.loc[trial_rows["val_acc"].idxmax()]  # chosen on validation, never on test
        assert set(rows["lr"]) == {best["lr"]} and set(rows["seed"]) == set(seeds)
    storage = optuna.storages.RDBStorage(f"sqlite:///{out / 'tuning.db'}")
    for summary in optuna.get_all_study_summaries(storage):
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        complete = [t for t in study.get_trials() if t.state == optuna.trial.TrialState.COMPLETE]
        assert len(complete) == trials
    return table


def test_tuning_gives_each_configuration_its_trials_then_the_best_value_with_every_seed(tmp_path):
    result = invoke(*TUNE, "--out", tmp_path / "run")
    assert result.exit_code == 0, result.output
    table = check_complete(tmp_path / "run")
    lrs = sorted(set(table.loc[table["phase"] == "tune", "lr"]))
    assert len(lrs) == 4 and 1e-4 <= lrs[0] and lrs[-1] <= 1e-1
    summary = stats.aggregate(table)  # final rows only: one configuration per loss, two seeds each
    assert sorted(summary["loss"]) == ["crossentropy", "mse"] and list(summary["n"]) == [2, 2]
    assert set(summary["tuned"]) == {"lr"}
    comparisons = stats.compare(table)  # each loss at its own best lr: compared as one recipe
    assert list(comparisons["axis"]) == ["recipe"] and list(comparisons["n"]) == [2]
    assert "phase" in result.output and "final" in result.output

    from reports import build_report

    report = build_report([tmp_path / "run"], tmp_path / "report")
    summary = pd.read_csv(tmp_path / "report" / "summary.csv")
    assert len(summary) == 2 and sorted(summary["seeds"]) == ["2/2", "2/2"]  # final rows only, not the 8 trials
    chosen = pd.read_csv(tmp_path / "report" / "tuning.csv")
    assert len(chosen) == 2 and set(chosen["tuned"]) == {"lr"} and set(chosen["trials"]) == {"4/4 ok"}
    assert "Tuning: validation accuracy of every trial" in report.index.read_text()
    assert (tmp_path / "report" / "figures" / "sensitivity.png").stat().st_size > 1000


def test_the_same_command_and_seed_give_the_same_trials(tmp_path):
    lrs = []
    for name in ("a", "b"):
        result = invoke(*TUNE, "--out", tmp_path / name, "--losses", "mse")
        assert result.exit_code == 0, result.output
        table = results(tmp_path / name)
        lrs.append(list(table.loc[table["phase"] == "tune"].sort_values("trial")["lr"]))
    assert lrs[0] == lrs[1] and len(set(lrs[0])) == 4
    other = invoke(*TUNE, "--out", tmp_path / "c", "--losses", "mse", "--seeds", "5,6")
    assert other.exit_code == 0, other.output
    table = results(tmp_path / "c")
    assert list(table.loc[table["phase"] == "tune"].sort_values("trial")["lr"]) != lrs[0]  # the seed moves them


@pytest.mark.slow
def test_sigkill_during_tuning_then_the_same_command_completes_exactly_once(tmp_path):
    out = tmp_path / "run"
    args = [*TUNE, "--out", str(out)]
    proc = subprocess.Popen([sys.executable, "-m", "bench", *args], cwd=REPO, env=bench_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    cells = out / "cells"
    deadline = time.time() + 240
    while time.time() < deadline and (not cells.is_dir() or len(list(cells.glob("*.json"))) < 3):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert cells.is_dir() and 3 <= len(list(cells.glob("*.json"))) < 12, "the kill came too late to test anything"
    again = subprocess.run([sys.executable, "-m", "bench", *args], cwd=REPO, env=bench_env(), capture_output=True,
                           text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    table = check_complete(out)
    assert len(table) == 2 * 4 + 2 * 2 and table["cell_id"].is_unique


BAD = {
    "no range": (["--tune", "lr"], "--tune lr: expected KEY=LOW:HIGH[:log] or KEY=a|b|c"),
    "reversed": (["--tune", "lr=1:0.1"], "--tune lr=1:0.1: needs finite LOW < HIGH"),
    "log of zero": (["--tune", "lr=0:1:log"], "a log range needs LOW > 0"),
    "unknown key": (["--tune", "lrate=1e-4:1e-1"], "lrate: not a recipe key"),
    "unknown param": (["--tune", "adam.gamma=0.1:0.2"], "optimizer 'adam' has no parameter 'gamma'"),
    "tuned and swept": (["--tune", "lr=1e-4:1e-1", "--lr", "0.1,0.01"], "lr is both tuned and swept"),
    "trials without tune": (["--trials", "3"], "--tune is needed for trials"),
    "zero trials": (["--tune", "lr=1e-4:1e-1", "--trials", "0"], "--trials must be an integer >= 1"),
}


@pytest.mark.parametrize("args, message", BAD.values(), ids=BAD.keys())
def test_bad_tuning_options_are_one_line_and_exit_2(tmp_path, args, message):
    result = invoke("run", "--models", "linear", *args, *QUICK, "--out", tmp_path / "r")
    assert result.exit_code == 2, result.output
    assert message in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "r" / "results.csv").exists()


def test_a_study_file_can_tune(tmp_path):
    study = tmp_path / "tune.yaml"
    study.write_text("models: [linear]\nlosses: [crossentropy]\ntune: {lr: '1e-3:1e-1:log'}\ntrials: 2\n"
                     "seeds: [0, 1]\nlimit: 1000\nrecipe: {epochs: 1}\ndevice: cpu\n")
    result = invoke("run", "--study", study, "--out", tmp_path / "run", "-q")
    assert result.exit_code == 0, result.output
    table = results(tmp_path / "run")
    assert (table["phase"] == "tune").sum() == 2 and (table["phase"] == "final").sum() == 2
    bad = tmp_path / "bad.yaml"
    bad.write_text("tune: {lr: '1e-3'}\n")
    line = invoke("run", "--study", bad, "--out", tmp_path / "r2", "-q").output.strip()
    assert line.startswith(f"Error: study {bad}: tune.lr: ") and "expected KEY=LOW:HIGH" in line
