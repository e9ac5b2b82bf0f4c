"""Lifecycle hooks: a ``-p`` plugin sees run start, each cell's start, epochs and end, and run end, in that
order and with the run directory's own numbers, for the local executor and for ``process --jobs 2``; a hook
that raises is reported once by plugin name and the run goes on; the progress bars are a blockable plugin."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from bench import hookimpl
from bench.config import Cell
from bench.errors import StopCell
from bench.host import BrokenPlugin
from bench.lifecycle import Lifecycle
from bench.record import CellRecord
from bench.testing import make_host
from tests.conftest import REPO, bench_env, bench_on_a_terminal, run_bench

DOC = Path(__file__).resolve().parents[1] / "docs" / "plugins.md"

#: Appends every event, with what it was given, as a JSON line to $BENCH_EVENTS.
RECORDER = textwrap.dedent('''
    import json, os
    from pathlib import Path

    from bench import hookimpl

    RUN = {}


    def write(event, **data):
        with open(os.environ["BENCH_EVENTS"], "a") as f:
            f.write(json.dumps({"event": event, "pid": os.getpid(), **data}) + "\\n")


    @hookimpl
    def bench_run_start(run):
        RUN["path"] = Path(run.path)
        write("run_start", path=str(run.path), cells=[c.cell_id for c in run.cells], to_train=run.to_train,
              quiet=run.quiet, tracked=list(run.tracked), device=run.device,
              results_exists=(Path(run.path) / "results.csv").exists())


    @hookimpl
    def bench_cell_start(cell):
        write("cell_start", cell=cell.cell_id, epochs=cell.recipe.epochs)


    @hookimpl
    def bench_epoch_end(cell, row):
        write("epoch_end", cell=cell.cell_id, row=row)


    @hookimpl
    def bench_cell_end(cell, record):
        on_disk = json.loads((RUN["path"] / "cells" / f"{cell.cell_id}.json").read_text())
        write("cell_end", cell=cell.cell_id, record=json.loads(json.dumps(record.to_json())), on_disk=on_disk)


    @hookimpl
    def bench_run_end(run, results):
        write("run_end", results=results, interrupted=run.interrupted)
''')

#: Raises in its first epoch event; records every call it gets, to show it gets no more after.
RAISER = textwrap.dedent('''
    import os

    from bench import hookimpl


    def note(text):
        with open(os.environ["BENCH_EVENTS"], "a") as f:
            f.write(text + "\\n")


    @hookimpl
    def bench_epoch_end(cell, row):
        note("epoch_end")
        raise ValueError(f"boom at epoch {row['epoch']}")


    @hookimpl
    def bench_cell_end(cell, record):
        note("cell_end")


    @hookimpl
    def bench_run_end(run, results):
        note("run_end")
''')

GRID = ["--models", "linear", "--losses", "mse,crossentropy", "--seeds", "0,1", "--limit", "1000", "--epochs", "2",
        "--device", "cpu", "-q"]


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """Write a plugin module under a fresh name (so no earlier test's module is reused); returns its name."""

    def write(source: str) -> str:
        name = f"lifecycle_{uuid.uuid4().hex[:8]}"
        (tmp_path / f"{name}.py").write_text(source)
        return name

    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("BENCH_EVENTS", str(tmp_path / "events.jsonl"))
    return write


def events(path) -> list[dict]:
    text = path.read_text() if path.exists() else ""
    path.unlink(missing_ok=True)
    return [json.loads(line) for line in text.splitlines()]


def table(path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def same(value, text: str) -> bool:
    """A value as an event carried it equals the CSV's text of it (floats exactly: both are repr)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value) == text
    return float(text) == value


def check_run(evts: list[dict], out, pids: set[int]) -> None:
    """The order and arguments of one run's events, against the run directory it wrote."""
    results, history = table(out / "results.csv"), table(out / "history.csv")
    assert [e["event"] for e in evts[:1] + evts[-1:]] == ["run_start", "run_end"]
    start, end, cells = evts[0], evts[-1], evts[1:-1]
    assert start["path"] == str(out) and start["to_train"] == 4 and start["quiet"] and start["device"] == "cpu"
    assert sorted(start["cells"]) == sorted(r["cell_id"] for r in results) and not start["results_exists"]
    assert {e["pid"] for e in evts} == pids  # called in the process that writes the run directory

    # per cell, together: start, its epochs in order, end (the record already on disk and equal to it)
    assert len(cells) == 4 * 4
    seen = []
    for i in range(0, len(cells), 4):
        cell_start, epoch1, epoch2, cell_end = cells[i:i + 4]
        cell = cell_start["cell"]
        assert [e["event"] for e in cells[i:i + 4]] == ["cell_start", "epoch_end", "epoch_end", "cell_end"]
        assert {e["cell"] for e in cells[i:i + 4]} == {cell} and cell_start["epochs"] == 2
        assert [epoch1["row"]["epoch"], epoch2["row"]["epoch"]] == [1, 2]
        assert cell_end["record"] == cell_end["on_disk"]
        assert [epoch1["row"], epoch2["row"]] == cell_end["record"]["history"]
        seen.append(cell)
        for event in (epoch1, epoch2):
            (csv_row,) = [h for h in history if h["cell_id"] == cell and int(h["epoch"]) == event["row"]["epoch"]]
            assert set(event["row"]) == set(csv_row)
            assert all(same(v, csv_row[k]) for k, v in event["row"].items()), (event["row"], csv_row)
        (result,) = [r for r in results if r["cell_id"] == cell]
        assert cell_end["record"]["row"]["status"] == "ok"
        for key in ("test_acc", "test_loss", "val_acc", "seed", "lr", "params", "model", "loss"):
            assert same(cell_end["record"]["row"][key], result[key])
    assert sorted(seen) == sorted(start["cells"])
    assert [r["cell_id"] for r in end["results"]] == start["cells"] and not end["interrupted"]  # grid order
    assert [r["test_acc"] for r in end["results"]] == [float(next(x for x in results if x["cell_id"] == r["cell_id"])
                                                             ["test_acc"]) for r in end["results"]]


def test_events_in_order_with_the_run_directorys_numbers_local(cli, plugin, tmp_path):
    name = plugin(RECORDER)
    out = tmp_path / "run"
    # one cell after another (a fused group announces its members together: see the next test)
    result = cli("run", "-p", name, *GRID, "--fuse", "off", "--out", out)
    assert result.exit_code == 0, result.output
    check_run(events(tmp_path / "events.jsonl"), out, {os.getpid()})

    again = cli("run", "-p", name, *GRID, "--out", out)  # resumed: nothing trains, the run still starts and ends
    assert again.exit_code == 0, again.output
    evts = events(tmp_path / "events.jsonl")
    assert [e["event"] for e in evts] == ["run_start", "run_end"]
    assert evts[0]["to_train"] == 0 and len(evts[1]["results"]) == 4
    assert {r["status"] for r in evts[1]["results"]} == {"ok"}


def test_events_reach_the_driver_with_the_process_executor(plugin, tmp_path):
    name = plugin(RECORDER)
    out = tmp_path / "run"
    env = {"PYTHONPATH": os.pathsep.join([str(REPO), str(tmp_path)]), "BENCH_EVENTS": str(tmp_path / "events.jsonl"),
           "OMP_NUM_THREADS": "1"}
    proc = run_bench("run", "-p", name, *GRID, "--executor", "process", "--jobs", "2", "--out", out, env=env)
    assert proc.returncode == 0, proc.stderr
    evts = events(tmp_path / "events.jsonl")
    (driver,) = {e["pid"] for e in evts if e["event"] == "run_start"}
    check_run(evts, out, {driver})


def test_ctrl_c_still_ends_the_run_with_what_is_on_disk(plugin, tmp_path):
    name = plugin(RECORDER)
    out = tmp_path / "run"
    env = {**bench_env(), "PYTHONPATH": os.pathsep.join([str(REPO), str(tmp_path)]),
           "BENCH_EVENTS": str(tmp_path / "events.jsonl")}
    args = ["-p", name, *GRID, "--seeds", "0,1,2,3", "--out", str(out)]
    driver = subprocess.Popen([sys.executable, "-m", "bench", "run", *args], cwd=REPO, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list((out / "cells").glob("*.json")):
        assert driver.poll() is None and time.monotonic() < deadline, driver.stderr.read()
        time.sleep(0.02)
    driver.send_signal(signal.SIGINT)
    _, stderr = driver.communicate(timeout=120)
    assert driver.returncode == 130, stderr
    evts = events(tmp_path / "events.jsonl")
    assert evts[0]["event"] == "run_start" and evts[-1]["event"] == "run_end" and evts[-1]["interrupted"]
    on_disk = sorted(json.loads(p.read_text())["row"]["cell_id"] for p in (out / "cells").glob("*.json"))
    assert 1 <= len(on_disk) < 8, "interrupted too late to test anything"
    assert sorted(r["cell_id"] for r in evts[-1]["results"]) == on_disk
    ended = sorted(e["cell"] for e in evts if e["event"] == "cell_end")
    # Ctrl-C may land between a record's write and its cell_end: at most that one cell is not announced
    assert set(ended) <= set(on_disk) and len(ended) >= len(on_disk) - 1


def test_a_raising_hook_is_reported_once_by_name_and_the_run_goes_on(cli, plugin, tmp_path):
    name = plugin(RAISER)
    out = tmp_path / "run"
    result = cli("run", "-p", name, *GRID, "--out", out)
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if "warning" in line]
    assert warnings == [f"warning: plugin '{name}' failed in bench_epoch_end and gets no more events in this run: "
                        "ValueError: boom at epoch 1"]
    assert "Traceback" not in result.output
    assert [r["status"] for r in table(out / "results.csv")] == ["ok"] * 4
    assert len(table(out / "history.csv")) == 8
    assert (tmp_path / "events.jsonl").read_text().splitlines() == ["epoch_end"]  # and nothing after it


def test_under_strict_plugins_a_raising_hook_is_an_error_with_its_traceback(cli, plugin, tmp_path, monkeypatch):
    name = plugin(RAISER)
    monkeypatch.setenv("BENCH_STRICT_PLUGINS", "1")
    with pytest.raises(BrokenPlugin, match=f"plugin '{name}' failed in bench_epoch_end: ValueError: boom") as info:
        cli("run", "-p", name, *GRID, "--out", tmp_path / "run")
    assert isinstance(info.value.__cause__, ValueError)


def doc_block(heading: str, index: int) -> str:
    section = DOC.read_text().split(f"\n{heading}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)[index]


def test_the_documented_observer_works(cli, plugin, tmp_path):
    name = plugin(doc_block("## Observing a run: lifecycle hooks", 0))
    out = tmp_path / "run"
    result = cli("run", "-p", name, *GRID, "--out", out)
    assert result.exit_code == 0, result.output
    results = table(out / "results.csv")
    lines = result.stderr.splitlines()
    assert len([line for line in lines if ": ok test_acc=" in line]) == 4
    best = max(results, key=lambda r: float(r["test_acc"]))
    assert lines[-1] == (f"best: {best['model']}+{best['loss']} seed={best['seed']} "
                         f"test_acc={float(best['test_acc']):.4f}")


def test_the_documented_tracker_works(cli, plugin, tmp_path):
    name = plugin(doc_block("## Trackers", 0))
    out = tmp_path / "run"
    result = cli("run", "-p", name, "--track", "jsonl", *GRID, "--out", out)
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in (out / "track.jsonl").read_text().splitlines()]
    epochs = [line for line in lines if "epoch" in line]
    assert sorted((e["cell_id"], e["epoch"], e["val_acc"]) for e in epochs) == sorted(
        (h["cell_id"], int(h["epoch"]), float(h["val_acc"])) for h in table(out / "history.csv"))
    assert sorted((c["cell_id"], c["status"]) for c in lines if "status" in c) == sorted(
        (r["cell_id"], r["status"]) for r in table(out / "results.csv"))


RUN_ARGS = ("run", "--models", "linear", "--limit", "500", "--epochs", "2", "--device", "cpu")


@pytest.mark.parametrize("blocked", [False, True])
def test_progress_bars_are_a_plugin_that_can_be_blocked(tmp_path, blocked):
    args = ["-p", "no:bench.plugins.progress"] if blocked else []
    status, stderr = bench_on_a_terminal(*args, *RUN_ARGS, "--out", tmp_path / "run", cwd=tmp_path, stream="stderr")
    assert status == 0, stderr
    bars = [line for line in stderr.replace("\r", "\n").splitlines() if "cell/s" in line or "epoch" in line]
    assert bool(bars) is not blocked, stderr
    assert "1/1" in stderr or blocked  # the grid bar counted the cell


def test_no_progress_bars_when_stderr_is_not_a_terminal(tmp_path):
    """A log file gets the run's messages, not a bar's carriage returns and escape codes (no -q needed)."""
    with open(tmp_path / "log", "w") as log:
        status = subprocess.run([sys.executable, "-m", "bench", *map(str, RUN_ARGS), "--out", tmp_path / "run"],
                                cwd=tmp_path, env=bench_env(), stdout=log, stderr=subprocess.STDOUT).returncode
    text = (tmp_path / "log").read_text()
    assert status == 0, text
    assert "results:" in text  # the summary is there
    assert "\r" not in text and "\x1b[" not in text and "cell/s" not in text, text


class Watcher:
    """An observer object: notes every event it gets; raises ``fail`` (an exception) in its first epoch event."""

    def __init__(self, name, seen, fail=None):
        self.name, self.seen, self.fail = name, seen, fail

    @hookimpl
    def bench_epoch_end(self, cell, row):
        self.seen.append((self.name, "epoch", row["epoch"]))
        if self.fail is not None and row["epoch"] == 1:
            raise self.fail

    @hookimpl
    def bench_cell_end(self, cell, record):
        self.seen.append((self.name, "cell_end", cell.cell_id))


class PlainTracker:
    """A tracker written with plain methods, as trackers were before they were plugins."""

    def __init__(self, seen):
        self.seen = seen

    def epoch_end(self, cell, row):
        self.seen.append(("plain", "epoch", row["epoch"]))

    def cell_end(self, cell, record):
        self.seen.append(("plain", "cell_end", cell.cell_id))


def test_stop_cell_from_an_observer_reaches_the_caller_after_every_observer_had_the_epoch():
    """StopCell is how a pruner ends a cell early: not a broken plugin, and it must reach the training loop."""
    seen: list = []
    pruner = Watcher("pruner", seen, fail=StopCell(reason="val_acc 0.10 below the median 0.80"))
    host = make_host(Watcher("first", seen), pruner, Watcher("last", seen), strict=True)
    warnings: list[str] = []
    events = Lifecycle(host, {"plain": PlainTracker(seen)}, warnings.append)
    assert host.pm.get_plugin("tracker:plain") is not None  # the run's tracker is a plugin while the run lasts
    cell = Cell("linear", "mse", "mnist", 0, "cpu")
    events.cell_start(cell)
    with pytest.raises(StopCell) as info:
        events.epoch_end(cell, {"epoch": 1})
    assert info.value.status == "pruned" and info.value.reason.startswith("val_acc 0.10")
    assert sorted(seen) == [(name, "epoch", 1) for name in ("first", "last", "plain", "pruner")]
    seen.clear()
    events.epoch_end(cell, {"epoch": 2})  # the pruner still gets events: stopping a cell is no failure
    events.cell_end(cell, CellRecord.of(cell, "pruned"))
    assert sorted(seen) == sorted([(name, "epoch", 2) for name in ("first", "last", "plain", "pruner")]
                                  + [(name, "cell_end", cell.cell_id) for name in ("first", "last", "plain", "pruner")])
    events.run_end(None, [])
    assert warnings == [] and host.pm.get_plugin("tracker:plain") is None


def test_a_raising_observer_object_is_set_aside_and_the_others_still_get_that_event():
    seen: list = []
    host = make_host(Watcher("first", seen), Watcher("broken", seen, fail=KeyError("gone")), Watcher("last", seen),
                     strict=False)
    warnings: list[str] = []
    events = Lifecycle(host, {"plain": PlainTracker(seen)}, warnings.append)
    cell = Cell("linear", "mse", "mnist", 0, "cpu")
    events.epoch_end(cell, {"epoch": 1})
    events.epoch_end(cell, {"epoch": 2})
    assert sorted(seen) == sorted([(name, "epoch", 1) for name in ("first", "broken", "last", "plain")]
                                  + [(name, "epoch", 2) for name in ("first", "last", "plain")])
    (warning,) = warnings
    assert warning.startswith("warning: plugin '") and warning.endswith(
        "failed in bench_epoch_end and gets no more events in this run: KeyError: 'gone'")
    events.run_end(None, [])


def test_evaluations_inside_an_epoch_reach_the_watchers_only_and_a_raising_one_is_set_aside():
    """What a pruner watches between epochs: no history row, so no observer or tracker gets it; a watcher's StopCell
    reaches the caller after the others had the point, a watcher that breaks is reported once and left out."""
    seen: list = []
    host = make_host(Watcher("observer", seen), strict=False)
    warnings: list[str] = []
    events = Lifecycle(host, {"plain": PlainTracker(seen)}, warnings.append)
    cell = Cell("linear", "mse", "mnist", 0, "cpu")

    def broken(cell, point):
        seen.append(("broken", point["step"]))
        raise KeyError("gone")

    def pruner(cell, point):
        seen.append(("pruner", str(point.get("step", "end"))))
        if point.get("step") == 20:
            raise StopCell(reason="pruned after 20 training steps")

    events.watch("broken", broken)
    events.watch("pruning", pruner)
    events.evaluation(cell, {"epoch": 1, "step": 10, "val_loss": 0.5, "val_acc": 0.8})
    with pytest.raises(StopCell, match="after 20 training steps"):
        events.evaluation(cell, {"epoch": 1, "step": 20, "val_loss": 0.4, "val_acc": 0.85})
    assert seen == [("broken", 10), ("pruner", "10"), ("pruner", "20")]
    assert warnings == ["warning: 'broken' failed in an evaluation and gets no more events in this run: "
                        "KeyError: 'gone'"]
    seen.clear()
    events.epoch_end(cell, {"epoch": 1})  # an epoch's end: everyone but the broken watcher
    assert sorted(seen) == [("observer", "epoch", 1), ("plain", "epoch", 1), ("pruner", "end")]
    events.run_end(None, [])


def test_a_raising_tracker_is_named_as_a_tracker():
    seen: list = []

    class Failing(PlainTracker):
        def epoch_end(self, cell, row):
            raise RuntimeError("no server")

    host = make_host(Watcher("plugin", seen), strict=False)
    warnings: list[str] = []
    events = Lifecycle(host, {"remote": Failing(seen)}, warnings.append)
    cell = Cell("linear", "mse", "mnist", 0, "cpu")
    for epoch in (1, 2):
        events.epoch_end(cell, {"epoch": epoch})
    events.cell_end(cell, CellRecord.of(cell))
    assert warnings == ["warning: tracker 'remote' failed in bench_epoch_end and gets no more events in this run: "
                        "RuntimeError: no server"]
    assert seen == [("plugin", "epoch", 1), ("plugin", "epoch", 2), ("plugin", "cell_end", cell.cell_id)]
    events.run_end(None, [])


#: Stops every cell after its first epoch, as a pruner would, and notes each event.
STOPPER = textwrap.dedent('''
    import os

    from bench import hookimpl
    from bench.errors import StopCell


    def note(text):
        with open(os.environ["BENCH_EVENTS"], "a") as f:
            f.write(text + "\\n")


    @hookimpl
    def bench_epoch_end(cell, row):
        note(f"epoch_end {row['epoch']}")
        raise StopCell(reason="stopped by the test")


    @hookimpl
    def bench_cell_end(cell, record):
        note("cell_end")
''')


def test_stop_cell_from_a_plugin_stops_the_cell_in_the_training_loop(cli, plugin, tmp_path, monkeypatch):
    """Even under BENCH_STRICT_PLUGINS it is no broken plugin: each cell trains one epoch of two, then ends."""
    name = plugin(STOPPER)
    monkeypatch.setenv("BENCH_STRICT_PLUGINS", "1")
    result = cli("run", "-p", name, *GRID, "--fuse", "off", "--out", tmp_path / "run")
    assert "warning" not in result.output and "BrokenPlugin" not in repr(result.exception), result.output
    assert (tmp_path / "events.jsonl").read_text().splitlines() == ["epoch_end 1", "cell_end"] * 4
