"""The embedded MNIST matches the canonical release (checksums and facts from shared/data/mnist/README.md)."""

import gzip
import hashlib

import torch

from bench.plugins.datasets import IDX_FILES, MNIST_MD5, mnist_folder, parse_idx, read_idx_bytes


def test_embedded_files_have_the_canonical_checksums_and_sizes():
    sizes = {"train-images-idx3-ubyte": 47040016, "train-labels-idx1-ubyte": 60008,
             "t10k-images-idx3-ubyte": 7840016, "t10k-labels-idx1-ubyte": 10008}
    for stem in IDX_FILES:
        data = gzip.decompress((mnist_folder() / f"{stem}.gz").read_bytes())
        assert len(data) == sizes[stem]
        assert hashlib.md5(data).hexdigest() == MNIST_MD5[stem]


def test_raw_facts():
    folder = mnist_folder()
    train_x = parse_idx(read_idx_bytes(folder / "train-images-idx3-ubyte.gz"))
    train_y = parse_idx(read_idx_bytes(folder / "train-labels-idx1-ubyte.gz"))
    test_x = parse_idx(read_idx_bytes(folder / "t10k-images-idx3-ubyte.gz"))
    test_y = parse_idx(read_idx_bytes(folder / "t10k-labels-idx1-ubyte.gz"))
    assert train_x.shape == (60000, 28, 28) and train_x.dtype.name == "uint8"
    assert test_x.shape == (10000, 28, 28)
    assert list(train_y[:10]) == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert list(test_y[:10]) == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    counts = torch.bincount(torch.from_numpy(train_y.astype("int64")), minlength=10).tolist()
    assert counts == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    pixels = torch.from_numpy(train_x.astype("float32")) / 255
    assert round(pixels.mean().item(), 4) == 0.1307
    assert round(pixels.std().item(), 4) == 0.3081


def test_splits_are_55k_5k_10k_normalised_and_fixed(mnist):
    assert len(mnist.train[0]) == 55000 and len(mnist.val[0]) == 5000 and len(mnist.test[0]) == 10000
    assert mnist.input_shape == (1, 28, 28) and mnist.classes == [str(i) for i in range(10)]
    assert mnist.train[0].dtype == torch.float32 and mnist.train[1].dtype == torch.int64
    # train + val together are exactly the 60k training images: labels add up to the canonical counts
    labels = torch.cat([mnist.train[1], mnist.val[1]])
    assert torch.bincount(labels).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    # normalised with the training statistics: mean ~0, std ~1 over all 60k training images
    everything = torch.cat([mnist.train[0], mnist.val[0]])
    assert abs(everything.mean().item()) < 1e-3 and abs(everything.std().item() - 1) < 1e-3
    # the split is fixed: the first test labels are canonical, and a reload gives the same val set
    assert mnist.test[1][:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    from bench.plugins.datasets import load_mnist

    again = load_mnist(None)
    assert torch.equal(again.val[1], mnist.val[1]) and torch.equal(again.val[0][:50], mnist.val[0][:50])
