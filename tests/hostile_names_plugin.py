"""A test plugin whose names attack the programs that show them: spreadsheets (names starting with ``@``, ``-``,
``+``) and terminals (escape sequences in names and in a cell's error)."""

import torch
from torch import nn

from bench import hookimpl
from bench.plugins.losses import make_crossentropy
from tests.report_test_plugin import load_blobs

#: Starts like a formula and retitles the terminal (OSC 0 ... BEL).
MODEL = "@SUM(1+1)\x1b]0;owned\x07"
#: Fails in its forward pass with an error that would clear the screen.
FAILING = "-2+3\x1b[2J"
LOSS = "+ce\x1b[31m"
DATASET = "-blobs\u202e"
ERROR = "bad \x1b[2J input"
#: What must never reach a terminal.
RAW = ("\x1b]0;", "\x07", "\x1b[2J", "\x1b[31m", "\u202e")


class Linear(nn.Module):
    def __init__(self, features, classes, fail=False):
        super().__init__()
        self.fc = nn.Linear(features, classes)
        self.fail = fail

    def forward(self, x):
        if self.fail:
            raise RuntimeError(ERROR)
        return self.fc(x.flatten(1))


@hookimpl
def bench_register_models(register):
    register(MODEL, lambda shape, classes, tag="-x": Linear(int(torch.Size(shape).numel()), classes),
             params={"tag": "-x"}, description="linear \x1b[2J")
    register(FAILING, lambda shape, classes: Linear(int(torch.Size(shape).numel()), classes, fail=True),
             description="raises in forward")


@hookimpl
def bench_register_losses(register):
    register(LOSS, make_crossentropy, params={"label_smoothing": 0.0}, description="cross-entropy")


@hookimpl
def bench_register_datasets(register):
    register(DATASET, load_blobs, description="three blobs")
