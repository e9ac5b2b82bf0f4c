"""Tests' shortcuts into the engine: one cell (a group of one) or one stacked group, with the built-in plugins'
optimizers and schedules given explicitly, as the runner gives them."""

from __future__ import annotations

import functools

from bench.engine import Execution, Factories, train_group
from bench.host import Host
from bench.recipe import recipe_factories


@functools.lru_cache(maxsize=1)
def builtin_registry():
    return Host(autoload=False).registry


def train_cell(cell, model, loss_fn, data, device, execution=None, make_optimizer=None, make_schedule=None,
               on_epoch=None):
    """``cell`` trained alone on ``model`` (already built under its seed); raises what failed it."""
    if make_optimizer is None:
        make_optimizer, make_schedule = recipe_factories(builtin_registry(), cell)
    factories = Factories(lambda: model, loss_fn, lambda c: (make_optimizer, make_schedule))
    result = train_group([cell], factories, data, device, execution or Execution(), on_epoch)[0]
    if isinstance(result, BaseException):
        raise result
    return result


def train_stacked(cells, model_factory, loss_fn, data, device, batched, execution=None, on_epoch=None, on_eval=None):
    """``cells`` trained as one stacked group; one result or exception per member."""
    factories = Factories(model_factory, loss_fn, lambda c: recipe_factories(builtin_registry(), c), batched)
    return train_group(cells, factories, data, device, execution or Execution(fuse="on"), on_epoch, fused_group="g",
                       on_eval=on_eval)


def factory_for(registry, data, model):
    """The factory of a built-in ``model`` on ``data``, with its default parameters."""
    component = registry.get("model", model)
    return lambda: component.factory(data.input_shape, data.num_classes, **component.params)
