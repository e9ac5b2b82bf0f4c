"""The record a dataset plugin returns: tensors for train, validation and test."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bench.errors import BenchError

if TYPE_CHECKING:
    import torch

    Split = tuple[torch.Tensor, torch.Tensor]


@dataclass
class DataSplits:
    """Train/val/test splits of one dataset, as tensors.

    ``x`` is float32 ``[N, *input_shape]``, already normalised; ``y`` is int64 class
    indices in ``range(len(classes))``; ``classes`` are the class names.
    """

    train: Split
    val: Split
    test: Split
    classes: list[str]
    #: Free-form facts about the data (normalisation constants, source, ...).
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train[0].shape[1:])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def to(self, device) -> DataSplits:
        """The same splits with every tensor moved to ``device``."""
        def move(split):
            return (split[0].to(device), split[1].to(device))

        return DataSplits(move(self.train), move(self.val), move(self.test), list(self.classes), dict(self.meta))

    def validate(self, name: str) -> None:
        """Raise a clear error if the splits break the contract above."""
        import torch


        for split_name in ("train", "val", "test"):
            split = getattr(self, split_name)
            if not (isinstance(split, tuple) and len(split) == 2):
                raise BenchError(f"dataset '{name}': {split_name} must be a tuple (x, y)")
            x, y = split
            if not isinstance(x, torch.Tensor) or x.dtype != torch.float32:
                raise BenchError(f"dataset '{name}': {split_name} x must be a float32 tensor")
            if not isinstance(y, torch.Tensor) or y.dtype != torch.int64 or y.dim() != 1:
                raise BenchError(f"dataset '{name}': {split_name} y must be a 1-D int64 tensor")
            if len(x) != len(y):
                raise BenchError(f"dataset '{name}': {split_name} has {len(x)} inputs but {len(y)} labels")
            if tuple(x.shape[1:]) != self.input_shape:
                raise BenchError(f"dataset '{name}': {split_name} inputs have shape {tuple(x.shape[1:])}, "
                                 f"train has {self.input_shape}")
            if len(y) and (int(y.min()) < 0 or int(y.max()) >= len(self.classes)):
                raise BenchError(f"dataset '{name}': {split_name} labels fall outside 0..{len(self.classes) - 1}")
        if len(self.train[0]) == 0:
            raise BenchError(f"dataset '{name}': the train split is empty")
