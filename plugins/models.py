"""Built-in models: linear, deep-linear, mlp and a small LeNet-style cnn."""

from __future__ import annotations

import math

import torch
from torch import nn

from bench import IncompatibleCell, hookimpl

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


def _features(input_shape) -> int:
    return math.prod(input_shape)


def make_linear(input_shape, num_classes):
    return Linear(_features(input_shape), num_classes)


def make_mlp(input_shape, num_classes, hidden=256, depth=1, activation="relu"):
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}, not '{activation}'")
    if hidden < 1 or depth < 0:
        raise ValueError("hidden must be >= 1 and depth >= 0")
    return MLP(_features(input_shape), num_classes, hidden, depth, activation)


def make_deep_linear(input_shape, num_classes, hidden=256, depth=1):
    if hidden < 1 or depth < 0:
        raise ValueError("hidden must be >= 1 and depth >= 0")
    return MLP(_features(input_shape), num_classes, hidden, depth, "identity")


def make_cnn(input_shape, num_classes, c1=6, c2=16, fc=120):
    if len(input_shape) != 3 or min(input_shape[1:]) < 4:
        raise IncompatibleCell(f"cnn needs image input (channels, height>=4, width>=4), got shape {tuple(input_shape)}")
    return LeNet(tuple(input_shape), num_classes, c1, c2, fc)


@hookimpl
def bench_register_models(register):
    register("linear", make_linear, description="one nn.Linear on the flattened input (attribute fc)", default=True)
    register(
        "mlp", make_mlp, params={"hidden": 256, "depth": 1, "activation": "relu"},
        description="multi-layer perceptron: depth hidden layers of width hidden with an activation",
    )
    register(
        "deep-linear", make_deep_linear, params={"hidden": 256, "depth": 1},
        description="the mlp stack without activations: a product of linear maps, still linear",
    )
    register(
        "cnn", make_cnn, params={"c1": 6, "c2": 16, "fc": 120},
        description="small LeNet-style convolutional network, the nonlinear upper reference",
    )
