"""What the command line prints fits a terminal: ``bench run --help`` in sections of lines of at most 100
characters, and tables of at most 120 columns unless ``--wide`` asks for every column."""

import re

import pytest
from click.testing import CliRunner

from bench.cli import RUN_SECTIONS, main, run
from bench.textfit import fit_tables
from tests.conftest import bench_on_a_terminal


def invoke(*args, columns=200):
    result = CliRunner(env={"COLUMNS": str(columns)}).invoke(main, [str(a) for a in args], catch_exceptions=False)
    return result


@pytest.mark.parametrize("columns", [80, 200])
def test_run_help_is_in_sections_of_lines_that_fit(columns):
    result = invoke("run", "--help", columns=columns)
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert max(len(line) for line in lines) <= min(columns, 100), max(lines, key=len)
    headings = [line[:-1] for line in lines if line and not line.startswith(" ") and line.endswith(":")]
    assert headings == [*RUN_SECTIONS, "Other options"]
    for param in run.params:  # every option is listed, once
        for opt in param.opts:
            assert len(re.findall(rf"(?<![\w-]){re.escape(opt)}(?![\w-])", result.output.split("Options")[-1]
                                  .split("What to train:")[-1])) >= 1, opt
    named = [name for names in RUN_SECTIONS.values() for name in names]
    assert sorted(named) == sorted(p.name for p in run.params if p.name != "help")  # no option left to "Other"


GRID = ("--models", "linear", "--losses", "mse,crossentropy", "--lr", "1e-3,1e-2", "--seeds", "0,1,2",
        "--limit", "500", "--epochs", "1", "--device", "cpu", "-q")


def on_a_terminal(*args, cwd) -> tuple[int, str]:
    """``python -m bench ARGS`` with its stdout on a 200-column pseudo-terminal, as typed in a shell."""
    return bench_on_a_terminal(*args, cwd=cwd, columns=200)


@pytest.fixture(scope="module")
def two_rates(tmp_path_factory):
    out = tmp_path_factory.mktemp("fit") / "run"
    status, fitted = on_a_terminal("run", *GRID, "--out", out, cwd=out.parent)
    assert status == 0, fitted
    return out, fitted


def test_run_tables_fit_120_columns_and_wide_prints_them_whole(two_rates):
    out, fitted = two_rates
    assert max(len(line) for line in fitted.splitlines()) <= 120, max(fitted.splitlines(), key=len)
    assert "paired comparisons" in fitted
    # the dataset and the seed count are the same in every comparison: said once, not in 12 rows
    assert "the same in every row: dataset=mnist" in fitted
    _, wide = on_a_terminal("run", *GRID, "--out", out, "--wide", cwd=out.parent)  # resumes: the same tables
    assert max(len(line) for line in wide.splitlines()) > 120
    assert "linear+crossentropy lr=0.001" in wide and "the same in every row" not in wide
    # shortened labels keep both ends, which tell the configurations apart
    full = ["linear+mse lr=0.001", "linear+mse lr=0.01", "linear+crossentropy lr=0.001", "linear+crossentropy lr=0.01"]
    labels = set(re.findall(r"\blinear\S*…\S*", fitted))
    assert labels and all(any(f.startswith(label.split("…")[0]) and f.endswith(label.split("…")[1]) for f in full)
                          for label in labels), labels
    # a script reading the output through a pipe gets the tables whole
    piped = invoke("run", *GRID, "--out", out).output
    assert max(len(line) for line in piped.splitlines()) > 120 and "the same in every row" not in piped


def test_compare_table_fits_120_columns(two_rates):
    out, _ = two_rates
    status, output = on_a_terminal("compare", out, out, cwd=out.parent)
    assert status == 0, output
    lines = output.splitlines()
    assert max(len(line) for line in lines) <= 120, max(lines, key=len)
    # a run against itself: four configurations, all tied, the verdict kept though it is the same in each
    assert sum(line.rstrip().endswith("tied") for line in lines) == 4
    _, wide = on_a_terminal("compare", out, out, "--wide", cwd=out.parent)
    assert max(len(line) for line in wide.splitlines()) > 120


def test_fit_tables_leaves_other_lines_and_narrow_tables_alone():
    text = "note: a line that is much longer than the table " * 5 + "\n\na  b\n-  -\n1  2\n"
    assert fit_tables(text, 40) == text
    table = "name             value  kind\n" + "---------------  -----  ----\n" + "".join(
        f"{'configuration-' + str(i):<15}  {i:>5}  same\n" for i in range(3))
    fitted = fit_tables(table, 20).splitlines()
    assert fitted[0].split() == ["name", "value"]
    assert " ".join(fitted[5:]) == "(the same in every row: kind=same; --wide shows every column)"
    assert all(len(line) <= 20 for line in fitted)
    assert fitted[2].startswith("conf") and "…" in fitted[2] and fitted[2].split()[0].endswith("-0")  # both ends
    assert [line.split()[-1] for line in fitted[2:5]] == ["0", "1", "2"]  # numbers are never shortened


def test_a_one_row_table_too_wide_to_fit_prints_as_column_value_lines():
    header = ["configuration", "verdict", "gate"]
    row = ["knob+crossentropy", "NEW worse", "FAIL: accuracy -0.2933 < -0.01; time ×2.051 > 1.2 " + "x" * 60]
    widths = [max(len(h), len(c)) for h, c in zip(header, row)]
    table = "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in
                      [header, ["-" * w for w in widths], row])
    assert fit_tables(table, 60).splitlines()[:2] == ["configuration  knob+crossentropy", "verdict        NEW worse"]


def test_bench_list_fits_100_columns():
    result = invoke("list")
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert max(len(line) for line in lines) <= 100, max(lines, key=len)
    # a long description wraps under itself, its install hint kept whole on the next line
    ray = lines.index(next(line for line in lines if line.startswith("  ray ")))
    assert "pip install 'gridbench[ray]'" in " ".join(lines[ray:ray + 2])
