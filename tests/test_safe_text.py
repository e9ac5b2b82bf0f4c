"""Names from plugins reach spreadsheets and terminals defanged: every CSV gridbench writes is spreadsheet-safe (and
gridbench reads its own CSVs back exactly), and nothing it prints carries a terminal control sequence."""

import csv
import shutil

import pandas as pd
import pytest
from click.testing import CliRunner

from bench.cli import main
from bench.reports.compare import compare_runs
from bench.safe_text import FORMULA_START, csv_cell, printable, read_csv_cell
from bench.store import RunStore
from tests.hostile_names_plugin import DATASET, ERROR, FAILING, LOSS, MODEL, RAW

PLUGIN = ["-p", "tests.hostile_names_plugin"]
GRID = [*PLUGIN, "--models", f"{MODEL},{FAILING}", "--losses", LOSS, f"--datasets={DATASET}",
        "--param", f"{MODEL}.tag=-y,=z", "--seeds", "0,1", "--epochs", "1", "--device", "cpu"]


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def assert_printable(text: str) -> None:
    for raw in RAW:
        assert raw not in text, f"{raw!r} reached the terminal: {text!r}"


def assert_aligned(text: str, header: str) -> None:
    """The plain-text table whose header line starts with ``header`` lines up as printed: no cell runs into the
    column after it (the escapes are counted in the widths)."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    dashes = lines[start + 1]
    columns = [i for i in range(1, len(dashes)) if dashes[i] == "-" and dashes[i - 1] == " "]
    body = []
    for line in lines[start + 2:]:
        if not line.strip() or line.startswith(("report: ", "results: ")):  # the table ends
            break
        body.append(line)
    assert body and "\\\\x1b" not in text  # escaped once, not twice
    for line in body:
        assert all(len(line) <= c or line[c - 1] == " " for c in columns), (line, columns)


@pytest.fixture(scope="module")
def hostile_run(tmp_path_factory):
    """A run of the hostile plugin's cells (two fail) and its report, and what the commands printed (``tables``:
    bench run's standard output, without the progress bars)."""
    root = tmp_path_factory.mktemp("hostile")
    run = invoke("run", *GRID, "--out", root / "run")  # with progress bars
    assert run.exit_code == 1, run.output  # the failing model's cells
    report = invoke("report", root / "run")
    assert report.exit_code == 0, report.output
    return root / "run", root / "run" / "report", {"run": run.output, "report": report.output, "tables": run.stdout}


def test_csv_cell_quotes_formula_text_and_leaves_numbers():
    assert [csv_cell(v) for v in ("@SUM(A1)", "=1+1", "+cmd", "-2+3", "\tx", "-inf", "'quoted", "linear", "")] == [
        "'@SUM(A1)", "'=1+1", "'+cmd", "'-2+3", "'\tx", "'-inf", "''quoted", "linear", ""]
    assert [csv_cell(v) for v in (-0.5, "-0.5", "+1e-3", "-12", 3, None)] == [-0.5, "-0.5", "+1e-3", "-12", 3, None]
    for text in ("@x", "'", "''x", "-0.5", "-x", "plain", "'=a"):
        assert read_csv_cell(csv_cell(text)) == text


def test_printable_escapes_control_characters():
    assert printable("a\x1b[31mb\x07\u202ec\nd") == "a\\x1b[31mb\\x07\\u202ec\nd"
    assert printable("a\nb\tc", newlines=False) == "a\\x0ab\\x09c"
    assert printable("mean ± 95% CI, Δ acc") == "mean ± 95% CI, Δ acc"  # other text as it is


def test_every_csv_gridbench_writes_is_spreadsheet_safe(hostile_run):
    run, report, _ = hostile_run
    files = [run / "results.csv", run / "history.csv", *sorted(report.glob("*.csv"))]
    assert {p.name for p in files} >= {"results.csv", "history.csv", "summary.csv", "cells.csv"}
    for path in files:
        with path.open(newline="") as f:
            rows = list(csv.reader(f))
        for row in rows:
            for cell in row:
                if cell[:1] in FORMULA_START:
                    float(cell)  # a plain number (-0.5) is the only thing that may start so
    results = pd.read_csv(run / "results.csv", keep_default_na=False, na_values=[""])
    assert set(results["model"]) == {"'" + MODEL, "'" + FAILING} and set(results["loss"]) == {"'" + LOSS}
    assert set(results["dataset"]) == {"'" + DATASET}
    assert set(results.loc[results["status"] == "ok", "test_acc"].map(type)) == {float}  # numbers stay numbers
    cells = pd.read_csv(report / "cells.csv", keep_default_na=False)
    assert set(cells["model"]) == {"'" + MODEL, "'" + FAILING}


def test_gridbench_reads_its_own_csvs_back_exactly(hostile_run, tmp_path):
    run, report, _ = hostile_run
    store = RunStore(run)
    assert set(store.results()["model"]) == {MODEL, FAILING}  # from the records
    bare = tmp_path / "bare"  # only the CSV files: read from them
    bare.mkdir()
    for name in ("results.csv", "history.csv"):
        shutil.copy(run / name, bare / name)
    pd.testing.assert_frame_equal(RunStore(bare).results(), store.results())
    pd.testing.assert_frame_equal(RunStore(bare).history(), store.history())
    # a report folder's cells.csv against the run's records: the same configurations, matched
    table = compare_runs(run, report).table
    assert len(table) == 3 and sorted(table["n_shared"]) == [0, 2, 2]
    assert table["label"].str.startswith(MODEL).sum() == 2


def test_nothing_gridbench_prints_carries_a_terminal_control_sequence(hostile_run):
    run, report, printed = hostile_run
    for output in printed.values():
        assert_printable(output)
    assert MODEL.replace("\x1b", "\\x1b").replace("\x07", "\\x07") in printed["run"]  # the name, escaped
    assert ERROR.replace("\x1b", "\\x1b") in printed["run"]  # the failed cell's error line
    assert_aligned(printed["tables"], "model ")  # the summary table of bench run (stdout: no progress bar)
    assert_aligned(printed["tables"], "cell ")  # its seed statistics
    assert_aligned(printed["report"], "dataset ")
    assert_aligned(invoke("compare", run, report).output, "configuration ")
    for args in (["list", *PLUGIN], ["plugins", *PLUGIN], ["compare", run, report],
                 ["run", *PLUGIN, "--models", "nope\x1b[2J", "--out", run.parent / "x"]):
        result = invoke(*args)
        assert_printable(result.output)
        assert result.exit_code == (2 if args[0] == "run" else 0), result.output
