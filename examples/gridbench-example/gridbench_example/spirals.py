"""Two interleaved spirals in the plane: no straight line separates them."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from bench import DataSplits


def spiral_points(n: int, turns: float, noise: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` points, half on each arm; arm 1 is arm 0 turned by 180 degrees. Radius <= 1."""
    labels = torch.arange(n) % 2
    radius = torch.rand(n, generator=generator).sqrt()  # uniform density along the area
    angle = radius * turns * 2 * math.pi + labels * math.pi
    points = torch.stack([radius * torch.cos(angle), radius * torch.sin(angle)], dim=1)
    points += noise * torch.randn(n, 2, generator=generator)
    return points.to(torch.float32), labels.to(torch.int64)


def load_two_spirals(data_dir: Path, n_train=20000, n_val=2000, n_test=2000, turns=1.5, noise=0.03, seed=0):
    """Factory for ``two-spirals``: generated, never downloaded (``data_dir`` is unused)."""
    if min(n_train, n_val, n_test) < 2:
        raise ValueError("n_train, n_val and n_test must be >= 2")
    generator = torch.Generator().manual_seed(seed)
    splits = [spiral_points(n, turns, noise, generator) for n in (n_train, n_val, n_test)]
    return DataSplits(train=splits[0], val=splits[1], test=splits[2], classes=["arm 0", "arm 1"],
                      meta={"turns": turns, "noise": noise, "seed": seed})
