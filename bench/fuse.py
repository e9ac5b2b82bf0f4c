"""Which cells can train together as one stacked model (fused training), and with which optimizer.

Cells fuse when everything that shapes their computation is equal: model and its params, loss and
its params, dataset and its params, batch size, epochs, ``limit``, the optimizer and schedule kinds,
and the device. They may differ in what each member of the stack keeps for itself: the seed (its
initialisation and its batch order), the learning rate, the weight decay, and the optimizer's and
schedule's parameter overrides (betas, momentum, ...). That is :func:`fuse_key`: the configuration
of :mod:`bench.config` without those.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from bench.config import PARAM_KINDS, Cell
from bench.errors import BenchError

#: Recipe fields in which the members of a fused group may differ: each member's optimizer takes its own.
PER_MEMBER_FIELDS = ("lr", "weight_decay")
#: Plugins whose parameter overrides may differ between members (their values become per-member tensors).
PER_MEMBER_KINDS = ("optimizer", "schedule")


def fuse_key(cell: Cell) -> str:
    """A canonical string of what shapes ``cell``'s computation: cells with equal keys can fuse.

    The configuration (:meth:`Cell.config`) without the seed, the per-member recipe fields and the
    per-member plugins' overrides, on the exact device (``cuda:0`` and ``cuda:1`` do not fuse).
    """
    config = cell.config()
    for name in PER_MEMBER_FIELDS:
        config.pop(name)
    config["params"] = {kind: cell.override(kind) for kind in PARAM_KINDS if kind not in PER_MEMBER_KINDS}
    config["device"] = cell.device
    return json.dumps(config, sort_keys=True, separators=(",", ":"))


def group_cells(cells: Sequence, max_size: int | None = None, key: Callable[[Any], str] = fuse_key) -> list[list]:
    """``cells`` grouped by :func:`fuse_key`, in the order of each group's first cell; a group larger
    than ``max_size`` (``None`` or 0: no limit) is split into as few chunks as possible, of equal
    sizes give or take one. Cells that fuse with nothing are groups of one. ``key`` groups other items
    than cells (e.g. ``lambda task: fuse_key(task[1])`` for ``(index, cell)`` tasks)."""
    if max_size is not None and max_size < 0:
        raise BenchError(f"the largest fused group must be >= 1 cell (0: no limit), got {max_size}")
    groups: dict[str, list] = {}
    for cell in cells:
        groups.setdefault(key(cell), []).append(cell)
    return [chunk for group in groups.values() for chunk in even_chunks(group, max_size)]


def even_chunks(items: Sequence, max_size: int | None) -> list[list]:
    """``items`` in order, split into as few chunks of at most ``max_size`` as possible, the first ones one
    longer where they cannot all be equal (``None`` or 0: one chunk)."""
    count = math.ceil(len(items) / max_size) if max_size else 1
    size, extra = divmod(len(items), count)
    chunks, start = [], 0
    for chunk in range(count):
        end = start + size + (chunk < extra)
        chunks.append(list(items[start:end]))
        start = end
    return chunks


def group_id(cells: Sequence[Cell]) -> str:
    """A short id of a fused group, derived from its members' cell ids in any order (the ``fused_group`` column)."""
    return hashlib.sha256(",".join(sorted(cell.cell_id for cell in cells)).encode()).hexdigest()[:10]


def member_hyperparameters(cell: Cell) -> dict[str, Any]:
    """What a cell's own optimizer takes: its learning rate and weight decay and its optimizer overrides."""
    return {"lr": cell.recipe.lr, "weight_decay": cell.recipe.weight_decay, **cell.override("optimizer")}


@dataclass(frozen=True)
class BatchedOptimizer:
    """An optimizer's batched form: ``factory(stacked_params, members, capturable=..., **defaults)``,
    ``members`` one dict of hyperparameters per member (see plugins/batched_optimizers.py)."""

    name: str
    factory: Callable[..., Any]
    defaults: Mapping[str, Any] = field(default_factory=dict)

    def build(self, params: Sequence, cells: Sequence[Cell], capturable: bool = False, partitions: Sequence = ()):
        """The optimizer over ``params`` for ``cells``' members. ``partitions``: one hashable per member; members
        with different values never share a learning rate (their schedules differ), passed to a batched form
        that names the keyword."""
        from bench.optim import accepts_keyword

        extra = {"partitions": list(partitions)} if partitions and accepts_keyword(self.factory, "partitions") else {}
        return self.factory(params, [member_hyperparameters(cell) for cell in cells], capturable=capturable,
                            **extra, **self.defaults)


def batched_optimizer_for(registry, name: str) -> BatchedOptimizer | None:
    """The batched form of the optimizer ``name``, or ``None`` when it has none (its cells train unfused).

    A registered optimizer offers it as ``factory.batched``, with the component's params as the defaults.
    """
    component = registry.get("optimizer", name or registry.default("optimizer"))
    batched = getattr(component.factory, "batched", None)
    return BatchedOptimizer(component.name, batched, dict(component.params)) if batched is not None else None
