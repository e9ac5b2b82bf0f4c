"""A test plugin with awkward names: a 2-D dataset whose class names need escaping, a model that diverges, and a
linear model that environment variables make worse (noisier or slower): same configuration, worse code."""

import os
import time

import torch
from torch import nn

from bench import DataSplits, hookimpl

#: Names a careless report would render as markup or mathtext (an unescaped ``$\frac$`` breaks matplotlib).
CLASSES = ["<b>bold</b>", r"$\frac$", "a&b"]
NAN_MODEL = 'nan<i>"m"'


def load_blobs(data_dir, n=300):
    """Three Gaussian blobs in the plane, well separated: any linear model learns them."""
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[3.0, 0.0], [-3.0, 3.0], [-3.0, -3.0]])

    def split(count):
        y = torch.arange(count) % 3
        return centres[y] + torch.randn(count, 2, generator=g), y

    return DataSplits(split(n), split(n // 4), split(n // 4), list(CLASSES))


class NaNLogits(nn.Module):
    def __init__(self, features, classes):
        super().__init__()
        self.fc = nn.Linear(features, classes)

    def forward(self, x):
        return self.fc(x.flatten(1)) * float("nan")


@hookimpl
def bench_register_datasets(register):
    register("blobs", load_blobs, description="three 2-D Gaussian blobs with awkward class names")



#: Standard deviation of the noise ``knob`` adds to its inputs (0: none): the same configuration, worse code.
NOISE_ENV = "REPORT_TEST_NOISE"
#: Seconds ``knob`` sleeps in each forward pass while training: the same configuration, slower code.
SLEEP_ENV = "REPORT_TEST_SLEEP"


class Knob(nn.Module):
    """A linear model on 2-D points whose inputs get Gaussian noise and whose training steps get a sleep, as
    the environment says when the model is built."""

    def __init__(self, features, classes):
        super().__init__()
        self.fc = nn.Linear(features, classes)
        self.noise = float(os.environ.get(NOISE_ENV, "0") or 0)
        self.sleep = float(os.environ.get(SLEEP_ENV, "0") or 0)

    def forward(self, x):
        x = x.flatten(1)
        if self.noise:
            x = x + self.noise * torch.randn_like(x)
        if self.sleep and self.training:
            time.sleep(self.sleep)
        return self.fc(x)


@hookimpl
def bench_register_models(register):
    register(NAN_MODEL, lambda shape, classes: NaNLogits(int(torch.Size(shape).numel()), classes),
             description="returns NaN logits: its cell fails")
    register("knob", lambda shape, classes: Knob(int(torch.Size(shape).numel()), classes),
             description=f"linear; ${NOISE_ENV} adds input noise, ${SLEEP_ENV} slows training steps")
