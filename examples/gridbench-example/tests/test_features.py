import torch

from gridbench_example import plugin
from gridbench_example.features import make_rff_linear


def test_feature_map_approximates_the_gaussian_kernel():
    torch.manual_seed(0)
    model = make_rff_linear((2,), 2, features=20000, scale=3.0)  # kernel exp(-9 |x - y|^2 / 4)
    x = torch.tensor([[0.0, 0.0], [0.3, 0.0], [0.0, -0.5], [1.0, 1.0]])
    phi = model.featurize(x)
    approx = phi @ phi.T
    exact = torch.exp(-(3.0 ** 2) * torch.cdist(x, x) ** 2 / (2 * 2))
    assert torch.allclose(approx, exact, atol=0.03), (approx, exact)


def test_only_the_linear_layer_is_trained_and_it_flattens_any_input():
    model = make_rff_linear((1, 4, 4), 10, features=64)
    assert [name for name, _ in model.named_parameters()] == ["fc.weight", "fc.bias"]
    assert sum(p.numel() for p in model.parameters()) == 64 * 10 + 10
    assert model(torch.zeros(3, 1, 4, 4)).shape == (3, 10)


def test_rff_linear_solves_two_spirals_where_linear_cannot(bench_host, bench_run):
    table = bench_run(bench_host(plugin), models=["linear", "rff-linear"], losses=["crossentropy"],
                      datasets=["two-spirals"]).set_index("model")
    assert table.loc["linear", "test_acc"] < 0.75
    assert table.loc["rff-linear", "test_acc"] > 0.9
    assert table.loc["rff-linear", "n_params"] == 512 * 2 + 2


def test_scale_is_a_sweepable_parameter(bench_host, bench_run):
    # A length scale far too long for the spirals' arms (scale 0.1: ~14) makes the features
    # almost linear: accuracy falls back to what a linear classifier gets.
    table = bench_run(bench_host(plugin), models=["rff-linear"], losses=["crossentropy"], datasets=["two-spirals"],
                      params=["rff-linear.scale=0.1,8"])
    acc = {row.params: row.test_acc for row in table.itertuples()}
    assert acc['{"rff-linear.scale": 0.1}'] < 0.75 < 0.9 < acc['{"rff-linear.scale": 8.0}']
