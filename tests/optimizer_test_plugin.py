"""A -p test plugin: optimizers and a schedule written the way a third party would.

- ``signsgd-test``: a ``torch.optim.Optimizer`` subclass whose state is created on the first step
  (as torch's own optimizers do);
- ``rmsprop-test``: ``torch.optim.RMSprop`` registered as it is (it takes ``lr`` and ``weight_decay``
  as keywords);
- ``broken-opt``: a factory that always raises (caught when the grid is expanded);
- ``fragile-opt``: a factory that raises only for a real model (more than one parameter tensor), so
  that the cell fails in training;
- ``halving``: a schedule that halves the learning rate half-way, counting its calls.
"""

from __future__ import annotations

import torch

from bench import hookimpl
from bench.optim import lr_value, set_lr


class SignSGD(torch.optim.Optimizer):
    """``p -= lr * sign(m)`` with ``m = beta * m + g`` (signum), decoupled weight decay."""

    def __init__(self, params, lr=1e-3, weight_decay=0.0, beta=0.9):
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay, "beta": beta})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["momentum"] = torch.zeros_like(p)
                m = state["momentum"]
                m.mul_(group["beta"]).add_(p.grad)
                p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_(m.sign(), alpha=-group["lr"])


def broken(params, lr, weight_decay, strength=1.0):
    raise RuntimeError(f"broken-opt refuses to optimise (strength {strength})")


def fragile(params, lr, weight_decay):
    params = list(params)
    if len(params) > 1:
        raise ValueError(f"fragile-opt handles one parameter tensor, got {len(params)}")
    return SignSGD(params, lr=lr, weight_decay=weight_decay)


class Halving:
    """Halves every group's learning rate after half of the steps; ``calls`` counts its steps."""

    instances: list[Halving] = []

    def __init__(self, optimizer, total_steps, at=0.5):
        self.optimizer, self.at = optimizer, round(at * total_steps)
        self.base = [lr_value(g["lr"]) for g in optimizer.param_groups]
        self.calls = 0
        self.total_steps = total_steps
        Halving.instances.append(self)

    def step(self):
        self.calls += 1
        if self.calls == self.at:
            for group, base in zip(self.optimizer.param_groups, self.base):
                set_lr(group, base / 2)


@hookimpl
def bench_register_optimizers(register):
    register("signsgd-test", SignSGD, params={"beta": 0.9}, description="signum, a torch.optim.Optimizer subclass")
    register("rmsprop-test", torch.optim.RMSprop, params={"alpha": 0.99}, description="torch.optim.RMSprop as it is")
    register("broken-opt", broken, params={"strength": 1.0}, description="raises")
    register("fragile-opt", fragile, description="raises for a model with more than one parameter tensor")


@hookimpl
def bench_register_schedules(register):
    register("halving", Halving, params={"at": 0.5}, description="halves the learning rate once")
