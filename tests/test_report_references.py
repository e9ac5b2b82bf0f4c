"""Published references: declared by dataset plugins, recorded by bench run, shown by the report beside each cell."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from click.testing import CliRunner

from bench import hookimpl
from bench.cli import main
from bench.errors import BenchError
from bench.host import BrokenPlugin
from bench.plugins.datasets import MNIST_REFERENCES
from bench.references import applies, differences, far_below, parse_references, references_for

LINEAR = "12.00% linear classifier (1-layer NN)"
MLP_MSE = "4.70% 2-layer NN, 300 hidden units, mean square error (published hidden=300; here hidden=256)"
MLP_CE = "1.60% 2-layer NN, 800 hidden units, cross-entropy (published hidden=800; here hidden=256)"
LENET = "0.95% LeNet-5"


def bench(*args) -> tuple[int, str]:
    result = CliRunner().invoke(main, [str(a) for a in args])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """linear, mlp (one and two hidden layers) and cnn with cross-entropy, and mlp with MSE, on 1000 MNIST images."""
    out = tmp_path_factory.mktemp("refs") / "run"
    quick = ["--limit", "1000", "--epochs", "1", "--device", "cpu", "--out", out, "-q"]
    code, output = bench("run", "--models", "linear,mlp,cnn", "--losses", "crossentropy", "--param", "mlp.depth=1,2",
                         *quick)
    assert code == 0, output
    code, output = bench("run", "--models", "mlp", "--losses", "mse", *quick, "--report")
    assert code == 0, output
    return out, output


def test_mnist_references_appear_beside_linear_mlp_and_cnn_cells(run):
    out, output = run
    summary = pd.read_csv(out / "report" / "summary.csv", keep_default_na=False)
    cells = pd.read_csv(out / "report" / "cells.csv", keep_default_na=False)
    assert len(summary) == 5 and len(cells) == 5
    md = (out / "report" / "summary.md").read_text()
    expected = {("linear", "crossentropy", 1): LINEAR, ("mlp", "mse", 1): MLP_MSE, ("mlp", "crossentropy", 1): MLP_CE,
                ("mlp", "crossentropy", 2): "",  # a 3-layer net is another family: no reference
                ("cnn", "crossentropy", 1): LENET}
    for table in (summary, cells):
        for _, row in table.iterrows():
            depth = json.loads(row["params"]).get("mlp.depth", 1)
            text = expected[(row["model"], row["loss"], depth)]
            if not text:
                assert row["reference"] == "" and row["reference_test_error"] == ""
                continue
            error = float(text.split("%")[0]) / 100
            assert f"{error:.2%} {row['reference']}" == text
            assert float(row["reference_test_error"]) == pytest.approx(error)
            # 1000 training images (--limit): not the training the published result had, so no gap, no flag
            assert row["reference_gap"] == "" and row["far_below"] == ""
            assert row["not_comparable"] == "trained on 1000 samples (--limit)"
    # The Markdown summary (and the terminal) show the reference, and why there is no gap, beside each row.
    for _, row in summary.iterrows():
        depth = json.loads(row["params"]).get("mlp.depth", 1)
        text = expected[(row["model"], row["loss"], depth)]
        if text:
            line = next(line for line in md.splitlines() if text in line and f" {row['loss']} " in line
                        and row["model"] in line)
            assert "not comparable: trained on 1000 samples (--limit)" in line and " pts" not in line
    assert LENET in output and LINEAR in output and MLP_MSE in output
    assert "⚠" not in output and "⚠" not in md
    # The page names each reference's source.
    page = (out / "report" / "index.html").read_text()
    assert "Gradient-based learning applied to document recognition" in page and "Simard" in page
    assert "⚠" not in page and "far below its reference" not in page


def test_references_are_recorded_in_env_json_with_the_models_defaults(run):
    env = json.loads((run[0] / "env.json").read_text())
    refs = env["references"]["mnist"]
    assert [r["label"] for r in refs] == [r["label"] for r in MNIST_REFERENCES]
    mlp = next(r for r in refs if r["model"] == "mlp")
    assert mlp["defaults"] == {"hidden": 256, "depth": 1, "activation": "relu"}


def test_the_family_match_is_model_loss_and_the_declared_params():
    ce = {"model": "mlp", "loss": "crossentropy", "params": {"depth": 1}, "published": {"hidden": 800},
          "test_error": 0.016, "defaults": {"hidden": 256, "depth": 1}}
    config = {"model": "mlp", "loss": "crossentropy", "dataset": "mnist", "params": {}}
    assert applies(ce, config) and differences(ce, config) == {"hidden": (800, 256)}
    assert differences(ce, {**config, "params": {"mlp.hidden": 800}}) == {}
    assert not applies(ce, {**config, "loss": "mse"})
    assert not applies(ce, {**config, "params": {"mlp.depth": 2}})
    assert not applies(ce, {**config, "model": "deep-linear"})
    linear = {"model": "linear", "test_error": 0.12}
    assert applies(linear, {**config, "model": "linear", "loss": "hinge"})  # no loss named: any loss
    # far below: a test error above twice the reference's plus one point
    assert far_below(0.26, linear) and not far_below(0.25, linear) and not far_below(float("nan"), linear)
    assert not far_below(0.037, {"test_error": 0.016}) and far_below(0.029, {"test_error": 0.0095})


@pytest.mark.parametrize("value, message", [
    ("LeCun", "references must be a list of dicts"),
    ([{"model": "m", "test_error": 12.0, "label": "l", "source": "s"}], "'test_error' must be a fraction in [0, 1)"),
    ([{"model": "m", "test_error": 0.1, "label": "l"}], "'source' must be a non-empty string"),
    ([{"model": "m", "test_error": 0.1, "label": "l", "source": "s", "year": 1998}], "unknown key 'year'"),
    ([{"model": "m", "test_error": 0.1, "label": "l", "source": "s", "params": {"hidden": [1, 2]}}],
     "'params' must map parameter names to numbers or strings"),
    ([{"model": "m", "test_error": 0.1, "label": "l", "source": "s", "loss": 3}], "'loss' must be a loss name"),
])
def test_bad_references_are_rejected_with_the_reason(value, message):
    with pytest.raises(BenchError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        parse_references(value, "plugin 'p' registered dataset 'd'")


class BadReferences:
    @hookimpl
    def bench_register_datasets(self, register):
        register("tiny", lambda data_dir: None, references=[{"model": "linear", "test_error": 5}])


class ReferencesOnAModel:
    @hookimpl
    def bench_register_models(self, register):
        register("tiny-model", lambda shape, classes: None, references=[])


class GoodReferences:
    @hookimpl
    def bench_register_datasets(self, register):
        register("tiny", lambda data_dir: None, references=[
            {"model": "mlp", "params": {"depth": 2}, "test_error": 0.03, "label": "3-layer NN", "source": "a paper"}])


def test_a_plugin_with_bad_references_is_broken_and_names_them(bench_host):
    with pytest.raises(BrokenPlugin, match=r"dataset 'tiny': reference 1: 'label' must be a non-empty string"):
        bench_host(BadReferences())
    with pytest.raises(BrokenPlugin, match=r"model 'tiny-model': only a dataset takes references"):
        bench_host(ReferencesOnAModel())
    registry = bench_host(GoodReferences()).registry
    (recorded,) = references_for(registry, ["tiny", "mnist"])["tiny"]
    assert recorded["label"] == "3-layer NN" and recorded["defaults"]["depth"] == 1
    assert set(references_for(registry, ["tiny", "mnist"])) == {"tiny", "mnist"}


@pytest.mark.parametrize("extra, why", [
    ([], ""),
    (["--limit", "100"], "trained on 100 samples (--limit)"),
    (["--param", "dots.n=200"], "dataset parameters changed (dots.n)"),
])
def test_the_gap_is_shown_only_where_training_is_comparable(tmp_path, extra, why):
    """The gap to a published result (and its far-below flag) needs the published training: the whole
    training set of the dataset as registered. A --limit or a dataset parameter makes it not comparable."""
    from tests.stats_test_plugin import DOTS_REFERENCE

    code, output = bench("run", "-p", "tests.stats_test_plugin", "--models", "linear", "--datasets", "dots",
                         "--losses", "crossentropy", "--epochs", "1", "--device", "cpu", "--threads", "1", "-q",
                         *extra, "--out", tmp_path / "run", "--report")
    assert code == 0, output
    summary = pd.read_csv(tmp_path / "run" / "report" / "summary.csv", keep_default_na=False)
    row = summary.iloc[0]
    assert row["reference"] == DOTS_REFERENCE["label"] and row["not_comparable"] == why
    md = (tmp_path / "run" / "report" / "summary.md").read_text()
    line = next(line for line in md.splitlines() if DOTS_REFERENCE["label"] in line)
    if why:
        assert row["reference_gap"] == "" and row["far_below"] == ""
        assert f"not comparable: {why}" in line and "pts" not in line and "⚠" not in line
    else:
        error = 1 - float(row["test_acc"])
        assert float(row["reference_gap"]) == pytest.approx(error - DOTS_REFERENCE["test_error"])
        assert f"{float(row['reference_gap']) * 100:+.2f} pts" in line
        assert (str(row["far_below"]) == "True") == far_below(error, DOTS_REFERENCE) == ("far below" in line)
