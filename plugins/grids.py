"""Built-in grids: ``all`` (every model x loss x dataset) and ``seed`` (the notebook's three cells, the default)."""

from __future__ import annotations

import itertools

from bench import hookimpl
from bench.config import COMPONENT_KINDS

#: The notebook's three cells: the default grid of ``bench run``.
SEED_GRID = (("linear", "mse", "mnist"), ("linear", "crossentropy", "mnist"), ("mlp", "crossentropy", "mnist"))


def every_cell(registry):
    """Every registered model x loss x dataset (``bench run`` leaves out unavailable datasets)."""
    return itertools.product(*(registry.names(kind) for kind in COMPONENT_KINDS))


@hookimpl
def bench_register_grids(register):
    register("all", every_cell, description="every registered model x loss x available dataset")
    register("seed", SEED_GRID, description="the notebook's three cells: linear+mse, linear+crossentropy, "
             "mlp+crossentropy on mnist", default=True)
