"""Resume after a crash (SIGKILL) or Ctrl-C (SIGINT), --dry-run and --force, on real `bench run` processes."""

from __future__ import annotations

import csv
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from bench.cli import main
from tests.conftest import REPO, bench_env

#: 2 seeds x the notebook's 3 cells = 6 cells, each a few seconds on a small CPU.
GRID = ["run", "--grid", "seed", "--seeds", "0,1", "--epochs", "2", "--limit", "2000", "--param", "mnist.val_size=1000",
        "--device", "cpu", "-q"]


def start(args: list[str], ignoring: tuple[signal.Signals, ...] = ()) -> subprocess.Popen:
    """``python -m bench ARGS`` started with the signals ``ignoring`` ignored, as a background job of a
    non-interactive shell starts with SIGINT ignored."""

    def ignore():
        for signum in ignoring:
            signal.signal(signum, signal.SIG_IGN)

    return subprocess.Popen([sys.executable, "-m", "bench", *args], cwd=REPO, env=bench_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=ignore)


def wait_for_records(out: Path, proc: subprocess.Popen, count: int = 1, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while len(list((out / "cells").glob("*.json"))) < count:
        if proc.poll() is not None:
            pytest.fail(f"bench exited early ({proc.returncode}): {proc.stderr.read()}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("no cell finished in time")
        time.sleep(0.02)


def snapshot(out: Path) -> dict[str, tuple[bytes, int]]:
    """Bytes and modification time of every cell record and weights file."""
    files = [*(out / "cells").glob("*.json"), *(out / "weights").glob("*.safetensors")]
    return {str(p.relative_to(out)): (p.read_bytes(), p.stat().st_mtime_ns) for p in files}


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def assert_complete(out: Path, cells: int, epochs: int = 2) -> list[dict[str, str]]:
    rows = read_rows(out / "results.csv")
    assert len(rows) == cells
    assert len({r["cell_id"] for r in rows}) == cells  # exactly one row per cell
    assert {r["status"] for r in rows} == {"ok"}
    assert sorted((r["model"], r["loss"], r["seed"]) for r in rows) == sorted(
        (m, loss, s) for m, loss in [("linear", "mse"), ("linear", "crossentropy"), ("mlp", "crossentropy")]
        for s in ("0", "1"))
    assert len(read_rows(out / "history.csv")) == cells * epochs
    weights = list((out / "weights").glob("*.safetensors"))
    assert len([w for w in weights if not w.name.endswith(".templates.safetensors")]) == cells
    assert len(weights) == 2 * cells  # each cell also has its class templates
    return rows


def test_sigkill_mid_grid_then_rerun_completes_without_retraining(tmp_path):
    out = tmp_path / "run"
    proc = start([*GRID, "--out", str(out)])
    wait_for_records(out, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    proc.stdout.close(), proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    before = snapshot(out)
    finished = len(list((out / "cells").glob("*.json")))
    assert 1 <= finished < 6, "the kill must land mid-grid"

    rerun = subprocess.run([sys.executable, "-m", "bench", *GRID, "--out", str(out)], cwd=REPO, env=bench_env(),
                           capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    assert f"resume: {finished} of 6 cell(s) already finished in {out} are skipped" in rerun.stderr
    assert_complete(out, 6)
    after = snapshot(out)
    for name, (data, mtime) in before.items():
        if name.startswith("cells/"):
            assert after[name] == (data, mtime), f"{name} was rewritten: a finished cell was retrained"
    weights_before = {k for k in before if k.startswith("weights/")}
    # weights of a cell killed between its weights and its record may be redone; those of recorded cells not
    recorded = {f"weights/{Path(k).stem}.safetensors" for k in before if k.startswith("cells/")}
    assert recorded <= weights_before
    for name in recorded:
        assert after[name] == before[name]
    assert "linear+mse" in rerun.stdout and "results:" in rerun.stdout


def test_a_ctrl_c_between_a_record_and_its_table_rebuild_still_leaves_the_tables_whole(tmp_path, monkeypatch):
    """The unlucky moment of a Ctrl-C: the second cell's record is on disk, the rebuild after it never ran.
    The interrupt handler rebuilds the tables, so results.csv holds both cells (it held one before)."""
    from bench.store import RunStore

    calls = {"n": 0}
    rebuild = RunStore.rebuild_tables

    def interrupted_once(self):
        calls["n"] += 1
        if calls["n"] == 2:  # the rebuild that follows the second record
            raise KeyboardInterrupt
        rebuild(self)

    monkeypatch.setattr(RunStore, "rebuild_tables", interrupted_once)
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["run", "--models", "linear", "--losses", "mse,crossentropy", "--limit", "500",
                                       "--epochs", "1", "--device", "cpu", "--fuse", "off", "-q", "--out", str(out)])
    assert result.exit_code == 130, result.output
    records = list((out / "cells").glob("*.json"))
    assert len(records) == 2
    assert sorted(r["cell_id"] for r in read_rows(out / "results.csv")) == sorted(p.stem for p in records)
    assert len(read_rows(out / "history.csv")) == 2


def test_ctrl_c_saves_finished_cells_prints_the_resume_command_and_exits_130(tmp_path):
    out = tmp_path / "run"
    proc = start([*GRID, "--out", str(out)])
    wait_for_records(out, proc)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    saved = len(list((out / "cells").glob("*.json")))
    assert 1 <= saved < 6
    assert f"interrupted: {saved} cell record(s) are saved in {out}" in stderr
    assert len(read_rows(out / "results.csv")) == saved  # the table was rebuilt from what finished
    before = snapshot(out)

    lines = stderr.splitlines()
    command = lines[lines.index(next(line for line in lines if line.endswith("Resume with:"))) + 1].strip()
    words = shlex.split(command)
    assert words[:2] == ["bench", "run"] and words[-2:] == ["--out", str(out)]
    assert "--seeds 0,1" in command and "--limit 2000" in command
    assert "--param mnist.val_size=1000" in command and "--force" not in command
    rerun = subprocess.run([sys.executable, "-m", "bench", *words[1:]], cwd=REPO, env=bench_env(),
                           capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    assert f"resume: {saved} of 6 cell(s) already finished" in rerun.stderr
    assert_complete(out, 6)
    after = snapshot(out)
    assert all(after[k] == v for k, v in before.items() if k.startswith("cells/"))


@pytest.mark.parametrize("signum, ignoring, status", [
    (signal.SIGINT, (signal.SIGINT,), 130),  # a background job of a script: Python itself would ignore it
    (signal.SIGTERM, (), 143),  # kill, timeout, a container's or scheduler's stop
    (signal.SIGTERM, (signal.SIGINT, signal.SIGTERM), 143),
], ids=["sigint-inherited-ignored", "sigterm", "sigterm-inherited-ignored"])
def test_a_run_stops_cleanly_on_sigint_and_sigterm_whatever_it_inherited(tmp_path, signum, ignoring, status):
    out = tmp_path / "run"
    proc = start([*GRID, "--fuse", "off", "--out", str(out)], ignoring)
    wait_for_records(out, proc)
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == status, stderr
    assert "Traceback" not in stderr
    saved = len(list((out / "cells").glob("*.json")))
    assert 1 <= saved < 6, "the run went on after the signal"
    assert f"interrupted: {saved} cell record(s) are saved in {out}. Resume with:" in stderr
    assert len(read_rows(out / "results.csv")) == saved


def test_process_workers_go_with_a_sigterm_of_their_driver(tmp_path):
    out = tmp_path / "run"
    proc = start([*GRID, "--fuse", "off", "--executor", "process", "--jobs", "2", "--out", str(out)])
    wait_for_records(out, proc)
    workers = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr
    assert "Traceback" not in stderr and "Resume with:" in stderr
    time.sleep(0.5)
    alive = [pid for pid in workers if Path(f"/proc/{pid}").exists()
             and Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"]
    assert not alive, f"worker processes {alive} outlived their driver"


def test_dry_run_lists_done_and_pending_cells_and_force_reruns(tmp_path):
    out = tmp_path / "run"
    base = ["run", "--models", "linear", "--limit", "500", "--epochs", "1", "--device", "cpu", "-q", "--out", str(out)]
    runner = CliRunner()
    first = runner.invoke(main, [*base, "--seeds", "0,1"])
    assert first.exit_code == 0, first.output
    before = snapshot(out)
    assert len([k for k in before if k.startswith("cells/")]) == 2

    dry = runner.invoke(main, [*base, "--seeds", "0,1,2", "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert f"dry run: 3 cell(s) for {out}: 1 to run, 2 done" in dry.stdout
    states = [line.split()[0] for line in dry.stdout.splitlines()[1:]]
    assert states == ["done", "done", "run"]
    assert "seed=2" in dry.stdout.splitlines()[3]
    assert snapshot(out) == before  # a dry run trains and writes nothing

    fresh = runner.invoke(main, ["run", "--models", "linear", "--seeds", "0", "--out", str(tmp_path / "new"),
                                 "--dry-run", "--device", "cpu"])
    assert fresh.exit_code == 0 and "1 to run, 0 done" in fresh.stdout
    assert not (tmp_path / "new").exists()

    again = runner.invoke(main, [*base, "--seeds", "0,1"])
    assert again.exit_code == 0
    assert "resume: 2 of 2 cell(s) already finished" in again.stderr
    assert snapshot(out) == before  # nothing retrained

    forced = runner.invoke(main, [*base, "--seeds", "0,1", "--force"])
    assert forced.exit_code == 0 and "resume:" not in forced.stderr
    after = snapshot(out)
    assert after.keys() == before.keys()
    assert all(after[k][1] != before[k][1] for k in before)  # every record and weights file rewritten
    assert len(read_rows(out / "results.csv")) == 2


def test_repeat_n_runs_seeds_0_to_n_minus_1_and_prints_statistics(tmp_path):
    result = CliRunner().invoke(main, ["run", "--models", "linear,mlp", "--repeat", "3", "--limit", "500",
                                       "--epochs", "1", "--device", "cpu", "-q", "--out", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    rows = read_rows(tmp_path / "r" / "results.csv")
    assert sorted((r["model"], r["seed"]) for r in rows) == [("linear", s) for s in "012"] + [("mlp", s) for s in "012"]
    assert "mean ± 95% CI" in result.stdout
    lines = result.stdout.splitlines()
    stats_line = next(line for line in lines if line.startswith("linear+crossentropy ") and "±" in line)
    assert stats_line.split()[2] == "3"  # three seeds
    assert "paired comparisons" in result.stdout
    pair = next(line for line in lines
                if line.startswith("mnist ") and "mlp+crossentropy" in line and "linear+crossentropy" in line)
    assert re.search(r"mnist, limit=500, cpu\s+recipe\s+\S+\s+\S+\s+3\s", pair)  # same recipe, 3 shared seeds


def test_leftovers_of_a_crash_between_writes_are_ignored_and_the_cell_redone(tmp_path):
    """What kill -9 can leave: temporary files half written, weights saved but the record not yet."""
    out = tmp_path / "run"
    args = ["run", "--models", "linear", "--seeds", "0,1,2", "--limit", "500", "--epochs", "1", "--device", "cpu",
            "-q", "--out", str(out)]
    runner = CliRunner()
    assert runner.invoke(main, args).exit_code == 0
    rows = read_rows(out / "results.csv")
    victim = rows[1]["cell_id"]
    (out / "cells" / f"{victim}.json").unlink()  # died after writing the weights, before the record
    (out / "cells" / f".{victim}.json.k3j2h1").write_text('{"row": {"cell_id": "')  # a torn temporary record
    (out / ".results.csv.x9y8z7").write_text("cell_id,model\nabc")  # a torn temporary table
    (out / "results.csv").write_text("cell_id\n")  # a table behind the records
    before = snapshot(out)

    dry = runner.invoke(main, [*args, "--dry-run"])
    assert [line.split()[0] for line in dry.stdout.splitlines()[1:]] == ["done", "run", "done"]
    again = runner.invoke(main, args)
    assert again.exit_code == 0, again.output
    assert "resume: 2 of 3 cell(s) already finished" in again.stderr
    after_rows = read_rows(out / "results.csv")
    assert [r["cell_id"] for r in after_rows] == [r["cell_id"] for r in rows]  # one row per cell, grid order
    assert after_rows[1]["test_acc"] == rows[1]["test_acc"]  # redone, deterministically
    after = snapshot(out)
    assert after[f"weights/{victim}.safetensors"][1] != before[f"weights/{victim}.safetensors"][1]
    for row in (rows[0], rows[2]):
        assert after[f"cells/{row['cell_id']}.json"] == before[f"cells/{row['cell_id']}.json"]
