import copy

import pytest
import torch
from torch import nn

from bench import BenchError
from bench.config import Recipe
from bench.recipe import check_recipe
from gridbench_example import plugin
from gridbench_example.lion import Lion


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))


def _train(model, opt, steps=10):
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x, y = torch.randn(16, 6, generator=g), torch.randint(0, 3, (16,), generator=g)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model


def _reference(model, lr, weight_decay, beta1=0.9, beta2=0.99, steps=10):
    """The paper's update, written out with plain tensor arithmetic."""
    g = torch.Generator().manual_seed(1)
    momentum = [torch.zeros_like(p) for p in model.parameters()]
    for _ in range(steps):
        x, y = torch.randn(16, 6, generator=g), torch.randint(0, 3, (16,), generator=g)
        model.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        with torch.no_grad():
            for p, m in zip(model.parameters(), momentum):
                c = beta1 * m + (1 - beta1) * p.grad
                p.copy_(p * (1 - lr * weight_decay) - lr * torch.sign(c))
                m.copy_(beta2 * m + (1 - beta2) * p.grad)
    return model


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
@pytest.mark.parametrize("capturable", [False, True])
def test_lion_follows_the_papers_update(weight_decay, capturable):
    model = _model()
    _train(model, Lion(model.parameters(), lr=0.01, weight_decay=weight_decay, capturable=capturable))
    expected = _reference(_model(), lr=0.01, weight_decay=weight_decay)
    for p, q in zip(model.parameters(), expected.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    # sign updates have a fixed size: without decay no weight moves more than lr per step, 10 steps here
    moved = max((p - q).abs().max().item() for p, q in zip(model.parameters(), _model().parameters()))
    assert 0.05 < moved and (weight_decay or moved <= 0.1 + 1e-6)


def test_a_schedule_changes_a_tensor_learning_rate_in_place_and_the_state_restores_in_place():
    model = _model()
    opt = Lion(model.parameters(), lr=0.01, capturable=True)
    lr = opt.param_groups[0]["lr"]
    _train(model, opt, steps=3)
    saved = copy.deepcopy(opt.state_dict())
    momentum = [m.data_ptr() for m in opt.exp_avg]
    lr.fill_(0.5)
    _train(model, opt, steps=2)
    opt.load_state_dict(saved)
    assert opt.param_groups[0]["lr"] is lr and float(lr) == pytest.approx(0.01)
    assert [m.data_ptr() for m in opt.exp_avg] == momentum
    assert torch.equal(opt.exp_avg[0], saved["state"][0]["exp_avg"])


def test_gridbench_accepts_it_with_a_schedule_and_refuses_bad_values(bench_host):
    registry = bench_host(plugin).registry
    assert registry.get("optimizer", "lion").params == {"beta1": 0.9, "beta2": 0.99}
    check_recipe(registry, Recipe(optimizer="lion", lr=3e-4, schedule="cosine"))
    with pytest.raises(BenchError, match=r"optimizer 'lion' .* beta2 must be in \[0, 1\), got 1.5"):
        check_recipe(registry, Recipe(optimizer="lion"), {"optimizer": {"beta2": 1.5}})


def test_lion_trains_rff_linear_on_two_spirals(bench_host, bench_run):
    table = bench_run(bench_host(plugin), models=["rff-linear"], losses=["crossentropy"], datasets=["two-spirals"],
                      optimizer="lion", lr=3e-4)
    assert table.loc[0, "status"] == "ok" and table.loc[0, "optimizer"] == "lion"
    assert table.loc[0, "test_acc"] > 0.9
