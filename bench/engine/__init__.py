"""One training engine: a group of N >= 1 cells of one fuse key trains through one epoch loop
(:mod:`bench.engine.group`), one step family (:mod:`bench.engine.steps`) and one plan of what fuses
(:mod:`bench.engine.plan`). A single cell is a group of one; ``--fuse off`` means groups of one."""

from bench.engine.execution import MODES, TARGET_METRICS, Execution
from bench.engine.group import CellResult, Factories, NonFiniteLoss, train_group
from bench.engine.steps import Unfusable

__all__ = ["MODES", "TARGET_METRICS", "CellResult", "Execution", "Factories",
           "NonFiniteLoss", "Unfusable", "train_group"]
