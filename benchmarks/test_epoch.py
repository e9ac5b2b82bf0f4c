"""Per-epoch training time on the embedded MNIST (cpu): each built-in model in gridbench's loop, and the
notebook's DataLoader loop as the baseline in the same run (batch 256, Adam 1e-3)."""

from __future__ import annotations

import pytest
import torch
from conftest import record

BATCH = 256


@pytest.mark.parametrize("model_name", ["linear", "mlp", "deep-linear", "cnn"])
def test_gridbench_epoch(benchmark, mnist_cpu, model_name):
    from bench.engine.steps import ModelStep
    from bench.host import Host
    from bench.recipe import optimizer_factory

    registry = Host().registry
    model_c, loss_c = registry.get("model", model_name), registry.get("loss", "crossentropy")
    torch.manual_seed(0)
    model = model_c.factory(mnist_cpu.input_shape, mnist_cpu.num_classes, **model_c.params)
    x, y = mnist_cpu.train
    n = len(x)
    step = ModelStep("plain", model, loss_c.factory(**loss_c.params), x, y,
                     optimizer_factory(registry, "adam", 1e-3, 0.0))
    step.prepare([BATCH, n % BATCH])  # warm-up here, outside the timed epochs
    generator = torch.Generator().manual_seed(0)

    def epoch():
        perm = torch.randperm(n, generator=generator)[None]  # one index stream: a group of one
        step.reset()
        for start in range(0, n, BATCH):
            step(perm[:, start:start + BATCH])
        return float(step.loss_sum[0]) / n

    loss = benchmark.pedantic(epoch, rounds=2 if model_name == "cnn" else 3, iterations=1)
    assert loss < 1.0  # it trained
    record(benchmark, "gridbench-epoch", model_name)


@pytest.mark.parametrize("model_name", ["linear", "mlp"])
def test_notebook_epoch(benchmark, raw_mnist_root, model_name):
    import notebook_loop as nb

    loaders = nb.get_mnist_dataloaders(raw_mnist_root, batch_size=BATCH)
    torch.manual_seed(0)
    model = nb.make_model(model_name)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    criterion = nb.select_loss("crossentropy")

    def epoch():
        return nb.train_epoch(model, loaders[0], criterion, optimizer, "crossentropy", "cpu")[0]

    loss = benchmark.pedantic(epoch, rounds=2, iterations=1)
    assert loss < 1.0
    record(benchmark, "notebook-epoch", model_name)
