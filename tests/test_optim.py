"""bench.optim: the same arithmetic as torch.optim, without importing torch._dynamo."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from bench.errors import BenchError
from bench.optim import SGD, Adam, make_optimizer

ROOT = Path(__file__).resolve().parents[1]


def _model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(20, 16), nn.ReLU(), nn.Linear(16, 4))


def _train(model, opt, steps=6, skip_last_bias_at=None):
    """A few steps on random data; returns the losses. Optionally leaves one parameter without a gradient."""
    g = torch.Generator().manual_seed(1)
    losses = []
    for i in range(steps):
        x, y = torch.randn(32, 20, generator=g), torch.randint(0, 4, (32,), generator=g)
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        if skip_last_bias_at == i:
            model[2].bias.grad = None  # torch.optim skips a parameter without a gradient
        opt.step()
        losses.append(loss.item())
    return losses


def _max_diff(a, b):
    return max((p - q).abs().max().item() for p, q in zip(a.parameters(), b.parameters()))


@pytest.mark.parametrize("lr", [1e-3, 3e-2])
@pytest.mark.parametrize("fused", [False, True])
def test_adam_matches_torch_adam_exactly(lr, fused):
    ref, ours = _model(), _model()
    kind = {"fused": True} if fused else {"foreach": True}
    ref_losses = _train(ref, torch.optim.Adam(ref.parameters(), lr=lr, **kind), skip_last_bias_at=2)
    our_losses = _train(ours, Adam(ours.parameters(), lr=lr, fused=fused), skip_last_bias_at=2)
    assert our_losses == ref_losses
    assert _max_diff(ref, ours) == 0.0
    # ...and the training moved the weights (so equality above is not trivial)
    assert _max_diff(ours, _model()) > lr / 2


def test_capturable_adam_matches_torch_adam_to_float_tolerance():
    ref, ours = _model(), _model()
    ref_losses = _train(ref, torch.optim.Adam(ref.parameters(), lr=1e-2, foreach=True), steps=20)
    our_losses = _train(ours, Adam(ours.parameters(), lr=1e-2, capturable=True, fused=False), steps=20)
    # the device-side bias corrections round like the host's: equal on CPU, to float tolerance anywhere
    assert our_losses == pytest.approx(ref_losses, rel=1e-6)
    assert _max_diff(ref, ours) < 1e-6
    assert _max_diff(ours, _model()) > 1e-2


@pytest.mark.parametrize("capturable", [False, True])
def test_sgd_momentum_matches_torch_sgd(capturable):
    ref, ours = _model(), _model()
    ref_losses = _train(ref, torch.optim.SGD(ref.parameters(), lr=0.05, momentum=0.9, foreach=True),
                        skip_last_bias_at=3)
    our_losses = _train(ours, SGD(ours.parameters(), lr=0.05, momentum=0.9, capturable=capturable),
                        skip_last_bias_at=3)
    assert our_losses == pytest.approx(ref_losses, rel=1e-6)
    assert _max_diff(ref, ours) < 1e-6
    assert _max_diff(ours, _model()) > 1e-2


def test_make_optimizer_names_and_errors():
    params = list(_model().parameters())
    assert isinstance(make_optimizer("adam", params, 1e-3), Adam)
    assert make_optimizer("adam", params, 1e-3).fused  # torch has a fused CPU Adam
    assert make_optimizer("sgd", params, 1e-3).momentum == 0.9
    with pytest.raises(BenchError, match="unknown optimizer 'lbfgs'"):
        make_optimizer("lbfgs", params, 1e-3)
    with pytest.raises(BenchError, match="no trainable parameters"):
        Adam([p.detach() for p in params])


def test_bench_run_on_cpu_never_imports_dynamo(tmp_path):
    """torch.optim's first construction imports torch._dynamo (1-2 s); a CPU run must not."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "bench", "run", "--models", "linear", "--device", "cpu",
         "--limit", "512", "--epochs", "1", "--out", str(tmp_path / "run"), "-q"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    imported = {line.split("|")[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert "torch" in imported and "bench.optim" in imported
    assert "torch._dynamo" not in imported
    assert "torchvision" not in imported
