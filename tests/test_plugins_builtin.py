"""Each built-in model, loss and downloadable dataset does what its description says."""

import gzip
import math
import struct

import pytest
import torch
import torch.nn.functional as F

from bench import DatasetUnavailable, IncompatibleCell
from bench.host import Host


@pytest.fixture(scope="module")
def registry():
    return Host(autoload=False).registry


def build(registry, name, shape=(1, 28, 28), classes=10, **params):
    component = registry.get("model", name)
    return component.factory(shape, classes, **{**component.params, **params})


@pytest.mark.parametrize("name, n_params", [
    ("linear", 784 * 10 + 10),
    ("mlp", 784 * 256 + 256 + 256 * 10 + 10),
    ("deep-linear", 784 * 256 + 256 + 256 * 10 + 10),
    ("cnn", (6 * 25 + 6) + (16 * 6 * 25 + 16) + (16 * 7 * 7 * 120 + 120) + (120 * 10 + 10)),
])
def test_models_map_images_to_logits(registry, name, n_params):
    model = build(registry, name)
    assert model(torch.randn(5, 1, 28, 28)).shape == (5, 10)
    assert sum(p.numel() for p in model.parameters()) == n_params


def test_linear_exposes_fc_like_the_notebook(registry):
    model = build(registry, "linear")
    assert isinstance(model.fc, torch.nn.Linear) and model.fc.weight.shape == (10, 784)


def test_deep_linear_is_one_linear_map(registry):
    torch.manual_seed(0)
    model = build(registry, "deep-linear", hidden=32, depth=3)
    x = torch.randn(7, 1, 28, 28)
    weight = model.effective_weight()
    bias_path = model(torch.zeros(1, 1, 28, 28))
    assert weight.shape == (10, 784)
    torch.testing.assert_close(model(x), x.flatten(1) @ weight.T + bias_path, rtol=1e-4, atol=1e-4)


def test_mlp_is_not_linear(registry):
    torch.manual_seed(0)
    model = build(registry, "mlp", hidden=32)
    x, y = torch.randn(1, 1, 28, 28), torch.randn(1, 1, 28, 28)
    zero = model(torch.zeros_like(x))
    assert not torch.allclose(model(x + y) - zero, (model(x) - zero) + (model(y) - zero), atol=1e-3)
    with pytest.raises(TypeError):
        model.effective_weight()


def test_mlp_params(registry):
    model = build(registry, "mlp", hidden=64, depth=2, activation="tanh")
    assert [type(m).__name__ for m in model.net] == ["Linear", "Tanh", "Linear", "Tanh", "Linear"]
    with pytest.raises(ValueError, match="activation must be one of"):
        build(registry, "mlp", activation="swish")


def test_cnn_refuses_non_image_input(registry):
    with pytest.raises(IncompatibleCell, match=r"cnn needs image input"):
        build(registry, "cnn", shape=(2,))


def test_losses(registry):
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]])
    targets = torch.tensor([0, 1])
    mse = registry.get("loss", "mse").factory()
    expected = ((torch.softmax(logits, 1) - F.one_hot(targets, 3).float()) ** 2).mean()
    torch.testing.assert_close(mse(logits, targets), expected)
    ce = registry.get("loss", "crossentropy").factory(label_smoothing=0.0)
    p0 = math.exp(2) / (math.exp(2) + 1 + math.exp(-1))
    p1 = math.exp(0.5) / (2 * math.exp(0.5) + math.exp(3))
    assert ce(logits, targets).item() == pytest.approx(-(math.log(p0) + math.log(p1)) / 2, rel=1e-5)
    hinge = registry.get("loss", "hinge").factory(margin=1.0)
    # sample 0: margins max(0, 1 - 2 + 0) + max(0, 1 - 2 - 1) = 0; sample 1: (1-0.5+0.5) + (1-0.5+3) = 1 + 3.5
    assert hinge(logits, targets).item() == pytest.approx((0 + 4.5 / 3) / 2)


def write_idx(folder, n_train=48, n_test=12, size=8, corrupt=False):
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)

    def images(n):
        data = torch.randint(0, 256, (n, size, size), generator=g, dtype=torch.uint8).numpy().tobytes()
        return struct.pack(">IIII", 0x803, n, size, size) + data

    def labels(n):
        return struct.pack(">II", 0x801, n) + bytes([i % 10 for i in range(n)])

    files = {"train-images-idx3-ubyte": images(n_train), "train-labels-idx1-ubyte": labels(n_train),
             "t10k-images-idx3-ubyte": images(n_test), "t10k-labels-idx1-ubyte": labels(n_test)}
    for name, data in files.items():
        if corrupt and name == "t10k-images-idx3-ubyte":
            data = data[:-7]
        (folder / f"{name}.gz").write_bytes(gzip.compress(data))


@pytest.mark.parametrize("name, folder, first_class", [("fashion-mnist", "FashionMNIST", "T-shirt/top"),
                                                        ("kmnist", "KMNIST", "o")])
def test_downloadable_datasets_load_cached_idx_files(registry, tmp_path, name, folder, first_class):
    write_idx(tmp_path / folder / "raw")
    splits = registry.get("dataset", name).factory(tmp_path, val_size=5000)
    assert splits.classes[0] == first_class and len(splits.classes) == 10
    assert splits.input_shape == (1, 8, 8)
    assert (len(splits.train[0]), len(splits.val[0]), len(splits.test[0])) == (44, 4, 12)
    splits.validate(name)


def test_a_truncated_idx_file_names_the_file(registry, tmp_path):
    write_idx(tmp_path / "KMNIST" / "raw", corrupt=True)
    with pytest.raises(Exception, match=r"t10k-images-idx3-ubyte.gz has 777 bytes, its header says 784: the file is "
                                        r"truncated or corrupt. "
                       r"Delete the damaged file \(or the folder .*KMNIST/raw\)"):
        registry.get("dataset", "kmnist").factory(tmp_path)


@pytest.mark.slow
def test_offline_download_is_reported_as_unavailable_with_the_way_to_get_it(registry, tmp_path):
    with pytest.raises(DatasetUnavailable) as info:
        registry.get("dataset", "fashion-mnist").factory(tmp_path)
    message = str(info.value)
    assert "fashion-mnist is not cached in" in message and "could not be fetched" in message
    assert "To get it" in message and str(tmp_path / "FashionMNIST" / "raw") in message


@pytest.fixture
def offline(monkeypatch):
    """torchvision's real downloader, pointed at a local port that refuses connections: a download that fails at
    once, whatever network the machine running the tests has."""
    datasets = pytest.importorskip("torchvision.datasets")
    for name in ("FashionMNIST", "KMNIST"):
        monkeypatch.setattr(getattr(datasets, name), "mirrors", ["http://127.0.0.1:9/"])


def test_a_failed_download_leaves_no_folders_in_the_cache(registry, tmp_path, offline):
    cache = tmp_path / "cache"
    with pytest.raises(DatasetUnavailable) as info:
        registry.get("dataset", "fashion-mnist").factory(cache)
    assert info.value.short == "not downloaded yet, and the download failed (offline?)"
    assert not cache.exists()  # it made the cache folder, and took it away again
    (cache / "mine").mkdir(parents=True)
    with pytest.raises(DatasetUnavailable):
        registry.get("dataset", "kmnist").factory(cache)
    assert [p.name for p in cache.iterdir()] == ["mine"]


def test_the_grid_says_in_one_short_line_each_which_datasets_it_leaves_out(cli, tmp_path, offline):
    result = cli("run", "--grid", "all", "--dry-run", "--data-dir", tmp_path / "cache", "--out", tmp_path / "run")
    assert result.exit_code == 0, result.output
    notes = [line for line in result.stderr.splitlines() if line.startswith("note:")]
    assert notes == [f"note: dataset '{name}' left out of the grid: not downloaded yet, and the download failed "
                     f"(offline?); --datasets {name} says more" for name in ("fashion-mnist", "kmnist")]
    assert "mnist" in result.stdout and "kmnist" not in result.stdout
    assert not (tmp_path / "cache").exists()


def test_list_marks_the_datasets_that_are_not_downloaded(cli, tmp_path):
    def marks(listing: str) -> dict[str, str]:
        """Dataset -> what its 'unavailable offline' line says (wrapped lines joined)."""
        section = listing.split("datasets:\n", 1)[1].split("executors:", 1)[0]
        texts: dict[str, str] = {}
        for line in section.splitlines():
            if line[2:3] != " ":
                name = line.split()[0]
            texts[name] = f"{texts.get(name, '')} {line.strip()}"
        return {name: " ".join(text.split("unavailable offline:", 1)[1].split("params:", 1)[0].split())
                for name, text in texts.items() if "unavailable offline:" in text}

    listing = cli("list", "--data-dir", tmp_path).output
    assert sorted(marks(listing)) == ["fashion-mnist", "kmnist"]
    assert marks(listing)["kmnist"].startswith(f"not downloaded into {tmp_path / 'KMNIST' / 'raw'} yet")
    write_idx(tmp_path / "KMNIST" / "raw")
    assert sorted(marks(cli("list", "--data-dir", tmp_path).output)) == ["fashion-mnist"]
