"""Experiment trackers (``--track mlflow,tensorboard``): read back through MLflow's own client and
TensorBoard's own readers, they hold exactly the run directory's numbers, each cell once, also after a
``kill -9`` and a rerun; a missing extra is exit 2 saying what to install; a plain run imports neither."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from bench.config import IDENTITY_COLUMNS
from tests.conftest import REPO, bench_env, run_bench

GRID = ["--models", "linear", "--losses", "mse,crossentropy", "--seeds", "0,1", "--limit", "1000", "--epochs", "2",
        "--device", "cpu", "-q"]
HISTORY_METRICS = ["train_loss", "train_acc", "val_loss", "val_acc", "epoch_time_s"]

#: Test plugin: a model whose every logit is NaN (a failed cell), and a way to die at a chosen event:
#: $BENCH_KILL = "EVENT:N" SIGKILLs this process at the Nth EVENT (hooks of -p plugins run before trackers'),
#: $BENCH_SLOW_EPOCH = seconds to sleep in each epoch event (a cell that takes its time).
PLUGIN = textwrap.dedent('''
    import os, signal, time

    from torch import nn

    from bench import hookimpl

    COUNT = {}


    class NaNModel(nn.Module):
        def __init__(self, input_shape, num_classes):
            super().__init__()
            self.fc = nn.Linear(784, num_classes)

        def forward(self, x):
            return self.fc(x.flatten(1)) * float("nan")


    @hookimpl
    def bench_register_models(register):
        register("nan-model", NaNModel)


    def maybe_die(event):
        COUNT[event] = COUNT.get(event, 0) + 1
        if os.environ.get("BENCH_KILL") == f"{event}:{COUNT[event]}":
            os.kill(os.getpid(), signal.SIGKILL)


    @hookimpl
    def bench_epoch_end(cell, row):
        time.sleep(float(os.environ.get("BENCH_SLOW_EPOCH", "0")))
        maybe_die("epoch_end")


    @hookimpl
    def bench_cell_end(cell, record):
        maybe_die("cell_end")
''')


@pytest.fixture(autouse=True)
def own_store(monkeypatch):
    """Never log to a tracking server that the environment running the tests points at."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    (tmp_path / "tracker_test_plugin.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "tracker_test_plugin"
    sys.modules.pop("tracker_test_plugin", None)


def table(path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def same(value, text: str) -> bool:
    """A logged value (a number, or MLflow's text of a param) equals results.csv's text of it."""
    try:
        return float(value) == float(text)
    except (TypeError, ValueError):
        return str(value) == text


# -- MLflow ------------------------------------------------------------------------------------------------

def mlflow_runs(out: Path, uri: str | None = None, experiment: str | None = None):
    """(client, parents, children) of the run directory's experiment, deleted runs left out."""
    pytest.importorskip("mlflow")
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri or f"sqlite:///{out.resolve() / 'mlflow.db'}")
    found = client.get_experiment_by_name(experiment or f"gridbench {out.resolve()}")
    assert found is not None, [e.name for e in client.search_experiments()]
    runs = client.search_runs([found.experiment_id], max_results=1000)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return client, parents, children


def assert_mlflow_mirrors(out: Path, uri: str | None = None, experiment: str | None = None) -> dict[str, str]:
    """One FINISHED parent; one FINISHED nested run per finished cell (FAILED ones for failed cells), whose
    params, tags and metrics are results.csv's and history.csv's. Returns {cell_id: run_id}."""
    client, parents, children = mlflow_runs(out, uri, experiment)
    results, history = table(out / "results.csv"), table(out / "history.csv")
    (parent,) = parents
    failed = any(r["status"] == "failed" for r in results)
    assert parent.info.status == ("FAILED" if failed else "FINISHED")
    assert parent.data.tags["bench.run_dir"] == str(out.resolve())
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"results.csv", "history.csv", "study.yaml", "report"} <= artifacts
    assert "report/index.html" in {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    logged = Path(client.download_artifacts(parent.info.run_id, "results.csv", str(out.parent)))
    assert logged.read_text() == (out / "results.csv").read_text()

    finished = {}
    for result in results:
        cell = result["cell_id"]
        mine = [c for c in children if c.data.tags["cell_id"] == cell]
        done = [c for c in mine if c.info.status == "FINISHED"]
        if result["status"] == "failed":
            assert not done and mine and all(c.info.status == "FAILED" for c in mine)
            assert mine[0].data.tags["status"] == "failed" and mine[0].data.tags["error"] == result["error"]
            continue
        assert len(done) == 1, f"cell {cell}: {len(done)} finished MLflow runs"
        run = done[0]
        finished[cell] = run.info.run_id
        # the attempt's own times (these tests' cells are short, so they are logged when they end)
        record = json.loads((out / "cells" / f"{cell}.json").read_text())
        assert (run.info.start_time, run.info.end_time) == (int(record["started_at"] * 1000),
                                                            int(record["ended_at"] * 1000))
        assert run.data.tags["status"] == result["status"]
        assert set(run.data.params) >= set(IDENTITY_COLUMNS)
        for column in IDENTITY_COLUMNS:
            assert same(run.data.params[column], result[column]), (column, run.data.params[column], result[column])
        for key, value in json.loads(result["params"]).items():
            assert same(run.data.params[key], str(value))
        metrics = run.data.metrics
        # the per-epoch curves under history.csv's names, and nothing else: results are apart, under final/
        assert {name for name in metrics if not name.startswith("final/")} == set(HISTORY_METRICS)
        for column in ("test_acc", "test_loss", "val_acc", "val_loss", "train_time_s", "samples_per_s", "n_params"):
            assert metrics[f"final/{column}"] == float(result[column]), column
            assert len(client.get_metric_history(run.info.run_id, f"final/{column}")) == 1
        # results.csv's epoch_time_s is the median epoch: named so, as epoch_time_s is each epoch's time
        assert metrics["final/median_epoch_time_s"] == float(result["epoch_time_s"])
        assert "final/epoch_time_s" not in metrics
        epochs = [h for h in history if h["cell_id"] == cell]
        for name in HISTORY_METRICS:
            logged = client.get_metric_history(run.info.run_id, name)
            assert sorted((m.step, m.value) for m in logged) == [(int(h["epoch"]), float(h[name])) for h in epochs]
    return finished


def test_trackers_are_listed_and_unknown_names_are_exit_2(cli, tmp_path):
    listing = cli("list").output
    assert "trackers:" in listing and "  mlflow " in listing and "  tensorboard " in listing
    result = cli("run", "--track", "mlflow,tensorbord", "--models", "linear", "--out", tmp_path / "r")
    assert result.exit_code == 2 and "unknown tracker 'tensorbord' (did you mean 'tensorboard'?)" in result.output
    assert len(result.output.strip().splitlines()) == 1 and not (tmp_path / "r").exists()


@pytest.mark.parametrize("name", ["mlflow", "tensorboard"])
def test_a_missing_extra_is_exit_2_saying_what_to_install(cli, tmp_path, monkeypatch, name):
    monkeypatch.setitem(sys.modules, name, None)  # what an environment without the extra sees
    result = cli("run", "--track", name, "--models", "linear", "--device", "cpu", "--out", tmp_path / "r")
    assert result.exit_code == 2
    assert result.output == (f"Error: tracker '{name}' needs {name}, an optional extra: pip install "
                             f"'gridbench[{name}]' (from a checkout: pip install -e '.[{name}]')\n")
    assert not (tmp_path / "r").exists()


def test_a_plain_run_imports_no_tracker_library(tmp_path):
    code = ("import sys; from bench.cli import main\n"
            "try:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n    assert e.code == 0, e.code\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'mlflow', 'tensorboard', 'sqlalchemy'}))")
    proc = subprocess.run([sys.executable, "-c", code, "run", "--models", "linear", "--limit", "500", "--epochs", "1",
                           "--device", "cpu", "-q", "--out", str(tmp_path / "r")], cwd=REPO, env=bench_env(),
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "[]"


def test_mlflow_holds_the_run_directory_once_through_failures_resume_and_force(cli, plugin, tmp_path):
    pytest.importorskip("mlflow")
    out = tmp_path / "run"
    args = ["run", "-p", plugin, "--track", "mlflow", *GRID, "--models", "linear,nan-model", "--seeds", "0",
            "--out", out]
    first = cli(*args)
    assert first.exit_code == 1, first.output  # the NaN cells fail; the others are logged all the same
    assert "warning" not in first.stderr, first.stderr
    assert {r["status"] for r in table(out / "results.csv")} == {"ok", "failed"}
    logged = assert_mlflow_mirrors(out)
    assert len(logged) == 2

    again = cli(*args)  # resumes: finished cells are neither trained nor logged again; failed ones retry
    assert again.exit_code == 1 and "resume: 2 of 4" in again.stderr
    assert assert_mlflow_mirrors(out) == logged
    _, parents, children = mlflow_runs(out)
    assert len(parents) == 1 and sorted(c.info.status for c in children) == ["FAILED"] * 4 + ["FINISHED"] * 2

    forced = cli(*args, "--force")  # new results for every cell: the earlier runs are superseded
    assert forced.exit_code == 1
    now = assert_mlflow_mirrors(out)
    assert now.keys() == logged.keys() and not set(now.values()) & set(logged.values())


def test_mlflow_tracking_uri_and_experiment_name_from_the_environment(cli, tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    uri = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)  # with a store of its own, MLflow's artifacts go where MLflow puts them: ./mlruns
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "shared")
    out = tmp_path / "run"
    result = cli("run", "--track", "mlflow", "--models", "linear", "--limit", "500", "--epochs", "1", "--device",
                 "cpu", "-q", "--out", out)
    assert result.exit_code == 0, result.output
    assert not (out / "mlflow.db").exists() and (tmp_path / "elsewhere.db").is_file()
    assert list((tmp_path / "mlruns").glob("*/*/artifacts/results.csv"))
    assert len(assert_mlflow_mirrors(out, uri, "shared")) == 1
    # a model-training experiment, so that MLflow's UI opens it on its runs table (not the GenAI view)
    client, _, _ = mlflow_runs(out, uri, "shared")
    assert client.get_experiment_by_name("shared").tags["mlflow.experimentKind"] == "custom_model_development"


# -- TensorBoard -------------------------------------------------------------------------------------------

def tensorboard_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(folder))
    accumulator.Reload()
    return {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]}


def hparams_sessions(logdir: Path) -> dict[str, tuple[dict, dict, list[str]]]:
    """What TensorBoard's HParams tab lists: {session group: (hparams, metric values, session statuses)}."""
    from tensorboard import context
    from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
    from tensorboard.plugins import base_plugin
    from tensorboard.plugins.hparams import api_pb2, backend_context, list_session_groups

    multiplexer = plugin_event_multiplexer.EventMultiplexer()
    multiplexer.AddRunsFromDirectory(str(logdir))
    multiplexer.Reload()
    provider = data_provider.MultiplexerDataProvider(multiplexer, str(logdir))
    ctx = backend_context.Context(base_plugin.TBContext(data_provider=provider, multiplexer=multiplexer,
                                                        logdir=str(logdir)))
    statuses = api_pb2.Status
    request = api_pb2.ListSessionGroupsRequest(start_index=0, slice_size=1000,
                                               allowed_statuses=[statuses.Value(n) for n in statuses.keys()],
                                               aggregation_type=api_pb2.AGGREGATION_AVG)
    groups = list_session_groups.Handler(context.RequestContext(), ctx, "", request).run().session_groups
    return {g.name: ({k: v.WhichOneof("kind") and getattr(v, v.WhichOneof("kind")) for k, v in g.hparams.items()},
                     {m.name.tag: m.value for m in g.metric_values}, [statuses.Name(s.status) for s in g.sessions])
            for g in groups}


def f32(text: str) -> float:
    import numpy as np

    return float(np.float32(float(text)))


def assert_tensorboard_mirrors(out: Path) -> None:
    """Per cell, a folder whose per-epoch scalars are history.csv's (each epoch once) and whose HParams
    session holds its configuration, its results and its status."""
    pytest.importorskip("tensorboard")
    results, history = table(out / "results.csv"), table(out / "history.csv")
    logdir = out / "tensorboard"
    # one run per cell, named by its configuration and seed (what the charts' legends show), then its id
    folders = {p.name.rsplit(" ", 1)[-1]: p.name for p in logdir.iterdir()}
    assert sorted(folders) == sorted(r["cell_id"] for r in results)
    for result in results:
        assert folders[result["cell_id"]] == (f"{result['model']}+{result['loss']} lr={float(result['lr']):g} "
                                              f"seed={result['seed']} {result['cell_id']}")
        scalars = tensorboard_scalars(logdir / folders[result["cell_id"]])
        epochs = [h for h in history if h["cell_id"] == result["cell_id"]]
        for name in HISTORY_METRICS:
            assert scalars[name] == [(int(h["epoch"]), f32(h[name])) for h in epochs], name
        assert {name for name in scalars if not name.startswith("final/")} == set(HISTORY_METRICS)
        assert scalars["final/test_acc"] == [(2, f32(result["test_acc"]))]
        assert scalars["final/median_epoch_time_s"] == [(2, f32(result["epoch_time_s"]))]
    sessions = hparams_sessions(logdir)
    assert sorted(sessions) == sorted(folders.values())
    for result in results:
        hparams, metrics, status = sessions[folders[result["cell_id"]]]
        assert set(hparams) == set(IDENTITY_COLUMNS)
        assert all(same(hparams[column], result[column]) for column in IDENTITY_COLUMNS), hparams
        # integers as written (the HParams tab shows a number value as 256.00), a float as a number
        assert [hparams[c] for c in ("seed", "batch_size", "epochs", "limit")] == [
            result[c] for c in ("seed", "batch_size", "epochs", "limit")] == [result["seed"], "256", "2", "1000"]
        assert hparams["lr"] == float(result["lr"]) and isinstance(hparams["lr"], float)
        assert metrics["final/test_acc"] == f32(result["test_acc"]) and metrics["val_acc"] == f32(result["val_acc"])
        assert status == ["STATUS_SUCCESS"]


def test_tensorboard_holds_history_and_hparams_per_cell_from_a_study_key(cli, tmp_path):
    pytest.importorskip("tensorboard")
    study = tmp_path / "study.yaml"
    study.write_text("models: [linear]\nlosses: [mse, crossentropy]\nseeds: [0, 1]\nlimit: 1000\n"
                     "recipe: {epochs: 2}\ndevice: cpu\ntrack: [tensorboard]\n")
    out = tmp_path / "run"
    result = cli("run", "--study", study, "-q", "--out", out)
    assert result.exit_code == 0, result.output
    assert "track: [tensorboard]" in (out / "study.yaml").read_text()  # so that resuming the run tracks it too
    assert_tensorboard_mirrors(out)

    # a cell that TensorBoard missed (say, the run was killed just after its record was written) is
    # written from its record when the run resumes; the others are left as they are
    first = sorted((out / "tensorboard").iterdir())[0]
    kept = {p: p.stat().st_mtime_ns for p in (out / "tensorboard").glob("*/events.*") if p.parent != first}
    for path in first.iterdir():
        path.unlink()
    resumed = cli("run", "--out", out, "-q")
    assert resumed.exit_code == 0 and "resume: 4 of 4" in resumed.stderr
    assert_tensorboard_mirrors(out)
    assert {p: p.stat().st_mtime_ns for p in kept} == kept


# -- kill -9 -----------------------------------------------------------------------------------------------

def tracked(out: Path, *extra: str) -> list[str]:
    return ["run", *GRID, "--track", "mlflow,tensorboard", *extra, "--out", str(out)]


@pytest.mark.slow
def test_kill_9_during_a_tracked_run_then_the_same_command_logs_each_cell_once(tmp_path):
    pytest.importorskip("mlflow")
    pytest.importorskip("tensorboard")
    out = tmp_path / "run"
    args = tracked(out)
    driver = subprocess.Popen([sys.executable, "-m", "bench", *args], cwd=REPO, env=bench_env(),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while not list((out / "cells").glob("*.json")):
        assert driver.poll() is None and time.monotonic() < deadline, driver.stderr.read().decode()
        time.sleep(0.02)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    driver.stderr.close()
    assert 1 <= len(list((out / "cells").glob("*.json"))) < 4, "killed too late to test anything"

    rerun = run_bench(*args)
    assert rerun.returncode == 0, rerun.stderr
    assert "warning" not in rerun.stderr, rerun.stderr
    assert len(assert_mlflow_mirrors(out)) == 4
    assert_tensorboard_mirrors(out)


@pytest.mark.slow
def test_kills_in_the_trackers_windows_leave_each_cell_once(plugin, tmp_path):
    """Killed (1) after a cell's record is written but before the trackers hear of it, (2) while a long
    cell's MLflow run is open: each rerun mends what the kill left, and the end state is each cell once."""
    pytest.importorskip("mlflow")
    pytest.importorskip("tensorboard")
    out = tmp_path / "run"
    args = tracked(out, "-p", plugin)
    env = {"PYTHONPATH": os.pathsep.join([str(REPO), str(tmp_path)])}

    first = run_bench(*args, env={**env, "BENCH_KILL": "cell_end:2"})
    assert first.returncode == -signal.SIGKILL, first.stderr
    assert len(list((out / "cells").glob("*.json"))) == 2
    _, _, children = mlflow_runs(out)
    assert [c.info.status for c in children] == ["FINISHED"]  # the second cell's record is on disk, not here

    second = run_bench(*args, env={**env, "BENCH_KILL": "epoch_end:2", "BENCH_SLOW_EPOCH": "1.2"})
    assert second.returncode == -signal.SIGKILL, second.stderr
    assert len(list((out / "cells").glob("*.json"))) == 2
    _, _, children = mlflow_runs(out)
    assert sorted(c.info.status for c in children) == ["FINISHED", "FINISHED", "RUNNING"]
    (running,) = [c for c in children if c.info.status == "RUNNING"]
    assert [m.step for m in mlflow_runs(out)[0].get_metric_history(running.info.run_id, "val_acc")] == [1]

    third = run_bench(*args, env=env)
    assert third.returncode == 0, third.stderr
    assert len(assert_mlflow_mirrors(out)) == 4
    client, _, children = mlflow_runs(out)
    assert client.get_run(running.info.run_id).info.status == "KILLED"
    assert sorted(c.info.status for c in children) == ["FINISHED"] * 4 + ["KILLED"]
    assert_tensorboard_mirrors(out)


@pytest.mark.slow
def test_cells_from_worker_processes_are_logged_with_their_own_times(plugin, tmp_path):
    """With --executor process a cell's events reach the driver when it has ended; even when a slow
    observer makes their replay take seconds, the MLflow run has the times the cell trained at."""
    pytest.importorskip("mlflow")
    out = tmp_path / "run"
    env = {"PYTHONPATH": os.pathsep.join([str(REPO), str(tmp_path)]), "BENCH_SLOW_EPOCH": "0.6",
           "OMP_NUM_THREADS": "1"}
    proc = run_bench("run", "-p", plugin, *GRID, "--seeds", "0", "--track", "mlflow", "--executor", "process",
                     "--jobs", "2", "--out", out, env=env)
    assert proc.returncode == 0, proc.stderr
    assert len(assert_mlflow_mirrors(out)) == 2
