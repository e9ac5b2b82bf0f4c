"""Issue 12, "a run directory nobody can corrupt": every break the issue lists, as a real CLI run.

Each test reproduces one item of the issue's list (``test_<item>_...``, numbered as there; the cases
of one item are parametrised) with real `bench run` / `bench report` invocations (in-process through
click, or as subprocesses where a signal, a lock held by another process, a crash in native code or a
full filesystem is the point) and asserts what is now true. Each failed on the code before the fix.
"""

from __future__ import annotations

import csv
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from bench.cli import main
from bench.store import LOCK_FILE
from tests.conftest import REPO, bench_env

QUICK = ["--limit", "2000", "--epochs", "1", "--device", "cpu", "-q"]
#: The run every damaging case starts from: three linear cells (seeds 0..2).
GRID = ["run", "--models", "linear", "--seeds", "0,1,2", *QUICK]


def bench(*args, **kwargs):
    """The real CLI in-process; returns click's Result (exit_code, stdout, stderr)."""
    return CliRunner().invoke(main, [str(a) for a in args], **kwargs)


def error_line(result) -> str:
    """Exit status 2 and exactly one line on stderr, ``Error: ...``, no traceback; returns the line."""
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    return lines[0]


def process_error_line(proc) -> str:
    """The same for a finished subprocess (``subprocess.CompletedProcess`` or ``Popen`` output pair)."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), proc.stderr
    return lines[0]


def popen(args, env=None, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "bench", *map(str, args)], cwd=REPO,
                            env={**bench_env(), **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, **kwargs)


def plugin_env(folder: Path) -> dict[str, str]:
    """A subprocess environment that can import test plugin modules written into ``folder``."""
    return {"PYTHONPATH": os.pathsep.join([str(folder), str(REPO), os.environ.get("PYTHONPATH", "")])}


def rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def snapshot(root: Path) -> dict[str, tuple[bytes, int]]:
    """Bytes and modification time of every file under ``root``; the run's lock file by its bytes alone (taking
    the lock writes nothing, but filelock before 4.3 opened it with O_TRUNC, which moves its mtime)."""
    return {str(p.relative_to(root)): (p.read_bytes(), 0 if p.name == LOCK_FILE else p.stat().st_mtime_ns)
            for p in root.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("finished") / "run"
    result = bench(*GRID, "--out", out)
    assert result.exit_code == 0, result.output
    assert len(rows(out / "results.csv")) == 3
    return out


@pytest.fixture
def run_copy(finished_run, tmp_path) -> Path:
    """A private copy of the finished run, for a case to damage."""
    copy = tmp_path / "runs" / "run"
    shutil.copytree(finished_run, copy)
    return copy


def record_paths(run: Path) -> list[Path]:
    return sorted((run / "cells").glob("*.json"))


def report_cells(run: Path, *extra) -> list[dict[str, str]]:
    """``bench report RUN`` must succeed; its per-cell table."""
    result = bench("report", run, *extra)
    assert result.exit_code == 0, result.output
    return rows(run / "report" / "cells.csv")


# -- 1. --out and report --out overwrite a user's own files ----------------------------------------------

def test_1_out_with_a_users_files(tmp_path, finished_run):
    folder = tmp_path / "x"
    folder.mkdir()
    (folder / "results.csv").write_text("my,own\n1,2\n")
    line = error_line(bench("run", "--models", "linear", *QUICK, "--out", folder))
    assert f"{folder} is not empty and is not a gridbench run directory (it holds results.csv)" in line
    assert (folder / "results.csv").read_text() == "my,own\n1,2\n"
    assert sorted(p.name for p in folder.iterdir()) == ["results.csv"]  # nothing written, not even a lock


def test_1_out_dot(tmp_path, finished_run, monkeypatch):
    project = tmp_path / "project"
    project.mkdir()
    (project / "notes.md").write_text("mine\n")
    (project / "env.json").write_text('{"my": "config"}\n')  # JSON, but not gridbench's
    monkeypatch.chdir(project)
    line = error_line(bench("run", "--models", "linear", *QUICK, "--out", "."))
    assert "is not empty and is not a gridbench run directory (it holds env.json, notes.md)" in line
    assert snapshot(project).keys() == {"notes.md", "env.json"}
    assert (project / "env.json").read_text() == '{"my": "config"}\n'


def test_1_report_out_with_a_users_files(tmp_path, finished_run):
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text("<h1>my site</h1>\n")
    (site / "summary.md").write_text("my summary\n")
    line = error_line(bench("report", finished_run, "--out", site))
    assert f"{site} is not empty and is not a gridbench report (it holds index.html, summary.md)" in line
    assert (site / "index.html").read_text() == "<h1>my site</h1>\n" and len(list(site.iterdir())) == 2
    # control: a new folder, and then the same folder again (an earlier report), are fine
    assert bench("report", finished_run, "--out", tmp_path / "rep").exit_code == 0
    assert bench("report", finished_run, "--out", tmp_path / "rep").exit_code == 0


# -- 2. a damaged cell record is skipped in silence ------------------------------------------------------

def test_2_truncated_record(run_copy):
    victim = record_paths(run_copy)[1]
    victim.write_bytes(victim.read_bytes()[:200])
    table = (run_copy / "results.csv").read_bytes()
    line = error_line(bench(*GRID, "--out", run_copy))
    assert line.startswith(f"Error: {victim} is damaged (not valid JSON: ")
    assert "move it out of" in line and "trains that cell again" in line
    assert (run_copy / "results.csv").read_bytes() == table  # the row did not vanish
    line = error_line(bench("report", run_copy))
    assert line.startswith(f"Error: {victim} is damaged (not valid JSON: ")
    # what the message says to do works: move it away, rerun, that cell is trained again
    victim.rename(run_copy / "damaged.json")
    again = bench(*GRID, "--out", run_copy)
    assert again.exit_code == 0 and "resume: 2 of 3 cell(s) already finished" in again.stderr
    assert len(rows(run_copy / "results.csv")) == 3


# -- 3. bench report trusts results.csv over the records -------------------------------------------------

def test_3_cut_results_csv(run_copy):
    lines = (run_copy / "results.csv").read_text().splitlines(keepends=True)
    (run_copy / "results.csv").write_text("".join(lines[:2]))  # the header and one of three rows
    (run_copy / "history.csv").write_text("".join((run_copy / "history.csv").read_text().splitlines(True)[:2]))
    cells = report_cells(run_copy)
    assert sorted(c["seed"] for c in cells) == ["0", "1", "2"]
    summary = rows(run_copy / "report" / "summary.csv")
    assert len(summary) == 1 and summary[0]["seeds"] == "3/3"


# -- 4. corrupt or foreign files give tracebacks -----------------------------------------------------------

def test_4_record_without_row(run_copy):
    victim = record_paths(run_copy)[0]
    victim.write_text('{"index": 0, "history": []}')
    line = error_line(bench("report", run_copy))
    assert line.startswith(f"Error: {victim} is damaged (no 'row' object: not a cell record)")
    assert error_line(bench(*GRID, "--out", run_copy)).startswith(f"Error: {victim} is damaged")


def test_4_garbage_env_json(run_copy):
    (run_copy / "env.json").write_bytes(b"\x00\xff garbage {")
    line = error_line(bench("report", run_copy))
    assert line.startswith(f"Error: {run_copy / 'env.json'} is damaged (not valid JSON")
    before = snapshot(run_copy)
    line = error_line(bench(*GRID, "--out", run_copy))
    assert line.startswith(f"Error: {run_copy / 'env.json'} is damaged (not valid JSON")
    assert snapshot(run_copy) == before


@pytest.mark.parametrize("content", [b"", b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe", b'a,"b\n1,2,3,4\n"x'],
                         ids=["empty", "binary", "malformed"])
def test_4_damaged_tables(run_copy, content):
    """results.csv and history.csv are derived: damaged ones change nothing, and a run rewrites them."""
    (run_copy / "results.csv").write_bytes(content)
    (run_copy / "history.csv").write_bytes(content)
    assert len(report_cells(run_copy)) == 3
    again = bench(*GRID, "--out", run_copy)
    assert again.exit_code == 0, again.output
    assert len(rows(run_copy / "results.csv")) == 3 and len(rows(run_copy / "history.csv")) == 3


def test_4_foreign_results_csv(tmp_path):
    folder = tmp_path / "not-a-run"
    folder.mkdir()
    (folder / "results.csv").write_bytes(b"\x00\x01\x02\xff\xfe")
    line = error_line(bench("report", folder))
    assert line.startswith(f"Error: {folder / 'results.csv'} is not a readable table")


def test_4_report_into_the_cells_folder(run_copy):
    before = snapshot(run_copy)
    line = error_line(bench("report", run_copy, "--out", run_copy / "cells"))
    assert f"would be inside the run directory {run_copy} itself" in line
    assert snapshot(run_copy) == before
    again = bench(*GRID, "--out", run_copy)  # still a usable run directory
    assert again.exit_code == 0 and "resume: 3 of 3 cell(s) already finished" in again.stderr


# -- 5. sys.exit() in plugin code ends the grid ------------------------------------------------------------

EXITING_PLUGIN = '''
import sys
from torch import nn
from bench import hookimpl

class Exiting(nn.Module):
    def __init__(self, shape, classes):
        super().__init__()
        self.fc = nn.Linear(1, classes)
    def forward(self, x):
        sys.exit(3)

@hookimpl
def bench_register_models(register):
    register("exiting", Exiting)
'''


def test_5_sys_exit_in_plugin_code(tmp_path, monkeypatch):
    (tmp_path / "hostile_exiting.py").write_text(EXITING_PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "run"
    result = bench("run", "-p", "hostile_exiting", "--models", "exiting,linear", *QUICK, "--out", out)
    assert result.exit_code == 1, result.output
    table = {r["model"]: r for r in rows(out / "results.csv")}
    assert table["exiting"]["status"] == "failed"
    assert table["exiting"]["error"] == "SystemExit: the cell's code called sys.exit(3)"
    assert table["linear"]["status"] == "ok" and float(table["linear"]["test_acc"]) > 0.5  # the grid went on
    assert "exiting+crossentropy on mnist seed=0: SystemExit" in result.stderr


# -- 6. the resume command after Ctrl-C drops a -p given before `run` ---------------------------------------

INTERRUPTING_PLUGIN = '''
import os
import signal
from torch import nn
from bench import hookimpl

made = 0

def make(shape, classes):
    """A linear model; the cell after BENCH_TEST_INTERRUPT_AFTER cells gets a real SIGINT (Ctrl-C)."""
    global made
    made += 1
    if made > int(os.environ.get("BENCH_TEST_INTERRUPT_AFTER", "1000000")):
        os.kill(os.getpid(), signal.SIGINT)
    return nn.Sequential(nn.Flatten(), nn.Linear(784, classes))

@hookimpl
def bench_register_models(register):
    register("interrupted", make)
'''


def test_6_resume_command_keeps_the_root_plugin_option(tmp_path):
    (tmp_path / "hostile_interrupting.py").write_text(INTERRUPTING_PLUGIN)
    out = tmp_path / "run"
    env = plugin_env(tmp_path)
    first = subprocess.run([sys.executable, "-m", "bench", "-p", "hostile_interrupting", "run", "--models",
                            "interrupted", "--seeds", "0,1,2", "--fuse", "off", *QUICK, "--out", str(out)], cwd=REPO,
                           # 3: the model is built once on the meta device when the grid is checked, then twice per
                           # cell (to train, and to hold the final weights for the class templates); one cell at a time
                           env={**bench_env(), **env, "BENCH_TEST_INTERRUPT_AFTER": "3"}, capture_output=True,
                           text=True, timeout=300)
    assert first.returncode == 130, first.stderr
    lines = first.stderr.splitlines()
    command = lines[lines.index(next(line for line in lines if line.endswith("Resume with:"))) + 1].strip()
    words = shlex.split(command)
    assert words[:4] == ["bench", "-p", "hostile_interrupting", "run"], command
    again = subprocess.run([sys.executable, "-m", "bench", *words[1:]], cwd=REPO, env={**bench_env(), **env},
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert "resume: 1 of 3 cell(s) already finished" in again.stderr
    assert [r["status"] for r in rows(out / "results.csv")] == ["ok"] * 3


# -- 7. non-finite parameters and seeds too large for torch -------------------------------------------------

NON_FINITE = {
    "hinge.margin=nan": (["--losses", "hinge", "--param", "hinge.margin=nan"],
                         "--param hinge.margin=nan: 'nan' is not a finite number"),
    "hinge.margin=inf": (["--losses", "hinge", "--param", "hinge.margin=inf"],
                         "--param hinge.margin=inf: 'inf' is not a finite number"),
    "label_smoothing=nan": (["--param", "crossentropy.label_smoothing=nan"],
                            "--param crossentropy.label_smoothing=nan: 'nan' is not a finite number"),
    "lr inf": (["--lr", "inf"], "inf"),
    "lr nan": (["--lr", "nan"], "nan"),
    "seed 2**64": (["--seeds", "18446744073709551616"],
                   "--seeds must be integers from 0 to 2**64-1, got '18446744073709551616'"),
}


@pytest.mark.parametrize("args, expected", NON_FINITE.values(), ids=NON_FINITE.keys())
def test_7_non_finite_values_are_rejected_up_front(tmp_path, args, expected):
    out = tmp_path / "run"
    line = error_line(bench("run", "--models", "linear", *QUICK, *args, "--out", out))
    assert expected in line and ("lr" in line if args[0] == "--lr" else True)
    assert not out.exists()  # nothing trained, nothing written


def test_7_the_largest_seed_torch_accepts_trains(tmp_path):
    out = tmp_path / "run"
    result = bench("run", "--models", "linear", *QUICK, "--seeds", "18446744073709551615", "--out", out)
    assert result.exit_code == 0, result.output
    row = rows(out / "results.csv")[0]
    assert row["seed"] == "18446744073709551615" and row["status"] == "ok" and float(row["test_acc"]) > 0.5


# -- 8. --threads 100000 segfaults ---------------------------------------------------------------------------

def test_8_huge_thread_count_is_capped(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "bench", "run", "--models", "linear", *QUICK, "--threads", "100000",
                           "--out", str(out)], cwd=REPO, env=bench_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert (f"note: threads: 100000 CPU threads asked for, but this process may use {cores} core(s): "
            f"using {cores}") in proc.stderr
    assert json.loads((out / "env.json").read_text())["torch_threads"] == cores


# -- 9. a full disk gives a traceback --------------------------------------------------------------------------

def _namespace_prefix(mountpoint: Path) -> list[str]:
    """``unshare`` into a private mount namespace where a tiny tmpfs can be mounted (root, or a user
    namespace where the kernel allows one); skips the test where neither works."""
    if not sys.platform.startswith("linux") or not shutil.which("unshare"):
        pytest.skip("needs Linux's unshare(1) to mount a small tmpfs")
    prefixes = ([["unshare", "--mount"]] if os.geteuid() == 0 else []) + \
        [["unshare", "--user", "--map-root-user", "--mount"]]
    for prefix in prefixes:
        probe = subprocess.run([*prefix, "sh", "-c", 'mount -t tmpfs -o size=64k tmpfs "$1"', "sh", str(mountpoint)],
                               capture_output=True, text=True)
        if probe.returncode == 0:
            return prefix
    pytest.skip(f"cannot mount a tmpfs in a private mount namespace here: {probe.stderr.strip()}")


def test_9_full_disk_is_one_line(tmp_path):
    mountpoint = tmp_path / "small"
    mountpoint.mkdir()
    prefix = _namespace_prefix(mountpoint)
    # 96 KiB: room for env.json and the first cell's weights (31 KiB), not for its templates and the rest
    script = ('mount -t tmpfs -o size=96k tmpfs "$1" || exit 99; "$2" -m bench run --models linear --seeds 0,1 '
              '--limit 2000 --epochs 1 --device cpu -q --out "$1/run"; rc=$?; '
              'echo "files:"; cd "$1/run" && find . -type f | sort; exit $rc')
    proc = subprocess.run([*prefix, "sh", "-c", script, "sh", str(mountpoint), sys.executable], cwd=REPO,
                          env=bench_env(), capture_output=True, text=True, timeout=300)
    line = process_error_line(proc)
    assert line.startswith(f"Error: cannot write {mountpoint}/run/"), line
    assert "no space left on the device" in line and "free some space and run the same command again" in line
    files = proc.stdout.split("files:\n", 1)[1].split()
    assert not [f for f in files if f.endswith(".tmp")], files  # no temporary file left behind
    assert "./.gridbench.lock.json" not in files  # the lock was released


# -- 10. two bench run on one --out ---------------------------------------------------------------------------

BARRIER_PLUGIN = '''
"""Imported by `bench run -p hostile_barrier`: holds each process until all have started, so that they
reach the run directory at the same moment."""
import os
import time
from pathlib import Path

folder = Path(os.environ["BENCH_TEST_BARRIER"])
(folder / str(os.getpid())).touch()
deadline = time.monotonic() + 120
while len(list(folder.iterdir())) < 2 and time.monotonic() < deadline:
    time.sleep(0.002)
'''

TOGETHER = ["run", "-p", "hostile_barrier", "--models", "linear,mlp", "--seeds", "0,1", *QUICK]


def _start_together(tmp_path: Path, out: Path, *extra) -> list[subprocess.Popen]:
    (tmp_path / "hostile_barrier.py").write_text(BARRIER_PLUGIN)
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    env = {**plugin_env(tmp_path), "BENCH_TEST_BARRIER": str(barrier)}
    return [popen([*TOGETHER, *extra, "--out", out], env=env) for _ in range(2)]


def _finish(procs: list[subprocess.Popen]) -> list[subprocess.CompletedProcess]:
    done = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=600)
        done.append(subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr))
    return done


def _same_as_one_run(out: Path, reference: Path) -> None:
    assert sorted(snapshot(out)) == sorted(snapshot(reference))
    for name in snapshot(reference):
        if name.startswith("weights/"):
            assert (out / name).read_bytes() == (reference / name).read_bytes(), name  # trained once, the same way
    keep = ["cell_id", "model", "seed", "status", "test_acc", "test_loss", "val_acc", "n_params", "weights"]
    assert [{k: r[k] for k in keep} for r in rows(out / "results.csv")] == \
        [{k: r[k] for k in keep} for r in rows(reference / "results.csv")]


def test_10_two_runs_on_one_out_one_trains_the_other_exits_2(tmp_path):
    out = tmp_path / "run"
    procs = _start_together(tmp_path, out)
    results = _finish(procs)
    winners = [r for r, p in zip(results, procs) if r.returncode == 0]
    losers = [(r, p) for r, p in zip(results, procs) if r.returncode != 0]
    assert len(winners) == 1 and len(losers) == 1, [(r.returncode, r.stderr[-500:]) for r in results]
    winner = next(p for p in procs if p.returncode == 0)
    line = process_error_line(losers[0][0])
    assert line.startswith(f"Error: the run directory {out} is being written by another bench run "
                           f"(PID {winner.pid} on host "), line
    assert line.endswith("one run at a time can write it: wait for it to finish, or add --wait to wait for it")
    assert len(rows(out / "results.csv")) == 4
    env = json.loads((out / "env.json").read_text())
    assert "previous" not in env  # one run wrote it: the other never touched the directory
    # the directory equals a single run's
    reference = tmp_path / "reference"
    alone = [a for a in TOGETHER if a not in ("-p", "hostile_barrier")]
    single = subprocess.run([sys.executable, "-m", "bench", *alone, "--out", str(reference)], cwd=REPO,
                            env=bench_env(), capture_output=True, text=True, timeout=600)
    assert single.returncode == 0, single.stderr
    _same_as_one_run(out, reference)


def test_10_wait_waits_for_the_other_run(tmp_path):
    out = tmp_path / "run"
    results = _finish(_start_together(tmp_path, out, "--wait"))
    assert [r.returncode for r in results] == [0, 0], [r.stderr[-800:] for r in results]
    waited = [r for r in results if f"waiting for the bench run that is writing {out} (PID " in r.stderr]
    assert len(waited) == 1, [r.stderr for r in results]
    assert "resume: 4 of 4 cell(s) already finished" in waited[0].stderr  # it trained nothing again
    assert len(rows(out / "results.csv")) == 4


def test_10_a_killed_runs_lock_never_blocks_and_its_temporary_files_go(tmp_path):
    """kill -9 leaves the lock file, a holder file naming a dead process and torn temporary files."""
    out = tmp_path / "run"
    args = ["run", "--models", "linear", "--seeds", "0,1,2,3,4,5", *QUICK, "--out", out]
    proc = popen(args)
    deadline = time.monotonic() + 240
    while not list((out / "cells").glob("*.json")):
        assert proc.poll() is None and time.monotonic() < deadline, "no cell finished in time"
        time.sleep(0.01)
    proc.kill()
    proc.communicate(timeout=60)
    holder = json.loads((out / ".gridbench.lock.json").read_text())
    assert holder["pid"] == proc.pid  # the dead holder is still named in the directory
    cell_id = record_paths(out)[0].stem
    leftovers = [out / ".results.csv.x9y8z7ab", out / "cells" / f".{cell_id}.json.k3j2h1q0.tmp",
                 out / "weights" / f".{cell_id}.safetensors.a1b2c3d4.tmp"]
    for path in leftovers:
        path.write_bytes(b"torn")
    result = bench(*args)
    assert result.exit_code == 0, result.output
    assert "resume:" in result.stderr
    assert not [p for p in leftovers if p.exists()]
    assert not (out / ".gridbench.lock.json").exists()
    assert len(rows(out / "results.csv")) == 6


# -- 11. smaller ones -------------------------------------------------------------------------------------------

def test_11_a_report_killed_midway_is_still_a_report(run_copy):
    runs = run_copy.parent
    other = runs / "other"
    shutil.copytree(run_copy, other)
    report = runs / "report-run-and-1-more"
    proc = popen(["report", run_copy, other])
    deadline = time.monotonic() + 240
    while not (report / "summary.csv").exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.005)
    proc.kill()
    proc.communicate(timeout=60)
    assert not (report / "index.html").exists(), "the kill must land mid-way"
    result = bench("report", *sorted(runs.iterdir()))  # bench report runs/*
    assert result.exit_code == 0, result.output
    assert f"note: {report} is a gridbench report, not a run directory: left out" in result.stderr


def _memory_cap():
    """For the child: at most 8 GiB of address space (the uncapped expansion took all the memory there is)."""
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (8 << 30, 8 << 30))


def test_11_huge_repeat_dry_run_is_refused_at_once(tmp_path):
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "bench", "run", "--models", "linear", "--repeat", "100000000",
                           "--dry-run", "--out", str(tmp_path / "run")], cwd=REPO, env=bench_env(),
                          capture_output=True, text=True, timeout=120,
                          preexec_fn=_memory_cap if sys.platform.startswith("linux") else None)
    line = process_error_line(proc)
    assert "--repeat must be between 1 and 10000, got 100000000" in line
    assert time.monotonic() - start < 60


def test_11_repeated_param_for_one_key(tmp_path):
    line = error_line(bench("run", "--models", "mlp", *QUICK, "--param", "mlp.hidden=64", "--param",
                            "mlp.hidden=128", "--out", tmp_path / "run"))
    assert "--param mlp.hidden=128: mlp.hidden is given twice; list every value once, e.g. mlp.hidden=V1,V2" in line


def test_11_corrupt_data_leaves_env_json_alone(run_copy, tmp_path):
    from tests.test_bad_input import _truncate, write_small_idx

    raw = tmp_path / "cache" / "FashionMNIST" / "raw"
    _truncate(raw, write_small_idx(raw))
    before = snapshot(run_copy)
    line = error_line(bench("run", "--datasets", "fashion-mnist", *QUICK, "--data-dir", tmp_path / "cache",
                            "--out", run_copy))
    assert "is truncated or corrupt" in line
    assert snapshot(run_copy) == before  # env.json included


def test_11_report_markdown_escapes_plugin_html(tmp_path):
    from tests.report_test_plugin import NAN_MODEL

    out = tmp_path / "run"
    result = bench("run", "-p", "tests.report_test_plugin", "--models", f"linear,{NAN_MODEL}", "--datasets", "blobs",
                   "--device", "cpu", "--epochs", "1", "--out", out, "-q", "--report")
    assert result.exit_code == 1, result.output
    for name in ("summary.md", "cells.md"):
        text = (out / "report" / name).read_text()
        assert "<i>" not in text and "<b>" not in text, name
        assert 'nan&lt;i&gt;"m"' in text, name
