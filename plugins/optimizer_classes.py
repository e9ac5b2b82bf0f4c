"""The built-in optimizers (plugins/optimizers.py registers them): ``adam``, ``adamw`` and ``sgd``, with torch.optim's
numerics and without its overhead.

Why not ``torch.optim``: constructing the first ``torch.optim.Optimizer`` imports ``torch._dynamo``
(a noticeable part of a CPU run's start-up), and its ``step`` spends time on every call grouping
tensors by device and dtype. These classes do the same arithmetic, in the same order, as
``torch.optim.Adam``/``AdamW(fused=True)`` (where torch has the fused kernels: cpu, cuda) or
``(foreach=True)``, and ``torch.optim.SGD(momentum=..., foreach=True)`` (tests/test_optim.py compares
them step by step), on one flat list of same-device float parameters.

They have torch's optimizer interface: one param group whose ``lr``, ``weight_decay`` and
hyper-parameters are read at every step (so a schedule that writes ``param_groups[0]["lr"]`` takes
effect), ``state_dict()`` (references to the live state, like torch's) and ``load_state_dict()``
(which copies into the live state, in place).

With ``capturable=True`` every piece of state, the step count and the learning rate included, lives
on the parameters' device and a step launches no host-device synchronisation, so it can be captured
in a CUDA graph; a schedule then updates the ``lr`` tensor in place and the graph replays with it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch

from bench.plugins.batched_optimizers import adam_moments

#: Devices where torch has fused (one-kernel) Adam and AdamW: used there by default.
FUSED_DEVICES = ("cpu", "cuda")


def _lr_tensor(lr: float, device: torch.device) -> torch.Tensor:
    # torch's CUDA fused kernels read a float32 learning rate; the CPU ones read it as a double,
    # exactly the Python float that the eager step passes
    return torch.tensor(float(lr), dtype=torch.float32 if device.type == "cuda" else torch.float64, device=device)


def _check(name: str, value: float, ok: bool, valid: str) -> float:
    value = float(value)
    if not (math.isfinite(value) and ok):
        raise ValueError(f"{name} must be {valid}, got {value}")
    return value


class _Optimizer:
    """One param group over same-device float parameters; the state is per parameter, in lists."""

    def __init__(self, params: Iterable[torch.Tensor], lr: float, weight_decay: float, capturable: bool,
                 **hyper: Any):
        self.params = [p for p in params if p.requires_grad]
        if not self.params:
            raise ValueError("the model has no trainable parameters")
        devices = {p.device for p in self.params}
        dtypes = {p.dtype for p in self.params}
        if len(devices) > 1 or len(dtypes) > 1 or not next(iter(dtypes)).is_floating_point:
            raise ValueError(f"parameters must share one device and one float dtype, got {devices} and {dtypes}")
        lr = _check("lr", lr, lr >= 0, ">= 0")
        weight_decay = _check("weight_decay", weight_decay, weight_decay >= 0, ">= 0")
        self.device = self.params[0].device
        self.capturable = capturable
        self.param_groups = [{"params": self.params, "lr": _lr_tensor(lr, self.device) if capturable else lr,
                              "weight_decay": weight_decay, **hyper}]
        self._index = {id(p): i for i, p in enumerate(self.params)}

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Drop the gradients, so that the next backward writes fresh ones."""
        for p in self.params:
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.zero_()

    def _zeros(self) -> list[torch.Tensor]:
        """One zero tensor per parameter, in its layout: a fresh per-parameter state list."""
        return [torch.zeros_like(p, memory_format=torch.preserve_format) for p in self.params]

    def _grads(self) -> tuple[list[torch.Tensor], list[torch.Tensor], range | list[int]]:
        """Parameters that have a gradient, their gradients and indices (torch.optim skips the others)."""
        params = [p for p in self.params if p.grad is not None]
        which = range(len(self.params)) if len(params) == len(self.params) else [self._index[id(p)] for p in params]
        return params, [p.grad for p in params], which

    def _state(self) -> dict[str, list]:
        """The per-parameter state lists by name (the live lists: writing an item changes the state)."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """torch's layout: ``{"state": {index: {name: value}}, "param_groups": [{..., "params": [indices]}]}``."""
        lists = self._state()
        state = {i: {name: values[i] for name, values in lists.items()} for i in range(len(self.params))} \
            if lists else {}
        group = {key: value for key, value in self.param_groups[0].items() if key != "params"}
        return {"state": state, "param_groups": [{**group, "params": list(range(len(self.params)))}]}

    @torch.no_grad()
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Copy a :meth:`state_dict` into the live state, in place (tensors keep their addresses)."""
        groups = state_dict["param_groups"]
        if len(groups) != 1 or len(groups[0]["params"]) != len(self.params):
            raise ValueError("the state_dict does not match this optimizer's one group of parameters")
        group = self.param_groups[0]
        for key, value in groups[0].items():
            if key == "params":
                continue
            current = group.get(key)
            if isinstance(current, torch.Tensor) and isinstance(value, torch.Tensor):
                current.copy_(value)
            elif isinstance(current, torch.Tensor):
                current.fill_(value)
            else:
                group[key] = float(value.item()) if isinstance(value, torch.Tensor) and key == "lr" else value
        lists = self._state()
        for index, entry in state_dict["state"].items():
            for name, value in entry.items():
                target = lists[name][int(index)]
                if isinstance(target, torch.Tensor):
                    target.copy_(value)
                else:
                    lists[name][int(index)] = value


class Adam(_Optimizer):
    """Adam (no amsgrad) with the arithmetic of ``torch.optim.Adam``: ``weight_decay`` is L2, added to
    the gradient.

    Like torch.optim, each parameter counts its own steps (a parameter without a gradient is skipped
    and its count stays behind). ``fused`` (default: where torch has the kernel) runs torch's fused
    kernel, as ``torch.optim.Adam(fused=True)`` does: one kernel instead of a dozen, with the step
    counts on the device, so it is capturable too; otherwise the foreach arithmetic of ``foreach=True``.
    """

    #: AdamW: the weight decay shrinks the parameters instead of adding to the gradient.
    decoupled = False

    def __init__(self, params, lr: float = 1e-3, weight_decay: float = 0.0, beta1: float = 0.9, beta2: float = 0.999,
                 eps: float = 1e-8, capturable: bool = False, fused: bool | None = None):
        beta1 = _check("beta1", beta1, 0 <= beta1 < 1, "in [0, 1)")
        beta2 = _check("beta2", beta2, 0 <= beta2 < 1, "in [0, 1)")
        eps = _check("eps", eps, eps >= 0, ">= 0")
        super().__init__(params, lr, weight_decay, capturable, beta1=beta1, beta2=beta2, eps=eps)
        kernel = "_fused_adamw_" if self.decoupled else "_fused_adam_"
        if fused is None:
            fused = self.device.type in FUSED_DEVICES and hasattr(torch, kernel)
        self.fused = fused
        self._kernel = getattr(torch, kernel) if fused else None
        self.exp_avg, self.exp_avg_sq = self._zeros(), self._zeros()
        #: host step counts (neither fused nor capturable)
        self.steps: list[float] = [0] * len(self.params)
        # capturable: float64 step counts on the device, so that the bias corrections round as the host's do
        self.step_t = [torch.zeros((), dtype=torch.float32 if fused else torch.float64, device=p.device)
                       for p in self.params] if capturable or fused else []

    def _state(self) -> dict[str, list]:
        return {"step": self.step_t or self.steps, "exp_avg": self.exp_avg, "exp_avg_sq": self.exp_avg_sq}

    @torch.no_grad()
    def step(self) -> None:
        params, grads, which = self._grads()
        if not params:
            return
        group = self.param_groups[0]
        lr, weight_decay, beta1, beta2, eps = (group[k] for k in ("lr", "weight_decay", "beta1", "beta2", "eps"))
        exp_avg, exp_avg_sq = [self.exp_avg[i] for i in which], [self.exp_avg_sq[i] for i in which]
        if self.fused:
            steps = [self.step_t[i] for i in which]
            torch._foreach_add_(steps, 1)
            self._kernel(params, grads, exp_avg, exp_avg_sq, [], steps, amsgrad=False, lr=lr, beta1=beta1,
                         beta2=beta2, weight_decay=weight_decay, eps=eps, maximize=False)
            return
        if not self.capturable and isinstance(lr, torch.Tensor):
            lr = float(lr.item())
        adam_moments(params, grads, exp_avg, exp_avg_sq, lr, weight_decay, beta1, beta2, self.decoupled)
        denom = torch._foreach_sqrt(exp_avg_sq)
        if self.capturable:
            self._device_bias_corrected_update(params, exp_avg, denom, which, lr)
            return
        for i in which:
            self.steps[i] += 1
        counts = {self.steps[i] for i in which}
        if len(counts) == 1:  # the usual case: one bias correction for all
            t = float(counts.pop())
            step_size: float | list[float] = (lr / (1 - beta1 ** t)) * -1
            bias2_sqrt: float | list[float] = (1 - beta2 ** t) ** 0.5
        else:
            step_size = [(lr / (1 - beta1 ** float(self.steps[i]))) * -1 for i in which]
            bias2_sqrt = [(1 - beta2 ** float(self.steps[i])) ** 0.5 for i in which]
        torch._foreach_div_(denom, bias2_sqrt)
        torch._foreach_add_(denom, eps)
        torch._foreach_addcdiv_(params, exp_avg, denom, step_size)

    def _device_bias_corrected_update(self, params, exp_avg, denom, which, lr) -> None:
        """The host path's update with every scalar computed on the device, in the same order and precision.

        Host: ``p += s * m / d`` with ``s = -lr / (1 - beta1^t)`` and ``d = sqrt(v) / sqrt(1 - beta2^t) + eps``,
        the scalars in float64 rounded once to the parameters' dtype. ``lr / (beta1^t - 1)`` is that
        ``s`` to the bit (negating is exact).
        """
        group = self.param_groups[0]
        beta1, beta2, eps = group["beta1"], group["beta2"], group["eps"]
        lr = lr.to(torch.float64) if isinstance(lr, torch.Tensor) else torch.tensor(lr, dtype=torch.float64,
                                                                                     device=self.device)
        steps = [self.step_t[i] for i in which]
        torch._foreach_add_(steps, 1)
        bias1 = torch._foreach_pow(beta1, steps)
        torch._foreach_sub_(bias1, 1)  # beta1^t - 1
        step_size = torch._foreach_div([lr] * len(steps), bias1)
        bias2 = torch._foreach_pow(beta2, steps)
        torch._foreach_neg_(bias2)
        torch._foreach_add_(bias2, 1)
        torch._foreach_sqrt_(bias2)
        dtype = params[0].dtype
        torch._foreach_div_(denom, [b.to(dtype) for b in bias2])
        torch._foreach_add_(denom, eps)
        update = torch._foreach_mul(exp_avg, [s.to(dtype) for s in step_size])
        torch._foreach_div_(update, denom)
        torch._foreach_add_(params, update)


class AdamW(Adam):
    """AdamW: Adam with decoupled weight decay (``p *= 1 - lr * weight_decay`` before the update), the
    arithmetic of ``torch.optim.AdamW`` (fused where torch has the kernel, else foreach)."""

    decoupled = True

    def __init__(self, params, lr: float = 1e-3, weight_decay: float = 0.0, beta1: float = 0.9, beta2: float = 0.999,
                 eps: float = 1e-8, capturable: bool = False, fused: bool | None = None):
        super().__init__(params, lr, weight_decay, beta1, beta2, eps, capturable, fused)


class SGD(_Optimizer):
    """SGD with momentum (no dampening, no Nesterov) and L2 weight decay, the arithmetic of
    ``torch.optim.SGD(foreach=True)``.

    The momentum buffers start at zero instead of being cloned from the first gradient:
    ``0 * momentum + g`` is exactly ``g``, and a graph-captured step needs no first-step branch. With
    ``momentum=0`` there are no buffers. A tensor learning rate (``capturable``) multiplies the update
    on the device (``addcmul``) instead of being passed as a host scalar.
    """

    def __init__(self, params, lr: float = 1e-3, weight_decay: float = 0.0, momentum: float = 0.9,
                 capturable: bool = False):
        momentum = _check("momentum", momentum, momentum >= 0, ">= 0")
        super().__init__(params, lr, weight_decay, capturable, momentum=momentum)
        self.buffers = self._zeros() if momentum else []

    def _state(self) -> dict[str, list]:
        return {"momentum_buffer": self.buffers} if self.buffers else {}

    @torch.no_grad()
    def step(self) -> None:
        params, grads, which = self._grads()
        if not params:
            return
        group = self.param_groups[0]
        lr, weight_decay, momentum = group["lr"], group["weight_decay"], group["momentum"]
        if weight_decay != 0:
            grads = torch._foreach_add(grads, params, alpha=weight_decay)
        if momentum != 0:
            if not self.buffers:  # momentum was 0 when built
                self.buffers = self._zeros()
            bufs = self.buffers if isinstance(which, range) else [self.buffers[i] for i in which]
            torch._foreach_mul_(bufs, momentum)
            torch._foreach_add_(bufs, grads, alpha=1.0)
            grads = bufs
        if isinstance(lr, torch.Tensor):  # p - g * lr, rounded as the host path's p + (-lr) * g
            torch._foreach_addcmul_(params, grads, [lr] * len(params), value=-1)
        else:
            torch._foreach_add_(params, grads, alpha=-lr)


def _offer_batched_forms() -> None:
    """Fused training (bench/fuse.py) steps a group of same-shaped models with one batched optimizer: the
    built-ins offer theirs as ``factory.batched`` (plugins/batched_optimizers.py)."""
    from bench.plugins.batched_optimizers import BatchedAdam, BatchedAdamW, BatchedSGD

    Adam.batched, AdamW.batched, SGD.batched = BatchedAdam, BatchedAdamW, BatchedSGD


_offer_batched_forms()
