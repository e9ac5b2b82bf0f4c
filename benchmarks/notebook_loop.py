"""The reference notebook's training loop, as the baseline gridbench is measured against.

torchvision's ``MNIST`` dataset with ``ToTensor`` + ``Normalize``, a shuffling ``DataLoader`` at batch
256, ``torch.optim.Adam(lr=1e-3)``, a ``.item()`` per step, validation after every epoch: the loop of
``limits-of-linearity-notebook`` (its progress bar left out). The 60k training images are split
55k/5k with a fixed generator, as gridbench's ``mnist`` does, and the test set is evaluated at the end.

Run as a script it trains the notebook's three cells (what ``bench run --grid seed`` trains)::

    python benchmarks/notebook_loop.py --epochs 2 --device cpu
"""

from __future__ import annotations

import argparse
import gzip
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.optim as optim

RAW_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
SEED_CELLS = (("linear", "mse"), ("linear", "crossentropy"), ("mlp", "crossentropy"))


def mnist_gz_folder() -> Path:
    """The embedded canonical MNIST ``.gz`` files (the package copy)."""
    return Path(__file__).resolve().parents[1] / "plugins" / "data" / "mnist"


def prepare_raw(root: Path) -> Path:
    """Decompress MNIST into ``root/MNIST/raw`` where torchvision's ``MNIST(root)`` looks for it."""
    raw = Path(root) / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for name in RAW_FILES:
        target = raw / name
        if not target.exists():
            with gzip.open(mnist_gz_folder() / f"{name}.gz", "rb") as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)
    return Path(root)


def get_mnist_dataloaders(root: Path, batch_size: int = 256):
    """The notebook's ``src.data.get_mnist_dataloaders``: train/val/test DataLoaders over torchvision MNIST."""
    from torch.utils.data import DataLoader, random_split
    from torchvision import datasets, transforms

    tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))])
    full = datasets.MNIST(str(root), train=True, download=False, transform=tf)
    test = datasets.MNIST(str(root), train=False, download=False, transform=tf)
    train, val = random_split(full, [55000, 5000], generator=torch.Generator().manual_seed(0))
    return (DataLoader(train, batch_size=batch_size, shuffle=True), DataLoader(val, batch_size=batch_size),
            DataLoader(test, batch_size=batch_size))


class LinearClassifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(28 * 28, 10)

    def forward(self, x):
        return self.fc(x.view(x.size(0), -1))


class MLP(nn.Module):
    def __init__(self, hidden=256):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, hidden), nn.ReLU(), nn.Linear(hidden, 10))

    def forward(self, x):
        return self.net(x)


def make_model(name: str) -> nn.Module:
    """The notebook's two models; ``deep-linear`` and ``cnn`` come from gridbench's plugins."""
    if name == "linear":
        return LinearClassifier()
    if name == "mlp":
        return MLP(hidden=256)
    from bench.plugins.models import make_cnn, make_deep_linear

    return {"deep-linear": make_deep_linear, "cnn": make_cnn}[name]((1, 28, 28), 10)


def select_loss(name):
    return nn.MSELoss() if name == "mse" else nn.CrossEntropyLoss()


def to_onehot(y, num_classes):
    return torch.nn.functional.one_hot(y, num_classes).float()


def accuracy_from_logits(logits, y):
    return (logits.argmax(1) == y).float().mean().item()


def _loss(criterion, loss_name, logits, y, device):
    if loss_name == "mse":
        return criterion(torch.softmax(logits, dim=1), to_onehot(y, 10).to(device))
    return criterion(logits, y)


def train_epoch(model, loader, criterion, optimizer, loss_name, device):
    """One epoch of the notebook's training loop; returns (train loss, train accuracy)."""
    model.train()
    tl, ta, count = 0.0, 0.0, 0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        optimizer.zero_grad()
        logits = model(x)
        loss = _loss(criterion, loss_name, logits, y, device)
        loss.backward()
        optimizer.step()
        b = y.size(0)
        tl += loss.item() * b
        ta += accuracy_from_logits(logits, y) * b
        count += b
    return tl / count, ta / count


def evaluate(model, loader, criterion, loss_name, device):
    model.eval()
    vl, va, count = 0.0, 0.0, 0
    with torch.no_grad():
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            logits = model(x)
            loss = _loss(criterion, loss_name, logits, y, device)
            b = y.size(0)
            vl += loss.item() * b
            va += accuracy_from_logits(logits, y) * b
            count += b
    return vl / count, va / count


def run_experiment(model, loaders, loss_name="mse", epochs=2, lr=1e-3, device="cpu"):
    """The notebook's ``run_experiment``, plus the test set at the end and the time of each epoch."""
    train_loader, val_loader, test_loader = loaders
    criterion = select_loss(loss_name)
    optimizer = optim.Adam(model.parameters(), lr=lr)
    history = {"train_loss": [], "train_acc": [], "val_loss": [], "val_acc": [], "epoch_time_s": []}
    for _ in range(epochs):
        start = time.perf_counter()
        tl, ta = train_epoch(model, train_loader, criterion, optimizer, loss_name, device)
        if str(device).startswith("cuda"):
            torch.cuda.synchronize()
        history["epoch_time_s"].append(time.perf_counter() - start)
        vl, va = evaluate(model, val_loader, criterion, loss_name, device)
        for key, value in zip(("train_loss", "train_acc", "val_loss", "val_acc"), (tl, ta, vl, va)):
            history[key].append(value)
    history["test_loss"], history["test_acc"] = evaluate(model, test_loader, criterion, loss_name, device)
    return history


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--root", type=Path, help="Folder for the decompressed MNIST (default: a temporary one).")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="notebook-mnist-") as tmp:
        root = prepare_raw(args.root or Path(tmp))
        loaders = get_mnist_dataloaders(root)
        for model_name, loss_name in SEED_CELLS:
            torch.manual_seed(0)
            model = make_model(model_name).to(args.device)
            h = run_experiment(model, loaders, loss_name, epochs=args.epochs, device=args.device)
            print(f"{model_name}+{loss_name}: test_acc {h['test_acc']:.4f} "
                  f"epoch_s {' '.join(f'{t:.3f}' for t in h['epoch_time_s'])}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
