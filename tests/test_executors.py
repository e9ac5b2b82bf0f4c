"""Executors: one grid through local, process and Ray gives the same rows; a dead worker or driver loses
no finished cell and a rerun completes the grid.

Every run here uses one torch thread per cell (``OMP_NUM_THREADS=1``): on CPU the last bits of a
float32 reduction depend on the thread count, and ``process --jobs 2`` and Ray (``cpus=1``) give
each cell one thread on this 2-core machine, so the in-process reference must too.
"""

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, run_bench

TIMING = ["train_time_s", "epoch_time_s", "eval_time_s", "samples_per_s", "data_time_s", "warmup_time_s",
          "setup_time_s"]

#: A model that is linear, except that the first process to build it while MARKER exists kills itself.
BOMB_PLUGIN = textwrap.dedent('''
    import math, os, signal

    import torch
    from torch import nn

    from bench import hookimpl


    def make_bomb(input_shape, num_classes, marker=""):
        # not when bench checks the grid by building each model once on the meta device
        if marker and torch.empty(0).device.type != "meta":
            try:
                os.unlink(marker)  # only one process wins the unlink: exactly one worker dies
            except FileNotFoundError:
                pass
            else:
                os.kill(os.getpid(), signal.SIGKILL)
        return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), num_classes))


    @hookimpl
    def bench_register_models(register):
        register("bomb", make_bomb, params={"marker": ""}, description="linear; SIGKILLs its process once")
''')

#: A third-party executor: trains in this process, last cell first.
BACKWARDS_PLUGIN = textwrap.dedent('''
    from bench import hookimpl
    from bench.runner import DataCache, train_record


    class Backwards:
        def run(self, tasks, job):
            cache = DataCache()
            for index, cell in reversed(tasks):
                yield train_record(index, cell, job.registry, cache, job.device, job.data_dir)


    @hookimpl
    def bench_register_executors(register):
        register("backwards", Backwards, description="in process, last cell first")
''')


def read_table(path):
    import pandas as pd

    return pd.read_csv(path, keep_default_na=False, na_values=[""])


def assert_same_rows(out, reference):
    """Same results and history as the reference run, timing columns aside, and identical weights."""
    from safetensors.torch import load_file

    for name in ("results.csv", "history.csv"):
        got, want = read_table(out / name), read_table(reference / name)
        drop = [c for c in TIMING if c in want.columns]
        assert got.drop(columns=drop).equals(want.drop(columns=drop)), f"{name} differs:\n{got}\n{want}"
    weights = sorted(p.name for p in (reference / "weights").iterdir())
    assert weights == sorted(p.name for p in (out / "weights").iterdir()) and weights
    for name in weights:
        a, b = load_file(out / "weights" / name), load_file(reference / "weights" / name)
        assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)


def records(out):
    return {p.stem: p.read_text() for p in (out / "cells").glob("*.json")}


def rows(out):
    return {r["cell_id"]: r for r in read_table(out / "results.csv").to_dict("records")}


# -- fixtures --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def plugin_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("plugins")
    (folder / "bench_test_bomb.py").write_text(BOMB_PLUGIN)
    return folder


@pytest.fixture(scope="module")
def env(plugin_dir):
    """The environment of every bench subprocess: the checkout and the test plugins, one thread."""
    return {"PYTHONPATH": os.pathsep.join([str(REPO), str(plugin_dir)]), "OMP_NUM_THREADS": "1",
            "RAY_USAGE_STATS_ENABLED": "0"}


@pytest.fixture(scope="module")
def grid(plugin_dir):
    """Six small cells; the bomb cells fire when the marker file exists."""
    marker = plugin_dir / "marker"
    return marker, ["-p", "bench_test_bomb", "--models", "linear,bomb,mlp", "--param", f"bomb.marker={marker}",
                    "--seeds", "0,1", "--limit", "1500", "--epochs", "1", "--batch-size", "128", "--device", "cpu",
                    "-q", "--fuse", "off"]  # one cell per task here: a worker that dies takes exactly its cell


@pytest.fixture(scope="module")
def reference(grid, env, tmp_path_factory):
    """The grid run in process, one cell after another (the marker is absent: nothing dies)."""
    marker, args = grid
    out = tmp_path_factory.mktemp("local") / "r"
    result = run_bench("run", *args, "--out", out, env=env)
    assert result.returncode == 0, result.stderr
    assert len(rows(out)) == 6 and all(r["status"] == "ok" for r in rows(out).values())
    return out


@pytest.fixture(scope="module")
def ray_cluster(env):
    """A Ray head with 2 CPUs started for these tests (token auth on), stopped afterwards."""
    pytest.importorskip("ray", reason="the ray executor's tests need the extra: pip install -e '.[test,ray]'")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    temp = Path(tempfile.mkdtemp(prefix="bench-ray-"))  # short: Ray's socket paths must fit 107 bytes
    cluster_env = {**os.environ, **env, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    log = temp / "start.log"
    with open(log, "w") as f:
        head = subprocess.Popen(
            [str(Path(sys.executable).parent / "ray"), "start", "--head", "--block", "--num-cpus", "2",
             "--num-gpus", "0", "--node-ip-address", "127.0.0.1", "--port", str(port), "--include-dashboard",
             "false", "--disable-usage-stats", "--temp-dir", str(temp)],
            env=cluster_env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while "Ray runtime started" not in log.read_text():
            assert head.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        yield f"127.0.0.1:{port}", {k: cluster_env[k] for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}
    finally:
        os.killpg(head.pid, signal.SIGTERM)  # the head's session: every Ray process this fixture started
        try:
            head.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(head.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        head.wait()
        shutil.rmtree(temp, ignore_errors=True)


def executor_args(name, ray_cluster=None):
    if name == "process":
        return ["--executor", "process", "--jobs", "2"], {}
    address, auth = ray_cluster
    return ["--executor", "ray", "--address", address], auth


# -- in-process --------------------------------------------------------------------------------------


def test_executors_are_listed(cli):
    listing = cli("list").output
    assert "executors:" in listing
    for name in ("local", "process", "ray"):
        assert f"  {name} " in listing
    assert "jobs=None" in listing and "plugin: bench.plugins.executors" in listing


def test_a_plugin_executor_runs_the_grid_and_the_driver_keeps_grid_order(cli, tmp_path, monkeypatch):
    (tmp_path / "backwards_plugin.py").write_text(BACKWARDS_PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    args = ["--models", "linear,mlp", "--limit", "1000", "--epochs", "1", "--device", "cpu", "-q"]
    forward = cli("run", *args, "--out", tmp_path / "f")
    backward = cli("run", "-p", "backwards_plugin", "--executor", "backwards", *args, "--out", tmp_path / "b")
    assert forward.exit_code == 0 and backward.exit_code == 0, backward.output
    got, want = read_table(tmp_path / "b" / "results.csv"), read_table(tmp_path / "f" / "results.csv")
    assert list(got["model"]) == ["linear", "mlp"]  # the record's index, not arrival order, places a row
    assert got.drop(columns=TIMING).equals(want.drop(columns=TIMING))
    assert "plugin: backwards_plugin" in cli("list", "-p", "backwards_plugin").output


@pytest.mark.parametrize("args, message", [
    (["--executor", "proces"],
     "Error: unknown executor 'proces' (did you mean 'process'?); valid: local, process, ray, slurm"),
    (["--jobs", "2"], "Error: --jobs does not apply to executor 'local' (its parameters: none)"),
    (["--executor", "process", "--address", "auto"], "Error: --address does not apply to executor 'process'"),
    (["--executor", "process", "--jobs", "0"], "Error: --jobs must be >= 1, got 0"),
])
def test_bad_executor_options_are_one_line_and_exit_2(cli, tmp_path, args, message):
    result = cli("run", "--models", "linear", "--limit", "100", "--epochs", "1", "--device", "cpu", *args,
                 "--out", tmp_path / "r")
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [result.output.strip()] and result.output.startswith(message)
    assert not (tmp_path / "r").exists()


def test_ray_missing_says_how_to_install_it(cli, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # what an environment without the extra sees: ImportError
    result = cli("run", "--executor", "ray", "--models", "linear", "--device", "cpu", "--out", tmp_path / "r")
    assert result.exit_code == 2
    assert result.output == "Error: --executor ray needs Ray, an optional extra: pip install 'gridbench[ray]'\n"
    assert not (tmp_path / "r").exists()


# -- worker processes and Ray ------------------------------------------------------------------------


def _worker_dies_then_rerun_completes(name, grid, env, reference, tmp_path, ray_cluster=None):
    marker, args = grid
    extra, auth = executor_args(name, ray_cluster)
    out = tmp_path / name
    marker.write_text("")
    first = run_bench("run", *args, *extra, "--out", out, env={**env, **auth})
    assert not marker.exists(), "the bomb did not go off"
    assert first.returncode == 1, first.stderr
    by_id = rows(out)
    failed = [r for r in by_id.values() if r["status"] == "failed"]
    assert len(by_id) == 6 and len(failed) == 1 and failed[0]["model"] == "bomb"
    assert {"process": "worker process died while training this cell (killed by SIGKILL)",
            "ray": "Ray task failed while training this cell"}[name] in failed[0]["error"]
    assert "1 cell(s) failed" in first.stderr
    finished = {k: v for k, v in records(out).items() if by_id[k]["status"] == "ok"}

    second = run_bench("run", *args, *extra, "--out", out, env={**env, **auth})
    assert second.returncode == 0, second.stderr
    assert "resume: 5 of 6 cell(s) already finished" in second.stderr
    assert {k: v for k, v in records(out).items() if k in finished} == finished  # not retrained, not rewritten
    assert_same_rows(out, reference)


@pytest.mark.slow
def test_process_executor_matches_local_and_survives_a_dead_worker(grid, env, reference, tmp_path):
    _worker_dies_then_rerun_completes("process", grid, env, reference, tmp_path)


@pytest.mark.slow
def test_ray_executor_matches_local_and_survives_a_dead_worker(grid, env, reference, tmp_path, ray_cluster):
    _worker_dies_then_rerun_completes("ray", grid, env, reference, tmp_path, ray_cluster)


def test_workers_fork_only_where_it_is_safe(monkeypatch):
    import torch

    from bench.plugins.executors import start_method

    monkeypatch.delenv("BENCH_WORKER_START", raising=False)
    monkeypatch.setattr(sys, "platform", "linux")
    assert start_method(torch.device("cpu"), 1) == "fork"  # one thread: torch opens no OpenMP region
    assert start_method(torch.device("cpu"), 2) == "spawn"
    assert start_method(torch.device("cuda", 0), 1) == "spawn"  # CUDA cannot be used after fork
    monkeypatch.setenv("BENCH_WORKER_START", "spawn")
    assert start_method(torch.device("cpu"), 1) == "spawn"
    monkeypatch.delenv("BENCH_WORKER_START")
    monkeypatch.setattr(sys, "platform", "darwin")
    assert start_method(torch.device("cpu"), 1) == "spawn"


def test_two_thread_workers_do_not_hang_after_the_driver_ran_openmp(tmp_path):
    """``--grid all`` loads every dataset in the driver (OpenMP regions on 2 threads) before the workers
    start; a worker with 2 threads must then be spawned: forked, it hangs in its first parallel region."""
    out = tmp_path / "r"
    result = run_bench("run", "--grid", "all", "--models", "linear", "--losses", "crossentropy", "--limit", "2000",
                       "--epochs", "1", "--device", "cpu", "--executor", "process", "--jobs", "1", "-q",
                       "--out", out, env={"OMP_NUM_THREADS": "2"}, timeout=240)
    assert result.returncode == 0, result.stderr
    table = read_table(out / "results.csv")
    assert list(table["model"]) == ["linear"] and list(table["status"]) == ["ok"]
    assert table["test_acc"][0] > 0.5


@pytest.mark.slow
def test_spawned_workers_match_local(grid, env, reference, tmp_path):
    marker, args = grid
    assert not marker.exists()
    out = tmp_path / "spawn"
    result = run_bench("run", *args, "--executor", "process", "--jobs", "2", "--out", out,
                       env={**env, "BENCH_WORKER_START": "spawn"})
    assert result.returncode == 0, result.stderr
    assert_same_rows(out, reference)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["process", "ray"])
def test_driver_sigkill_loses_no_finished_cell(name, env, tmp_path, request):
    cluster = request.getfixturevalue("ray_cluster") if name == "ray" else None
    extra, auth = executor_args(name, cluster)
    out = tmp_path / "r"
    # one cell per task (--fuse off): a fused group's six records would all land at once
    args = ["run", "--models", "mlp", "--seeds", "0,1,2,3,4,5", "--limit", "6000", "--epochs", "1", "--device", "cpu",
            "-q", "--fuse", "off", *extra, "--out", out]
    driver = subprocess.Popen([sys.executable, "-m", "bench", *map(str, args)], cwd=REPO,
                              env={**os.environ, **env, **auth}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while not list((out / "cells").glob("*.json")):
        assert driver.poll() is None and time.monotonic() < deadline, driver.stderr.read().decode()
        time.sleep(0.05)
    driver.kill()
    driver.wait()
    driver.stderr.close()
    finished = records(out)
    assert 1 <= len(finished) < 6, "the driver was killed too late to test anything"
    for text in finished.values():
        record = json.loads(text)
        assert record["row"]["status"] == "ok" and (out / record["row"]["weights"]).is_file()

    rerun = run_bench(*args, env={**env, **auth})
    assert rerun.returncode == 0, rerun.stderr
    assert f"resume: {len(finished)} of 6 cell(s) already finished" in rerun.stderr
    assert {k: v for k, v in records(out).items() if k in finished} == finished
    table = read_table(out / "results.csv")
    assert sorted(table["seed"]) == [0, 1, 2, 3, 4, 5] and set(table["status"]) == {"ok"}


def test_process_workers_receive_fused_groups_as_tasks(env, tmp_path):
    """With --fuse on, a worker trains a whole group of same-shaped cells: the rows equal a local fused run's."""
    args = ["--models", "linear,mlp", "--seeds", "0,1,2", "--limit", "1500", "--epochs", "1", "--device", "cpu", "-q",
            "--fuse", "on"]
    local, proc = tmp_path / "local", tmp_path / "process"
    assert run_bench("run", *args, "--out", local, env=env).returncode == 0
    done = run_bench("run", *args, "--executor", "process", "--jobs", "2", "--out", proc, env=env)
    assert done.returncode == 0, done.stderr
    a, b = rows(local), rows(proc)
    assert a.keys() == b.keys() and len(a) == 6
    for cell_id, row in a.items():
        assert int(row["fused_size"]) == int(b[cell_id]["fused_size"]) == 3
        for key in ("test_acc", "test_loss", "val_loss"):
            assert row[key] == b[cell_id][key], (cell_id, key)
