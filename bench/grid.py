"""Expands what the user asked for into cells: one cell = one training run to perform."""

from __future__ import annotations

import itertools
import json
import math
from typing import Any

from bench.errors import BenchError
from bench.host import Registry, unknown_name_error

from bench.config import COMPONENT_KINDS, Cell, Recipe  # noqa: F401  (Cell is re-exported: plugins import it from here)

#: The notebook's three cells (registered as the grid ``seed`` by ``plugins.grids``).
SEED_GRID = (("linear", "mse", "mnist"), ("linear", "crossentropy", "mnist"), ("mlp", "crossentropy", "mnist"))


def split_list(option: str, value: str | None) -> list[str] | None:
    """``"a,b"`` -> ``["a", "b"]``; ``None`` stays ``None``; an empty list is an error."""
    if value is None:
        return None
    items = [v.strip() for v in value.split(",")]
    if not any(items) or not all(items):
        raise BenchError(f"{option} needs a comma-separated list of names, got '{value}'")
    return items


def parse_int_list(option: str, value: str) -> list[int]:
    items = split_list(option, value) or []
    try:
        return [int(v) for v in items]
    except ValueError:
        raise BenchError(f"{option} needs comma-separated integers, got '{value}'") from None


#: The largest seed: ``torch.manual_seed`` takes a 64-bit unsigned integer (0 .. 2**64 - 1).
MAX_SEED = 2**64 - 1
#: ``--repeat`` at most this many seeds: a grid of more cells would not finish anyway, and even
#: listing it (``--dry-run``) would take minutes.
MAX_REPEAT = 10_000


def seed_list(seeds: str | None, repeat: int | None) -> list[int]:
    """The seeds of a run: ``--seeds 0,1,2`` or ``--repeat N`` (seeds 0..N-1); default ``[0]``."""
    if seeds is not None and repeat is not None:
        raise BenchError("give --seeds or --repeat, not both")
    if repeat is not None:
        if repeat < 1:
            raise BenchError(f"--repeat must be >= 1, got {repeat}")
        if repeat > MAX_REPEAT:
            raise BenchError(f"--repeat must be <= {MAX_REPEAT:,}, got {repeat:,}")
        return list(range(repeat))
    if seeds is None:
        return [0]
    values = parse_int_list("--seeds", seeds)
    if any(v < 0 for v in values):
        raise BenchError(f"--seeds must be non-negative integers, got '{seeds}'")
    too_big = [v for v in values if v > MAX_SEED]
    if too_big:
        raise BenchError(f"--seeds: {too_big[0]} is too large; a seed must be in 0..{MAX_SEED} (2**64 - 1, "
                         "the range torch.manual_seed accepts)")
    if len(set(values)) != len(values):
        raise BenchError(f"--seeds lists a seed twice: '{seeds}'")
    return values


def coerce(token: str, raw: str, default: Any) -> Any:
    """Convert a ``--param`` value to the type of the parameter's default."""
    if isinstance(default, bool):
        low = raw.lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise BenchError(f"--param {token}: '{raw}' is not a boolean (true/false)")
    for kind in (int, float):
        if isinstance(default, kind):
            try:
                value = kind(raw)
            except ValueError:
                raise BenchError(f"--param {token}: '{raw}' is not {'an integer' if kind is int else 'a number'}") \
                    from None
            return _finite(token, raw, value)
    if default is None:
        for kind in (int, float):
            try:
                return _finite(token, raw, kind(raw))
            except ValueError:
                pass
    return raw


def _finite(token: str, raw: str, value: Any) -> Any:
    """``nan`` and ``inf`` are floats to Python but never a parameter value: they train nonsense or
    fail every cell, and ``NaN`` is not JSON (params are written into results.csv as JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise BenchError(f"--param {token}: '{raw}' is not a finite number")
    return value


def parse_params(specs: list[str], registry: Registry, selected: dict[str, list[str]]) -> dict[str, dict[str, list]]:
    """Parse ``NAME.KEY=V1,V2`` tokens into ``{NAME: {KEY: [values]}}``, checked against the registry."""
    parsed: dict[str, dict[str, list]] = {}
    given: dict[tuple[str, str], str] = {}
    for token in specs:
        if "=" not in token:
            raise BenchError(f"--param {token}: expected NAME.KEY=V1,V2 (missing '=')")
        lhs, rhs = token.split("=", 1)
        if "." not in lhs:
            raise BenchError(f"--param {token}: expected NAME.KEY=V1,V2 (missing '.' between component and key)")
        name, key = (s.strip() for s in lhs.split(".", 1))
        if (name, key) in given:
            raise BenchError(f"--param {token}: {name}.{key} is already given ({given[name, key]}); list all its "
                             f"values in one --param {name}.{key}=V1,V2")
        given[name, key] = token
        kinds = [kind for kind in COMPONENT_KINDS if name in registry.names(kind)]
        if not kinds:
            every = sorted({n for kind in COMPONENT_KINDS for n in registry.names(kind)})
            raise unknown_name_error(f"component in --param {token}:", name, every)
        in_grid = [kind for kind in kinds if name in selected[kind]]
        if not in_grid:
            raise BenchError(f"--param {token}: '{name}' is not part of this grid")
        component = registry.get(in_grid[0], name)
        if key not in component.params:
            valid = ", ".join(sorted(component.params)) or "(it has no parameters)"
            raise BenchError(f"--param {token}: {component.kind} '{name}' has no parameter '{key}'; valid: {valid}")
        raws = [v.strip() for v in rhs.split(",")]
        if not all(raws):
            raise BenchError(f"--param {token}: empty value in '{rhs}'")
        values = [coerce(token, raw, component.params[key]) for raw in raws]
        parsed.setdefault(name, {})[key] = list(dict.fromkeys(values))
    return parsed


def restrict(triples: list[tuple[str, str, str]], explicit: dict[str, list[str] | None]) -> list[tuple[str, str, str]]:
    """The grid's triples whose components are in the explicit lists, ordered as those lists are."""
    kept = [t for t in dict.fromkeys(triples)
            if all(explicit[k] is None or t[i] in explicit[k] for i, k in enumerate(COMPONENT_KINDS))]
    return sorted(kept, key=lambda t: tuple(explicit[k].index(t[i]) if explicit[k] else 0
                                            for i, k in enumerate(COMPONENT_KINDS)))


def _component_variants(name: str, sweeps: dict[str, dict[str, list]]) -> list[dict[str, Any]]:
    sweep = sweeps.get(name, {})
    keys = sorted(sweep)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(sweep[k] for k in keys))]


def expand(
    registry: Registry,
    *,
    grid: str | None = None,
    models: list[str] | None = None,
    losses: list[str] | None = None,
    datasets: list[str] | None = None,
    params: list[str] = (),
    seeds: list[int] = (0,),
    device: str = "cpu",
    recipe: Recipe = Recipe(),
    limit: int = 0,
) -> list[Cell]:
    """The cells to run, dataset-major so that each dataset is loaded once.

    ``grid`` names a registered grid (built-ins: ``all``, every registered model x loss x dataset;
    ``seed``, the notebook's three cells; plugins add more through ``bench_register_grids``);
    explicit ``models``/``losses``/``datasets`` restrict its axes. With no grid, the explicit lists
    are crossed, missing ones defaulting to linear / crossentropy / mnist. With neither, the
    ``seed`` grid runs.
    """
    explicit = {"model": models, "loss": losses, "dataset": datasets}
    for kind, names in explicit.items():
        for name in names or ():
            registry.get(kind, name)  # unknown names fail here, listing the valid ones
    if not seeds:
        raise BenchError("--seeds needs at least one seed")
    if grid is None and not any(explicit.values()):
        grid = "seed"
    if grid is None:
        defaults = {"model": ["linear"], "loss": ["crossentropy"], "dataset": ["mnist"]}
        triples = list(itertools.product(*((explicit[k] or defaults[k]) for k in COMPONENT_KINDS)))
    else:
        triples = restrict(registry.get_grid(grid).triples(registry), explicit)
    if not triples:
        raise BenchError(f"the grid '{grid}' has no cells with the given --models/--losses/--datasets")

    selected = {k: sorted({t[i] for t in triples}) for i, k in enumerate(COMPONENT_KINDS)}
    sweeps = parse_params(list(params), registry, selected)

    cells = []
    order = {name: i for i, name in enumerate(dict.fromkeys(t[2] for t in triples))}
    for model, loss, dataset in sorted(triples, key=lambda t: order[t[2]]):
        for d_over, m_over, l_over in itertools.product(
            _component_variants(dataset, sweeps), _component_variants(model, sweeps), _component_variants(loss, sweeps)
        ):
            for seed in seeds:
                overrides = {k: v for k, v in (("model", m_over), ("loss", l_over), ("dataset", d_over)) if v}
                cells.append(Cell(model, loss, dataset, seed, device, recipe, limit, overrides))
    return cells
