"""Suite-wide set-up and helpers: the real CLI in-process or as a subprocess, MNIST loaded once."""

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Installed third-party plugins never leak into tests: autoloading of the entry-point group ``bench``
# is off for the whole suite and every subprocess it starts. Tests that exercise autoloading remove the
# variable from the environment they hand to the subprocess.
os.environ["BENCH_DISABLE_PLUGIN_AUTOLOAD"] = "1"
os.environ.pop("BENCH_STRICT_PLUGINS", None)

#: The fixtures that gridbench ships for plugin authors (bench_host, bench_run); the suite uses them too.
pytest_plugins = ["bench.testing"]


@pytest.fixture(scope="session")
def mnist():
    """The embedded MNIST splits, loaded once for the whole session."""
    from bench.plugins.datasets import load_mnist

    return load_mnist(Path("unused"))


@pytest.fixture
def cli():
    """Invoke the real ``bench`` CLI in-process; returns click's Result."""
    from click.testing import CliRunner

    from bench.cli import main

    def invoke(*args):
        return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)

    return invoke


def bench_env() -> dict[str, str]:
    """The environment for a ``python -m bench`` subprocess: this checkout first, no installed plugins."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    env["BENCH_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    return env


def run_bench(*args, cwd=None, env=None, **kwargs):
    """Run ``python -m bench`` as a real subprocess against this checkout."""
    import subprocess

    return subprocess.run([sys.executable, "-m", "bench", *map(str, args)], cwd=cwd or REPO,
                          env={**bench_env(), **(env or {})}, capture_output=True, text=True, **kwargs)


def bench_on_a_terminal(*args, cwd, stream: str = "stdout", columns: int = 120) -> tuple[int, str]:
    """Run ``python -m bench ARGS`` with its ``stream`` (stdout or stderr) on a pseudo-terminal of ``columns``
    columns, as typed in an interactive shell (the other stream is discarded); returns (status, what it wrote)."""
    import fcntl
    import pty
    import struct
    import subprocess
    import termios

    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
    streams = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, stream: follower}
    proc = subprocess.Popen([sys.executable, "-m", "bench", *map(str, args)], cwd=cwd, env=bench_env(), **streams)
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the child closed its end
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    return proc.wait(), b"".join(chunks).decode(errors="replace").replace("\r\n", "\n")


@pytest.fixture(scope="module")
def registry():
    """The built-in plugins' registry (a module may define its own)."""
    from bench.host import Host

    return Host().registry


@pytest.fixture(scope="module")
def small(mnist):
    """MNIST with 2000 validation and 2000 test images (the training set is cut by each cell's limit)."""
    from bench.data import DataSplits

    (xv, yv), (xt, yt) = mnist.val, mnist.test
    return DataSplits(mnist.train, (xv[:2000], yv[:2000]), (xt[:2000], yt[:2000]), mnist.classes)
