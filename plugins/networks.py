"""The built-in models' networks (nn.Modules), imported by their factories in plugins/models.py on first use,
so that loading the plugin (``bench plugins``, ``bench list``) does not import torch."""

from __future__ import annotations

import torch
from torch import nn

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU, "sigmoid": nn.Sigmoid, "identity": nn.Identity}


class Linear(nn.Module):
    """One affine map on the flattened input; ``fc.weight`` rows are the class templates."""

    def __init__(self, in_features: int, num_classes: int):
        super().__init__()
        self.fc = nn.Linear(in_features, num_classes)

    def forward(self, x):
        return self.fc(x.flatten(1))

    def effective_weight(self) -> torch.Tensor:
        """The ``[num_classes, in_features]`` matrix of the linear map."""
        return self.fc.weight.detach()


class MLP(nn.Module):
    """``depth`` hidden layers of width ``hidden`` with an activation, then a linear read-out."""

    def __init__(self, in_features: int, num_classes: int, hidden: int, depth: int, activation: str):
        super().__init__()
        layers: list[nn.Module] = []
        width = in_features
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), ACTIVATIONS[activation]()]
            width = hidden
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)
        self.is_linear = activation == "identity"

    def forward(self, x):
        return self.net(x.flatten(1))

    def effective_weight(self) -> torch.Tensor:
        """The product of the weight matrices: the whole network's linear map (deep-linear only)."""
        if not self.is_linear:
            raise TypeError("only a network without activations is a linear map")
        weight = None
        for layer in self.net:
            if isinstance(layer, nn.Linear):
                w = layer.weight.detach()
                weight = w if weight is None else w @ weight
        return weight


class LeNet(nn.Module):
    """Two conv(5x5)+ReLU+maxpool blocks and two fully connected layers (LeNet-5 sizes)."""

    def __init__(self, input_shape, num_classes: int, c1: int, c2: int, fc: int):
        super().__init__()
        channels, height, width = input_shape
        self.features = nn.Sequential(
            nn.Conv2d(channels, c1, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(c2 * (height // 4) * (width // 4), fc), nn.ReLU(), nn.Linear(fc, num_classes)
        )

    def forward(self, x):
        return self.head(self.features(x))
