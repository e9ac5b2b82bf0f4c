"""Tuning: a budget of trials per configuration on the validation split, then the best values with every seed;
resumable after SIGKILL through Optuna's SQLite storage, and the same command gives the same trials."""

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pandas as pd
import pytest
from click.testing import CliRunner

from bench import stats
from bench.cli import main
from tests.conftest import REPO, bench_env, run_bench

optuna = pytest.importorskip("optuna")

QUICK = ["--device", "cpu", "--limit", "1000", "--epochs", "1", "-q"]
TUNE = ["run", "--models", "linear", "--losses", "mse,crossentropy", "--tune", "lr=1e-4:1e-1:log", "--trials", "4",
        "--seeds", "0,1", *QUICK]


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


FRAGILE = textwrap.dedent('''
    """Test plugin: a model that cannot be built wider than its cap, so a trial fails for its values."""
    import torch
    from torch import nn

    from bench import hookimpl

    class Fragile(nn.Sequential):
        def __init__(self, input_shape, num_classes, width=10, cap=100):
            if width > cap:
                raise ValueError(f"width {width} is over the cap {cap}")
            super().__init__(nn.Flatten(), nn.Linear(int(torch.tensor(input_shape).prod()), width), nn.ReLU(),
                             nn.Linear(width, num_classes))

    @hookimpl
    def bench_register_models(register):
        register("fragile", Fragile, params={"width": 10, "cap": 100})
''')


@pytest.fixture
def fragile_plugin(tmp_path, monkeypatch):
    (tmp_path / "fragile_tune_plugin.py").write_text(FRAGILE)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "fragile_tune_plugin"


def trials_in(out) -> dict[str, list[tuple[int, str, dict]]]:
    """Every Optuna study in ``out/tuning.db``: its trials' numbers, states and params, read through Optuna."""
    storage = optuna.storages.RDBStorage(f"sqlite:///{out / 'tuning.db'}")
    return {s.study_name: [(t.number, t.state.name, t.params) for t in optuna.load_study(
        study_name=s.study_name, storage=storage).get_trials()] for s in optuna.get_all_study_summaries(storage)}


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

    from bench.reports import build_report

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


def test_a_failed_trial_is_a_failed_row_and_tuning_goes_on(tmp_path, fragile_plugin):
    out = tmp_path / "run"
    args = ["-p", fragile_plugin, "run", "--models", "fragile", "--losses", "crossentropy",
            "--param", "fragile.cap=50,0", "--tune", "fragile.width=1:100", "--trials", "4", "--seeds", "0,1",
            *QUICK, "--out", out]
    for attempt in ("first", "the same command again"):
        result = invoke(*args)
        assert result.exit_code == 1, (attempt, result.output)  # failed rows, as for any failed cell
        assert "Traceback" not in result.output
        configuration = ("fragile+crossentropy [fragile.cap=0] on mnist [optimizer=adam lr=0.001 weight_decay=0 "
                         "schedule=constant batch_size=256 epochs=1]")
        assert f"every trial of tuned configuration {configuration} failed" in result.output
        assert f"  {configuration}: every tuning trial failed" in result.output
        table = results(out)
        tune, final = table[table["phase"] == "tune"], table[table["phase"] == "final"]
        assert len(tune) == 8 and len(final) == 2 and table["cell_id"].is_unique  # nothing trained twice
        params = [json.loads(p) for p in tune["params"]]
        over = [p["fragile.width"] > p["fragile.cap"] for p in params]
        assert list(tune["status"]) == ["failed" if o else "ok" for o in over]
        assert all("over the cap" in e for e in tune.loc[tune["status"] == "failed", "error"])
        capped = [p for p, o in zip(params, over) if p["fragile.cap"] == 50]
        assert 0 < sum(p["fragile.width"] > 50 for p in capped) < 4  # the cap=50 configuration: some of each
        # only the configuration with a finished trial gets final cells: its best trial's width, every seed
        ok = tune[(tune["status"] == "ok")]
        best = ok.loc[ok["val_acc"].idxmax()]
        assert list(final["seed"]) == [0, 1] and set(final["params"]) == {best["params"]}
        assert set(final["trial"]) == {best["trial"]} and set(final["status"]) == {"ok"}
    from bench.reports import build_report

    build_report([out], tmp_path / "report")
    chosen = pd.read_csv(tmp_path / "report" / "tuning.csv", keep_default_na=False).set_index("configuration")
    assert sorted(chosen.index) == ["fragile+crossentropy [fragile.cap=0]", "fragile+crossentropy [fragile.cap=50]"]
    assert chosen.loc["fragile+crossentropy [fragile.cap=0]", "chosen"] == "(every trial failed)"
    width = json.loads(best["params"])["fragile.width"]
    assert chosen.loc["fragile+crossentropy [fragile.cap=50]", "chosen"] == f"fragile.width={width}"
    studies = trials_in(out)
    assert sorted(len(t) for t in studies.values()) == [4, 4]
    for trials in studies.values():  # Optuna marks each failed trial FAIL, and the budget holds them
        widths = {number: params["fragile.width"] for number, _, params in trials}
        cap = 0 if all(state == "FAIL" for _, state, _ in trials) else 50
        assert [state for _, state, _ in trials] == ["FAIL" if widths[n] > cap else "COMPLETE" for n, _, _ in trials]


KILLED = ["run", "--models", "linear", "--losses", "crossentropy", "--tune", "lr=1e-4:1e-1:log", "--trials", "4",
          "--fuse", "off", *QUICK]  # one cell at a time, so that a kill lands between trials


@pytest.mark.parametrize("sampler", ["qmc", "tpe"])
def test_a_trial_killed_mid_tuning_is_retried_with_its_values_and_the_same_trials_follow(tmp_path, sampler):
    args = [*KILLED, "--sampler", sampler]
    whole = tmp_path / "whole"
    assert invoke(*args, "--out", whole).exit_code == 0
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "bench", *args, "--out", str(out)], cwd=REPO, env=bench_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    cells = out / "cells"
    deadline = time.time() + 240
    while time.time() < deadline and not (cells.is_dir() and any(cells.glob("*.json"))):  # the first trial's record
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    [killed] = trials_in(out).values()
    assert 0 < len(killed) and [state for _, state, _ in killed].count("COMPLETE") < 4, "not killed mid-tuning"
    again = run_bench(*args, "--out", out, timeout=600)
    assert again.returncode == 0, again.stderr
    [reference] = trials_in(whole).values()
    assert [state for _, state, _ in reference] == ["COMPLETE"] * 4
    assert trials_in(out) == trials_in(whole)  # the same numbers, states and values, read through Optuna
    assert sorted(results(out)["cell_id"]) == sorted(results(whole)["cell_id"])  # the same trial and final cells


@pytest.mark.parametrize("sampler", ["qmc", "tpe"])
def test_a_trial_asked_but_not_given_its_values_before_a_kill_gets_its_own_values(tmp_path, sampler):
    args = [*KILLED, "--sampler", sampler]
    assert invoke(*args, "--out", tmp_path / "whole").exit_code == 0
    out = tmp_path / "killed"
    assert invoke(*args, "--trials", "2", "--out", out).exit_code == 0  # trials 0 and 1
    storage = optuna.storages.RDBStorage(f"sqlite:///{out / 'tuning.db'}")
    [summary] = optuna.get_all_study_summaries(storage)
    optuna.load_study(study_name=summary.study_name, storage=storage).ask()  # a kill between ask and suggest
    storage.engine.dispose()
    assert trials_in(out)[summary.study_name][2] == (2, "RUNNING", {})
    assert invoke(*args, "--out", out).exit_code == 0
    assert trials_in(out) == trials_in(tmp_path / "whole")


GATED = textwrap.dedent('''
    """Test plugin: a model whose training waits for the file $GATE, so that a signal lands while a trial trains."""
    import os
    import time
    from pathlib import Path

    import torch
    from torch import nn

    from bench import hookimpl

    class Gated(nn.Sequential):
        def __init__(self, input_shape, num_classes):
            super().__init__(nn.Flatten(), nn.Linear(int(torch.tensor(input_shape).prod()), num_classes))

        def forward(self, x):
            gate = Path(os.environ["GATE"])
            if self.training and not gate.exists():
                gate.with_suffix(".waiting").touch()
                while not gate.exists():
                    time.sleep(0.01)
            return super().forward(x)

    @hookimpl
    def bench_register_models(register):
        register("gated", Gated)
''')


def test_ctrl_c_during_tuning_prints_the_command_that_resumes(tmp_path):
    (tmp_path / "gated_tune_plugin.py").write_text(GATED)
    gate, out = tmp_path / "gate", tmp_path / "run"
    env = {**bench_env(), "GATE": str(gate)}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env["PYTHONPATH"]])
    args = ["-p", "gated_tune_plugin", "run", "--models", "gated", "--losses", "crossentropy", "--tune",
            "lr=1e-4:1e-1:log", "--trials", "2", "--fuse", "off", *QUICK, "--out", str(out)]
    proc = subprocess.Popen([sys.executable, "-m", "bench", *args], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and not gate.with_suffix(".waiting").exists() and proc.poll() is None:
        time.sleep(0.01)
    assert (out / "tuning.db").is_file() and not list((out / "cells").glob("*.json"))  # mid-trial, no record yet
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    lines = stderr.strip().splitlines()
    assert "before anything was written" not in stderr and lines[-2].endswith("Resume with:"), stderr
    command = shlex.split(lines[-1])
    assert command[:3] == ["bench", "-p", "gated_tune_plugin"] and command[-2:] == ["--out", str(out)]
    gate.touch()
    resumed = subprocess.run([sys.executable, "-m", "bench", *command[1:]], cwd=REPO, env=env, capture_output=True,
                             text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    table = results(out)
    assert list(table["phase"]).count("tune") == 2 and list(table["phase"]).count("final") == 1


@pytest.fixture(scope="module")
def tuned_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("tuned") / "run"
    args = ["run", "--models", "linear", "--losses", "crossentropy", "--tune", "lr=1e-4:1e-1:log", "--trials", "2",
            *QUICK, "--out", out]
    assert invoke(*args).exit_code == 0
    return args, out


DAMAGES = {
    "garbage bytes": lambda data: b"\x9fgarbage\x00" * 500,
    "truncated": lambda data: data[: len(data) // 2],
    "text": lambda data: b"these are not the trials you are looking for\n",
    "header overwritten": lambda data: b"\x00" * 100 + data[100:],
}


@pytest.mark.parametrize("damage", DAMAGES.values(), ids=DAMAGES.keys())
def test_a_damaged_tuning_db_is_named_in_one_line_with_exit_2(tmp_path, tuned_run, damage):
    args, good = tuned_run
    out = tmp_path / "run"
    shutil.copytree(good, out)
    db = out / "tuning.db"
    db.write_bytes(damage(db.read_bytes()))
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != ".gridbench.lock"}
    result = invoke(*args[:-1], out)
    assert result.exit_code == 2, result.output
    assert result.output.startswith(f"Error: {db} is damaged (") and len(result.output.strip().splitlines()) == 1
    assert "move it away and run the same command again" in result.output
    assert {p: p.read_bytes() for p in before} == before  # nothing lost or overwritten
    db.unlink()  # what the message says: the same command samples the same trials and trains none again
    again = invoke(*args[:-1], out)
    assert again.exit_code == 0, again.output
    assert sorted(results(out)["cell_id"]) == sorted(results(good)["cell_id"])
    assert trials_in(out) == trials_in(good)


KILLED_MID_WRITE = textwrap.dedent('''
    import os, sqlite3, sys
    db = sqlite3.connect(sys.argv[1], isolation_level=None)
    db.execute("PRAGMA cache_size=1")  # write pages to the file before the commit that never comes
    db.execute("BEGIN")
    db.execute("DELETE FROM trials")
    db.execute("CREATE TABLE filler (x)")
    db.executemany("INSERT INTO filler VALUES (?)", [(os.urandom(200),) for _ in range(5000)])
    os.kill(os.getpid(), 9)
''')


def test_a_tuning_db_left_mid_write_by_kill_9_is_not_damaged(tmp_path, tuned_run):
    args, good = tuned_run
    out = tmp_path / "run"
    shutil.copytree(good, out)
    subprocess.run([sys.executable, "-c", KILLED_MID_WRITE, str(out / "tuning.db")], check=False)
    assert (out / "tuning.db-journal").stat().st_size > 0  # a hot journal: SQLite rolls the write back
    result = invoke(*args[:-1], out)
    assert result.exit_code == 0, result.output
    assert trials_in(out) == trials_in(good) and results(out).equals(results(good))


BAD = {
    "no range": (["--tune", "lr"], "--tune lr: expected KEY=LOW:HIGH[:log] or KEY=a|b|c"),
    "reversed": (["--tune", "lr=1:0.1"], "--tune lr=1:0.1: needs finite LOW < HIGH"),
    "log of zero": (["--tune", "lr=0:1:log"], "a log range needs LOW > 0"),
    "unknown key": (["--tune", "lrate=1e-4:1e-1"], "lrate: not a recipe key"),
    "unknown param": (["--tune", "adam.gamma=0.1:0.2"], "optimizer 'adam' has no parameter 'gamma'"),
    "tuned and swept": (["--tune", "lr=1e-4:1e-1", "--lr", "0.1,0.01"], "lr is both tuned and swept"),
    "trials without tune": (["--trials", "3"], "--tune is needed for trials"),
    "zero trials": (["--tune", "lr=1e-4:1e-1", "--trials", "0"], "--trials must be an integer from 1 to 1000"),
    "too many trials": (["--tune", "lr=1e-4:1e-1", "--trials", "1000000000"],
                        "--trials must be an integer from 1 to 1000, got 1000000000"),
    "one over the cap": (["--tune", "lr=1e-4:1e-1", "--trials", "1001"], "--trials must be an integer from 1 to 1000"),
}


@pytest.mark.parametrize("args, message", BAD.values(), ids=BAD.keys())
def test_bad_tuning_options_are_one_line_and_exit_2(tmp_path, args, message):
    result = invoke("run", "--models", "linear", *args, *QUICK, "--out", tmp_path / "r")
    assert result.exit_code == 2, result.output
    assert message in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "r" / "results.csv").exists()


def test_the_trials_cap_is_documented():
    from bench.tune import MAX_TRIALS

    help_text = invoke("run", "--help").output
    assert f"at most {MAX_TRIALS:,}" in " ".join(help_text.split())
    page = " ".join((REPO / "docs" / "tuning.md").read_text().split())
    assert f"`--trials N` (default 8, at most {MAX_TRIALS:,})" in page


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
