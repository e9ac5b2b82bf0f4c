"""Lean Adam and SGD-momentum steps with torch.optim's numerics, built from foreach kernels.

Why not ``torch.optim``: constructing the first ``torch.optim.Optimizer`` imports ``torch._dynamo``
(1-2 s of a CPU run's start-up), and its ``step`` spends a few hundred microseconds per call
grouping tensors by device and dtype. These classes do the same arithmetic, in the same order, as
``torch.optim.Adam(fused=True)`` (where torch has the fused kernel: cpu, cuda) or ``Adam(foreach=True)``,
and ``torch.optim.SGD(momentum=..., foreach=True)`` (the tests compare them step by step), on one flat
list of same-device float parameters.

With ``capturable=True`` every piece of state, the step count included, lives on the parameters'
device and the step launches no host-device synchronisation, so it can be captured in a CUDA graph.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from bench.errors import BenchError

OPTIMIZERS = ("adam", "sgd")
#: Devices where torch has a fused (one-kernel) Adam: used there by default.
FUSED_ADAM_DEVICES = ("cpu", "cuda")


class _Base:
    def __init__(self, params: Iterable[torch.Tensor], lr: float):
        self.params = [p for p in params if p.requires_grad]
        if not self.params:
            raise BenchError("the model has no trainable parameters")
        devices = {p.device for p in self.params}
        dtypes = {p.dtype for p in self.params}
        if len(devices) > 1 or len(dtypes) > 1 or not next(iter(dtypes)).is_floating_point:
            raise BenchError(f"parameters must share one device and one float dtype, got {devices} and {dtypes}")
        self.lr = float(lr)

    def zero_grad(self) -> None:
        """Drop the gradients (``set_to_none``), so that the next backward writes fresh ones."""
        for p in self.params:
            p.grad = None

    def _grads(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Parameters that have a gradient, and those gradients (torch.optim skips the others)."""
        params = [p for p in self.params if p.grad is not None]
        return params, [p.grad for p in params]

    def state_tensors(self) -> list[torch.Tensor]:
        """Every tensor of optimiser state (what a snapshot must save)."""
        raise NotImplementedError


class Adam(_Base):
    """Adam (no weight decay, no amsgrad) with the arithmetic of ``torch.optim.Adam(foreach=True)``.

    Like torch.optim, each parameter counts its own steps (a parameter without a gradient is skipped
    and its count stays behind). ``fused`` (default: where torch has the kernel) runs torch's fused Adam
    kernel, as ``torch.optim.Adam(fused=True)`` does: one kernel instead of a dozen, with the step counts
    on the device, so it is capturable too.
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 capturable: bool = False, fused: bool | None = None):
        super().__init__(params, lr)
        self.beta1, self.beta2 = map(float, betas)
        self.eps = float(eps)
        if fused is None:
            fused = self.params[0].device.type in FUSED_ADAM_DEVICES and hasattr(torch, "_fused_adam_")
        self.fused = fused
        self.capturable = capturable
        self.exp_avg = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in self.params]
        self._index = {id(p): i for i, p in enumerate(self.params)}
        self.steps = [0] * len(self.params)
        # capturable: float64 step counts on the device, so that the bias corrections round as the host's do
        self.step_t = [torch.zeros((), dtype=torch.float32 if fused else torch.float64, device=p.device)
                       for p in self.params] if capturable or fused else []
        self._neg_lr = torch.full((), -self.lr, dtype=torch.float64, device=self.params[0].device)

    def state_tensors(self) -> list[torch.Tensor]:
        return [*self.exp_avg, *self.exp_avg_sq, *self.step_t]

    @torch.no_grad()
    def step(self) -> None:
        params, grads = self._grads()
        if not params:
            return
        which = range(len(self.params)) if len(params) == len(self.params) else [self._index[id(p)] for p in params]
        exp_avg, exp_avg_sq = [self.exp_avg[i] for i in which], [self.exp_avg_sq[i] for i in which]
        beta1, beta2 = self.beta1, self.beta2
        if self.fused:
            steps = [self.step_t[i] for i in which]
            torch._foreach_add_(steps, 1)
            torch._fused_adam_(params, grads, exp_avg, exp_avg_sq, [], steps, amsgrad=False, lr=self.lr, beta1=beta1,
                               beta2=beta2, weight_decay=0.0, eps=self.eps, maximize=False)
            return
        torch._foreach_lerp_(exp_avg, grads, 1 - beta1)
        torch._foreach_mul_(exp_avg_sq, beta2)
        torch._foreach_addcmul_(exp_avg_sq, grads, grads, 1 - beta2)
        denom = torch._foreach_sqrt(exp_avg_sq)
        if self.capturable:
            self._device_bias_corrected_update(params, exp_avg, denom, which)
            return
        for i in which:
            self.steps[i] += 1
        counts = {self.steps[i] for i in which}
        if len(counts) == 1:  # the usual case: one bias correction for all
            t = float(counts.pop())
            step_size: float | list[float] = (self.lr / (1 - beta1 ** t)) * -1
            bias2_sqrt: float | list[float] = (1 - beta2 ** t) ** 0.5
        else:
            step_size = [(self.lr / (1 - beta1 ** float(self.steps[i]))) * -1 for i in which]
            bias2_sqrt = [(1 - beta2 ** float(self.steps[i])) ** 0.5 for i in which]
        torch._foreach_div_(denom, bias2_sqrt)
        torch._foreach_add_(denom, self.eps)
        torch._foreach_addcdiv_(params, exp_avg, denom, step_size)


    def _device_bias_corrected_update(self, params, exp_avg, denom, which) -> None:
        """The host path's update with every scalar computed on the device, in the same order and precision.

        Host: ``p += s * m / d`` with ``s = -lr / (1 - beta1^t)`` and ``d = sqrt(v) / sqrt(1 - beta2^t) + eps``,
        the scalars in float64 rounded once to the parameters' dtype.
        """
        steps = [self.step_t[i] for i in which]
        torch._foreach_add_(steps, 1)
        bias1 = torch._foreach_pow(self.beta1, steps)
        torch._foreach_neg_(bias1)
        torch._foreach_add_(bias1, 1)  # 1 - beta1^t
        step_size = torch._foreach_div([self._neg_lr] * len(steps), bias1)
        bias2 = torch._foreach_pow(self.beta2, steps)
        torch._foreach_neg_(bias2)
        torch._foreach_add_(bias2, 1)
        torch._foreach_sqrt_(bias2)
        dtype = params[0].dtype
        torch._foreach_div_(denom, [b.to(dtype) for b in bias2])
        torch._foreach_add_(denom, self.eps)
        update = torch._foreach_mul(exp_avg, [s.to(dtype) for s in step_size])
        torch._foreach_div_(update, denom)
        torch._foreach_add_(params, update)


class SGD(_Base):
    """SGD with momentum (no dampening, no Nesterov) with the arithmetic of ``torch.optim.SGD(foreach=True)``.

    The momentum buffers start at zero instead of being cloned from the first gradient:
    ``0 * momentum + g`` is exactly ``g``, and a graph-captured step needs no first-step branch.
    """

    def __init__(self, params, lr: float = 1e-3, momentum: float = 0.9, capturable: bool = False):
        super().__init__(params, lr)
        self.momentum = float(momentum)
        self.capturable = capturable
        self.buffers = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in self.params]
        self._index = {id(p): i for i, p in enumerate(self.params)}

    def state_tensors(self) -> list[torch.Tensor]:
        return list(self.buffers)

    @torch.no_grad()
    def step(self) -> None:
        params, grads = self._grads()
        if not params:
            return
        bufs = self.buffers if len(params) == len(self.params) else [self.buffers[self._index[id(p)]] for p in params]
        torch._foreach_mul_(bufs, self.momentum)
        torch._foreach_add_(bufs, grads, alpha=1.0)
        torch._foreach_add_(params, bufs, alpha=-self.lr)


def make_optimizer(name: str, params, lr: float, capturable: bool = False) -> Adam | SGD:
    """The optimiser a :class:`~bench.grid.TrainConfig` names: ``adam`` or ``sgd`` (momentum 0.9)."""
    if name == "adam":
        return Adam(params, lr=lr, capturable=capturable)
    if name == "sgd":
        return SGD(params, lr=lr, momentum=0.9, capturable=capturable)
    raise BenchError(f"unknown optimizer '{name}' (valid: {', '.join(OPTIMIZERS)})")
