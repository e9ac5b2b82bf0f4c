"""Built-in optimizers: ``adam``, ``adamw`` and ``sgd``, with torch.optim's numerics and without its overhead.

The classes live in plugins/optimizer_classes.py (which imports torch); each is registered as a
:class:`bench.lazy.LazyFactory` that imports it on first use, its ``batched`` form included, so that
loading the plugin (``bench plugins``, ``bench list``) does not import torch.
"""

from __future__ import annotations

from bench import hookimpl
from bench.lazy import LazyFactory

CLASSES = "bench.plugins.optimizer_classes"


def __getattr__(name: str):
    """The classes (``Adam``, ``AdamW``, ``SGD``) and ``FUSED_DEVICES`` by their former names here: imports
    torch."""
    if name in ("Adam", "AdamW", "SGD", "FUSED_DEVICES"):
        from bench.plugins import optimizer_classes

        return getattr(optimizer_classes, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@hookimpl
def bench_register_optimizers(register):
    register("adam", LazyFactory(f"{CLASSES}:Adam"), params={"beta1": 0.9, "beta2": 0.999, "eps": 1e-8},
             description="Adam; weight decay is L2 added to the gradient (= torch.optim.Adam, fused)", default=True)
    register("adamw", LazyFactory(f"{CLASSES}:AdamW"), params={"beta1": 0.9, "beta2": 0.999, "eps": 1e-8},
             description="AdamW: Adam with decoupled weight decay (= torch.optim.AdamW, fused)")
    register("sgd", LazyFactory(f"{CLASSES}:SGD"), params={"momentum": 0.9},
             description="SGD with momentum; weight decay is L2 (= torch.optim.SGD, foreach)")
