"""Built-in datasets: MNIST embedded in the package; Fashion-MNIST and KMNIST downloaded on demand.

All three are IDX files read directly (16-byte image header, 8-byte label header, big-endian),
split into train/val with a fixed generator and normalised with fixed constants.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import shutil
import struct
import zlib
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np

from bench import BenchError, DataCorrupt, DataSplits, DatasetUnavailable, hookimpl

IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")

#: MD5 of the *decompressed* canonical MNIST files.
MNIST_MD5 = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
SPLIT_SEED = 0

FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot"]
KMNIST_CLASSES = ["o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"]

#: name -> (torchvision class name, mean, std, class names)
DOWNLOADABLE = {
    "fashion-mnist": ("FashionMNIST", 0.2860, 0.3530, FASHION_CLASSES),
    "kmnist": ("KMNIST", 0.1918, 0.3483, KMNIST_CLASSES),
}

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"),
               0x0E: np.dtype(">f8")}


def parse_idx(data: bytes | bytearray, name: str = "IDX data", fix: str = "") -> np.ndarray:
    """Decode the bytes of one IDX file into an array of its shape; ``fix`` ends any error message."""
    tail = f" {fix}" if fix else ""
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise DataCorrupt(f"{name} is not an IDX file (bad magic number).{tail}")
    dtype, ndim = np.dtype(_IDX_DTYPES[data[2]]), data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataCorrupt(f"{name} is truncated (header).{tail}")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        raise DataCorrupt(f"{name} has {len(data)} bytes, its header says {expected}: the file is truncated or "
                          f"corrupt.{tail}")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)


def read_idx_bytes(path: Path, fix: str = "") -> bytearray:
    """The decompressed bytes of ``path`` (``.gz`` or plain)."""
    tail = f" {fix}" if fix else ""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return bytearray(f.read())
        return bytearray(path.read_bytes())
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise DataCorrupt(f"{path} is corrupt or truncated ({exc or type(exc).__name__}).{tail}") from None
    except OSError as exc:
        raise BenchError(f"cannot read {path}: {exc}") from None


def _find(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def load_idx_folder(folder: Path, md5: dict[str, str] | None = None, fix: str = "") -> tuple[np.ndarray, ...]:
    """The four IDX arrays (train images/labels, test images/labels) from ``folder``.

    With ``md5``, each decompressed file is checked against its sum; a mismatch names the file
    and ``fix``.
    """
    arrays = []
    for stem in IDX_FILES:
        path = _find(folder, stem)
        if path is None:
            raise DatasetUnavailable(f"{folder} has no {stem} (or {stem}.gz)")
        data = read_idx_bytes(path, fix)
        if md5 is not None:
            digest = hashlib.md5(data).hexdigest()
            if digest != md5[stem]:
                raise DataCorrupt(f"checksum mismatch for {path}: md5 {digest}, expected {md5[stem]}. {fix}")
        arrays.append(parse_idx(data, str(path), fix))
    train_x, train_y, test_x, test_y = arrays
    if len(train_x) != len(train_y) or len(test_x) != len(test_y):
        raise DataCorrupt(f"{folder}: image and label counts differ. {fix}")
    return train_x, train_y, test_x, test_y


def make_splits(arrays, mean: float, std: float, classes: list[str], val_size: int, meta: dict) -> DataSplits:
    """Normalise uint8 images to float32 ``[N, 1, H, W]`` and split train into train/val.

    The validation set is ``val_size`` images (at most a twelfth of train, at least one), drawn with
    a fixed generator so that every run sees the same split.
    """
    import torch  # here, not at the top: listing the plugins must not import torch

    train_x, train_y, test_x, test_y = arrays
    if val_size < 1:
        raise ValueError("val_size must be >= 1")

    def images(a):
        x = torch.from_numpy(np.ascontiguousarray(a)).to(torch.float32).div_(255.0)
        return x.sub_(mean).div_(std).unsqueeze(1)

    def labels(a):
        return torch.from_numpy(a.astype(np.int64))

    n_val = max(1, min(val_size, len(train_x) // 12))
    perm = torch.randperm(len(train_x), generator=torch.Generator().manual_seed(SPLIT_SEED))
    val_idx, train_idx = perm[:n_val].numpy(), perm[n_val:].numpy()
    # split the uint8 images first and convert each split once: the same values, half the peak memory
    return DataSplits(
        train=(images(train_x[train_idx]), labels(train_y[train_idx])),
        val=(images(train_x[val_idx]), labels(train_y[val_idx])),
        test=(images(test_x), labels(test_y)),
        classes=list(classes),
        meta={"mean": mean, "std": std, **meta},
    )


def mnist_folder() -> Path:
    """Where the embedded canonical MNIST IDX files live inside the installed package."""
    return Path(str(resources.files(__package__) / "data" / "mnist"))


@lru_cache(maxsize=1)
def _mnist_arrays():
    return load_idx_folder(
        mnist_folder(), MNIST_MD5,
        fix="The embedded MNIST files are damaged: reinstall gridbench (pip install --force-reinstall gridbench).",
    )


def load_mnist(data_dir: Path, val_size: int = 5000) -> DataSplits:
    """Canonical MNIST, embedded in the package: 55k train / 5k val / 10k test."""
    return make_splits(_mnist_arrays(), MNIST_MEAN, MNIST_STD, [str(i) for i in range(10)], val_size,
                       {"source": "embedded canonical MNIST (md5-verified)"})


def _download(tv_name: str, root: Path) -> None:
    """Fetch the raw files with torchvision's downloader (imported only here: it is slow to import).

    A failed download leaves nothing behind: the folders it made (and any partial file in them) go.
    """
    try:
        import torchvision.datasets
    except ImportError as exc:
        raise DatasetUnavailable(f"torchvision is needed to download it ({exc})", short="needs torchvision") from None
    made = [folder for folder in (root / tv_name / "raw", root / tv_name, root) if not folder.exists()]
    try:
        getattr(torchvision.datasets, tv_name)(root=str(root), train=True, download=True)
    except Exception as exc:
        for folder in made:  # deepest first
            if folder == root:
                with contextlib.suppress(OSError):
                    root.rmdir()  # only if nothing else is in it
            else:
                shutil.rmtree(folder, ignore_errors=True)
        reason = " ".join(str(exc).split())
        raise DatasetUnavailable(f"download failed: {reason[:300]}",
                                 short="not downloaded yet, and the download failed (offline?)") from None


def downloaded(folder: Path) -> bool:
    """Whether ``folder`` holds the four IDX files (plain or .gz)."""
    return all(_find(folder, stem) is not None for stem in IDX_FILES)


def downloadable_loader(name: str):
    tv_name, mean, std, classes = DOWNLOADABLE[name]

    def load(data_dir: Path, val_size: int = 5000) -> DataSplits:
        raw = Path(data_dir) / tv_name / "raw"
        how = (f"To get it, run once with network access (bench run --datasets {name}), or copy the four IDX "
               f"files ({', '.join(IDX_FILES)}, optionally .gz) into {raw}.")
        fix = (f"Delete the damaged file (or the folder {raw}) and run again with network access to download it "
               f"afresh, or copy intact IDX files into {raw}.")
        try:
            arrays = load_idx_folder(raw, fix=fix)
        except DatasetUnavailable:
            try:
                _download(tv_name, Path(data_dir))
                arrays = load_idx_folder(raw, fix=fix)
            except DatasetUnavailable as exc:
                raise DatasetUnavailable(f"{name} is not cached in {raw} and could not be fetched: {exc}. {how}",
                                         short=getattr(exc, "short", "")) from None
        return make_splits(arrays, mean, std, classes, val_size, {"source": str(raw)})

    def offline(data_dir: Path) -> str:
        """Why it cannot load without network access ('' when it can): not downloaded into ``data_dir`` yet."""
        raw = Path(data_dir) / tv_name / "raw"
        return "" if downloaded(raw) else f"not downloaded into {raw} yet; its first use downloads it"

    load.__doc__ = f"{name} (torchvision {tv_name}), downloaded into the data directory on first use."
    load.offline = offline
    return load


LECUN_1998 = ("LeCun, Bottou, Bengio & Haffner, Gradient-based learning applied to document recognition, "
              "Proc. IEEE 86(11), 1998; table at http://yann.lecun.com/exdb/mnist/")
SIMARD_2003 = ("Simard, Steinkraus & Platt, Best practices for convolutional neural networks applied to visual "
               "document analysis, ICDAR 2003; as listed in LeCun et al.'s table at http://yann.lecun.com/exdb/mnist/")

#: Published MNIST test errors (no preprocessing, no distortions) for the built-in model families. A
#: "2-layer NN" is one hidden layer: mlp with depth=1. The hidden width is not part of the family (any
#: width is compared, and the report shows the published one beside a configuration whose width differs);
#: the loss is, for the two MLP rows, since MSE and cross-entropy nets differ by a factor of 3 there.
MNIST_REFERENCES = [
    {"model": "linear", "test_error": 0.120, "label": "linear classifier (1-layer NN)", "source": LECUN_1998},
    {"model": "mlp", "loss": "mse", "params": {"depth": 1}, "published": {"hidden": 300}, "test_error": 0.047,
     "label": "2-layer NN, 300 hidden units, mean square error", "source": LECUN_1998},
    {"model": "mlp", "loss": "crossentropy", "params": {"depth": 1}, "published": {"hidden": 800},
     "test_error": 0.016, "label": "2-layer NN, 800 hidden units, cross-entropy", "source": SIMARD_2003},
    {"model": "cnn", "published": {"c1": 6, "c2": 16, "fc": 120}, "test_error": 0.0095, "label": "LeNet-5",
     "source": LECUN_1998},
]


@hookimpl
def bench_register_datasets(register):
    register("mnist", load_mnist, params={"val_size": 5000},
             description="canonical MNIST embedded in the package (md5-verified), 55k/5k/10k",
             references=MNIST_REFERENCES, default=True)
    for name, (tv_name, *_rest) in DOWNLOADABLE.items():
        register(name, downloadable_loader(name), params={"val_size": 5000},
                 description=f"{tv_name} via torchvision's downloader into the data directory (--data-dir)")
