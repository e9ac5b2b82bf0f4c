"""The command line asks OpenMP for passive waiting unless the user chose; --threads sets torch's pool."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(tmp_path, *extra, env_extra=None):
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")}
    env.update(env_extra or {})
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "bench", "run", "--models", "linear", "--device", "cpu", "--limit",
                           "300", "--epochs", "1", "--out", str(out), "-q", *extra],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads((out / "env.json").read_text())


def test_passive_openmp_only_on_an_oversubscribed_machine_and_threads_option(tmp_path):
    env = _run(tmp_path, "--threads", "1")
    assert env["torch_threads"] == 1
    choice = env["openmp_choice"]
    load = float(choice.split("load average ")[1].split()[0])
    if load > os.cpu_count():
        assert choice.startswith("passive waiting") and env["omp_wait_policy"] == "PASSIVE"
    else:
        assert choice.startswith("default waiting") and env["omp_wait_policy"] is None


def test_the_choice_rule():
    from bench.threads import choose_passive

    assert choose_passive(2.5, 2) and not choose_passive(1.2, 2) and not choose_passive(2.0, 2)


@pytest.mark.parametrize("var,value", [("OMP_WAIT_POLICY", "active"), ("GOMP_SPINCOUNT", "300000")])
def test_a_users_openmp_choice_is_kept(tmp_path, var, value):
    env = _run(tmp_path, env_extra={var: value})
    assert env["omp_wait_policy"] == (value if var == "OMP_WAIT_POLICY" else None)
    assert env["torch_threads"] >= 1


def test_threads_must_not_be_negative(tmp_path):
    from click.testing import CliRunner

    from bench.cli import main

    result = CliRunner().invoke(main, ["run", "--threads", "-1", "--out", str(tmp_path / "r")])
    assert result.exit_code == 2 and "--threads" in result.output
