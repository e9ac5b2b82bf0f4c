"""A wheel (not an editable install) in a fresh virtual environment outside the source tree runs every
command the README shows: the studies and the data ship with the package, and nothing reads the checkout.

The venv gets gridbench from the wheel and nothing else; its dependencies (torch, pandas, ...) come from
this interpreter's site-packages through a ``.pth`` line, so the test installs no second copy of torch.
``bench run`` commands get ``--limit 500 --epochs 1 --device cpu -q`` so that they take seconds."""

import os
import re
import shlex
import site
import subprocess
import sys
import sysconfig

import pytest

from tests.conftest import REPO

FAST = ["--limit", "500", "--epochs", "1", "--device", "cpu", "-q"]


def readme_commands() -> list[list[str]]:
    """The ``bench`` commands of the README's shell blocks, in order (console blocks: the ``$`` lines)."""
    text = (REPO / "README.md").read_text()
    commands = []
    for lang, body in re.findall(r"```(bash|console)\n(.*?)```", text, flags=re.S):
        for line in body.splitlines():
            line = line[2:] if lang == "console" and line.startswith("$ ") else line if lang == "bash" else ""
            for part in line.split("#", 1)[0].split("&&"):
                words = shlex.split(part)
                if words[:1] == ["bench"]:
                    commands.append(words)
    # the inline commands of the reference study's paragraph
    for inline in re.findall(r"`(bench run --study [^`]+)`", text.replace("\n", " ")):
        commands.append(shlex.split(inline))
    return commands


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("wheel")
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                            "--wheel-dir", str(tmp / "dist"), str(REPO)], capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    (wheel,) = (tmp / "dist").glob("gridbench-*.whl")
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    install = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet",
                              "--no-deps", "--no-index", str(wheel)], capture_output=True, text=True, env=clean)
    assert install.returncode == 0, install.stderr
    # then the dependencies (not before: pip would take this interpreter's gridbench for an installed one)
    deps = [p for p in [*site.getsitepackages(), sysconfig.get_paths()["purelib"]] if os.path.isdir(p)]
    with open(os.path.join(purelib, "zz_dependencies.pth"), "w") as pth:  # after the venv's own packages
        pth.write("\n".join(dict.fromkeys(deps)) + "\n")
    home = tmp / "home"  # the user's folder: outside the source tree
    home.mkdir()
    env = dict(clean)
    env.update(PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}", BENCH_DISABLE_PLUGIN_AUTOLOAD="1")
    return venv, home, env


def bench(args, venv, home, env):
    return subprocess.run([str(venv / "bin" / "bench"), *map(str, args)], cwd=home, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_a_wheel_in_a_fresh_venv_runs_the_readme_commands(wheel_venv):
    venv, home, env = wheel_venv
    where = subprocess.run([venv / "bin" / "python", "-c", "import bench; print(bench.__file__)"], cwd=home,
                           env=env, capture_output=True, text=True, check=True).stdout
    assert where.startswith(str(venv)), where  # the wheel's package, not the checkout
    commands = readme_commands()
    assert ["bench", "run", "--study", "linearity", "--device", "cpu"] in commands
    assert any(c[:2] == ["bench", "compare"] for c in commands) and any(c[:2] == ["bench", "list"] for c in commands)
    for base in ("runs/base", "runs/new"):  # what the README's bench compare line compares
        assert bench(["run", "--grid", "seed", "--seeds", "0,1", *FAST, "--out", base], venv, home, env).returncode == 0
    for command in commands:
        args = command[1:] + (FAST if command[1] == "run" else [])
        result = bench(args, venv, home, env)
        assert result.returncode == 0, f"{shlex.join(command)}: {result.stderr[-2000:]}"
        if command[1:2] == ["list"]:
            assert "studies:" in result.stdout and "linearity" in result.stdout
    assert (home / "runs" / "seed" / "report" / "index.html").is_file()  # bench report runs/seed


@pytest.mark.slow
def test_the_shipped_study_runs_by_name_and_a_missing_one_says_what_ships(wheel_venv):
    venv, home, env = wheel_venv
    result = bench(["run", "--study", "linearity", "--seeds", "0", *FAST, "--dry-run", "--out", "runs/lin"],
                   venv, home, env)
    assert result.returncode == 0, result.stderr
    assert "16 cell(s)" in result.stdout  # 2 models x 2 losses x 4 learning rates each, one seed
    missing = bench(["run", "--study", "examples/studies/linearity.yaml", "--out", "runs/x"], venv, home, env)
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert "ships with gridbench: linearity" in missing.stderr
    help_text = bench(["run", "--help"], venv, home, env).stdout
    assert "examples/" not in help_text and "--study linearity" in help_text  # points at what a wheel has
