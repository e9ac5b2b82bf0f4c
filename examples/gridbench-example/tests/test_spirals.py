import torch

from bench.host import Host
from gridbench_example import plugin
from gridbench_example.spirals import load_two_spirals


def test_splits_follow_the_dataset_contract(tmp_path):
    data = load_two_spirals(tmp_path, n_train=1000, n_val=200, n_test=300)
    data.validate("two-spirals")
    assert data.input_shape == (2,) and data.classes == ["arm 0", "arm 1"]
    assert [len(s[1]) for s in (data.train, data.val, data.test)] == [1000, 200, 300]
    assert int(data.train[1].sum()) == 500  # the two arms are balanced
    assert float(data.train[0].norm(dim=1).max()) < 1.2  # radius <= 1 plus noise


def test_generated_from_the_seed(tmp_path):
    a, b = load_two_spirals(tmp_path, seed=1), load_two_spirals(tmp_path, seed=1)
    c = load_two_spirals(tmp_path, seed=2)
    assert torch.equal(a.train[0], b.train[0]) and not torch.equal(a.train[0], c.train[0])


def test_arms_are_point_reflections_of_each_other(tmp_path):
    # Noise-free, a point of arm 1 is a point of arm 0 turned by 180 degrees: -x lies on arm 0.
    data = load_two_spirals(tmp_path, n_train=2000, noise=0.0)
    x, y = data.train
    arm0, arm1 = x[y == 0], x[y == 1]
    distance = torch.cdist(-arm1[:50], arm0).min(dim=1).values
    assert float(distance.max()) < 0.05


def test_cnn_is_skipped_not_failed_on_points(bench_host, bench_run):
    table = bench_run(bench_host(plugin), models=["cnn"], losses=["crossentropy"], datasets=["two-spirals"],
                      params=["two-spirals.n_train=500"])
    assert table.loc[0, "status"] == "skipped"
    assert "image input" in table.loc[0, "error"]


def test_registers_its_grid():
    host = Host(autoload=False)
    host.register_plugin(plugin, name="example")
    grid = host.registry.get_grid("spirals")
    assert grid.plugin == "example"
    assert len(grid.triples(host.registry)) == 6
