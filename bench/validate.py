"""Checks every distinct component configuration of a grid before anything trains.

A bad parameter value (``--param mlp.activation=swish``, ``mlp.hidden=0``) would otherwise fail every
cell at run time; here it is one error naming the component, its parameters and the factory's message.
Cheap by construction: models are built on the ``meta`` device (no memory, no compute), loss,
optimizer and schedule factories are called once on a one-element parameter; datasets are never loaded.

Models are built for a nominal input (``NOMINAL_SHAPE``, ``NOMINAL_CLASSES``) because the real shape is
known only once the data is loaded: a model whose *default* parameters cannot be built for it either
(it needs another kind of input) is not judged here, and a model that raises ``IncompatibleCell`` is
left to the run, which records such cells as skipped.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from bench.config import Cell
from bench.errors import BenchError, IncompatibleCell
from bench.host import Registry
from bench.recipe import check_recipe

NOMINAL_SHAPE = (1, 28, 28)
NOMINAL_CLASSES = 10


def _describe(kind: str, name: str, params: dict[str, Any]) -> str:
    shown = ", ".join(f"{k}={v!r}" for k, v in params.items())
    return f"{kind} '{name}'" + (f" with {shown}" if shown else "")


def _message(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"


def _build_model(factory, params: dict[str, Any]):
    import torch

    with torch.device("meta"):
        return factory(NOMINAL_SHAPE, NOMINAL_CLASSES, **params)


def check_cells(registry: Registry, cells: list[Cell]) -> None:
    """Raise :class:`BenchError` for the first component configuration whose factory refuses its values."""
    seen: set[str] = set()
    model_defaults_ok: dict[str, bool] = {}
    for cell in cells:
        checks = [("model", cell.model, cell.override("model")), ("loss", cell.loss, cell.override("loss")),
                  ("recipe", cell.recipe.optimizer, {"optimizer": cell.override("optimizer"),
                                                     "schedule": cell.override("schedule")})]
        for kind, name, overrides in checks:
            extra = dataclasses.astuple(cell.recipe) if kind == "recipe" else ()
            key = json.dumps([kind, name, overrides, extra], sort_keys=True, default=str)
            if key in seen:
                continue
            seen.add(key)
            if kind == "recipe":  # the optimizer and schedule, built and stepped once on a tiny tensor
                check_recipe(registry, cell.recipe, overrides)
                continue
            component = registry.get(kind, name)
            params = {**component.params, **overrides}
            try:
                if kind == "model":
                    if name not in model_defaults_ok:
                        try:
                            _build_model(component.factory, dict(component.params))
                            model_defaults_ok[name] = True
                        except Exception:
                            model_defaults_ok[name] = False
                    if not model_defaults_ok[name] or not overrides:
                        continue
                    _build_model(component.factory, params)
                else:
                    component.factory(**params)
            except IncompatibleCell:
                continue
            except BenchError as exc:
                raise BenchError(f"{_describe(kind, name, overrides)}: {exc}") from None
            except Exception as exc:
                raise BenchError(f"{_describe(kind, name, overrides)} is refused by its factory: "
                                 f"{_message(exc)}") from None

