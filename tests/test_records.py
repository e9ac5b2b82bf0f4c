"""Run directories and study files gridbench did not write itself: records with wrong values, paths that
lead out of the run, outputs written where they must not be, and inputs too large to read.

Each test is one promise of the README ("The run directory", "Comparing two runs", "Studies"), run
through the real CLI (in-process with click, or as a subprocess where a blocked read is the point) or
``bench.load``; each failed on the code before the fix.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench.api import load as load_run
from bench.errors import BenchError
from bench.files import ENV_MAX, RECORD_MAX, STUDY_MAX
from tests import test_hostile
from tests.conftest import REPO, bench_env
from tests.test_hostile import GRID, QUICK, bench, error_line, rows, snapshot

#: The fixtures of the hostile checks: a finished three-seed linear run, and a private copy for a case to damage.
finished_run, run_copy = test_hostile.finished_run, test_hostile.run_copy


def first_record(run: Path) -> Path:
    return sorted((run / "cells").glob("*.json"))[0]


def edit_record(path: Path, change) -> None:
    record = json.loads(path.read_text())
    change(record)
    path.write_text(json.dumps(record))


# -- one reader of records, which checks what it reads -----------------------------------------------------

DAMAGE = {
    "test_acc_text": (lambda r: r["row"].update(test_acc="abc"), "row.test_acc is 'abc', not a number from 0 to 1"),
    "test_acc_above_1": (lambda r: r["row"].update(test_acc=3.5), "row.test_acc is 3.5, not a number from 0 to 1"),
    "history_not_a_list": (lambda r: r.update(history=5), "history is 5, not a list"),
    "history_entry_text": (lambda r: r["history"][0].update(val_loss="x"), "history[0].val_loss is 'x', not a number"),
    "huge_confusion": (lambda r: r["confusion"][0].__setitem__(0, 10 ** 30),
                       "confusion holds 1000000000000000000000000000000, not a count"),
    "ragged_confusion": (lambda r: r["confusion"][1].pop(), "not a square matrix"),
    "no_model": (lambda r: r["row"].pop("model"), "its row has no model"),
    "seed_text": (lambda r: r["row"].update(seed="0"), "row.seed is '0', not an integer"),
    "unknown_status": (lambda r: r["row"].update(status="done"), "its row has status 'done', not one of"),
    "params_not_json": (lambda r: r["row"].update(params="{oops"), "row.params is '{oops', not a JSON object"),
}


@pytest.mark.parametrize("case", list(DAMAGE))
def test_a_record_with_wrong_values_is_named_by_every_reader(run_copy, finished_run, case):
    """run, report, compare and bench.load all stop with one line naming the record (compare silently
    dropped it; a record without its model was a configuration named 'nan'); nothing is written."""
    change, *expected = DAMAGE[case]
    victim = first_record(run_copy)
    edit_record(victim, change)
    before = snapshot(run_copy)
    for args in ([*GRID, "--out", run_copy], ["report", run_copy], ["compare", finished_run, run_copy],
                 ["compare", run_copy, finished_run]):
        line = error_line(bench(*args))
        assert line.startswith(f"Error: {victim} is damaged ("), (args, line)
        assert all(text in line for text in expected if text), (args, line)
    with pytest.raises(BenchError, match="is damaged") as caught:
        load_run(run_copy)
    assert str(victim) in str(caught.value)
    assert snapshot(run_copy) == before


def test_compare_reads_the_records_not_the_csv_files(run_copy, finished_run):
    """results.csv and history.csv are for people: compare rebuilds the rows from the records."""
    accuracies = [json.loads(p.read_text())["row"]["test_acc"] for p in sorted((run_copy / "cells").glob("*.json"))]
    (run_copy / "results.csv").unlink()
    (run_copy / "history.csv").unlink()
    result = bench("compare", finished_run, run_copy)
    assert result.exit_code == 0, result.output
    mean = sum(accuracies) / len(accuracies)
    assert f"{mean:.4f}" in result.stdout and "3/3/3" in result.stdout and "tied" in result.stdout


# -- paths: nothing read or written outside the run ---------------------------------------------------------

@pytest.mark.parametrize("where", ["dotdot", "absolute"])
def test_a_record_never_leads_outside_the_run(run_copy, tmp_path, where):
    """A record whose templates.path leaves the run is damaged: neither bench report nor Run.templates()
    reads the (valid, planted) templates file it points to."""
    victim = first_record(run_copy)
    record = json.loads(victim.read_text())
    planted = tmp_path / "outside" / "planted.safetensors"
    planted.parent.mkdir()
    shutil.copy(run_copy / record["templates"]["path"], planted)
    path = str(planted) if where == "absolute" else os.path.relpath(planted, run_copy)
    edit_record(victim, lambda r: r["templates"].update(path=path))
    line = error_line(bench("report", run_copy))
    assert line.startswith(f"Error: {victim} is damaged (templates.path is ")
    assert "not a file in the run directory's weights/" in line
    with pytest.raises(BenchError, match="templates.path"):
        load_run(run_copy).templates(victim.stem)


def test_a_symlinked_file_in_weights_is_not_read_outside_the_run(run_copy, tmp_path):
    victim = first_record(run_copy)
    inner = run_copy / json.loads(victim.read_text())["templates"]["path"]
    planted = tmp_path / "planted.safetensors"
    shutil.move(inner, planted)
    inner.symlink_to(planted)
    with pytest.raises(BenchError, match="outside"):
        load_run(run_copy).templates(victim.stem)


@pytest.mark.parametrize("folder", ["cells", "weights"])
def test_a_symlinked_cells_or_weights_folder_is_refused(run_copy, tmp_path, folder):
    """bench run wrote records and weights through such a link into the folder it points to."""
    elsewhere = tmp_path / "elsewhere"
    shutil.move(run_copy / folder, elsewhere)
    (run_copy / folder).symlink_to(elsewhere, target_is_directory=True)
    before = snapshot(elsewhere)
    line = error_line(bench(*GRID, "--out", run_copy, "--force"))
    assert f"{run_copy / folder}: a symlink (to {elsewhere})" in line
    assert snapshot(elsewhere) == before
    if folder == "cells":
        assert error_line(bench("report", run_copy)) == line
        with pytest.raises(BenchError, match="a symlink"):
            load_run(run_copy)


def test_compare_markdown_never_overwrites_a_record(finished_run, run_copy, tmp_path):
    victim = first_record(run_copy)
    before = snapshot(run_copy)
    line = error_line(bench("compare", finished_run, run_copy, "--markdown", victim))
    assert f"--markdown {victim}: would write into the run directory {run_copy.resolve()}" in line
    assert snapshot(run_copy) == before
    # control: a file in an existing folder outside any run is written
    out = tmp_path / "compare.md"
    assert bench("compare", finished_run, finished_run, "--markdown", out).exit_code == 0
    assert out.read_text().startswith("## bench compare")


def test_compare_markdown_never_creates_folders(finished_run, tmp_path):
    target = tmp_path / "missing" / "dir" / "x.md"
    line = error_line(bench("compare", finished_run, finished_run, "--markdown", target))
    assert f"the folder {target.parent} does not exist" in line
    assert not (tmp_path / "missing").exists()


def test_a_report_is_never_written_into_another_run(finished_run, run_copy):
    before = snapshot(run_copy)
    for out in (run_copy / "cells" / "sub", run_copy / "report-of-another"):
        line = error_line(bench("report", finished_run, "--out", out))
        assert f"would be inside the run directory {run_copy.resolve()}, which is not one of the runs" in line
    assert snapshot(run_copy) == before


def test_a_report_never_writes_through_a_symlink_in_an_earlier_report(finished_run, tmp_path):
    """Its figures were written through a symlinked figures/ into the folder it points to."""
    report = tmp_path / "report"
    assert bench("report", finished_run, "--out", report).exit_code == 0
    elsewhere = tmp_path / "elsewhere"
    shutil.move(report / "figures", elsewhere)
    (report / "figures").symlink_to(elsewhere, target_is_directory=True)
    before = snapshot(elsewhere)
    line = error_line(bench("report", finished_run, "--out", report))
    assert f"{report / 'figures'} is a symlink (to {elsewhere}) in the report {report}" in line
    assert snapshot(elsewhere) == before


def test_a_report_folder_is_created_only_in_a_folder_that_exists(finished_run, tmp_path):
    out = tmp_path / "missing" / "report"
    line = error_line(bench("report", finished_run, "--out", out))
    assert f"its parent folder {out.parent} does not exist" in line
    assert not out.parent.exists()


def test_an_empty_lock_file_does_not_make_a_run_directory(tmp_path):
    """A folder holding the user's results.csv and an empty .gridbench.lock is not a run: nothing is
    overwritten. A folder holding nothing but the lock files (a run killed as it started) is reused."""
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / ".gridbench.lock").write_text("")
    (folder / "results.csv").write_text("my,own\n1,2\n")
    line = error_line(bench(*GRID, "--out", folder))
    assert "is not empty and is not a gridbench run directory (it holds .gridbench.lock, results.csv)" in line
    assert (folder / "results.csv").read_text() == "my,own\n1,2\n"
    started = tmp_path / "started"
    started.mkdir()
    (started / ".gridbench.lock").write_text("")
    result = bench(*GRID, "--out", started)
    assert result.exit_code == 0, result.output
    assert len(rows(started / "results.csv")) == 3


# -- bounded input --------------------------------------------------------------------------------------------

def test_a_study_from_a_fifo_is_refused_without_waiting(tmp_path):
    """A special file is not read: a FIFO with no writer used to block bench run forever
    (and /dev/zero to read until memory ran out)."""
    fifo = tmp_path / "study.yaml"
    os.mkfifo(fifo)
    proc = subprocess.run([sys.executable, "-m", "bench", "run", "--study", str(fifo), *QUICK,
                           "--out", str(tmp_path / "run")], cwd=REPO, env=bench_env(), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert f"study {fifo}: not a regular file" in proc.stderr


def test_dev_zero_as_a_study_is_refused(tmp_path):
    line = error_line(bench("run", "--study", "/dev/zero", *QUICK, "--out", tmp_path / "run"))
    assert line == "Error: study /dev/zero: not a regular file (a device, FIFO, socket or folder): refused"


def test_an_oversized_study_is_refused(tmp_path):
    study = tmp_path / "study.yaml"
    study.write_text("models: [linear]\n" + "#" * STUDY_MAX + "\n")
    line = error_line(bench("run", "--study", study, *QUICK, "--dry-run", "--out", tmp_path / "run"))
    assert f"study {study}: " in line and "larger than the 1 MiB gridbench reads from it" in line


def test_yaml_aliases_that_expand_are_refused_at_once(tmp_path):
    """A few hundred bytes of aliases standing for ~5 million values: refused before anything reads them
    (the error used to quote the whole expansion; a deeper file took 6.7 GB and 86 s)."""
    study = tmp_path / "laughs.yaml"
    levels = ['&l0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    levels += [f"&l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 7)]
    study.write_text(f"models: [{', '.join(levels)}]\n")
    assert len(study.read_bytes()) < 1000
    line = error_line(bench("run", "--study", study, *QUICK, "--dry-run", "--out", tmp_path / "run"))
    assert line == f"Error: study {study}: holds more than 100,000 values once its YAML aliases (*name) are " \
                   "expanded: refused"


def test_an_error_quotes_a_short_excerpt_of_a_bad_value(tmp_path):
    study = tmp_path / "study.yaml"
    study.write_text("models: " + json.dumps([list(range(10_000))]) + "\n")
    line = error_line(bench("run", "--study", study, *QUICK, "--dry-run", "--out", tmp_path / "run"))
    assert line.startswith(f"Error: study {study}: models: must be a list of names")
    assert len(line) < 400, len(line)


def sparse(path: Path, size: int) -> None:
    """A file of ``size`` bytes that takes no disk."""
    with open(path, "wb") as f:
        f.truncate(size)


def test_an_oversized_env_json_is_refused_unread(run_copy):
    sparse(run_copy / "env.json", ENV_MAX + 1)
    for args in ([*GRID, "--out", run_copy], ["report", run_copy]):
        line = error_line(bench(*args))
        assert line.startswith(f"Error: {run_copy / 'env.json'} is not read (")
        assert "larger than the 64 MiB gridbench reads from it" in line


def test_an_oversized_record_is_refused_unread(run_copy):
    victim = first_record(run_copy)
    sparse(victim, RECORD_MAX + 1)
    line = error_line(bench("report", run_copy))
    assert line.startswith(f"Error: {victim} is damaged (")
    assert "larger than the 64 MiB gridbench reads from it" in line
