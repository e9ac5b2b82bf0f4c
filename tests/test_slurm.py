"""The slurm executor against a real SLURM: the one-node cluster that ``.ci/slurm-up`` starts.

Outside CI these tests skip when ``sbatch`` is not on the PATH; in CI (``CI`` set) a missing cluster
fails them. Every run uses one torch thread per cell (``OMP_NUM_THREADS=1``, which the jobs inherit:
sbatch exports the environment), so that a job's cells match the in-process reference bit for bit.
"""

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.plugins.slurm import DEFAULTS
from tests.conftest import REPO, bench_env, run_bench
from tests.test_executors import assert_same_rows, rows

#: 12 cells: 2 models x 2 losses x 3 seeds; fused, 4 groups of 3 seeds.
GRID = ["--models", "linear,mlp", "--losses", "mse,crossentropy", "--seeds", "0,1,2", "--limit", "2000",
        "--epochs", "1", "--device", "cpu", "-q"]
ENV = {"OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def slurm():
    """The cluster is up (sinfo answers, a node is usable) and submitit is installed."""
    def missing(why):
        if os.environ.get("CI"):
            pytest.fail(f"CI runs the SLURM tests: {why} (run .ci/slurm-up as root)")
        pytest.skip(why)

    if shutil.which("sbatch") is None:
        missing("no SLURM here (sbatch is not on the PATH)")
    try:
        import submitit  # noqa: F401
    except ImportError:
        missing("submitit is not installed: pip install -e '.[slurm]'")
    result = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True)
    if result.returncode != 0 or not {"idle", "mixed", "allocated"} & set(result.stdout.split()):
        missing(f"the SLURM cluster is not up (sinfo: {(result.stdout + result.stderr).strip()!r})")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The 12-cell grid trained locally."""
    out = tmp_path_factory.mktemp("slurm-ref") / "local"
    result = run_bench("run", *GRID, "--out", out, env=ENV)
    assert result.returncode == 0, result.stderr
    return out


def slurm_run(out, *extra, wait=True, **kwargs):
    args = ["run", *GRID, "--executor", "slurm", *extra, "--out", out]
    if wait:
        return run_bench(*args, env=ENV, timeout=300, **kwargs)
    return subprocess.Popen([sys.executable, "-m", "bench", *map(str, args)], cwd=REPO,
                            env={**bench_env(), **ENV}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def submissions(out):
    path = out / "slurm" / "jobs.json"
    return json.loads(path.read_text())["submissions"] if path.exists() else []


def job_ids(out):
    return [job["job_id"] for sub in submissions(out) for job in sub["jobs"]]


def wait_for(what, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = what()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what.__doc__ or what}")


def job_info(job_id):
    """scontrol's fields of a job (SLURM keeps finished jobs for MinJobAge: 600 s on the CI cluster)."""
    text = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True).stdout
    return dict(word.split("=", 1) for word in text.split() if "=" in word)


def state(job_id):
    """squeue's state of a job (an array task that never started is its array's record)."""
    from bench.plugins.slurm import _states

    return _states([job_id])[job_id][0]


def last_job():
    """The newest job id SLURM knows (a job submitted later gets a larger one)."""
    ids = subprocess.run(["squeue", "-h", "-t", "all", "-o", "%A"], capture_output=True, text=True).stdout.split()
    return max(map(int, ids), default=0)


def trained(out):
    """cell id -> how many times a job trained it (each group's records, from every job's spool)."""
    counts = {}
    for part in (out / "slurm" / "parts").glob("*/*.pkl"):
        for record in pickle.loads(part.read_bytes()):
            counts[record.cell_id] = counts.get(record.cell_id, 0) + 1
    return counts


def test_a_grid_through_slurm_gives_the_local_rows_in_at_most_four_jobs(slurm, reference, tmp_path):
    out = tmp_path / "s"
    result = slurm_run(out)
    assert result.returncode == 0, result.stderr
    ids = job_ids(out)
    assert 1 < len(ids) <= 4 and len(submissions(out)) == 1
    assert f"slurm: submitted {len(ids)} job(s)" in result.stderr
    wait_for(lambda: all(state(i) == "COMPLETED" for i in ids), timeout=60)
    assert_same_rows(out, reference)  # test_acc and every other column, and the weights, bit for bit
    assert set(trained(out).values()) == {1} and len(trained(out)) == 12


def test_a_killed_driver_reattaches_and_no_cell_trains_twice(slurm, reference, tmp_path):
    out = tmp_path / "s"
    # one job at a time (the array's %1): the jobs after the first are still queued or running when the
    # rerun starts, however fast the machine (all four together finished within its start-up on a quiet one)
    driver = slurm_run(out, "-X", "max_jobs=1", wait=False)
    try:
        ids = wait_for(lambda: (lambda i: i if i and all(i) else None)(job_ids(out)))
        wait_for(lambda: any(state(i) == "RUNNING" for i in ids))
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.communicate()
    assert any(state(i) in ("RUNNING", "PENDING") for i in ids), "every job ended before the driver died"

    again = slurm_run(out, "-X", "max_jobs=1")
    assert again.returncode == 0, again.stderr
    assert "re-attached to" in again.stderr and "submitted" not in again.stderr
    assert job_ids(out) == ids  # nothing submitted again
    wait_for(lambda: all(state(i) == "COMPLETED" for i in ids), timeout=60)
    assert all(job_info(i)["Restarts"] == "0" for i in ids)  # none was requeued or restarted either
    counts = trained(out)
    assert len(counts) == 12 and set(counts.values()) == {1}, counts  # no cell trained twice
    assert_same_rows(out, reference)


def test_bench_cancel_cancels_what_a_run_submitted(slurm, tmp_path):
    out = tmp_path / "s"
    # the jobs may not start for a minute (sbatch --begin): each is still queued when bench cancel runs
    driver = slurm_run(out, "-X", "sbatch=--begin=now+60", wait=False)
    try:
        ids = wait_for(lambda: (lambda i: i if i and all(i) else None)(job_ids(out)))
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.communicate()
    result = run_bench("cancel", out)
    assert result.returncode == 0, result.stderr
    cancelled = result.stdout.split(": ", 1)[1].strip().split(", ")
    assert result.stdout.startswith(f"cancelled {len(cancelled)} job(s): ") and set(cancelled) <= set(ids)
    assert sorted(cancelled) == sorted(ids)  # every job was still queued
    wait_for(lambda: all(state(i) == "CANCELLED" for i in cancelled), timeout=60)
    assert run_bench("cancel", out).stdout == "cancelled 0 job(s)\n"  # nothing left to cancel


def test_a_cancelled_job_fails_its_cells_and_a_rerun_trains_only_those(slurm, reference, tmp_path):
    out = tmp_path / "s"
    driver = slurm_run(out, wait=False)
    ids = wait_for(lambda: (lambda i: i if i and all(i) else None)(job_ids(out)))
    victim = ids[-1]  # 2 CPUs: it waits behind the first two jobs (or has just started)
    subprocess.run(["scancel", victim], check=True)
    _, stderr = driver.communicate(timeout=300)
    assert driver.returncode == 1, stderr
    held = set(submissions(out)[0]["jobs"][-1]["groups"][0])
    table = rows(out)
    failed = {cid for cid, row in table.items() if row["status"] == "failed"}
    assert failed == held and len(table) == 12
    for cid in failed:
        assert table[cid]["error"].startswith(f"slurm job {victim} ") and "CANCELLED" in table[cid]["error"], \
            table[cid]["error"]
    assert "3 cell(s) failed" in stderr

    again = slurm_run(out)
    assert again.returncode == 0, again.stderr
    assert "resume: 9 of 12 cell(s) already finished" in again.stderr
    assert "slurm: submitted 1 job(s)" in again.stderr
    second = submissions(out)[1]["jobs"]
    assert [set(g) for job in second for g in job["groups"]] == [held]  # only the cancelled cells
    assert_same_rows(out, reference)


@pytest.mark.parametrize("preempt", [
    ["scontrol", "requeue"],  # the scheduler requeues it (as preemption with PreemptMode=REQUEUE does)
    ["scancel", "--signal=USR2"],  # the signal SLURM sends before the time limit: submitit checkpoints, requeues
])
def test_a_requeued_job_resumes_at_its_first_unfinished_cell(slurm, tmp_path, preempt):
    out = tmp_path / "s"
    # one job, one cell after another (no fusing), slow enough to be caught between two cells (a second or two
    # each: on 2000 images the last three could end before the requeue reached the job)
    extra = ["--fuse", "off", "--epochs", "3", "--limit", "8000", "--seeds", "0", "-X", "cells_per_job=4"]
    driver = slurm_run(out, *extra, wait=False)
    [job] = wait_for(lambda: (lambda i: i if i and all(i) else None)(job_ids(out)))
    parts = out / "slurm" / "parts"
    first = wait_for(lambda: next(iter(parts.glob("*/0.pkl")), None))
    assert not first.with_name("3.pkl").exists(), "the job finished before it could be requeued"
    written = first.stat().st_mtime_ns
    subprocess.run([*preempt, job], check=True)
    _, stderr = driver.communicate(timeout=300)
    assert driver.returncode == 0, stderr
    # its records are in; SLURM may still be closing it, or (had the job ended its cells before the requeue
    # reached it) holding its requeued copy for a minute before it starts, finds nothing to do and ends
    wait_for(lambda: state(job) == "COMPLETED", timeout=180)
    assert job_info(job)["Restarts"] == "1"
    assert first.stat().st_mtime_ns == written  # the first cell was not trained again
    log = (out / "slurm" / "jobs" / f"{job}_0_log.out").read_text()
    assert "gridbench: resuming at group" in log
    if "--signal=USR2" in preempt:
        err = (out / "slurm" / "jobs" / f"{job}_0_log.err").read_text()
        assert "Caught signal SIGUSR2" in err and "Calling checkpoint method" in log + err
        # the SystemExit that submitit raises in the cell it cut short is not that cell's failure: below, all ok
    assert log.count("gridbench: group 0 done") == 1
    counts = trained(out)
    assert len(counts) == 4 and set(counts.values()) == {1}, counts
    assert {row["status"] for row in rows(out).values()} == {"ok"}
    assert job_ids(out) == [job]


@pytest.mark.parametrize("option, message", [
    (["-X", "partition=nope"], "Error: --executor slurm: unknown partition 'nope'; the cluster has: debug"),
    (["-X", "time=-5"], "Error: --executor slurm: time (minutes) must be a whole number >= 1, got -5"),
    (["-X", "time=100000"], "Error: --executor slurm: time 100000 min is more than partition 'debug' allows"),
    (["-X", "colour=red"], "Error: --executor-option colour: executor 'slurm' has no option 'colour'"),
    (["-X", "sbatch=-x"], "Error: --executor slurm: sbatch arguments must be long options"),
])
def test_bad_slurm_options_exit_2_before_anything_is_submitted(slurm, tmp_path, option, message):
    before = last_job()
    result = slurm_run(tmp_path / "s", *option)
    assert result.returncode == 2
    assert result.stderr.startswith(message) and result.stderr.count("\n") == 1, result.stderr
    assert last_job() <= before and not submissions(tmp_path / "s")


def test_a_study_files_executor_block_gives_the_options_and_x_overrides_them(slurm, tmp_path):
    study = tmp_path / "study.yaml"
    study.write_text("models: [linear]\nexecutor: {name: slurm, partition: nope, time: 5, colour: red}\n")
    result = run_bench("run", "--study", study, "--device", "cpu", "--out", tmp_path / "a")
    assert result.stderr == f"Error: study {study}: executor: executor 'slurm' has no option 'colour' " \
                            f"(its options: {', '.join(DEFAULTS)})\n"
    study.write_text("models: [linear]\nexecutor: {name: slurm, partition: nope, time: 5}\n")
    result = run_bench("run", "--study", study, "--device", "cpu", "--out", tmp_path / "a")
    assert result.returncode == 2
    assert result.stderr.startswith("Error: --executor slurm: unknown partition 'nope'")
    result = run_bench("run", "--study", study, "-X", "partition=debug", "-X", "time=100000", "--device", "cpu",
                       "--out", tmp_path / "a")
    assert result.stderr.startswith("Error: --executor slurm: time 100000 min is more than partition 'debug'")
    result = run_bench("run", "--study", study, "--executor", "local", "--device", "cpu", "--dry-run",
                       "--out", tmp_path / "a")
    assert result.returncode == 0, result.stderr  # the block is for slurm: it does not apply to local


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None, reason="needs root and unshare")
def test_a_run_directory_the_jobs_cannot_see_is_refused_before_submitting(slurm, tmp_path):
    """The driver runs in a mount namespace of its own, its run directory on a tmpfs that slurmd (and so
    every job) cannot see: what happens when --out is on a login node's local disk."""
    private = tmp_path / "private"
    private.mkdir()
    before = last_job()
    command = " ".join([f"mount -t tmpfs none {private} &&", sys.executable, "-m", "bench", "run", *GRID,
                        "--executor", "slurm", "--out", str(private / "run")])
    result = subprocess.run(["unshare", "-m", "sh", "-c", command], capture_output=True, text=True,
                            env={**bench_env(), **ENV}, cwd=REPO, timeout=120)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(f"Error: --executor slurm: the jobs cannot read the run directory {private}/run")
    assert result.stderr.count("\n") == 1
    assert last_job() <= before


def test_without_submitit_the_slurm_executor_names_the_extra(tmp_path):
    fake = tmp_path / "nosubmitit" / "submitit"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('no submitit here')\n")
    result = run_bench("run", *GRID, "--executor", "slurm", "--out", tmp_path / "s",
                       env={"PYTHONPATH": os.pathsep.join([str(REPO), str(fake.parent)])})
    assert result.returncode == 2
    assert result.stderr == "Error: --executor slurm needs submitit, an optional extra: pip install -e '.[slurm]'\n"
    assert not (Path(tmp_path) / "s").exists()
