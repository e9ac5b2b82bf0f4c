"""docs/plugins.md documents every hook with its exact signature, and its code examples work."""

import inspect
import re
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from bench import hookspecs
from bench.cli import main

DOC = Path(__file__).resolve().parents[1] / "docs" / "plugins.md"


def hookspec_signatures() -> dict[str, str]:
    """Each hook's signature as written in the docs: its annotations as the hookspecs spell them."""
    return {name: f"{name}{inspect.signature(fn)}".replace("'", "") for name, fn in vars(hookspecs).items()
            if callable(fn) and hasattr(fn, "bench_spec")}


def code_blocks(text: str, after_heading: str) -> list[str]:
    section = text.split(f"\n{after_heading}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_every_hookspec_is_documented_with_its_exact_signature():
    text = DOC.read_text()
    signatures = hookspec_signatures()
    assert set(signatures) == {"bench_register_models", "bench_register_losses", "bench_register_datasets",
                               "bench_register_grids", "bench_cli", "bench_register_executors",
                               "bench_register_optimizers", "bench_register_schedules",
                               "bench_run_start", "bench_cell_start", "bench_epoch_end", "bench_cell_end",
                               "bench_run_end", "bench_register_trackers"}
    for signature in signatures.values():
        assert f"### `{signature}`" in text, f"docs/plugins.md has no heading for {signature}"
    documented = set(re.findall(r"^### `(bench_\w+)\(", text, flags=re.M))
    assert documented == set(signatures), "docs/plugins.md documents hooks that do not exist"


def test_every_hookspec_says_when_it_is_called():
    for name, fn in vars(hookspecs).items():
        if hasattr(fn, "bench_spec"):
            assert "Called" in (fn.__doc__ or ""), f"{name} has no docstring saying when it is called"


@pytest.fixture
def doc_plugin(tmp_path, monkeypatch):
    """The documentation's minimal plugin, plus its grid and CLI examples, as an importable module."""
    text = DOC.read_text()
    (minimal,) = code_blocks(text, "## A minimal plugin")
    grid_example, cli_example = code_blocks(text, "## Hooks")
    (tmp_path / "doc_plugin.py").write_text(minimal + "\n" + grid_example + "\n" + cli_example)
    monkeypatch.syspath_prepend(str(tmp_path))
    import doc_plugin

    yield doc_plugin
    monkeypatch.delitem(__import__("sys").modules, "doc_plugin")


def test_the_minimal_plugin_and_its_documented_test_work(doc_plugin, bench_host, bench_run):
    text = DOC.read_text()
    (test_source,) = code_blocks(text, "## Testing with `bench.testing`")
    namespace = {}
    exec(textwrap.dedent(test_source).replace("import my_plugin", ""), {"my_plugin": doc_plugin}, namespace)
    namespace["test_two_layer_solves_xor_where_linear_cannot"](bench_host, bench_run)


def test_the_documented_grid_and_command_work(doc_plugin, bench_host):
    host = bench_host(doc_plugin)
    grid = host.registry.get_grid("xor-study")
    assert grid.triples(host.registry) == [("linear", "crossentropy", "xor"), ("two-layer", "crossentropy", "xor"),
                                           ("two-layer", "focal", "xor")]
    result = CliRunner().invoke(main, ["-p", "doc_plugin", "count"])
    assert result.exit_code == 0, result.output
    assert result.output == "5 models\n"  # linear, mlp, deep-linear, cnn and two-layer


def test_the_documented_stacked_loss_is_each_members_loss():
    (source,) = code_blocks(DOC.read_text(), "## Fused training: what a plugin can offer")
    namespace = {}
    exec(source, namespace)
    import torch

    focal = namespace["make_focal"](gamma=2.0)
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 4, 5, generator=generator).transpose(1, 2)  # [N, B, C] over [N, C, B] memory
    targets = torch.randint(0, 4, (3, 5), generator=generator)
    torch.testing.assert_close(focal.stacked(logits, targets),
                               torch.stack([focal(logits[i], targets[i]) for i in range(3)]))
