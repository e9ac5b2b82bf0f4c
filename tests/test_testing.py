"""bench.testing: the helpers that plugin authors use, used here on real plugins and real data."""

import pytest
import torch
from torch import nn

from bench import DataSplits, hookimpl
from bench.host import BrokenPlugin
from bench.store import HISTORY_COLUMNS, RESULT_COLUMNS
from bench.testing import make_host, run_grid


def _blobs(data_dir, n=2000, seed=0):
    """Two well-separated 3-D blobs: any linear model gets them all right."""
    g = torch.Generator().manual_seed(seed)

    def split(size):
        y = torch.arange(size) % 2
        x = torch.randn(size, 3, generator=g) * 0.3 + (y[:, None] * 2 - 1) * torch.tensor([2.0, 0.0, 0.0])
        return x.float(), y.long()

    return DataSplits(split(n), split(200), split(200), ["left", "right"])


class Blobs:
    """A plugin object (an instance, not a module) registering one dataset."""

    @hookimpl
    def bench_register_datasets(self, register):
        register("blobs", _blobs, params={"n": 2000, "seed": 0}, description="two 3-D blobs")


class Diverges:
    """A model whose output is NaN: its cell fails, as a NaN loss does."""

    @hookimpl
    def bench_register_models(self, register):
        class NaN(nn.Module):
            def __init__(self, num_classes):
                super().__init__()
                self.fc = nn.Linear(1, num_classes)

            def forward(self, x):
                return self.fc(torch.full((len(x), 1), float("nan")))

        register("nan", lambda shape, n: NaN(n))


def test_run_grid_returns_the_results_table_of_a_real_run(tmp_path):
    host = make_host(Blobs())
    table = run_grid(host, models=["linear", "mlp"], losses=["crossentropy"], datasets=["blobs"], seeds=[0, 1],
                     params=["mlp.hidden=8"], lr=0.05, out=tmp_path / "run")
    assert list(table.columns) == RESULT_COLUMNS
    assert list(zip(table["model"], table["seed"])) == [("linear", 0), ("linear", 1), ("mlp", 0), ("mlp", 1)]
    assert (table["status"] == "ok").all()
    assert (table["test_acc"] >= 0.99).all()
    assert table.loc[0, "n_params"] == 3 * 2 + 2 and table.loc[2, "n_params"] == (3 * 8 + 8) + (8 * 2 + 2)
    assert table.loc[2, "params"] == '{"mlp.hidden": 8}'
    history = (tmp_path / "run" / "history.csv").read_text().splitlines()
    assert history[0].split(",") == HISTORY_COLUMNS and len(history) == 1 + 4  # one epoch per cell


def test_run_grid_is_deterministic_for_a_seed():
    host = make_host(Blobs())
    first = run_grid(host, models=["mlp"], datasets=["blobs"], params=["blobs.n=500"])
    second = run_grid(host, models=["mlp"], datasets=["blobs"], params=["blobs.n=500"])
    assert first.loc[0, "test_loss"] == second.loc[0, "test_loss"]


def test_run_grid_names_failed_cells_unless_told_not_to():
    host = make_host(Blobs(), Diverges())
    with pytest.raises(AssertionError, match=r"1 cell\(s\) failed:\nnan\+crossentropy on blobs seed=0: "
                                             r"NonFiniteLoss: the training loss became nan in epoch 1"):
        run_grid(host, models=["nan", "linear"], datasets=["blobs"])
    table = run_grid(host, models=["nan", "linear"], datasets=["blobs"], check=False)
    assert list(table["status"]) == ["failed", "ok"]


def test_make_host_is_fresh_and_strict():
    assert "blobs" not in make_host().registry.names("dataset")  # nothing leaks from an earlier host

    class Raises:
        @hookimpl
        def bench_register_losses(self, register):
            raise KeyError("oops")

    with pytest.raises(BrokenPlugin, match=r"failed in bench_register_losses: KeyError: 'oops'"):
        make_host(Raises())
    lenient = make_host(Raises(), strict=False)
    assert lenient.warnings and "crossentropy" in lenient.registry.names("loss")


def test_make_host_without_builtins_has_only_the_plugin():
    host = make_host(Blobs(), builtins=False)
    assert [host.registry.names(k) for k in ("model", "loss", "dataset")] == [[], [], ["blobs"]]
    assert host.registry.grid_names() == []


def test_the_fixtures(bench_host, bench_run, tmp_path):
    table = bench_run(bench_host(Blobs()), models=["linear"], datasets=["blobs"], lr=0.05)
    assert table.loc[0, "test_acc"] >= 0.99
    assert (tmp_path / "run-0" / "results.csv").exists()
