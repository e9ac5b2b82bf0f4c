"""examples/limits-of-linearity.ipynb runs top to bottom in a real Jupyter kernel (nbclient + ipykernel)."""

import os

import pytest

from tests.conftest import REPO

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOK = REPO / "examples" / "limits-of-linearity.ipynb"


def outputs(cell, kind: str) -> list[str]:
    found = []
    for out in cell.get("outputs", []):
        if kind == "png" and "image/png" in out.get("data", {}):
            found.append(out["data"]["image/png"])
        elif kind == "html" and "text/html" in out.get("data", {}):
            found.append(out["data"]["text/html"])
        elif kind == "text":
            found.append(out.get("text", "") + out.get("data", {}).get("text/plain", ""))
    return found


@pytest.mark.slow
def test_the_notebook_runs_top_to_bottom_and_shows_its_results(tmp_path, monkeypatch):
    monkeypatch.setenv("BENCH_NOTEBOOK_LIMIT", "1000")
    monkeypatch.setenv("BENCH_NOTEBOOK_EPOCHS", "1")
    monkeypatch.setenv("BENCH_NOTEBOOK_OUT", str(tmp_path / "runs"))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.get("execution_count") for c in code)  # every cell ran, none raised (execute() would have)
    errors = [o for c in code for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors

    by_source = {c.source.splitlines()[0]: c for c in code}
    # the notebook's three cells: the linear templates and the curves are pictures
    pictures = [png for c in code for png in outputs(c, "png")]
    assert len(pictures) >= 3
    templates = next(c for src, c in by_source.items() if src.startswith("row = seed.results"))
    assert "(10, 1, 28, 28) weights" in "".join(outputs(templates, "text"))
    # seeds: three configurations, three seeds each, with intervals
    seeds = next(c for src, c in by_source.items() if src.startswith("seeds = bench.run"))
    html = "".join(outputs(seeds, "html"))
    assert html.count("<tr") == 1 + 3 and ">3<" in html  # a header row and three configurations
    # the sweep picks a best learning rate per loss from 4 x 3 cells each
    sweep = next(c for src, c in by_source.items() if src.startswith("sweep = bench.run"))
    best = "".join(outputs(sweep, "html"))
    assert "mse" in best and "crossentropy" in best
    # the references: four models, the run object renders as a table
    shown = "".join(outputs(code[-1], "html"))
    assert "gridbench run" in shown and "cnn+crossentropy" in shown and "deep-linear+crossentropy" in shown
    results = (tmp_path / "runs" / "lr-sweep" / "results.csv").read_text().splitlines()
    assert len(results) == 1 + 2 * 4 * 3
    seed_rows = (tmp_path / "runs" / "seed" / "results.csv").read_text().splitlines()
    assert len(seed_rows) == 1 + 3 * 3  # seed 0 reused, seeds 1 and 2 added
