import pytest
import torch
import torch.nn.functional as F

from gridbench_example import plugin
from gridbench_example.losses import make_smooth_ce


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.3])
def test_matches_torch_label_smoothing(smoothing):
    torch.manual_seed(0)
    logits, targets = torch.randn(64, 5), torch.randint(0, 5, (64,))
    expected = F.cross_entropy(logits, targets, label_smoothing=smoothing)
    assert torch.allclose(make_smooth_ce(smoothing)(logits, targets), expected, atol=1e-6)


def test_smoothing_penalises_confident_correct_predictions():
    logits, targets = torch.tensor([[20.0, 0.0]]), torch.tensor([0])
    assert make_smooth_ce(0.0)(logits, targets) < 1e-6
    assert make_smooth_ce(0.2)(logits, targets) > 1.0  # 0.2 * mean(-log p) = 0.1 * 20


def test_invalid_smoothing_is_refused():
    with pytest.raises(ValueError, match="smoothing"):
        make_smooth_ce(1.0)


def test_trains_in_a_grid(bench_host, bench_run):
    table = bench_run(bench_host(plugin), models=["rff-linear"], losses=["smooth-ce"], datasets=["two-spirals"])
    assert table.loc[0, "status"] == "ok"
    assert table.loc[0, "test_acc"] > 0.9
