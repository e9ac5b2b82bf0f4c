"""Reports, end to end: real runs on (a subset of) the embedded MNIST, then the report they make."""

from __future__ import annotations

import io
import json
import math
import os
import re
import shutil

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from matplotlib.image import imread
from safetensors.numpy import load_file

from bench.cli import main
from bench.reports.figures import pareto_front
from bench.stats import mean_ci
from tests.report_test_plugin import CLASSES, NAN_MODEL

COMPARATIVE = ["val_loss", "val_acc", "accuracy_heatmap", "accuracy_vs_time", "epoch_time"]


def bench(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, [str(a) for a in args])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output


def png_shape(path) -> tuple[int, ...]:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return imread(path).shape


@pytest.fixture(scope="session")
def seed_run(tmp_path_factory):
    """The notebook's three cells, two seeds, on 2000 training images: ``bench run --report``."""
    out = tmp_path_factory.mktemp("a") / "run"
    code, output = bench("run", "--grid", "seed", "--device", "cpu", "--seeds", "0,1", "--limit", "2000",
                         "--epochs", "2", "--out", out, "-q", "--report")
    assert code == 0, output
    return out, output


def test_run_report_has_tables_figures_and_templates_and_confusion_per_configuration(seed_run):
    run, output = seed_run
    report = run / "report"
    results = pd.read_csv(run / "results.csv")
    assert len(results) == 6 and (results["status"] == "ok").all()

    for stem in ("summary", "cells"):
        for ext in ("csv", "md", "html"):
            assert (report / f"{stem}.{ext}").stat().st_size > 0
    for name in COMPARATIVE:
        height, width, _ = png_shape(report / "figures" / f"{name}.png")
        assert height > 200 and width > 300
    assert not (report / "figures" / "cells").exists() and not (report / "cells").exists()  # only on demand

    # One row per configuration, seeds aggregated: mean and Student-t half-width of the two seeds.
    summary = pd.read_csv(report / "summary.csv")
    assert len(summary) == 3 and (summary["seeds"] == "2/2").all()
    for _, row in summary.iterrows():
        accs = results[(results["model"] == row["model"]) & (results["loss"] == row["loss"])]["test_acc"]
        assert row["test_acc"] == pytest.approx(accs.mean())
        half = 12.706204736 * accs.std(ddof=1) / math.sqrt(2)  # t(0.975, 1 dof)
        assert row["test_acc_ci95"] == pytest.approx(half, rel=1e-6)
    assert list(summary["test_acc"]) == sorted(summary["test_acc"], reverse=True)  # best first
    # The CSV has every configuration column; the recipe is the same everywhere, so no table shows it.
    assert {"optimizer", "lr", "weight_decay", "schedule", "batch_size", "epochs", "limit"} <= set(summary.columns)
    assert (summary["limit"] == 2000).all() and (summary["epochs"] == 2).all()
    md = (report / "summary.md").read_text()
    assert "±" in md and "batch_size" not in md and "weight_decay" not in md
    # The summary is printed too.
    assert "test_acc (mean ± 95% CI)" in output and f"report: {report / 'index.html'}" in output

    # The paired comparisons (two shared seeds per pair) are in the report too, three pairs of three configs.
    comparisons = pd.read_csv(report / "comparisons.csv")
    assert len(comparisons) == 3 and (comparisons["n"] == 2).all()
    linear = comparisons[(comparisons["a"] == "linear+mse") & (comparisons["b"] == "linear+crossentropy")].iloc[0]
    by_seed = results.set_index(["model", "loss", "seed"])["test_acc"]
    diffs = [by_seed[("linear", "mse", s)] - by_seed[("linear", "crossentropy", s)] for s in (0, 1)]
    assert linear["diff"] == pytest.approx(sum(diffs) / 2)

    page = (report / "index.html").read_text()
    assert 'id="comparisons"' in page and "Holm" in page
    # One section per configuration: ten template tiles (mean over its two seeds) and a confusion matrix whose
    # counts are the two seeds' summed (2 x 10,000 test images), with their accuracy.
    assert page.count('<article class="config ok"') == 3
    assert page.count('<figure class="tile">') == 30 and page.count('<table class="cm">') == 3
    assert page.count("mean over 2 seeds") == 3 and page.count("counts summed over 2 seeds") == 3
    cells_of = {(m, lo): results[(results["model"] == m) & (results["loss"] == lo)]["test_acc"]
                for m, lo in zip(summary["model"], summary["loss"])}
    for accs in cells_of.values():
        assert f"accuracy {accs.mean():.4f})" in page  # 20,000 images: the summed matrix's accuracy is the mean
    assert page.count("<img ") == len(COMPARATIVE) + 30
    assert 'id="summary"' in page and "src=\"data:image/png;base64," in page


def test_templates_of_a_configuration_are_the_mean_of_its_seeds(seed_run):
    from PIL import Image

    from bench.reports.cellfigs import LEVELS, data_uri, template_tiles

    run, _ = seed_run
    records = [json.loads(p.read_text()) for p in (run / "cells").glob("*.json")]
    linear = [r for r in records if r["row"]["model"] == "linear" and r["row"]["loss"] == "mse"]
    assert len(linear) == 2
    stacked = [load_file(str(run / r["templates"]["path"]))["templates"] for r in linear]
    mean = (stacked[0].astype(np.float64) + stacked[1]) / 2
    tiles, limit = template_tiles(mean)
    assert limit == pytest.approx(np.abs(mean).max()) and len(tiles) == 10
    first = np.asarray(Image.open(io.BytesIO(tiles[0])))
    assert first.shape == (28, 28)  # one pixel per input pixel; the browser scales it up
    expected = np.clip(np.rint((mean[0, 0] / limit + 1) / 2 * (LEVELS - 1)), 0, LEVELS - 1)
    np.testing.assert_array_equal(first, expected)
    page = (run / "report" / "index.html").read_text()
    assert data_uri(tiles[0]) in page


def test_linear_templates_are_the_weights_and_others_are_input_gradients(seed_run):
    run, _ = seed_run
    for path in (run / "cells").glob("*.json"):
        record = json.loads(path.read_text())
        entry = record["templates"]
        templates = load_file(str(run / entry["path"]))["templates"]
        assert templates.shape == (10, 1, 28, 28)
        if record["row"]["model"] == "linear":
            assert entry["kind"] == "weights"
            weight = load_file(str(run / record["row"]["weights"]))["fc.weight"]
            np.testing.assert_array_equal(templates.reshape(10, -1), weight)
        else:
            assert entry["kind"] == "input gradient"
            assert np.abs(templates).max() > 0


def test_linear_templates_look_like_their_digits(tmp_path):
    """For >= 8 of 10 digits, class k's template correlates best with the mean test image of class k."""
    from bench.plugins.datasets import load_mnist

    code, output = bench("run", "--models", "linear", "--losses", "crossentropy", "--device", "cpu", "--limit",
                         "5000", "--epochs", "2", "--out", tmp_path / "run", "-q")
    assert code == 0, output
    (record_path,) = (tmp_path / "run" / "cells").glob("*.json")
    entry = json.loads(record_path.read_text())["templates"]
    templates = load_file(str(tmp_path / "run" / entry["path"]))["templates"].reshape(10, -1)

    x, y = load_mnist(tmp_path).test
    x, y = x.numpy().reshape(len(x), -1), y.numpy()
    means = np.stack([x[y == k].mean(0) for k in range(10)])

    def matches(t):
        corr = np.corrcoef(np.vstack([t, means]))[:10, 10:]
        return int((corr.argmax(axis=1) == np.arange(10)).sum())

    assert matches(templates) >= 8
    # Control: templates that mean nothing (random weights of the same scale) do not pass.
    rng = np.random.default_rng(0)
    assert matches(rng.normal(0, templates.std(), templates.shape)) < 8


def test_report_over_two_runs_compares_them(seed_run, tmp_path_factory):
    first, _ = seed_run
    second = tmp_path_factory.mktemp("b") / "run"
    code, output = bench("run", "--models", "linear,mlp", "--param", "mlp.hidden=16,32", "--device", "cpu",
                         "--limit", "1000", "--epochs", "1", "--out", second, "-q")
    assert code == 0, output
    out = tmp_path_factory.mktemp("compare")
    code, output = bench("report", first, second, "--out", out)
    assert code == 0, output

    summary = pd.read_csv(out / "summary.csv")
    labels = [f"{first.parent.name}/run", f"{second.parent.name}/run"]  # same folder name: more of the path
    assert sorted(summary["run"].unique()) == sorted(labels)
    assert len(summary) == 6 and len(pd.read_csv(out / "cells.csv")) == 9
    # A swept parameter makes its own row.
    second = summary[summary["run"] == labels[1]]
    assert sorted(second["model_label"]) == ["linear", "mlp [hidden=16]", "mlp [hidden=32]"]
    assert sorted(second["params"]) == ["{\"mlp.hidden\": 16}", "{\"mlp.hidden\": 32}", "{}"]
    page = (out / "index.html").read_text()
    assert all(label in page for label in labels) and page.count('<article class="config') == 6
    # The curves gain a row of panels per run.
    single = png_shape(first / "report" / "figures" / "val_loss.png")[0]
    assert png_shape(out / "figures" / "val_loss.png")[0] > 1.6 * single


def test_a_glob_over_runs_leaves_out_the_report_an_earlier_multi_run_report_put_there(seed_run, tmp_path):
    runs = tmp_path / "runs"
    shutil.copytree(seed_run[0], runs / "a")
    code, output = bench("run", "--models", "linear", "--device", "cpu", "--limit", "1000", "--epochs", "1",
                         "--out", runs / "b", "-q")
    assert code == 0, output
    code, output = bench("report", runs / "a", runs / "b")  # no --out: beside the first run, inside runs/
    assert code == 0, output
    first = runs / "report-a-and-1-more"
    assert json.loads((first / "report.json").read_text())["runs"] == [str((runs / n).resolve()) for n in "ab"]

    code, output = bench("report", *sorted(runs.iterdir()))  # what `bench report runs/*` passes
    assert code == 0, output
    assert f"note: {first} is a gridbench report, not a run directory: left out" in output
    assert sorted(os.listdir(runs)) == ["a", "b", "report-a-and-1-more"]  # the same report, made again
    summary = pd.read_csv(first / "summary.csv")
    assert sorted(summary["run"].unique()) == ["a", "b"] and len(summary) == 4

    code, output = bench("report", first)
    assert code == 2
    assert output.startswith(f"Error: {first} is a gridbench report, not a run directory")


def test_failed_cell_still_reports_and_names_are_escaped(tmp_path):
    run = tmp_path / "run"
    code, output = bench("run", "-p", "tests.report_test_plugin", "--models", f"linear,{NAN_MODEL}",
                         "--datasets", "blobs", "--losses", "crossentropy", "--device", "cpu", "--epochs", "3",
                         "--batch-size", "16", "--lr", "0.05", "--out", run, "-q", "--report")
    assert code == 1, output  # a failed cell: the run says so ...
    report = run / "report"
    summary = pd.read_csv(report / "summary.csv", keep_default_na=False)
    assert len(summary) == 2  # ... and the report still shows it
    failed = summary[summary["model"] == NAN_MODEL].iloc[0]
    assert failed["status"] == "1 failed" and failed["seeds"] == "0/1" and "diverged" in failed["error"]
    ok = summary[summary["model"] == "linear"].iloc[0]
    assert ok["status"] == "ok" and float(ok["test_acc"]) > 0.9

    page = (report / "index.html").read_text()
    assert NAN_MODEL not in page and "nan&lt;i&gt;&quot;m&quot;" in page
    assert not any(name in page for name in CLASSES if "<" in name or "&" in name)
    assert '<article class="config failed"' in page and "diverged" in page
    # The linear cell of 2-D inputs still gets its templates (one 1x2 strip per class, named) and confusion matrix.
    assert page.count('<figure class="tile">') == 3 and page.count('<table class="cm">') == 1
    assert "<figcaption>&lt;b&gt;bold&lt;/b&gt;</figcaption>" in page and 'alt="a&amp;b"' in page
    assert "1 failed" in (report / "summary.md").read_text()

    # On demand, every cell gets a page of its own, linked from the cells table.
    code, output = bench("report", run, "--cell-figures")
    assert code == 0, output
    results = pd.read_csv(run / "results.csv")
    pages = {cell_id: report / "cells" / f"r0-{cell_id}.html" for cell_id in results["cell_id"]}
    assert all(page.is_file() for page in pages.values())
    linear_id = results.query("model == 'linear'")["cell_id"].iloc[0]
    assert pages[linear_id].read_text().count('<figure class="tile">') == 3
    assert f'href="cells/r0-{linear_id}.html"' in (report / "index.html").read_text()


def test_report_of_something_that_is_not_a_run_is_one_clear_error(tmp_path):
    code, output = bench("report", tmp_path / "missing")
    assert code == 2 and re.search(r"Error: .*missing: no such run directory", output)
    code, output = bench("report", tmp_path)
    assert code == 2 and "is not a run directory (no results.csv)" in output


BROWSER_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync"]


@pytest.fixture
def chromium() -> str:
    """Debian's chromium driven by playwright; skipped where absent, but CI (which installs it) must have it."""
    exe = os.environ.get("BENCH_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    missing = "" if exe else "no chromium on PATH (apt-get install -y chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing = missing or "the playwright package is not installed (pip install -e '.[test]')"
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"CI needs a headless browser for the report test: {missing}")
        pytest.skip(missing)
    return exe


def test_index_html_renders_in_a_headless_browser(chromium, seed_run, tmp_path):
    from playwright.sync_api import sync_playwright

    index = seed_run[0] / "report" / "index.html"
    shot = tmp_path / "index.png"
    requested = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=BROWSER_ARGS)  # never a downloaded browser
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.on("request", lambda request: requested.append(request.url))
            page.goto(index.as_uri(), wait_until="load")
            widths = page.eval_on_selector_all("img", "imgs => imgs.map(i => i.complete ? i.naturalWidth : 0)")
            rows = page.eval_on_selector_all("table#summary tbody tr", "rows => rows.map(r => r.innerText)")
            page.screenshot(path=str(shot))
        finally:
            browser.close()
    print(f"screenshot: {shot}")
    assert len(widths) == len(COMPARATIVE) + 30 and min(widths) > 0  # every image loaded
    assert len(rows) == 3 and all("mnist" in r for r in rows)  # the summary table is there
    assert all(url.startswith(("file:", "data:")) for url in requested)  # nothing from a server
    assert png_shape(shot)[:2] == (1000, 1400)


#: Where the report's main tables are measured: the right edge of each, of the comparisons' verdict column,
#: and whether its wrapper scrolls sideways.
FIT = """() => [...document.querySelectorAll('table#runs-table, table#summary, table#comparisons')].map(t => {
  const wrap = t.closest('.table-wrap');
  const heads = [...t.querySelectorAll('thead tr:first-child th')];
  const verdict = heads.find(h => h.textContent.trim() === 'verdict');
  return {id: t.id, right: t.getBoundingClientRect().right, scrolls: wrap.scrollWidth > wrap.clientWidth,
          verdict: verdict ? verdict.getBoundingClientRect().right : null};
})"""


@pytest.fixture(scope="session")
def sweep_run(tmp_path_factory):
    """A wider study than the seed grid: two models, a swept width and learning rate, two seeds."""
    out = tmp_path_factory.mktemp("sweep") / "sweep"
    code, output = bench("run", "--models", "linear,mlp", "--losses", "mse,crossentropy", "--lr", "1e-3,1e-2",
                         "--param", "mlp.hidden=64,256", "--seeds", "0,1", "--limit", "500", "--epochs", "1",
                         "--device", "cpu", "--out", out, "-q")
    assert code == 0, output
    return out


@pytest.mark.slow
def test_the_main_tables_fit_a_1400_px_window_with_the_verdict_visible(chromium, seed_run, sweep_run, tmp_path):
    """Runs, Summary and Comparisons, in a report of one run and in one of two runs (more columns: run, lr,
    epochs, limit, a swept parameter in the model's name): no sideways scrolling at 1400 px."""
    from playwright.sync_api import sync_playwright

    code, output = bench("report", seed_run[0], sweep_run, "--out", tmp_path / "both")
    assert code == 0, output
    pages = [seed_run[0] / "report" / "index.html", tmp_path / "both" / "index.html"]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=BROWSER_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            measured = {}
            for index in pages:
                page.goto(index.as_uri(), wait_until="load")
                measured[index] = (page.evaluate(FIT), page.evaluate("document.documentElement.scrollWidth"))
        finally:
            browser.close()
    for index, (tables, page_width) in measured.items():
        assert sorted(t["id"] for t in tables) == ["comparisons", "runs-table", "summary"], index
        for t in tables:
            assert not t["scrolls"] and t["right"] <= 1400, (index, t)
        (comparisons,) = [t for t in tables if t["id"] == "comparisons"]
        assert comparisons["verdict"] is not None and comparisons["verdict"] <= 1400, (index, comparisons)
        assert page_width <= 1400, index


def test_deep_linear_template_is_the_product_of_its_weights_which_is_its_input_gradient():
    import torch

    from bench.data import DataSplits
    from bench.plugins.models import make_deep_linear, make_mlp
    from bench.templates import class_templates, input_gradients

    torch.manual_seed(0)
    x, y = torch.randn(60, 1, 4, 4), torch.arange(60) % 3
    data = DataSplits((x, y), (x, y), (x, y), ["a", "b", "c"])
    model = make_deep_linear((1, 4, 4), 3, hidden=5, depth=2)
    templates, kind = class_templates(model, data)
    assert kind == "weights" and templates.shape == (3, 1, 4, 4)
    w1, w2, w3 = (layer.weight for layer in model.net if isinstance(layer, torch.nn.Linear))
    torch.testing.assert_close(templates.reshape(3, 16), (w3 @ w2 @ w1).detach())
    # A linear map's gradient is its weight, whatever the input: the two kinds agree here.
    torch.testing.assert_close(input_gradients(model, x, y, 3), templates)

    relu = make_mlp((1, 4, 4), 3, hidden=5)
    templates, kind = class_templates(relu, data)
    assert kind == "input gradient" and templates.shape == (3, 1, 4, 4)
    # Class 0's template is the mean over class-0 inputs of d logit_0 / d input.
    xs = x[y == 0].clone().requires_grad_(True)
    relu(xs)[:, 0].sum().backward()
    torch.testing.assert_close(templates[0], xs.grad.mean(0))


def test_mean_ci_uses_student_t():
    mean, std, half = mean_ci([1.0, 2.0, 3.0])
    assert (mean, std) == (2.0, 1.0)
    assert half == pytest.approx(4.302652730 / math.sqrt(3))  # t(0.975, 2 dof) * std / sqrt(n)
    assert mean_ci([0.5])[0] == 0.5 and math.isnan(mean_ci([0.5])[2])
    assert all(math.isnan(v) for v in mean_ci([]))


def test_pareto_front_keeps_only_undominated_points():
    times = np.array([1.0, 2.0, 3.0, 4.0, 2.5])
    accs = np.array([0.5, 0.7, 0.6, 0.9, 0.8])
    assert [int(i) for i in pareto_front(times, accs)] == [0, 1, 4, 3]


def test_sort_and_filter_the_tables_in_a_headless_browser(chromium, seed_run):
    """Click a header: the rows reorder by that column's numbers; type a filter: only matching rows stay."""
    from playwright.sync_api import sync_playwright

    index = seed_run[0] / "report" / "index.html"
    summary = pd.read_csv(seed_run[0] / "report" / "summary.csv")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=BROWSER_ARGS)
        try:
            page = browser.new_page()
            errors = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(index.as_uri(), wait_until="load")

            def column(table, name):
                heads = page.eval_on_selector_all(f"table#{table} thead tr:first-child th",
                                                  "t => t.map(h => h.innerText)")
                i = next(i for i, h in enumerate(heads) if h.startswith(name))
                return page.eval_on_selector_all(f"table#{table} tbody tr:not([hidden])",
                                                 f"rows => rows.map(r => r.cells[{i}].innerText)"), i

            def shown(values):  # as the table prints them
                return [float(f"{v:.4f}") for v in values]

            before, acc_col = column("summary", "test_acc")
            assert [float(v.split()[0]) for v in before] == shown(sorted(summary["test_acc"], reverse=True))
            header = page.locator("table#summary thead tr:first-child th").nth(acc_col)
            header.click()  # a numeric column sorts descending first: the order it already has
            header.click()  # ... and ascending on the second click
            after, _ = column("summary", "test_acc")
            assert after != before and [float(v.split()[0]) for v in after] == shown(sorted(summary["test_acc"]))
            assert header.get_attribute("aria-sort") == "ascending"
            loss_col = column("summary", "loss")[1]
            page.locator("table#summary thead tr:first-child th").nth(loss_col).click()  # text: A to Z
            losses, _ = column("summary", "loss")
            assert losses == sorted(summary["loss"])

            # Filters: a substring, alternatives, a negation, a number comparison; the count follows.
            model_filter = page.locator("table#summary tr.filters input").nth(column("summary", "model")[1])
            model_filter.fill("linear")
            assert column("summary", "model")[0] == ["linear", "linear"]
            assert page.inner_text('.count[data-for="summary"]') == "2 of 3 rows"
            model_filter.fill("!linear")
            assert column("summary", "model")[0] == ["mlp"]
            model_filter.fill("")
            acc_filter = page.locator("table#summary tr.filters input").nth(acc_col)
            threshold = sorted(summary["test_acc"])[1]
            acc_filter.fill(f">={threshold}")
            kept = [float(v.split()[0]) for v in column("summary", "test_acc")[0]]
            assert sorted(kept) == shown(sorted(summary["test_acc"])[1:])
            acc_filter.fill("")
            assert page.inner_text('.count[data-for="summary"]') == "3 of 3 rows"

            # The cells table filters by any column too: seed 1 only, then mse|crossentropy.
            seed_filter = page.locator("table#cells tr.filters input").nth(column("cells", "seed")[1])
            seed_filter.fill("=1")
            assert column("cells", "seed")[0] == ["1", "1", "1"]
            loss_filter = page.locator("table#cells tr.filters input").nth(column("cells", "loss")[1])
            loss_filter.fill("mse|nothing")
            assert column("cells", "loss")[0] == ["mse"]
            assert not errors
        finally:
            browser.close()


def test_two_learning_rates_in_one_run_directory_are_two_configurations(tmp_path):
    """Seeds are pooled only within a configuration: the same grid at two --lr into one --out is two rows."""
    run = tmp_path / "run"
    heights = []
    for lr in ("0.05", "0.01"):
        code, output = bench("run", "-p", "tests.report_test_plugin", "--models", "linear", "--datasets", "blobs",
                             "--losses", "crossentropy", "--seeds", "0,1", "--epochs", "1", "--batch-size", "16",
                             "--lr", lr, "--device", "cpu", "--out", run, "-q", "--report")
        assert code == 0, output
        heights.append(png_shape(run / "report" / "figures" / "val_loss.png")[0])
    summary = pd.read_csv(run / "report" / "summary.csv")
    results = pd.read_csv(run / "results.csv")
    assert len(results) == 4 and sorted(summary["lr"]) == [0.01, 0.05] and (summary["seeds"] == "2/2").all()
    for _, row in summary.iterrows():
        assert row["test_acc"] == pytest.approx(results[results["lr"] == row["lr"]]["test_acc"].mean())
    # lr varies, so every table shows it (and only it of the recipe) ...
    md = (run / "report" / "summary.md").read_text()
    assert re.search(r"\|\s*lr\s*\|", md) and "batch_size" not in md
    assert re.search(r"^mnist|^blobs\s+linear\s+crossentropy\s+0\.01\s", output, flags=re.M)
    cells = pd.read_csv(run / "report" / "cells.csv")
    assert sorted(cells["lr"].unique()) == [0.01, 0.05]
    # ... the curves get a row of panels per learning rate, and the configurations their own sections.
    assert heights[1] > 1.6 * heights[0]
    page = (run / "report" / "index.html").read_text()
    assert "linear+crossentropy lr=0.05 on blobs" in page and "linear+crossentropy lr=0.01 on blobs" in page


def test_summary_tex_is_booktabs_with_the_best_value_per_dataset_in_bold(seed_run):
    tex = (seed_run[0] / "report" / "summary.tex").read_text()
    assert all(rule in tex for rule in ("\\toprule", "\\midrule", "\\bottomrule"))
    summary = pd.read_csv(seed_run[0] / "report" / "summary.csv")
    best = summary.loc[summary["test_acc"].idxmax()]
    rows = [line for line in tex.splitlines() if line.startswith("mnist")]
    assert len(rows) == 3
    bold_acc = [r for r in rows if f"\\textbf{{{best['test_acc']:.4f} $\\pm$ {best['test_acc_ci95']:.4f}}}" in r]
    assert len(bold_acc) == 1 and best["model"] in bold_acc[0]
    assert sum(r.count("\\textbf") for r in rows) == 3  # accuracy, loss and epoch time: one best each


def test_index_html_stays_under_its_size_limit_by_moving_configurations_to_pages(seed_run, tmp_path, monkeypatch):
    import bench.reports.build

    full = (seed_run[0] / "report" / "index.html").stat().st_size
    sections = (seed_run[0] / "report" / "index.html").read_text().count('<article class="config')
    monkeypatch.setattr(bench.reports.build, "PAGE_LIMIT", full - 20_000)  # room for all but one or two sections
    out = tmp_path / "report"
    report = bench.reports.build.build_report([seed_run[0]], out)
    size = report.index.stat().st_size
    assert size <= full - 20_000
    moved = [a for a, where in report.config_pages.items() if not where.startswith("#")]
    assert 1 <= len(moved) < sections
    page = report.index.read_text()
    for anchor in moved:
        assert f'<a id="{anchor}" href="configs/{anchor}.html">' in page
        assert (out / "configs" / f"{anchor}.html").read_text().count('<figure class="tile">') == 10
    assert "keep the report folder together" in page
