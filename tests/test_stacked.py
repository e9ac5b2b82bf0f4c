"""The fused step's stacked forms: nn.Linear through bench/stacked.py, the built-in losses' ``loss.stacked``.

Each must compute, per member, what the member's own layer or loss computes (values and gradients, up to
float rounding), whatever the layout of its input, so that a fused group trains each member as its cell.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from bench.config import Cell, Recipe
from bench.engine import Unfusable
from bench.fuse import batched_optimizer_for
from bench.host import Host
from bench.plugins.losses import make_crossentropy, make_hinge, make_mse
from bench.stacked import stacked_layers
from tests.engine_helpers import train_cell, train_stacked

N, B = 4, 6
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def registry():
    return Host().registry


@pytest.fixture
def linear(registry, mnist):
    """The built-in linear model's factory for MNIST."""
    component = registry.get("model", "linear")
    return lambda: component.factory(mnist.input_shape, mnist.num_classes)


def _members(make, count=N):
    torch.manual_seed(0)
    return [make() for _ in range(count)]


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("lead", [(B,), (B, 3), ()], ids=["[B, in]", "[B, T, in]", "[in]"])
def test_a_stacked_linear_layer_under_vmap_is_each_members_linear(bias, lead):
    members = _members(lambda: nn.Linear(7, 5, bias=bias))
    params, _ = stack_module_state(members)
    x = torch.randn(N, *lead, 7, requires_grad=True)
    base = copy.deepcopy(members[0])
    assert stacked_layers(base) == 1

    out = vmap(lambda p, xb: functional_call(base, p, (xb,)))(params, x)
    expected = torch.stack([m(x[i]) for i, m in enumerate(members)])
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)
    # the gradients, against autograd through each member's own layer
    weights = torch.randn_like(expected)
    ours = torch.autograd.grad((out * weights).sum(), [x, *params.values()])
    theirs = torch.autograd.grad((expected * weights).sum(), [x, *(p for m in members for p in m.parameters())])
    torch.testing.assert_close(ours[0], theirs[0], rtol=1e-6, atol=1e-6)
    per_member = len(params)
    for k, stacked_grad in enumerate(ours[1:]):
        torch.testing.assert_close(stacked_grad, torch.stack(theirs[1 + k::per_member]), rtol=1e-6, atol=1e-6)
        if lead:  # in the stacked parameter's layout: no copy before the optimizer
            assert stacked_grad.is_contiguous()


def test_a_shared_input_evaluates_every_member_on_it():
    """What evaluation does: one batch (``in_dims=None``) for every member."""
    members = _members(lambda: nn.Linear(7, 5))
    params, _ = stack_module_state(members)
    base = copy.deepcopy(members[0])
    stacked_layers(base)
    x = torch.randn(B, 7)
    with torch.no_grad():
        out = vmap(lambda p, xb: functional_call(base, p, (xb,)), in_dims=(0, None))(params, x)
        torch.testing.assert_close(out, torch.stack([m(x) for m in members]), rtol=1e-6, atol=1e-6)


def test_stacked_layers_leave_subclasses_and_the_unbatched_call_alone():
    class Scaled(nn.Linear):
        def forward(self, x):
            return 2 * super().forward(x)

    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), Scaled(4, 2))
    reference = copy.deepcopy(model)
    assert stacked_layers(model) == 1
    assert "forward" in vars(model[0]) and "forward" not in vars(model[2])
    assert stacked_layers(model) == 0  # once only
    for x in (torch.randn(5, 3), torch.randn(3)):  # outside vmap too, a batch or one sample
        torch.testing.assert_close(model(x), reference(x))


def test_a_mlp_of_stacked_layers_matches_its_members_through_two_layers():
    """The hidden layer's output is a transposed view: the next layer and the activation's backward take it."""
    members = _members(lambda: nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 3)))
    params, _ = stack_module_state(members)
    base = copy.deepcopy(members[0])
    assert stacked_layers(base) == 2
    x = torch.randn(N, B, 3, 4)
    out = vmap(lambda p, xb: functional_call(base, p, (xb,)))(params, x)
    expected = torch.stack([m(x[i]) for i, m in enumerate(members)])
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    ours = torch.autograd.grad(out.square().sum(), list(params.values()))
    theirs = torch.autograd.grad(expected.square().sum(), [p for m in members for p in m.parameters()])
    for k, stacked_grad in enumerate(ours):
        torch.testing.assert_close(stacked_grad, torch.stack(theirs[k::len(ours)]), rtol=1e-5, atol=1e-6)


LOSSES = [("mse", make_mse()), ("crossentropy", make_crossentropy()),
          ("crossentropy label_smoothing=0.1", make_crossentropy(0.1)), ("hinge", make_hinge()),
          ("hinge margin=0.5", make_hinge(0.5))]


@pytest.mark.parametrize("layout", ["contiguous", "transposed"])
@pytest.mark.parametrize("name, loss", LOSSES, ids=[name for name, _ in LOSSES])
def test_a_losss_stacked_form_is_each_members_loss(name, loss, layout):
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(N, B, 10, generator=generator) * 3
    if layout == "transposed":  # as the stacked linear layers return them: [N, B, C] over [N, C, B] memory
        logits = logits.transpose(1, 2).contiguous().transpose(1, 2)
    logits.requires_grad_()
    targets = torch.randint(0, 10, (N, B), generator=generator)
    stacked = loss.stacked(logits, targets)
    assert stacked.shape == (N,)
    own = torch.stack([loss(logits[i], targets[i]) for i in range(N)])
    torch.testing.assert_close(stacked, own, rtol=1e-6, atol=1e-7)
    (ours,) = torch.autograd.grad(stacked.sum(), logits)
    (theirs,) = torch.autograd.grad(own.sum(), logits)
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-8)
    assert ours.abs().max() > 0


def test_a_loss_without_a_stacked_form_trains_fused_through_vmap(registry, linear, mnist):
    """A plugin loss that offers no ``.stacked`` still fuses (per member, through vmap) and gives its cells'
    results."""

    def plain_ce(logits, targets):  # no .stacked attribute
        return F.cross_entropy(logits, targets)

    assert not hasattr(plain_ce, "stacked") and hasattr(make_crossentropy(), "stacked")
    cells = [Cell("linear", "plain-ce", "mnist", seed, "cpu", Recipe(epochs=1), 2000) for seed in (0, 1)]
    _each_member_as_alone(registry, cells, linear, plain_ce, mnist)


def _each_member_as_alone(registry, cells, make, loss_fn, data, val_rtol=1e-3) -> list:
    """Train ``cells`` as one fused group and each alone: every member's test accuracy within 0.002 of its
    cell's and its validation loss within ``val_rtol`` (relative). Returns the fused results."""
    fused = train_stacked(cells, make, loss_fn, data, CPU, batched_optimizer_for(registry, "adam"))
    for cell, result in zip(cells, fused):
        torch.manual_seed(cell.seed)
        alone = train_cell(cell, make(), loss_fn, data, CPU)
        assert result.execution["fused_size"] == len(cells)
        assert abs(result.metrics["test_acc"] - alone.metrics["test_acc"]) <= 0.002
        assert abs(result.metrics["val_loss"] - alone.metrics["val_loss"]) <= val_rtol * alone.metrics["val_loss"]
    return fused


def test_a_stacked_form_that_returns_the_wrong_shape_is_unfusable_and_says_why(registry, linear, mnist):

    def loss(logits, targets):
        return F.cross_entropy(logits, targets)

    loss.stacked = lambda logits, targets: F.cross_entropy(logits.transpose(1, 2), targets)  # one mean, not [N]
    cells = [Cell("linear", "bad-stacked", "mnist", seed, "cpu", Recipe(epochs=1), 1000) for seed in (0, 1)]
    with pytest.raises(Unfusable, match=r"^the loss's stacked form returned shape \[\], not one loss per member \[2\]"):
        train_stacked(cells, linear, loss, mnist, CPU, batched_optimizer_for(registry, "adam"))


class _TiedWithBuffer(nn.Module):
    """Two layers sharing one weight (only ``mid.weight`` is stacked; ``again.weight`` is its alias) and a
    buffer that forward reads: each member's slices must reach every alias."""

    def __init__(self):
        super().__init__()
        self.inp, self.mid, self.again, self.out = nn.Linear(784, 16), nn.Linear(16, 16), nn.Linear(16, 16), \
            nn.Linear(16, 10)
        self.again.weight = self.mid.weight
        self.register_buffer("scale", torch.rand(16) + 0.5)

    def forward(self, x):
        h = torch.relu(self.inp(x.flatten(1)))
        h = torch.relu(self.again(torch.relu(self.mid(h)))) * self.scale
        return self.out(h)


def test_tied_weights_and_buffers_train_fused_as_each_cell(registry, mnist):
    cells = [Cell("tied", "crossentropy", "mnist", seed, "cpu", Recipe(epochs=1), 1500) for seed in (0, 1, 2)]
    fused = _each_member_as_alone(registry, cells, _TiedWithBuffer, make_crossentropy(), mnist, val_rtol=1e-4)
    assert len({r.metrics["test_acc"] for r in fused}) == 3  # the members really differ: each trained its own weights


def test_the_benchmarks_floor_runs_the_products_of_linear_models_only(registry, mnist):
    """``bench_fused.py --epochs`` compares a cell alone, its fused members and the stacked step's floor; the
    floor exists for models of linear layers (the products it times) and for no other."""
    from benchmarks.bench_fused import compare_epochs, format_epochs, stacked_floor

    x, _ = mnist.train

    def model(name):
        component = registry.get("model", name)
        return component.factory(mnist.input_shape, mnist.num_classes, **component.params)

    assert stacked_floor(model("cnn"), 2, x, 256) is None
    floor = stacked_floor(model("mlp"), 3, x, 256)
    floor(torch.stack([torch.randperm(len(x))[:256] for _ in range(3)]))  # runs at a full and a short batch
    floor(torch.stack([torch.randperm(len(x))[:7] for _ in range(3)]))
    result = compare_epochs("linear", 2, 1)
    assert 0 < result["floor_min"] < result["fused_min"] and "alone / floor" in format_epochs(result)
