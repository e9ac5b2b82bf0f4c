"""A linear classifier on random Fourier features: linear in the features, not in the input."""

from __future__ import annotations

import math

import torch
from torch import nn


class RandomFourierLinear(nn.Module):
    """``fc(sqrt(2/D) * cos(x W + b))`` with fixed random ``W ~ N(0, scale^2 / d)``, ``b ~ U(0, 2 pi)``.

    For ``d`` input features, the feature map approximates the Gaussian (RBF) kernel
    ``exp(-scale^2 |x - y|^2 / (2 d))``: its length scale grows with the input's dimension, like
    the distances between inputs do. Only ``fc`` is trained, so the model is a linear classifier
    in a ``features``-dimensional space.
    """

    def __init__(self, in_features: int, num_classes: int, features: int, scale: float):
        super().__init__()
        self.register_buffer("omega", torch.randn(in_features, features) * (scale / math.sqrt(in_features)))
        self.register_buffer("phase", torch.rand(features) * 2 * math.pi)
        self.fc = nn.Linear(features, num_classes)
        self.norm = math.sqrt(2.0 / features)

    def featurize(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm * torch.cos(x.flatten(1) @ self.omega + self.phase)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.featurize(x))


def make_rff_linear(input_shape, num_classes, features=512, scale=8.0):
    """Factory for ``rff-linear``: works on any input shape (it flattens)."""
    if features < 1:
        raise ValueError("features must be >= 1")
    if not scale > 0:
        raise ValueError("scale must be > 0")
    return RandomFourierLinear(math.prod(input_shape), num_classes, features, scale)
