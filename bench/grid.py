"""Expands a study into cells: one cell = one training run to perform.

The axes of a grid: components (a registered grid's triples, or the crossed ``models`` x ``losses``
x ``datasets`` lists), every parameter sweep ``NAME.KEY`` (applied to the cells whose model, loss,
dataset, optimizer or schedule is ``NAME``), every recipe field (``lr``, ``optimizer``, ...), and
seeds. They are crossed, except the axes a ``zip`` group ties together element by element; then the
``exclude`` entries are taken out. Defaults (the grid, model, loss, dataset, optimizer and schedule
used when a study does not name one) are declared by plugins (``register(..., default=True)``).
"""

from __future__ import annotations

import itertools
import math
from typing import Any

from bench.config import COMPONENT_KINDS, PARAM_KINDS, RECIPE_FIELDS, Cell, Recipe
from bench.errors import BenchError, OptionError
from bench.files import excerpt
from bench.host import Registry, unknown_name_error
from bench.study import Study, recipe_values, seed_values

__all__ = ["Cell", "Recipe", "expand", "coerce", "restrict", "MAX_CELLS"]

#: A study that would expand to more cells than this is refused (it is almost surely a typo).
MAX_CELLS = 1_000_000
#: Recipe defaults for the numbers (names come from the plugins' defaults).
RECIPE_DEFAULTS = {k: v for k, v in Recipe().__dict__.items() if k not in ("optimizer", "schedule")}


def coerce(token: str, raw: Any, default: Any) -> Any:
    """Convert a parameter value to the type of the parameter's default (strings from the command
    line are parsed; typed values from a study file are checked). Non-finite numbers are refused."""
    def bad(what: str):
        return OptionError("param", f"{token}: {raw!r} is not {what}")

    if isinstance(default, bool):
        if isinstance(raw, bool):
            return raw
        low = str(raw).lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise bad("a boolean (true/false)")
    for kind in (int, float):
        if isinstance(default, kind):
            if isinstance(raw, bool):
                raise bad("an integer" if kind is int else "a number")
            try:
                value = kind(raw) if isinstance(raw, str) or kind is float else raw
                if kind is int and not isinstance(value, int):
                    if isinstance(value, float) and value.is_integer():
                        value = int(value)
                    else:
                        raise ValueError
            except (TypeError, ValueError, OverflowError):
                raise bad("an integer" if kind is int else "a number") from None
            if kind is float and not math.isfinite(value):
                raise OptionError("param", f"{token}: {raw!r} is not a finite number")
            return value
    if default is None and isinstance(raw, str):
        for kind in (int, float):
            try:
                value = kind(raw)
            except ValueError:
                continue
            if kind is float and not math.isfinite(value):
                raise OptionError("param", f"{token}: {raw!r} is not a finite number")
            return value
    if isinstance(raw, float) and not math.isfinite(raw):
        raise OptionError("param", f"{token}: {raw!r} is not a finite number")
    return raw


def restrict(triples: list[tuple[str, str, str]], explicit: dict[str, list[str] | None]) -> list[tuple[str, str, str]]:
    """The grid's triples whose components are in the explicit lists, ordered as those lists are."""
    kept = [t for t in dict.fromkeys(triples)
            if all(explicit[k] is None or t[i] in explicit[k] for i, k in enumerate(COMPONENT_KINDS))]
    return sorted(kept, key=lambda t: tuple(explicit[k].index(t[i]) if explicit[k] else 0
                                            for i, k in enumerate(COMPONENT_KINDS)))


def triples_of(registry: Registry, study: Study) -> list[tuple[str, str, str]]:
    """The (model, loss, dataset) triples a study names: a grid restricted by the lists, or the lists
    crossed (a missing list is the plugins' default), or the default grid."""
    explicit = {"model": study.models, "loss": study.losses, "dataset": study.datasets}
    for kind, names in explicit.items():
        for name in names or ():
            registry.get(kind, name)  # unknown names fail here, listing the valid ones
    grid = study.grid
    if grid is None and not any(explicit.values()):
        grid = registry.default("grid")
    if grid is None:
        lists = [explicit[k] or [registry.default(k)] for k in COMPONENT_KINDS]
        return list(itertools.product(*lists))
    triples = restrict(registry.get_grid(grid).triples(registry), explicit)
    if not triples:
        raise BenchError(f"the grid '{grid}' has no cells with the given models/losses/datasets")
    return triples


def _recipe_axes(registry: Registry, study: Study) -> dict[str, list]:
    axes = {}
    for name in RECIPE_FIELDS:
        values = study.recipe.get(name)
        if not values:
            values = [registry.default(name)] if name in ("optimizer", "schedule") else [RECIPE_DEFAULTS[name]]
        if name in ("optimizer", "schedule"):
            for value in values:
                registry.get(name, value)
        axes[name] = list(values)
    return axes


def _param_axes(registry: Registry, study: Study, in_grid: dict[str, set[str]]) -> dict[str, list]:
    """``{"NAME.KEY": [typed values]}``, each checked: NAME in this grid, KEY one of its parameters."""
    axes = {}
    for key, raws in study.params.items():
        name, param = (s.strip() for s in key.split(".", 1))
        token = f"{key}={','.join(map(str, raws))}"
        kinds = [kind for kind in PARAM_KINDS if name in registry.names(kind)]
        if not kinds:
            every = sorted({n for kind in PARAM_KINDS for n in registry.names(kind)})
            raise unknown_name_error(f"component in param {token}:", name, every)
        used = [kind for kind in kinds if name in in_grid[kind]]
        if not used:
            raise OptionError("param", f"{token}: '{name}' is not part of this grid")
        component = registry.get(used[0], name)
        if param not in component.params:
            valid = ", ".join(sorted(component.params)) or "(it has no parameters)"
            raise OptionError("param", f"{token}: {component.kind} '{name}' has no parameter '{param}'; "
                                       f"valid: {valid}")
        values = [coerce(token, raw, component.params[param]) for raw in raws]
        axes[f"{name}.{param}"] = list(dict.fromkeys(values))
    return axes


def _units(axes: dict[str, list], zips: list[list[str]]) -> list[list[dict[str, Any]]]:
    """The crossed units: a zip group is one unit of element-wise tuples; every other axis its own."""
    tied: dict[str, int] = {}
    for i, group in enumerate(zips):
        if len(group) < 2:
            raise OptionError("zip", f"group {group} needs at least two axes")
        for axis in group:
            if axis not in axes:
                valid = ", ".join(axes)
                raise OptionError("zip", f"names '{axis}', which is not an axis of this study (axes: {valid})")
            if axis in tied:
                raise OptionError("zip", f"names '{axis}' in two groups")
            tied[axis] = i
        lengths = {axis: len(axes[axis]) for axis in group}
        if len(set(lengths.values())) > 1:
            shown = ", ".join(f"{a}: {n}" for a, n in lengths.items())
            raise OptionError("zip", f"group {group} has lists of different lengths ({shown})")
    units = []
    for group in zips:
        units.append([dict(zip(group, values)) for values in zip(*(axes[a] for a in group))])
    for axis, values in axes.items():
        if axis not in tied:
            units.append([{axis: v} for v in values])
    return units


EXCLUDE_FIELDS = ("model", "loss", "dataset", "seed", *RECIPE_FIELDS)


def _excluded(cell: Cell, entries: list[dict[str, Any]]) -> bool:
    values = {**cell.config(), "seed": cell.seed, **cell.params}
    for entry in entries:
        if all(_same(values.get(k, _MISSING), v) for k, v in entry.items()):
            return True
    return False


_MISSING = object()


def _same(have: Any, want: Any) -> bool:
    if have is _MISSING:
        return False
    if isinstance(have, (int, float)) and not isinstance(have, bool) and isinstance(want, (int, float, str)):
        try:
            return float(have) == float(want)
        except ValueError:
            return False
    return str(have) == str(want)


def _check_exclude(registry: Registry, entries: list[dict[str, Any]], param_keys: set[str]) -> list[dict[str, Any]]:
    """The ``exclude`` entries with their values typed; an unknown key, an unknown name or a value of the
    wrong type is an :class:`OptionError` naming the entry (an entry that could never match would
    silently exclude nothing)."""
    typed = []
    for entry in entries:
        shown = excerpt(entry)
        out = {}
        for key, value in entry.items():
            if key not in EXCLUDE_FIELDS and key not in param_keys:
                raise OptionError("exclude", f"entry {shown} has an unknown key '{key}' (valid: "
                                             f"{', '.join(EXCLUDE_FIELDS)}, or a swept NAME.KEY)")
            if value is None or not isinstance(value, (str, int, float, bool)):
                raise OptionError("exclude", f"entry {shown}: {key} must be one value, got {value!r}"[:300])
            try:
                if key in (*COMPONENT_KINDS, "optimizer", "schedule"):
                    if not isinstance(value, str) or value not in registry.names(key):
                        raise unknown_name_error(key, str(value), registry.names(key))
                    out[key] = value
                elif key == "seed":
                    try:
                        out[key] = seed_values([value])[0]
                    except OptionError:
                        raise OptionError(key, f"needs an integer from 0 to 2**64-1, got {value!r}") from None
                elif key in RECIPE_FIELDS:
                    out[key] = recipe_values(key, [value])[0]
                else:
                    name, param = key.split(".", 1)
                    kind = next(k for k in PARAM_KINDS if name in registry.names(k))
                    out[key] = coerce(key, value, registry.get(kind, name).params[param])
            except OptionError as exc:
                text = exc.text if exc.text.startswith(f"{key}:") else f"{key}: {exc.text}"
                raise OptionError("exclude", f"entry {shown}: {text}") from None
            except BenchError as exc:
                raise OptionError("exclude", f"entry {shown}: {exc}") from None
        typed.append(out)
    return typed


def expand(registry: Registry, study: Study | None = None, device: str = "cpu", **options) -> list[Cell]:
    """The cells of ``study`` on ``device``, dataset-major (each dataset is loaded once), without
    duplicates (a parameter of an optimizer that a recipe does not use does not multiply its cells).

    ``options`` are ``bench.run``'s grid options (``models="linear,mlp"``, ``lr=[1e-3, 1e-2]``,
    ``params=["mlp.hidden=64,256"]``, ``seeds=[0, 1]``, ...), applied over ``study``.
    """
    if options:
        study = (study or Study()).merged(Study.from_options(**options))
    study = study or Study()
    triples = triples_of(registry, study)
    seeds = study.seeds if study.seeds is not None else [0]
    if not seeds:
        raise OptionError("seeds", "needs at least one seed")
    limit = study.limit or 0
    recipe_axes = _recipe_axes(registry, study)
    in_grid = {k: {t[i] for t in triples} for i, k in enumerate(COMPONENT_KINDS)}
    in_grid.update({k: set(recipe_axes[k]) for k in ("optimizer", "schedule")})
    param_axes = _param_axes(registry, study, in_grid)
    exclude = _check_exclude(registry, study.exclude, set(param_axes))
    units = _units({**recipe_axes, **param_axes}, study.zip)
    size = len(triples) * len(seeds) * math.prod(len(u) for u in units)
    if size > MAX_CELLS:
        raise BenchError(f"this study would expand to {size:,} cells (more than {MAX_CELLS:,}): "
                         "check the lists, seeds and parameter sweeps")

    order = {name: i for i, name in enumerate(dict.fromkeys(t[2] for t in triples))}
    cells: dict[Cell, None] = {}
    for model, loss, dataset in sorted(triples, key=lambda t: order[t[2]]):
        names = {"model": model, "loss": loss, "dataset": dataset}
        for combo in itertools.product(*units):
            values = {k: v for part in combo for k, v in part.items()}
            recipe = Recipe(**{k: values[k] for k in RECIPE_FIELDS})
            used = {**names, "optimizer": recipe.optimizer, "schedule": recipe.schedule}
            overrides: dict[str, dict[str, Any]] = {}
            for key in param_axes:
                name, param = key.split(".", 1)
                for kind in PARAM_KINDS:
                    if used[kind] == name:
                        overrides.setdefault(kind, {})[param] = values[key]
                        break
            for seed in seeds:
                cell = Cell(model, loss, dataset, seed, device, recipe, limit, overrides)
                if not _excluded(cell, exclude):
                    cells.setdefault(cell)
    if not cells:
        raise BenchError("every cell of this study is excluded")
    return list(cells)
