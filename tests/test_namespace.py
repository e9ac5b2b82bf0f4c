"""One import namespace: gridbench installs a single import package, ``bench`` (the repository's ``plugins/``
and ``reports/`` install as ``bench.plugins`` and ``bench.reports``), so another distribution that ships
top-level ``plugins`` or ``reports`` packages can neither shadow gridbench nor delete its files.

Both install kinds are tried as a user would: throwaway distributions with a ``plugins/models.py`` (that
registers nothing) and a ``reports/__init__.py`` (without ``build_report``) are installed beside gridbench,
then ``bench list``, ``bench run --grid seed`` and ``bench report`` run, the distributions are uninstalled and
the same commands run again.
- editable (this checkout, as tox and the README install it): the throwaway packages go into a folder put
  first on ``PYTHONPATH``, ahead of every installed package;
- wheel: into the same site-packages as the wheel (tests/test_wheel.py's venv), then ``pip uninstall``.
"""

import os
import subprocess
import sys
import textwrap

import pytest

from tests.conftest import REPO, bench_env
from tests.test_wheel import FAST, bench, wheel_venv  # noqa: F401  (the module's venv fixture)

SHADOWS = {
    "plugins/__init__.py": "",
    "plugins/models.py": "MODELS = {}  # another project's 'plugins.models', no gridbench hooks\n",
    "reports/__init__.py": "'''another project's reports package: no build_report here'''\n",
}


def throwaway_distribution(folder):
    """A source tree of a distribution ``shadow-pkgs`` that installs top-level ``plugins`` and ``reports``."""
    for name, text in SHADOWS.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    (folder / "setup.py").write_text(textwrap.dedent("""\
        from setuptools import setup
        setup(name="shadow-pkgs", version="1.0", packages=["plugins", "reports"])
    """))
    return folder


def pip(*args, python=sys.executable, env=None):
    result = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), *map(str, args)],
                            capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    return result


def commands_work(run_bench, out):
    """``bench list``, a small ``--grid seed`` run and its report, each exit 0 with the built-in components."""
    listed = run_bench(["list"])
    assert listed.returncode == 0, listed.stderr[-2000:]
    assert "linear " in listed.stdout and "bench.plugins.models" in listed.stdout
    ran = run_bench(["run", "--grid", "seed", "--seeds", "0,1", *FAST, "--out", out])
    assert ran.returncode == 0, ran.stderr[-2000:]
    report = run_bench(["report", out])
    assert report.returncode == 0, report.stderr[-2000:]
    assert (out / "report" / "index.html").is_file()


@pytest.mark.slow
def test_top_level_plugins_and_reports_on_the_path_cannot_shadow_an_editable_gridbench(tmp_path):
    site = tmp_path / "site"
    pip("install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index", "--target", site,
        throwaway_distribution(tmp_path / "src"))
    assert (site / "plugins" / "models.py").is_file() and (site / "reports" / "__init__.py").is_file()
    env = {**bench_env(), "PYTHONPATH": os.pathsep.join([str(site), str(REPO)])}

    def run_bench(args):
        return subprocess.run([sys.executable, "-m", "bench", *map(str, args)], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=600)

    shadowed = subprocess.run([sys.executable, "-c", "import plugins, reports; print(plugins.__file__)"],
                              cwd=tmp_path, env=env, capture_output=True, text=True)
    assert shadowed.stdout.startswith(str(site))  # the throwaway packages are what `plugins` imports
    commands_work(run_bench, tmp_path / "runs" / "with")
    env["PYTHONPATH"] = str(REPO)  # "uninstalled"
    commands_work(run_bench, tmp_path / "runs" / "after")


@pytest.mark.slow
def test_top_level_plugins_and_reports_installed_beside_a_wheel_neither_shadow_nor_delete_it(wheel_venv,  # noqa: F811
                                                                                              tmp_path):
    venv, home, env = wheel_venv
    python = venv / "bin" / "python"
    where = subprocess.run([python, "-c", "import bench, os; print(os.path.dirname(bench.__file__))"], cwd=home,
                           env=env, capture_output=True, text=True, check=True).stdout.strip()
    ours = sorted(os.path.relpath(os.path.join(d, f), where) for d, _, fs in os.walk(where) for f in fs
                  if f.endswith(".py"))
    assert "plugins/models.py" in ours and "reports/__init__.py" in ours  # bench.plugins, bench.reports
    try:
        pip("install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
            throwaway_distribution(tmp_path / "src"), python=python, env=env)
        commands_work(lambda args: bench(args, venv, home, env), home / "runs" / "shadowed")
    finally:
        pip("uninstall", "--yes", "--quiet", "shadow-pkgs", python=python, env=env)
    left = sorted(os.path.relpath(os.path.join(d, f), where) for d, _, fs in os.walk(where) for f in fs
                  if f.endswith(".py"))
    assert left == ours  # uninstalling the other distribution deleted none of gridbench's files
    commands_work(lambda args: bench(args, venv, home, env), home / "runs" / "after")


def test_every_package_of_the_tree_is_one_the_wheel_installs():
    """setup.cfg lists its packages (bench.plugins and bench.reports live outside bench/): a new subpackage of
    bench/ missing from that list would be absent from the wheel while editable installs and this checkout
    still import it."""
    import configparser

    config = configparser.ConfigParser()
    config.read(REPO / "setup.cfg")
    listed = {name.strip() for name in config["options"]["packages"].split(",")}
    mapped = {name.strip(): folder.strip() for name, _, folder in
              (line.partition("=") for line in config["options"]["package_dir"].strip().splitlines())}
    tree = set()
    for package, folder in mapped.items():
        for init in (REPO / folder).rglob("__init__.py"):
            relative = init.parent.relative_to(REPO / folder).parts
            tree.add(".".join((package, *relative)))
    assert tree == listed
