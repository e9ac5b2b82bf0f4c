"""Built-in models: linear, deep-linear, mlp and a small LeNet-style cnn.

The networks live in plugins/networks.py, imported (with torch) by the factories when a model is built.
"""

from __future__ import annotations

import math

from bench import IncompatibleCell, hookimpl

#: The activations of ``mlp`` (plugins/networks.py ``ACTIVATIONS`` maps each to its nn.Module).
ACTIVATION_NAMES = ("relu", "tanh", "gelu", "sigmoid", "identity")


def __getattr__(name: str):
    """The networks (``Linear``, ``MLP``, ``LeNet``, ``ACTIVATIONS``) by their former names here: imports torch."""
    if name in ("Linear", "MLP", "LeNet", "ACTIVATIONS"):
        from bench.plugins import networks

        return getattr(networks, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _features(input_shape) -> int:
    return math.prod(input_shape)


def make_linear(input_shape, num_classes):
    from bench.plugins.networks import Linear

    return Linear(_features(input_shape), num_classes)


def make_mlp(input_shape, num_classes, hidden=256, depth=1, activation="relu"):
    if activation not in ACTIVATION_NAMES:
        raise ValueError(f"activation must be one of {', '.join(ACTIVATION_NAMES)}, not '{activation}'")
    if hidden < 1 or depth < 0:
        raise ValueError("hidden must be >= 1 and depth >= 0")
    from bench.plugins.networks import MLP

    return MLP(_features(input_shape), num_classes, hidden, depth, activation)


def make_deep_linear(input_shape, num_classes, hidden=256, depth=1):
    if hidden < 1 or depth < 0:
        raise ValueError("hidden must be >= 1 and depth >= 0")
    from bench.plugins.networks import MLP

    return MLP(_features(input_shape), num_classes, hidden, depth, "identity")


def make_cnn(input_shape, num_classes, c1=6, c2=16, fc=120):
    if len(input_shape) != 3 or min(input_shape[1:]) < 4:
        raise IncompatibleCell(f"cnn needs image input (channels, height>=4, width>=4), got shape {tuple(input_shape)}")
    from bench.plugins.networks import LeNet

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
