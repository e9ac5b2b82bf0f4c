"""Builds a cell's optimizer and learning-rate schedule from the registered plugins.

:func:`recipe_factories` gives the trainer two functions, ``make_optimizer(parameters, capturable)``
and ``make_schedule(optimizer, total_steps)``, so that the step decides when to build them (and
builds them again for a fallback). :func:`check_recipe` builds both on one tiny tensor: a cheap
check of a configuration before any training.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from bench.config import Cell, Recipe
from bench.errors import BenchError
from bench.host import Registry
from bench.optim import OPTIMIZER_INTERFACE, accepts_keyword

MakeOptimizer = Callable[[list[torch.Tensor], bool], Any]
MakeSchedule = Callable[[Any, int], Any]


def _failed(kind: str, name: str, plugin: str, exc: Exception) -> BenchError:
    if isinstance(exc, BenchError):
        return exc
    text = " ".join(str(exc).split())
    return BenchError(f"{kind} '{name}' (plugin '{plugin}') failed: {type(exc).__name__}: {text}")


def optimizer_factory(registry: Registry, name: str, lr: float, weight_decay: float,
                      overrides: Mapping[str, Any] | None = None) -> MakeOptimizer:
    """``make_optimizer(parameters, capturable)`` for the registered optimizer ``name``.

    The factory is called as ``factory(parameters, lr=lr, weight_decay=weight_decay, **params)``, the
    registered params overridden by ``overrides``; ``capturable=True`` is passed only when asked for
    and only to a factory that names that keyword. What it returns must have torch's optimizer
    interface. A failure is a :class:`BenchError` naming the optimizer and its plugin.
    """
    component = registry.get("optimizer", name)
    params = {**component.params, **(overrides or {})}
    takes_capturable = accepts_keyword(component.factory, "capturable")

    def make_optimizer(parameters: list[torch.Tensor], capturable: bool = False) -> Any:
        kwargs = {**params, "capturable": True} if capturable and takes_capturable else params
        try:
            optimizer = component.factory(list(parameters), lr=lr, weight_decay=weight_decay, **kwargs)
        except Exception as exc:
            raise _failed("optimizer", name, component.plugin, exc) from exc
        missing = [attr for attr in OPTIMIZER_INTERFACE if not hasattr(optimizer, attr)]
        if missing:
            raise BenchError(f"optimizer '{name}' (plugin '{component.plugin}') returned {type(optimizer).__name__}, "
                             f"which lacks {', '.join(missing)} (an optimizer needs {', '.join(OPTIMIZER_INTERFACE)})")
        return optimizer

    return make_optimizer


def schedule_factory(registry: Registry, name: str, overrides: Mapping[str, Any] | None = None) -> MakeSchedule:
    """``make_schedule(optimizer, total_steps)`` for the registered schedule ``name``: a scheduler, or
    ``None`` when the schedule needs no per-step work."""
    component = registry.get("schedule", name)
    params = {**component.params, **(overrides or {})}

    def make_schedule(optimizer: Any, total_steps: int) -> Any:
        try:
            schedule = component.factory(optimizer, total_steps, **params)
        except Exception as exc:
            raise _failed("schedule", name, component.plugin, exc) from exc
        if schedule is not None and not callable(getattr(schedule, "step", None)):
            raise BenchError(f"schedule '{name}' (plugin '{component.plugin}') returned {type(schedule).__name__}, "
                             f"which has no step() (a schedule returns a scheduler or None)")
        return schedule

    return make_schedule


def with_defaults(registry: Registry, recipe: Recipe) -> Recipe:
    """``recipe`` with an unnamed optimizer or schedule (``""``) replaced by the plugins' default."""
    import dataclasses

    names = {kind: registry.default(kind) for kind in ("optimizer", "schedule") if not getattr(recipe, kind)}
    return dataclasses.replace(recipe, **names) if names else recipe


def recipe_factories(registry: Registry, cell: Cell) -> tuple[MakeOptimizer, MakeSchedule]:
    """The cell's ``(make_optimizer, make_schedule)``: its recipe's optimizer, learning rate, weight
    decay and schedule, with the cell's optimizer and schedule parameter overrides."""
    recipe = with_defaults(registry, cell.recipe)
    return (optimizer_factory(registry, recipe.optimizer, recipe.lr, recipe.weight_decay, cell.override("optimizer")),
            schedule_factory(registry, recipe.schedule, cell.override("schedule")))


def check_recipe(registry: Registry, recipe: Recipe, overrides: Mapping[str, Mapping[str, Any]] | None = None,
                 total_steps: int = 100) -> None:
    """Raise :class:`BenchError` if ``recipe``'s optimizer or schedule cannot be built or stepped.

    Builds the optimizer on one tiny parameter and the schedule on it, then takes one step of each:
    an unknown name, a bad parameter value or a factory that raises is reported without training.
    ``overrides`` maps ``optimizer`` / ``schedule`` to parameter overrides (as a cell's do).
    """
    overrides = overrides or {}
    recipe = with_defaults(registry, recipe)
    make_optimizer = optimizer_factory(registry, recipe.optimizer, recipe.lr, recipe.weight_decay,
                                       overrides.get("optimizer"))
    make_schedule = schedule_factory(registry, recipe.schedule, overrides.get("schedule"))
    weight = torch.zeros(2, requires_grad=True)
    optimizer = make_optimizer([weight], False)
    schedule = make_schedule(optimizer, total_steps)
    weight.grad = torch.ones_like(weight)
    try:
        optimizer.step()
    except Exception as exc:
        raise _failed("optimizer", recipe.optimizer, registry.get("optimizer", recipe.optimizer).plugin, exc) from exc
    if schedule is not None:
        try:
            schedule.step()
        except Exception as exc:
            raise _failed("schedule", recipe.schedule, registry.get("schedule", recipe.schedule).plugin, exc) from exc
