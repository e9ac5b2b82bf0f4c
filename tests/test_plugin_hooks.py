"""The plugin hooks and failure handling, through the real CLI with ``-p`` modules written by the test."""

import itertools
import textwrap

import pandas as pd
import pytest
from click.testing import CliRunner

from bench.cli import main
from bench.errors import BenchError
from bench.grid import expand
from bench.host import BrokenPlugin, Host

_counter = itertools.count()


@pytest.fixture
def plugin_module(tmp_path, monkeypatch):
    """Write a plugin module (source text) under a fresh name importable by ``-p``; return its name."""
    monkeypatch.syspath_prepend(str(tmp_path))

    def write(source: str) -> str:
        name = f"hooks_test_plugin_{next(_counter)}"
        (tmp_path / f"{name}.py").write_text("from bench import hookimpl\n" + textwrap.dedent(source))
        return name

    return write


def invoke(*args, env=None):
    return CliRunner().invoke(main, list(args), env=env)


GRID_PLUGIN = """
@hookimpl
def bench_register_grids(register):
    register("pairs", [("linear", "crossentropy", "mnist"), ("mlp", "hinge", "mnist"),
                       ("linear", "hinge", "mnist")], description="three hand-picked cells")
    register("every-linear", lambda registry: [(m, l, "mnist") for m in registry.names("model")
                                                if "linear" in m for l in ("mse", "crossentropy")])
"""


def test_builtin_grids_come_through_the_hook():
    host = Host(autoload=False)
    grids = {g.name: g for g in host.registry.grids()}
    assert {n: g.plugin for n, g in grids.items()} == {"all": "bench.plugins.grids", "seed": "bench.plugins.grids"}
    assert grids["seed"].triples(host.registry) == [
        ("linear", "mse", "mnist"), ("linear", "crossentropy", "mnist"), ("mlp", "crossentropy", "mnist")]
    assert len(grids["all"].triples(host.registry)) == 4 * 3 * 3
    assert host.plugins["bench.plugins.grids"].registered == {"grid": ["all", "seed"]}


def test_blocking_the_builtin_grids_removes_them():
    host = Host(["no:bench.plugins.grids"], autoload=False)
    assert host.registry.grid_names() == []
    with pytest.raises(BenchError, match="no plugin declares a default grid"):
        expand(host.registry)  # the default grid is 'seed'


def test_expand_restricts_a_grid_keeping_the_order_of_the_explicit_lists():
    registry = Host(autoload=False).registry
    cells = expand(registry, grid="all", models=["mlp", "linear"], losses=["mse"], datasets=["mnist"])
    assert [(c.model, c.loss) for c in cells] == [("mlp", "mse"), ("linear", "mse")]
    cells = expand(registry, grid="seed", losses=["crossentropy"])
    assert [c.model for c in cells] == ["linear", "mlp"]
    with pytest.raises(BenchError, match="no cells"):
        expand(registry, grid="seed", models=["cnn"])


def test_a_plugin_grid_runs_with_grid_name(plugin_module, tmp_path):
    name = plugin_module(GRID_PLUGIN)
    host = Host([name], autoload=False)
    cells = expand(host.registry, grid="every-linear")
    assert [(c.model, c.loss) for c in cells] == [
        ("deep-linear", "mse"), ("deep-linear", "crossentropy"), ("linear", "mse"), ("linear", "crossentropy")]
    assert [(c.model, c.loss) for c in expand(host.registry, grid="pairs", losses=["hinge"])] == [
        ("mlp", "hinge"), ("linear", "hinge")]

    out = tmp_path / "run"
    result = invoke("run", "-p", name, "--grid", "pairs", "--models", "linear", "--limit", "500", "--epochs", "1",
                    "--device", "cpu", "--out", str(out), "-q")
    assert result.exit_code == 0, result.output
    table = pd.read_csv(out / "results.csv")
    assert list(zip(table["model"], table["loss"], table["status"])) == [
        ("linear", "crossentropy", "ok"), ("linear", "hinge", "ok")]


def test_list_and_plugins_show_plugin_grids(plugin_module):
    name = plugin_module(GRID_PLUGIN)
    listing = invoke("list", "-p", name)
    assert listing.exit_code == 0
    grids = listing.output.split("grids:")[1]
    assert "pairs" in grids and "three hand-picked cells" in grids and f"plugin: {name}" in grids
    plugins = invoke("plugins", "-p", name)
    assert "registered grids: every-linear, pairs" in plugins.output


def test_unknown_grid_lists_registered_ones_with_a_close_match(plugin_module):
    result = invoke("run", "-p", plugin_module(GRID_PLUGIN), "--grid", "pair", "--out", "unused")
    assert result.exit_code == 2
    assert result.stderr.strip() == "Error: unknown grid 'pair' (did you mean 'pairs'?); valid: all, every-linear, " \
                                    "pairs, seed"


def test_a_grid_naming_an_unknown_component_is_one_clear_error(plugin_module):
    name = plugin_module("""
        @hookimpl
        def bench_register_grids(register):
            register("typo", [("linear", "crossentropy", "mnsit")])
    """)
    result = invoke("run", "-p", name, "--grid", "typo", "--out", "unused")
    assert result.exit_code == 2
    assert result.stderr.strip() == (f"Error: grid 'typo' (plugin '{name}'): unknown dataset 'mnsit' "
                                     "(did you mean 'mnist'?); valid: fashion-mnist, kmnist, mnist")


def test_a_duplicate_grid_names_both_plugins_and_the_later_plugin_is_skipped(plugin_module):
    name = plugin_module("""
        @hookimpl
        def bench_register_models(register):
            register("extra-linear", lambda shape, n: None)

        @hookimpl
        def bench_register_grids(register):
            register("seed", [("linear", "mse", "mnist")])
    """)
    result = invoke("list", "-p", name)
    assert result.exit_code == 0
    assert result.stderr.splitlines() == [
        f"warning: plugin '{name}' failed in bench_register_grids and was skipped: DuplicateComponent: grid 'seed' "
        f"is registered twice: by plugin 'bench.plugins.grids' and by plugin '{name}'"]
    assert "extra-linear" not in result.output  # what the broken plugin registered is forgotten


CLI_PLUGIN = """
import click

@hookimpl
def bench_cli(cli):
    @cli.command()
    @click.argument("who")
    def hello(who):
        '''Say hello (from a plugin).'''
        from bench.cli import make_host
        host, registry = make_host()
        click.echo(f"hello {who}: {len(registry.names('model'))} models")
"""


def test_a_plugin_adds_a_command(plugin_module):
    name = plugin_module(CLI_PLUGIN)
    result = invoke("-p", name, "hello", "world")
    assert result.exit_code == 0, result.output
    assert result.output == "hello world: 4 models\n"
    helptext = invoke("-p", name, "--help").output
    assert "hello" in helptext and "Say hello (from a plugin)." in helptext
    assert "hello" in invoke("-p", name, "plugins").output.split(name)[1].split("\n")[1]


def test_plugin_commands_do_not_leak_into_the_group(plugin_module):
    name = plugin_module(CLI_PLUGIN)
    assert invoke("-p", name, "hello", "x").exit_code == 0
    assert "hello" not in main.commands
    result = invoke("hello", "x")
    assert result.exit_code == 2 and "No such command 'hello'" in result.output


def test_a_plugin_command_cannot_replace_a_builtin(plugin_module):
    name = plugin_module("""
        import click

        @hookimpl
        def bench_cli(cli):
            @cli.command(name="list")
            def hijack():
                click.echo("hijacked")
    """)
    result = invoke("-p", name, "--help")
    assert result.exit_code == 0
    assert (f"warning: plugin '{name}' failed in bench_cli and was skipped: BenchError: command 'list' is already "
            f"taken by the bench command line") in result.stderr
    listing = invoke("-p", name, "list")
    assert listing.exit_code == 0 and "hijacked" not in listing.output and "models:" in listing.output


FAILING_HOOK = """
@hookimpl
def bench_register_models(register):
    register("half-registered", lambda shape, n: None)
    raise ValueError("something inside the plugin went wrong")

@hookimpl
def bench_register_losses(register):
    register("never-registered", lambda: None)
"""


def test_a_failing_hook_is_one_warning_and_everything_else_works(plugin_module):
    name = plugin_module(FAILING_HOOK)
    result = invoke("list", "-p", name)
    assert result.exit_code == 0
    assert result.stderr.splitlines() == [
        f"warning: plugin '{name}' failed in bench_register_models and was skipped: "
        "ValueError: something inside the plugin went wrong"]
    assert "half-registered" not in result.output and "never-registered" not in result.output
    assert "linear" in result.output and "crossentropy" in result.output

    plugins = invoke("plugins", "-p", name)
    line = next(line for line in plugins.output.splitlines() if line.startswith(name))
    assert "broken: bench_register_models raised ValueError: something inside the plugin went wrong" in line


def test_strict_mode_raises_with_the_traceback(plugin_module):
    name = plugin_module(FAILING_HOOK)
    result = invoke("list", "-p", name, env={"BENCH_STRICT_PLUGINS": "1"})
    assert result.exit_code == 1
    assert isinstance(result.exception, BrokenPlugin)
    assert str(result.exception) == (f"plugin '{name}' failed in bench_register_models: "
                                     "ValueError: something inside the plugin went wrong")
    assert isinstance(result.exception.__cause__, ValueError)


def test_a_module_that_raises_on_import_is_broken_not_fatal(plugin_module):
    name = plugin_module("raise ImportError('needs a library that is not installed')\n")
    result = invoke("plugins", "-p", name)
    assert result.exit_code == 0
    assert result.stderr.splitlines() == [
        f"warning: plugin '{name}' failed to load and was skipped: ImportError: needs a library that is not installed"]
    assert "broken: ImportError: needs a library that is not installed" in result.output
    assert "bench.plugins.models" in result.output


def test_p_with_a_missing_module_is_a_user_error():
    result = invoke("list", "-p", "no_such_plugin_module_anywhere")
    assert result.exit_code == 2
    assert result.stderr.strip() == ("Error: -p no_such_plugin_module_anywhere: no module named "
                                     "'no_such_plugin_module_anywhere' (is it on sys.path?)")


def test_p_no_blocks_a_builtin_plugin():
    result = invoke("list", "-p", "no:bench.plugins.losses")
    assert result.exit_code == 0
    losses = result.output.split("losses:")[1].split("datasets:")[0]
    assert losses.strip() == ""
    assert "bench.plugins.losses" not in invoke("plugins", "-p", "no:bench.plugins.losses").output


def test_a_misspelled_hook_is_reported_not_silently_ignored(plugin_module):
    name = plugin_module("""
        @hookimpl
        def bench_register_model(register):
            register("never-seen", lambda shape, n: None)
    """)
    result = invoke("plugins", "-p", name)
    assert result.exit_code == 0
    assert result.stderr.splitlines() == [
        f"warning: plugin '{name}' failed to load and was skipped: BenchError: @hookimpl bench_register_model is not "
        "a gridbench hook (did you mean 'bench_register_models'?)"]
