"""Run directories written before the cell record became a dataclass still load, report and resume.

``tests/old_runs/`` holds two small run directories written by gridbench as it was before
(``bench run --models linear --losses mse,crossentropy --seeds 0,1 --limit 500 --epochs 1 --device cpu``
and the same with ``--losses crossentropy --seeds 0 --tune lr=1e-3:1e-1:log --trials 2``).
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest

import bench
from bench.store import RunStore

OLD = Path(__file__).parent / "old_runs"


@pytest.fixture
def old_run(tmp_path):
    def copy(name: str) -> Path:
        return Path(shutil.copytree(OLD / name, tmp_path / name))

    return copy


def test_old_run_loads_with_its_numbers(old_run):
    run = bench.load(old_run("seed"))
    results = run.results
    assert len(results) == 4
    by_loss = results.set_index(["loss", "seed"])["test_acc"].to_dict()
    assert by_loss[("mse", 0)] == pytest.approx(0.2264)
    assert by_loss[("crossentropy", 1)] == pytest.approx(0.3630)
    assert set(run.history["epoch"]) == {1}
    records = RunStore(run.path).records()
    assert {r.cell_id for r in records} == set(results["cell_id"])
    assert all(r.status == "ok" and r.weights.endswith(".safetensors") for r in records)
    assert run.templates(records[0].cell_id)[0].shape[0] == 10  # one template per class


def test_old_runs_report(old_run, cli):
    for name in ("seed", "tune"):
        out = old_run(name)
        result = cli("report", out, "--out", out / "report")
        assert result.exit_code == 0, result.output
        html = (out / "report" / "index.html").read_text()
        assert "linear" in html and "crossentropy" in html


def test_old_run_resumes_training_only_what_is_missing(old_run, cli):
    out = old_run("seed")
    missing = "fb308fd45059"  # linear+crossentropy, seed 0
    kept = {p.name: p.read_bytes() for p in (out / "cells").glob("*.json") if p.stem != missing}
    (out / "cells" / f"{missing}.json").unlink()
    result = cli("run", "--out", out, "-q")
    assert result.exit_code == 0, result.output
    assert "resume: 3 of 4 cell(s) already finished" in result.output, result.output
    with open(out / "results.csv", newline="") as f:
        rows = {r["cell_id"]: r for r in csv.DictReader(f)}
    assert len(rows) == 4 and rows[missing]["status"] == "ok"
    # trained again by today's code, the cell gives the numbers the old code wrote for it
    assert (rows[missing]["test_acc"], rows[missing]["test_loss"]) == ("0.2038", "2.2171783203125")
    # the three cells of the old run were not trained again: their records are byte for byte as they were
    assert {name: (out / "cells" / name).read_bytes() for name in kept} == kept


def test_old_tuning_run_resumes_with_nothing_to_do(old_run, cli):
    out = old_run("tune")
    before = {p.name: p.read_bytes() for p in (out / "cells").glob("*.json")}
    result = cli("run", "--out", out, "-q")
    assert result.exit_code == 0, result.output
    assert {p.name: p.read_bytes() for p in (out / "cells").glob("*.json")} == before
