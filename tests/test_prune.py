"""Pruning (``--prune``), trials over seeds (``--tune-seeds``) and tuning studies readable in Optuna's own
tools, on real MNIST: the rows, the cell records and Optuna's trials must tell the same story."""

import json
import os
import random
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from bench import stats
from bench.cli import main
from tests.conftest import REPO, bench_env, run_bench

optuna = pytest.importorskip("optuna")

QUICK = ["--device", "cpu", "--limit", "2000", "-q"]
PRUNED = ["run", "--models", "linear", "--losses", "crossentropy", "--tune", "lr=1e-4:1e0:log", "--trials", "8",
          "--epochs", "3", "--seeds", "0,1", *QUICK]


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def results(out) -> pd.DataFrame:
    return pd.read_csv(out / "results.csv", keep_default_na=False, na_values=[""])


def studies(out) -> list:
    storage = optuna.storages.RDBStorage(f"sqlite:///{out / 'tuning.db'}")
    return [optuna.load_study(study_name=s.study_name, storage=storage)
            for s in optuna.get_all_study_summaries(storage)]


def records(out) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in (out / "cells").glob("*.json")}


def check_agree(out, trials: int, tune_seeds: int = 1) -> pd.DataFrame:
    """Optuna's trials and the tune rows agree: every trial counted once (finished, pruned or failed), with
    its cells' rows; a pruned trial's cells include a pruned one and no failed one; a finished trial's value is
    the mean of its cells' val_acc; each trial names its cells and their status."""
    table = results(out)
    tune = table[table["phase"] == "tune"]
    states = optuna.trial.TrialState
    for study in studies(out):
        rows = tune[tune["tuning"] == study.user_attrs["tuning"]]
        assert [t.number for t in study.trials] == list(range(trials))  # none lost, none repeated
        assert sorted(set(rows["trial"])) == list(range(trials))
        for t in study.trials:
            cells = rows[rows["trial"] == t.number]
            assert len(cells) == tune_seeds and sorted(cells["seed"]) == sorted(table["seed"].unique())[:tune_seeds]
            ids = t.user_attrs["cell_id"]
            assert sorted(ids if isinstance(ids, list) else [ids]) == sorted(cells["cell_id"])
            status = set(cells["status"])
            if t.state == states.COMPLETE:
                assert status == {"ok"} and t.user_attrs["status"] == "ok"
                assert t.value == pytest.approx(cells["val_acc"].mean())
                assert t.user_attrs["test_acc"] == pytest.approx(cells["test_acc"].mean())
            else:
                assert t.state == states.PRUNED, t.state
                assert "pruned" in status and "failed" not in status and t.user_attrs["status"] == "pruned"
    return table


def test_a_pruned_trial_stops_early_and_is_a_pruned_row_that_optuna_counts(tmp_path):
    out = tmp_path / "run"
    result = invoke(*PRUNED, "--prune", "asha", "--fuse", "off", "--out", out)
    assert result.exit_code == 0, result.output  # a pruned trial is not a failure
    table = check_agree(out, trials=8)
    tune = table[table["phase"] == "tune"]
    pruned = tune[tune["status"] == "pruned"]
    assert 3 <= len(pruned) <= 7  # asha, one trial after another: halving from point 1, most trials stop early
    assert pruned["error"].str.contains("at epoch 1 ").any()  # point 1 (epoch 1's end here) is a rung
    assert set(tune.loc[tune["status"] == "ok", "epochs"]) == {3}
    # 8 steps an epoch: too few for evaluations inside it (at least 20 steps apart), so trials stop at epoch ends
    assert not pruned["error"].str.contains("training steps").any()
    assert all(re.fullmatch(r"pruned by the asha pruner (in epoch \d after \d+ training steps|at epoch \d) "
                            r"\(val_acc [0-9.]+\)", e) for e in pruned["error"]), list(pruned["error"])
    assert pruned["test_acc"].isna().all()  # a pruned trial never sees the test split
    for _, row in pruned.iterrows():  # its metrics are those of its last evaluation, its history stops there
        record = records(out)[row["cell_id"]]
        assert len(record["history"]) == row["epochs"] - ("training steps" in row["error"])
        assert f"(val_acc {row['val_acc']:.4g})" in row["error"]
        assert not record["row"].get("weights")  # no weights: nothing to reuse or report
    [study] = studies(out)
    counts = pd.Series([t.state.name for t in study.trials]).value_counts().to_dict()
    assert counts == {"COMPLETE": int((tune["status"] == "ok").sum()), "PRUNED": len(pruned)}
    ok = tune[tune["status"] == "ok"]
    final = table[table["phase"] == "final"]
    assert set(final["lr"]) == {ok.loc[ok["val_acc"].idxmax(), "lr"]} and sorted(final["seed"]) == [0, 1]
    assert list(stats.aggregate(table)["n"]) == [2]  # statistics: final rows only, pruned trials not counted
    trained = sum(len(r.get("history", [])) for r in records(out).values() if not r.get("reused_from"))
    assert trained < 8 * 3 + 1 * 3  # fewer epochs than every trial to the end plus seed 1's final

    again = invoke(*PRUNED, "--prune", "asha", "--fuse", "off", "--out", out)  # resume: nothing trains again
    assert again.exit_code == 0, again.output
    assert results(out).sort_values("cell_id").equals(table.sort_values("cell_id"))
    assert [t.state for t in studies(out)[0].trials] == [t.state for t in study.trials]


def where(point: int) -> str:
    """Where a trial of 40 steps an epoch, evaluated after 20 steps and at the end, was stopped at ``point``."""
    epoch = (point + 1) // 2
    return f"in epoch {epoch} after {40 * epoch - 20} training steps" if point % 2 else f"at epoch {epoch}"


@pytest.mark.parametrize("pruner", ["asha", "hyperband"])
def test_a_fused_groups_trials_are_judged_together_each_against_all_that_reached_the_rung(tmp_path, pruner):
    out = tmp_path / "run"
    # the trials train together, as one fused group; 40 steps an epoch: evaluated after 20 steps and at the end
    result = invoke(*PRUNED, "--prune", pruner, "--limit", 40 * 256, "--out", out)
    assert result.exit_code == 0, result.output
    table = check_agree(out, trials=8)
    assert (table.loc[table["phase"] == "tune", "fused_size"] == 8).all()
    pruned = table[table["status"] == "pruned"].set_index("trial")
    [study] = studies(out)
    if pruner == "asha":  # halving from point 2 (half an epoch here); all trials in one bracket
        factor, first, bracket_of = 2, 2, {t.number: 0 for t in study.trials}
    else:  # thirds, in Optuna's Hyperband brackets: bracket b's first rung is point 3**b
        from bench.tune import make_pruner

        hyperband = make_pruner("hyperband", 3 * 2)  # its largest resource: 6 points
        hyperband._try_initialization(study)
        factor, first, bracket_of = 3, 1, {t.number: hyperband._get_bracket_id(study, t) for t in study.trials}
    # of the trials (of one bracket) that reached a rung, the best max(1, n // factor) go on, whatever their order
    # in the group; point 6 (epoch 3's end) is the last, never judged
    went_on = set()
    for bracket in set(bracket_of.values()):
        reached = [t for t in study.trials if bracket_of[t.number] == bracket]
        point = first * factor ** bracket
        while point < 6:
            values = {t.number: t.intermediate_values[point] for t in reached}
            last_kept = sorted(values.values(), reverse=True)[max(1, len(values) // factor) - 1]
            kept = {n for n, v in values.items() if v >= last_kept}
            for number in set(values) - kept:
                assert number in pruned.index, f"trial {number} went on from point {point} out of the best"
                assert pruned.loc[number, "error"] == (f"pruned by the {pruner} pruner {where(point)} "
                                                       f"(val_acc {values[number]:.4g})")
            reached = [t for t in reached if t.number in kept]
            point *= factor
        went_on |= {t.number for t in reached}
    assert 0 < len(pruned) == 8 - len(went_on)
    assert {t.state.name for t in study.trials if t.number in went_on} == {"COMPLETE"}
    for _, row in pruned.iterrows():  # stopped inside an epoch, or at an epoch's end: its history so far
        assert len(records(out)[row["cell_id"]]["history"]) == row["epochs"] - ("training steps" in row["error"])


def test_median_counts_a_trial_that_reached_its_last_point_as_finished(tmp_path):
    out = tmp_path / "run"
    # one trial after another, all 12 in one round (Optuna hears of their ends only after it); 8 steps an epoch:
    # one point an epoch, the third the last
    args = ["--models", "linear", "--losses", "crossentropy", "--tune", "lr=1e-4:1e0:log", "--trials", "12",
            "--epochs", "3", "--seeds", "0"]
    result = invoke("run", *args, *QUICK, "--prune", "median", "--fuse", "off", "--out", out)
    assert result.exit_code == 0, result.output
    table = check_agree(out, trials=12).set_index("trial")
    [study] = studies(out)
    for trial in study.trials:  # judged at points 1 and 2 as Optuna's MedianPruner judges, the trials before
        finished = [t for t in study.trials if t.number < trial.number and 3 in t.intermediate_values]
        stop = next((point for point in (1, 2) if len(finished) >= 5 and max(
            trial.intermediate_values[p] for p in range(1, point + 1)) < np.percentile(
            [t.intermediate_values[point] for t in finished], 50)), None)
        assert (trial.state.name == "PRUNED") == (stop is not None), (trial.number, stop)
        if stop is not None:
            assert table.loc[trial.number, "error"].startswith(f"pruned by the median pruner at epoch {stop} ")
    assert (table["status"] == "pruned").sum() >= 3


def test_the_pruner_sees_every_eval_every_point_and_the_final_cells_only_their_epochs(tmp_path):
    out = tmp_path / "run"  # 2000 images, batch 256: 8 steps an epoch, evaluated after steps 3 and 6 and at the end
    result = invoke(*PRUNED, "--prune", "asha", "--eval-every", "3", "--out", out)
    assert result.exit_code == 0, result.output
    table = check_agree(out, trials=8)
    [study] = studies(out)
    unpruned = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert unpruned and all(sorted(t.intermediate_values) == list(range(1, 10)) for t in unpruned)  # 3 epochs x 3
    inside = table[table["error"].fillna("").str.contains("training steps")]
    # asha's rungs are points 2, 4 and 8 (steps 6, 11 and 22); point 6 is epoch 2's end
    assert len(inside) and set(inside["error"].str.extract(r"after (\d+) training steps")[0]) <= {"6", "11", "22"}
    final = table[table["phase"] == "final"]  # the final cells: one history row an epoch, as always
    assert all(len(records(out)[cell]["history"]) == 3 for cell in final["cell_id"])


def test_a_trial_over_seeds_is_scored_by_their_mean_and_its_cells_are_the_final_cells(tmp_path):
    out = tmp_path / "run"
    result = invoke("run", "--models", "linear", "--losses", "crossentropy", "--tune", "lr=1e-4:1e0:log",
                    "--trials", "4", "--epochs", "1", "--tune-seeds", "2", "--seeds", "0,1,2", *QUICK, "--out", out)
    assert result.exit_code == 0, result.output
    table = check_agree(out, trials=4, tune_seeds=2)
    tune, final = table[table["phase"] == "tune"], table[table["phase"] == "final"]
    means = tune.groupby("trial")["val_acc"].mean()
    best = means.idxmax()
    assert set(final["lr"]) == set(tune.loc[tune["trial"] == best, "lr"]) and sorted(final["seed"]) == [0, 1, 2]
    saved = records(out)
    for seed in (0, 1):  # the chosen trial's cells are the final cells of its seeds: copied, not trained again
        row = final[final["seed"] == seed].iloc[0]
        trial_row = tune[(tune["trial"] == best) & (tune["seed"] == seed)].iloc[0]
        assert saved[row["cell_id"]]["reused_from"] == trial_row["cell_id"]
        assert row["test_acc"] == trial_row["test_acc"] and row["weights"] == trial_row["weights"]
    assert "reused_from" not in saved[final.loc[final["seed"] == 2, "cell_id"].iloc[0]]
    assert list(stats.aggregate(table)["n"]) == [3]


def test_tuning_studies_read_in_optunas_own_tools(tmp_path):
    out = tmp_path / "run"
    result = invoke("run", "--models", "linear", "--losses", "mse,crossentropy", "--tune", "lr=1e-3:1e-1:log",
                    "--trials", "2", "--epochs", "1", "--seeds", "0", *QUICK, "--out", out)
    assert result.exit_code == 0, result.output
    table = results(out)
    found = {s.study_name: s for s in studies(out)}
    assert sorted(found) == ["linear+crossentropy on mnist [optimizer=adam weight_decay=0 schedule=constant "
                             "batch_size=256 epochs=1]",
                             "linear+mse on mnist [optimizer=adam weight_decay=0 schedule=constant batch_size=256 "
                             "epochs=1]"]
    for name, study in found.items():
        attrs = study.user_attrs
        assert study.metric_names == ["val_acc"] and attrs["configuration"] == name
        assert (attrs["model"], attrs["dataset"], attrs["optimizer"], attrs["epochs"]) == ("linear", "mnist", "adam", 1)
        assert attrs["loss"] in name and attrs["tuned"] == {"lr": "0.001:0.1:log"} and "lr" not in attrs
        assert (attrs["trials"], attrs["prune"], attrs["tune_seeds"]) == (2, "none", 1)
        for t in study.trials:
            row = table[table["cell_id"] == t.user_attrs["cell_id"]].iloc[0]
            assert (row["phase"], row["trial"], row["loss"]) == ("tune", t.number, attrs["loss"])
            assert t.user_attrs["status"] == "ok" and t.user_attrs["test_acc"] == pytest.approx(row["test_acc"])
            assert t.value == pytest.approx(row["val_acc"]) and t.params["lr"] == pytest.approx(row["lr"])


BAD = {
    "unknown pruner": (["--tune", "lr=1e-4:1e-1", "--prune", "fast"], "Invalid value for '--prune'"),
    "prune without tune": (["--prune", "asha"], "--tune is needed for trials, sampler, tune_metric, prune"),
    "more tune seeds than seeds": (["--tune", "lr=1e-4:1e-1", "--tune-seeds", "3", "--seeds", "0,1"],
                                   "--tune-seeds is 3 but the run has 2 seed(s) (0, 1)"),
    "zero tune seeds": (["--tune", "lr=1e-4:1e-1", "--tune-seeds", "0"], "--tune-seeds must be an integer >= 1, got 0"),
    "prune elsewhere": (["--tune", "lr=1e-4:1e-1", "--prune", "asha", "--executor", "process"],
                        "--prune needs an executor that trains in this process (executor 'process'"),
}


@pytest.mark.parametrize("args, message", BAD.values(), ids=BAD.keys())
def test_bad_pruning_options_are_one_line_and_exit_2(tmp_path, args, message):
    result = invoke("run", "--models", "linear", *args, *QUICK, "--out", tmp_path / "r")
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
    assert not (tmp_path / "r" / "results.csv").exists()


def test_a_study_file_prunes_and_names_a_bad_pruner(tmp_path):
    study = tmp_path / "tune.yaml"
    study.write_text("models: [linear]\nlosses: [crossentropy]\ntune: {lr: '1e-3:1e-1:log'}\ntrials: 3\n"
                     "prune: hyperband\ntune_seeds: 2\nseeds: [0, 1]\nlimit: 1000\nrecipe: {epochs: 2}\n"
                     "device: cpu\n")
    result = invoke("run", "--study", study, "--out", tmp_path / "run", "--fuse", "off", "-q")
    assert result.exit_code == 0, result.output
    check_agree(tmp_path / "run", trials=3, tune_seeds=2)
    assert "prune: hyperband" in (tmp_path / "run" / "study.yaml").read_text()
    study.write_text("models: [linear]\ntune: {lr: '1e-3:1e-1:log'}\nprune: quick\n")
    result = invoke("run", "--study", study, "--out", tmp_path / "r2", "-q")
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
    assert "prune: must be one of none, median, asha, hyperband, got 'quick'" in result.output


@pytest.mark.slow
def test_kill_9_at_random_moments_of_a_pruned_multi_seed_tuning_run_loses_and_repeats_no_trial(tmp_path):
    # long enough for five kills at 2-6 s apart (each restart also imports torch again)
    args = ["run", "--models", "linear", "--losses", "mse,crossentropy", "--tune", "lr=1e-4:1e0:log", "--trials",
            "16", "--epochs", "3", "--prune", "asha", "--tune-seeds", "2", "--seeds", "0,1,2", "--fuse", "off",
            "--device", "cpu", "--limit", "4000", "--eval-every", "5", "-q"]  # 16 steps an epoch: stops inside it
    out = tmp_path / "run"
    rng = random.Random(7)
    kills = 0
    finished_before: dict[str, float] = {}
    for _ in range(16):
        proc = subprocess.Popen([sys.executable, "-m", "bench", *args, "--out", str(out)], cwd=REPO, env=bench_env(),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            proc.wait(timeout=rng.uniform(2.0, 6.0))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            kills += 1
        now = {k: r["started_at"] for k, r in records(out).items()} if (out / "cells").is_dir() else {}
        for cell_id, started in finished_before.items():  # a finished cell is never trained again
            assert now.get(cell_id) == started, cell_id
        finished_before = {k: r["started_at"] for k, r in records(out).items()
                           if r["row"]["status"] in ("ok", "pruned")} if now else {}
        if proc.returncode == 0:
            break
        time.sleep(0.2)
    assert kills >= 5, f"only {kills} kills: the run finished too early"
    last = run_bench(*args, "--out", out, timeout=600)
    assert last.returncode == 0, last.stderr
    table = check_agree(out, trials=16, tune_seeds=2)
    assert (table["status"] == "pruned").any()
    assert table["error"].fillna("").str.contains("training steps").any()  # some stopped inside an epoch
    final = table[table["phase"] == "final"]
    assert final.groupby("loss").size().to_dict() == {"crossentropy": 3, "mse": 3}


def test_the_report_shows_what_the_search_found_pruned_trials_apart(tmp_path):
    from bench.reports import build_report
    from bench.reports.protocol import importance, trial_table

    out = tmp_path / "run"
    result = invoke("run", "--models", "linear", "--losses", "crossentropy", "--tune", "lr=1e-4:1e0:log", "--tune",
                    "weight_decay=1e-6:1e-1:log", "--trials", "14", "--epochs", "3", "--prune", "asha",
                    "--seeds", "0", *QUICK, "--out", out)
    assert result.exit_code == 0, result.output
    table = results(out)
    tuning = table["tuning"].iloc[0]
    trials = trial_table(table, tuning)
    assert list(trials["trial"]) == list(range(14)) and set(trials["status"]) == {"ok", "pruned"}
    # one evaluation point an epoch here: asha's first rung is the end of epoch 2
    assert trials.loc[trials["status"] == "pruned", "epochs"].max() == 2
    report = build_report([out], tmp_path / "report")
    page = report.index.read_text()
    assert "What the search found for linear+crossentropy" in page and "parallel coordinates" in page
    n_ok = int((trials["status"] == "ok").sum())
    assert ("fANOVA" in page) == (n_ok >= 10)  # the importance panel only with 10 finished trials or more
    chosen = pd.read_csv(tmp_path / "report" / "tuning.csv")
    assert list(chosen["trials"]) == [f"{n_ok}/14 ok, {14 - n_ok} pruned"]
    assert (tmp_path / "report" / "figures" / "search-1.png").stat().st_size > 10_000

    done = invoke("run", "--models", "linear", "--losses", "crossentropy", "--tune", "lr=1e-4:1e0:log", "--tune",
                  "weight_decay=1e-6:1e-1:log", "--trials", "12", "--epochs", "1", "--seeds", "0", *QUICK,
                  "--out", tmp_path / "all")
    assert done.exit_code == 0, done.output
    table = results(tmp_path / "all")
    weights = importance(trial_table(table, table["tuning"].iloc[0]), ["lr", "weight_decay"])
    assert set(weights) == {"lr", "weight_decay"} and sum(weights.values()) == pytest.approx(1.0)
    assert weights["lr"] > weights["weight_decay"]  # lr over four decades moves val_acc far more
    build_report([tmp_path / "all"], tmp_path / "report2")
    assert "fANOVA importance" in (tmp_path / "report2" / "index.html").read_text()


def test_the_search_figures_load_in_a_headless_browser_without_the_network(tmp_path):
    import shutil

    from tests.test_reports import BROWSER_ARGS

    exe = os.environ.get("BENCH_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("no chromium on PATH (apt-get install -y chromium)")
    sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright

    from bench.reports import build_report

    out = tmp_path / "run"
    result = invoke("run", "--models", "linear", "--losses", "crossentropy", "--tune", "lr=1e-4:1e0:log", "--tune",
                    "weight_decay=1e-6:1e-1:log", "--trials", "9", "--epochs", "2", "--prune", "asha", "--seeds", "0",
                    "--device", "cpu", "--limit", "500", "-q", "--out", out)
    assert result.exit_code == 0, result.output
    index = build_report([out], tmp_path / "report").index
    requested = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=BROWSER_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.on("request", lambda request: requested.append(request.url))
            page.goto(index.as_uri(), wait_until="load")
            shown = page.eval_on_selector_all(
                "img[alt^='What the search found']",
                "imgs => imgs.map(i => [i.naturalWidth, i.getBoundingClientRect().width])")
        finally:
            browser.close()
    assert len(shown) == 1 and shown[0][0] > 800 and shown[0][1] > 0  # two rows of panels, drawn on the page
    assert all(url.startswith(("file:", "data:")) for url in requested)  # nothing from a server


def test_the_replay_of_halving_rules_judges_as_the_engine_does():
    from benchmarks.bench_tuning import replay_rule

    # trial 0 starts slowest and ends best; trials 1..7 start fast and end behind it
    trials = [(1e-4, {1: 0.1, 2: 0.65, 3: 0.8, 4: 0.95})]
    trials += [(10.0 ** -i, {1: 0.5 + 0.01 * i, 2: 0.55 + 0.01 * i, 3: 0.6 + 0.01 * i, 4: 0.9 + 0.001 * i})
               for i in range(1, 8)]
    # from point 1: the best 4 of 8 go on (trials 4-7), then the best 2 of those at point 2; point 4 is the last
    assert replay_rule(trials, 2, 1) == (1e-7, 8 + 4 + 2 + 2)
    # from point 2: trial 0 is in the best half there and wins; point 3 is no rung
    assert replay_rule(trials, 2, 2) == (1e-4, 8 + 8 + 4 + 4)
    # one after another: trial 0 is judged first, alone at its rungs, and goes on; the others against those before
    assert replay_rule(trials, 2, 1, together=False)[0] == 1e-4
