"""Malformed input, tried systematically: each case gives one clear line on stderr and exit status 2,
never a traceback, and leaves an existing run directory exactly as it was."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import bench.plugins.datasets as datasets
from bench.cli import main
from tests.test_hostile import snapshot

QUICK = ["--limit", "500", "--epochs", "1", "-q"]


@pytest.fixture(scope="module")
def existing_run(tmp_path_factory) -> Path:
    """A finished run directory that every bad invocation below is pointed at."""
    out = tmp_path_factory.mktemp("existing") / "run"
    result = CliRunner().invoke(main, ["run", "--models", "linear", "--device", "cpu", *QUICK, "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


def invoke_bad(args: list[str]) -> str:
    """Run the CLI; check the one-line error and exit status 2; return the line."""
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)  # not an exception escaping as a traceback
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ")
    return lines[0]


CASES = {
    "unknown model": (["--models", "nosuch"], "unknown model 'nosuch'; valid: cnn, deep-linear, linear, mlp"),
    "misspelt model": (["--models", "lineer"], "unknown model 'lineer' (did you mean 'linear'?)"),
    "unknown loss": (["--losses", "l1"], "unknown loss 'l1'"),
    "unknown dataset": (["--datasets", "cifar"], "valid: fashion-mnist, kmnist, mnist"),
    "unknown grid": (["--grid", "big"], "unknown grid 'big'; valid: all, seed"),
    "unknown optimizer": (["--optimizer", "rmsprop"], "unknown optimizer 'rmsprop'; valid: adam, adamw, sgd"),
    "param without =": (["--models", "mlp", "--param", "mlp.hidden64"],
                        "--param mlp.hidden64: expected NAME.KEY=V1,V2 (missing '=')"),
    "param without .": (["--models", "mlp", "--param", "mlphidden=64"], "missing '.' between component and key"),
    "param wrong type": (["--models", "mlp", "--param", "mlp.hidden=big"],
                         "--param mlp.hidden=big: 'big' is not an integer"),
    "param float for an integer": (["--param", "mnist.val_size=1.5"], "'1.5' is not an integer"),
    "param unknown key": (["--models", "mlp", "--param", "mlp.width=3"],
                          "mlp' has no parameter 'width'; valid: activation, depth, hidden"),
    "param unknown component": (["--param", "resnet.depth=3"], "unknown component in param resnet.depth=3: 'resnet'"),
    "param not in grid": (["--models", "linear", "--param", "mlp.hidden=3"], "'mlp' is not part of this grid"),
    "param empty value": (["--models", "mlp", "--param", "mlp.hidden=64,"], "empty value in '64,'"),
    "empty model list": (["--models", ""], "--models needs a comma-separated list of names, got ''"),
    "model list with a hole": (["--models", "linear,,mlp"], "--models needs a comma-separated list"),
    "empty seeds": (["--seeds", ""], "--seeds needs comma-separated integers, got ''"),
    "seeds not integers": (["--seeds", "0,one"], "--seeds needs comma-separated integers, got '0,one'"),
    "negative seed": (["--seeds", "-1"], "--seeds must be integers from 0 to 2**64-1"),
    "seed twice": (["--seeds", "1,1"], "--seeds lists a seed twice"),
    "repeat zero": (["--repeat", "0"], "--repeat must be between 1 and 10000, got 0"),
    "repeat and seeds": (["--repeat", "2", "--seeds", "0,1"], "give seeds or repeat, not both"),
    "negative epochs": (["--epochs", "-1"], "--epochs must be >= 1, got -1"),
    "zero epochs": (["--epochs", "0"], "--epochs must be >= 1, got 0"),
    "negative batch size": (["--batch-size", "-5"], "--batch-size must be >= 1, got -5"),
    "zero batch size": (["--batch-size", "0"], "--batch-size must be >= 1, got 0"),
    "negative lr": (["--lr", "-0.1"], "--lr must be a finite number > 0, got -0.1"),
    "negative limit": (["--limit", "-3"], "--limit must be an integer >= 0, got -3"),
    "epochs not an integer": (["--epochs", "two"], "--epochs needs integers, got 'two'"),
    "lr not a number": (["--lr", "fast"], "--lr needs numbers, got 'fast'"),
    "unknown option": (["--epoch", "2"], "No such option '--epoch'. (Did you mean one of: '--epochs', '--report'?) "
                                             "(see: bench run --help)"),
    "unknown device": (["--device", "tpu"], "--device tpu: unknown device; valid: auto, cpu, cuda, cuda:N, mps"),
    "missing cuda index": (["--device", "cuda:99"], "--device cuda:99: "),
    "missing plugin module": (["-p", "no_such_plugin_xyz"],
                              "-p no_such_plugin_xyz: no module named 'no_such_plugin_xyz'"),
}


@pytest.mark.parametrize("args, expected", CASES.values(), ids=CASES.keys())
def test_bad_option_gives_one_line_exit_2_and_leaves_the_run_dir_alone(existing_run, args, expected):
    before = snapshot(existing_run)
    base = ["run", "--device", "cpu", *QUICK, "--out", str(existing_run)]
    line = invoke_bad([*base, *args])  # a later --device overrides the first
    assert expected in line
    assert snapshot(existing_run) == before


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_unavailable_cuda_device(existing_run):
    before = snapshot(existing_run)
    line = invoke_bad(["run", "--device", "cuda", *QUICK, "--out", str(existing_run)])
    assert line.startswith("Error: --device cuda: CUDA is not available here") and "use --device cpu" in line
    assert snapshot(existing_run) == before


def test_run_directory_that_is_a_file(tmp_path):
    target = tmp_path / "results"
    target.write_text("my notes\n")
    line = invoke_bad(["run", "--device", "cpu", *QUICK, "--out", str(target)])
    assert line == f"Error: --out {target}: exists and is not a directory"
    assert target.read_text() == "my notes\n"


# -- corrupt data files -----------------------------------------------------------------------------

def idx_bytes(array: np.ndarray) -> bytes:
    return struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape) + \
        array.astype(np.uint8).tobytes()


def write_small_idx(raw: Path) -> dict[str, bytes]:
    """A tiny, valid Fashion-MNIST-shaped IDX set: 48 train and 12 test images."""
    rng = np.random.default_rng(0)
    files = {
        "train-images-idx3-ubyte": idx_bytes(rng.integers(0, 256, (48, 28, 28))),
        "train-labels-idx1-ubyte": idx_bytes(np.arange(48) % 10),
        "t10k-images-idx3-ubyte": idx_bytes(rng.integers(0, 256, (12, 28, 28))),
        "t10k-labels-idx1-ubyte": idx_bytes(np.arange(12) % 10),
    }
    raw.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (raw / name).write_bytes(data)
    return files


def _truncate(raw: Path, files: dict[str, bytes]) -> Path:
    path = raw / "train-images-idx3-ubyte"
    path.write_bytes(files["train-images-idx3-ubyte"][:-100])
    return path


def _bad_magic(raw: Path, files: dict[str, bytes]) -> Path:
    path = raw / "train-labels-idx1-ubyte"
    path.write_bytes(b"PK\x03\x04" + files["train-labels-idx1-ubyte"][4:])
    return path


def _truncated_gz(raw: Path, files: dict[str, bytes]) -> Path:
    (raw / "t10k-images-idx3-ubyte").unlink()
    path = raw / "t10k-images-idx3-ubyte.gz"
    packed = gzip.compress(files["t10k-images-idx3-ubyte"])
    path.write_bytes(packed[: len(packed) // 2])
    return path


CORRUPTIONS = {"truncated": (_truncate, "has 37548 bytes, its header says 37648: the file is truncated or corrupt"),
               "bad magic": (_bad_magic, "is not an IDX file (bad magic number)"),
               "truncated gzip": (_truncated_gz, "is corrupt or truncated")}


@pytest.mark.parametrize("corrupt, expected", CORRUPTIONS.values(), ids=CORRUPTIONS.keys())
def test_corrupt_downloaded_dataset_names_the_file_and_the_fix(existing_run, tmp_path, corrupt, expected):
    data_dir = tmp_path / "cache"
    raw = data_dir / "FashionMNIST" / "raw"
    files = write_small_idx(raw)
    args = ["run", "--datasets", "fashion-mnist", "--device", "cpu", *QUICK, "--data-dir", str(data_dir)]
    control = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "control")])
    assert control.exit_code == 0, control.output  # the intact files load and train

    path = corrupt(raw, files)
    before = snapshot(existing_run)
    line = invoke_bad([*args, "--out", str(existing_run)])
    assert line.startswith(f"Error: {path}") and expected in line
    assert f"Delete the damaged file (or the folder {raw}) and run again with network access" in line
    assert snapshot(existing_run) == before  # env.json too: it is written with the first record, and none was


@pytest.fixture
def embedded_mnist_copy(tmp_path, monkeypatch):
    """The embedded MNIST files, linked into a folder the test may damage, read from there."""
    folder = tmp_path / "mnist"
    folder.mkdir()
    for path in datasets.mnist_folder().glob("*.gz"):
        (folder / path.name).symlink_to(path)
    monkeypatch.setattr(datasets, "mnist_folder", lambda: folder)
    datasets._mnist_arrays.cache_clear()
    yield folder
    datasets._mnist_arrays.cache_clear()


def test_embedded_mnist_checksum_mismatch_names_the_file_and_the_fix(embedded_mnist_copy, tmp_path):
    labels = embedded_mnist_copy / "t10k-labels-idx1-ubyte.gz"
    data = bytearray(gzip.decompress(labels.read_bytes()))
    data[8] = (data[8] + 1) % 10  # one wrong label: still a valid IDX file, only the md5 can tell
    labels.unlink()
    labels.write_bytes(gzip.compress(bytes(data)))
    line = invoke_bad(["run", "--models", "linear", "--device", "cpu", *QUICK, "--out", str(tmp_path / "run")])
    assert line.startswith(f"Error: checksum mismatch for {labels}: md5 ")
    assert "expected 27ae3e4e09519cfbb04c329615203637" in line
    assert "reinstall gridbench (pip install --force-reinstall gridbench)" in line


def test_embedded_mnist_truncated_gzip(embedded_mnist_copy, tmp_path):
    labels = embedded_mnist_copy / "train-labels-idx1-ubyte.gz"
    packed = labels.read_bytes()
    labels.unlink()
    labels.write_bytes(packed[:1000])
    line = invoke_bad(["run", "--models", "linear", "--device", "cpu", *QUICK, "--out", str(tmp_path / "run")])
    assert line.startswith(f"Error: {labels} is corrupt or truncated") and "reinstall gridbench" in line


def test_intact_embedded_mnist_passes_its_checksums(embedded_mnist_copy):
    """Control for the two tests above: the same linked copy, undamaged, loads."""
    splits = datasets.load_mnist(Path("."))
    assert [len(s[0]) for s in (splits.train, splits.val, splits.test)] == [55000, 5000, 10000]
