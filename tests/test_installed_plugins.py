"""Plugins from real installed distributions: built and pip-installed into a temporary folder.

``pip install --no-deps --no-build-isolation --target DIR`` writes each distribution's
``*.dist-info`` (with its ``entry_points.txt``) next to its modules; with ``DIR`` on ``PYTHONPATH``,
``importlib.metadata`` finds them exactly as it finds an installed package. The CLI runs as a
subprocess, ``python -m bench``, with autoloading switched back on.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "gridbench-example"

BROKEN_ERROR = "RuntimeError: this plugin is broken on purpose"

BUILTINS = [f"bench.plugins.{name}" for name in
            "models losses datasets grids executors slurm optimizers schedules progress trackers".split()]


def write_package(root: Path, dist: str, module: str, ep_name: str, source: str) -> Path:
    """A minimal setuptools project: one module, one entry point in the group ``bench``."""
    folder = root / dist
    folder.mkdir()
    (folder / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools>=64"]\nbuild-backend = "setuptools.build_meta"\n')
    (folder / "setup.cfg").write_text(textwrap.dedent(f"""\
        [metadata]
        name = {dist}
        version = 0.1.0

        [options]
        py_modules = {module}

        [options.entry_points]
        bench =
            {ep_name} = {module}
        """))
    (folder / f"{module}.py").write_text(textwrap.dedent(source))
    return folder


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """A folder holding three installed distributions: a broken one, one adding a command and a
    grid, and the repository's example plugin."""
    root = tmp_path_factory.mktemp("plugin-dists")
    broken = write_package(root, "bench-broken-plugin", "bench_broken_plugin", "broken", f"""\
        raise RuntimeError("{BROKEN_ERROR.split(': ', 1)[1]}")
        """)
    extras = write_package(root, "bench-extras-plugin", "bench_extras_plugin", "extras", """\
        import click

        from bench import hookimpl


        @hookimpl
        def bench_register_grids(register):
            register("tiny", [("linear", "crossentropy", "mnist")], description="one cell")


        @hookimpl
        def bench_cli(cli):
            @cli.command()
            def greet():
                '''Greet from an installed plugin.'''
                click.echo("greetings from bench-extras-plugin")
        """)
    example = root / "gridbench-example"  # a copy: building writes *.egg-info next to the sources
    shutil.copytree(EXAMPLE, example, ignore=shutil.ignore_patterns("*.egg-info", "build", "__pycache__"))
    target = root / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
         "--target", str(target), str(broken), str(extras), str(example)],
        check=True, capture_output=True, text=True,
    )
    assert sorted(p.name for p in target.glob("*.dist-info")) == [
        "bench_broken_plugin-0.1.0.dist-info", "bench_extras_plugin-0.1.0.dist-info",
        "gridbench_example-0.1.0.dist-info"]
    return target


def bench(site: Path, *args: str, autoload: bool = True, strict: bool = False, cwd: Path = REPO):
    env = {k: v for k, v in os.environ.items()
           if k not in ("BENCH_DISABLE_PLUGIN_AUTOLOAD", "BENCH_STRICT_PLUGINS", "PYTHONPATH")}
    env["PYTHONPATH"] = os.pathsep.join([str(site), str(REPO)])
    if not autoload:
        env["BENCH_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    if strict:
        env["BENCH_STRICT_PLUGINS"] = "1"
    return subprocess.run([sys.executable, "-m", "bench", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)


def warnings(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("warning:")]


EXPECTED_WARNING = (f"warning: plugin 'broken' (distribution bench-broken-plugin 0.1.0) failed to load and was "
                    f"skipped: {BROKEN_ERROR}")


def test_list_works_with_one_warning_and_shows_installed_components(site):
    result = bench(site, "list")
    assert result.returncode == 0, result.stderr
    assert warnings(result) == [EXPECTED_WARNING]
    assert result.stderr.strip() == EXPECTED_WARNING
    for name in ("rff-linear", "smooth-ce", "two-spirals", "spirals", "tiny", "linear", "mnist"):
        assert f"  {name} " in result.stdout
    assert "plugin: example" in result.stdout and "plugin: extras" in result.stdout


@pytest.mark.slow
def test_run_grid_seed_works_next_to_a_broken_plugin(site, tmp_path):
    out = tmp_path / "run"
    result = bench(site, "run", "--grid", "seed", "--limit", "2000", "--epochs", "1", "--device", "cpu", "-q",
                   "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert warnings(result) == [EXPECTED_WARNING]
    table = pd.read_csv(out / "results.csv")
    assert list(zip(table["model"], table["loss"], table["status"])) == [
        ("linear", "mse", "ok"), ("linear", "crossentropy", "ok"), ("mlp", "crossentropy", "ok")]
    assert (table["test_acc"] > 0.5).all()  # 2000 samples, one epoch: well above chance (0.1)


def plugin_names(listing: str) -> list[str]:
    """The plugins that ``bench plugins`` lists, in order: the first word of each line that is not indented,
    after the column headers."""
    header, below, *rows = listing.splitlines()
    assert header.split() == ["plugin", "distribution", "source", "status"] and below.strip() == "what it registered"
    return [line.split()[0] for line in rows if not line.startswith(" ")]


def test_plugins_shows_distributions_registrations_and_the_broken_one(site):
    result = bench(site, "plugins")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "broken" in plugin_names(result.stdout)

    def entry(name):
        i = next(i for i, line in enumerate(lines) if line.split()[0] == name)
        return lines[i].split(), lines[i + 1].strip()

    head, registered = entry("broken")
    assert head[1:4] == ["bench-broken-plugin", "0.1.0", "entry"]
    assert " ".join(head[5:]) == f"broken: {BROKEN_ERROR}"
    assert registered == "registered nothing"

    head, registered = entry("example")
    assert head[1:3] == ["gridbench-example", "0.1.0"] and head[-1] == "ok"
    assert registered == ("registered models: rff-linear; losses: smooth-ce; datasets: two-spirals; "
                          "optimizers: lion; grids: spirals")

    head, registered = entry("extras")
    assert registered == "registered grids: tiny; commands: greet"

    head, _ = entry("bench.plugins.models")
    assert head[-2:] == ["builtin", "ok"]


def test_strict_mode_makes_a_broken_plugin_a_hard_error_with_the_traceback(site):
    result = bench(site, "list", strict=True)
    assert result.returncode == 1
    assert "Traceback (most recent call last)" in result.stderr
    assert 'bench_broken_plugin.py", line 1' in result.stderr  # the plugin's own frame
    assert BROKEN_ERROR in result.stderr
    assert result.stderr.rstrip().splitlines()[-1] == (
        f"bench.host.BrokenPlugin: plugin 'broken' (distribution bench-broken-plugin 0.1.0) failed to load: "
        f"{BROKEN_ERROR}")
    assert result.stdout == ""


def test_p_no_blocks_an_installed_plugin(site):
    result = bench(site, "list", "-p", "no:broken", "-p", "no:example")
    assert result.returncode == 0
    assert result.stderr == ""
    assert "rff-linear" not in result.stdout and "  tiny " in result.stdout
    assert plugin_names(bench(site, "plugins", "-p", "no:broken").stdout) == [*BUILTINS, "example", "extras"]


def test_autoload_off_loads_only_builtins_and_p_modules(site):
    result = bench(site, "plugins", autoload=False)
    assert result.returncode == 0 and result.stderr == ""
    assert plugin_names(result.stdout) == BUILTINS

    result = bench(site, "plugins", "-p", "gridbench_example.plugin", autoload=False)
    assert result.returncode == 0 and result.stderr == ""
    head = next(line for line in result.stdout.splitlines() if line.startswith("gridbench_example.plugin"))
    assert head.split()[1:4] == ["gridbench-example", "0.1.0", "-p"]
    assert "rff-linear" in bench(site, "list", "-p", "gridbench_example.plugin", autoload=False).stdout


def test_an_installed_plugin_adds_a_command(site):
    result = bench(site, "greet")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "greetings from bench-extras-plugin\n"
    assert warnings(result) == [EXPECTED_WARNING]
    helptext = bench(site, "--help", autoload=True).stdout
    assert "greet" in helptext and "Greet from an installed plugin." in helptext
    off = bench(site, "greet", autoload=False)
    assert off.returncode == 2 and "No such command 'greet'" in off.stderr


def test_the_example_plugin_trains_after_pip_install(site, tmp_path):
    out = tmp_path / "run"
    result = bench(site, "run", "--models", "rff-linear,linear", "--losses", "crossentropy", "--datasets",
                   "two-spirals", "--epochs", "1", "--device", "cpu", "-q", "--out", str(out), "-p", "no:broken")
    assert result.returncode == 0, result.stderr
    table = pd.read_csv(out / "results.csv").set_index("model")
    assert table.loc["rff-linear", "status"] == "ok"
    assert table.loc["rff-linear", "test_acc"] > 0.9  # linear in random Fourier features solves the spirals
    assert table.loc["linear", "test_acc"] < 0.75  # a linear classifier in input space does not


def test_an_installed_plugin_whose_hook_raises_is_one_warning_naming_its_distribution(tmp_path):
    package = write_package(tmp_path, "bench-failing-hook", "bench_failing_hook", "failing", """\
        from bench import hookimpl


        @hookimpl
        def bench_register_datasets(register):
            register("half-done", lambda data_dir: None)
            raise OSError("cannot reach the data server")
        """)
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--no-index", "--target", str(target), str(package)], check=True, capture_output=True)
    result = bench(target, "plugins")
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [
        "warning: plugin 'failing' (distribution bench-failing-hook 0.1.0) failed in bench_register_datasets and "
        "was skipped: OSError: cannot reach the data server"]
    line = next(line for line in result.stdout.splitlines() if line.startswith("failing "))
    assert line.split()[1:4] == ["bench-failing-hook", "0.1.0", "entry"]
    assert line.endswith("broken: bench_register_datasets raised OSError: cannot reach the data server")
    assert "half-done" not in bench(target, "list").stdout


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=gridbench", "-c", "user.email=gridbench@example.org", *args],
                          cwd=repo, check=True, capture_output=True, text=True).stdout.strip()


def test_env_json_records_the_projects_git_commit_and_the_plugins_distributions(site, tmp_path):
    project = tmp_path / "project"  # the user's project, a git checkout: bench runs from there
    project.mkdir()
    (project / "train.py").write_text("print('v1')\n")
    git(project, "init", "-q")
    git(project, "add", "train.py")
    git(project, "commit", "-q", "-m", "v1")
    commit = git(project, "rev-parse", "HEAD")
    (project / "notes.txt").write_text("untracked files do not make a checkout dirty\n")

    def run(out: Path) -> dict:
        result = bench(site, "-p", "no:broken", "run", "--grid", "tiny", "--limit", "1000", "--epochs", "1",
                       "--device", "cpu", "-q", "--out", str(out), cwd=project)
        assert result.returncode == 0, result.stderr
        return json.loads((out / "env.json").read_text())

    env = run(tmp_path / "clean")
    assert env["git"] == {"commit": commit, "dirty": False, "root": str(project.resolve())}
    assert env["plugins"]["extras"] == {"source": "entry point", "distribution": "bench-extras-plugin",
                                        "version": "0.1.0", "status": "ok"}
    assert env["plugins"]["example"]["distribution"] == "gridbench-example"
    assert env["plugins"]["bench.plugins.models"]["distribution"] == "gridbench"
    assert "broken" not in env["plugins"]  # blocked with -p no:broken
    assert env["packages"]["torch"].split("+")[0] == env["torch"].split("+")[0]
    assert {"numpy", "pandas", "pluggy", "click"} <= set(env["packages"])
    assert not {"pytest", "playwright"} & set(env["packages"])  # the test suite's extra is not a dependency

    (project / "train.py").write_text("print('v2')\n")  # a tracked file changed, not committed
    env = run(tmp_path / "dirty")
    assert env["git"] == {"commit": commit, "dirty": True, "root": str(project.resolve())}

    result = bench(site, "-p", "no:broken", "report", str(tmp_path / "dirty"), cwd=project)
    assert result.returncode == 0, result.stderr
    page = (tmp_path / "dirty" / "report" / "index.html").read_text()
    assert f"{commit[:12]} (uncommitted changes)" in page
    software = page.split('<section id="software">')[1].split("</section>")[0]
    assert "bench-extras-plugin 0.1.0" in software and "gridbench-example 0.1.0" in software
    assert f"torch {env['packages']['torch']}" in software


def test_env_json_has_no_git_entry_outside_a_git_checkout(site, tmp_path):
    outside = tmp_path / "not-a-checkout"
    outside.mkdir()
    result = bench(site, "-p", "no:broken", "run", "--grid", "tiny", "--limit", "1000", "--epochs", "1",
                   "--device", "cpu", "-q", "--out", str(tmp_path / "run"), cwd=outside)
    assert result.returncode == 0, result.stderr
    env = json.loads((tmp_path / "run" / "env.json").read_text())
    assert "git" not in env and env["plugins"]["extras"]["distribution"] == "bench-extras-plugin"
