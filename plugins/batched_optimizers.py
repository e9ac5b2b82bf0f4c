"""Batched Adam, AdamW and SGD: one optimizer over the stacked parameters of N models of one shape.

Fused training (``bench/engine/steps.py``) stacks the parameters of a group's N members along a
new first dimension (``torch.func.stack_module_state``): each parameter is one ``[N, ...]`` tensor and
member ``i`` owns the slice ``[i]``. These optimizers update such tensors with per-member
hyperparameters, held as ``[N]`` tensors (``optimizer.hyper["lr"]`` etc.), so that members may differ
in learning rate, weight decay, betas or momentum.

Each member gets exactly the arithmetic of the unfused optimizer, with torch.optim's definitions:

- :class:`BatchedAdam`: ``torch.optim.Adam`` (L2 weight decay added to the gradient),
- :class:`BatchedAdamW`: ``torch.optim.AdamW`` (decoupled weight decay),
- :class:`BatchedSGD`: ``torch.optim.SGD`` with momentum (no dampening, no Nesterov) and L2 weight decay.

How: members whose hyperparameters are all equal step together, in one call of the kernel the
unfused optimizer uses (torch's fused Adam/AdamW kernel on cpu and cuda, as ``fused=True``; the
``foreach`` arithmetic elsewhere, and for SGD as ``foreach=True``) over their part of each stacked
tensor, read as one flat run of memory. A group of seeds is one call, 20 seeds x 2 learning rates two
calls (when the members of each rate are adjacent; each run of adjacent members is one segment). That
is one pass over the memory per tensor, where broadcasting ``[N]``-shaped hyperparameters takes a
dozen element-wise ops and per-member slices one kernel launch (on cpu one OpenMP region) each.
Per member the result is torch.optim's up to float rounding: the same formula element by element,
but vectorised in other chunks (1 ulp of ``exp_avg_sq`` now and then; the tests compare every member
with torch.optim step by step).

A plugin optimizer offers its batched form as an attribute of its factory, ``factory.batched = Cls``;
``Cls(params, members, capturable=False, **defaults)`` where ``members`` holds one dict of
hyperparameters per member. One without it trains its cells unfused.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from bench.errors import BenchError


def _lr_tensor(lr: float, device: torch.device) -> torch.Tensor:
    # as the unfused optimizers keep it (plugins/optimizers.py): float32 on cuda, the exact double elsewhere
    return torch.tensor(float(lr), dtype=torch.float32 if device.type == "cuda" else torch.float64, device=device)


#: Elements per run of adjacent members below which a cpu step with runs split apart uses one thread.
SMALL_RUN = 1 << 17

#: Devices where torch has fused (one-kernel) Adam/AdamW, used there as ``torch.optim.Adam(fused=True)``.
FUSED_DEVICES = ("cpu", "cuda")


def adam_moments(params, grads, exp_avg, exp_avg_sq, lr, weight_decay: float, beta1: float, beta2: float,
                 decoupled: bool) -> None:
    """Adam's weight decay (decoupled: AdamW's shrink of the parameters; else L2, added to the gradient) and
    its moment updates, in ``torch.optim.Adam(foreach=True)``'s order: shared by the per-cell
    :class:`bench.plugins.optimizer_classes.Adam` and :class:`BatchedAdam`, whose steps must stay equal."""
    if weight_decay != 0:
        if decoupled:
            torch._foreach_mul_(params, 1 - lr * weight_decay)
        else:
            grads = torch._foreach_add(grads, params, alpha=weight_decay)
    torch._foreach_lerp_(exp_avg, grads, 1 - beta1)
    torch._foreach_mul_(exp_avg_sq, beta2)
    torch._foreach_addcmul_(exp_avg_sq, grads, grads, 1 - beta2)


class _Batched:
    """Per-member hyperparameters over stacked ``[N, ...]`` parameters; members with equal values step together."""

    #: The hyperparameters this optimizer understands and torch.optim's defaults for them.
    HYPER: dict[str, float] = {}

    def __init__(self, params: Sequence[torch.Tensor], members: Sequence[Mapping[str, Any]], *,
                 capturable: bool = False, partitions: Sequence[Any] = (), **defaults: Any):
        self.params = list(params)
        if not self.params:
            raise BenchError("the model has no trainable parameters")
        if any(not p.is_floating_point() for p in self.params) or len({(p.device, p.dtype) for p in self.params}) > 1:
            raise BenchError("stacked parameters must share one device and one float dtype")
        self.size = self.params[0].shape[0] if self.params[0].dim() else 0
        if any(p.dim() == 0 or p.shape[0] != self.size for p in self.params) or len(members) != self.size:
            raise BenchError(f"{len(members)} members' hyperparameters for parameters stacked "
                             f"{sorted({p.shape[0] if p.dim() else 0 for p in self.params})} deep")
        self.capturable = capturable
        values = [self._values({**defaults, **member}) for member in members]
        keys = list(partitions) or [None] * len(values)
        #: ``{name: [N] float64 tensor}``: each member's hyperparameters.
        self.hyper = {name: torch.tensor([v[name] for v in values], dtype=torch.float64) for name in self.HYPER}
        device = self.params[0].device
        #: One param group per member, torch's interface for its learning rate: a schedule built on member
        #: ``i``'s group sets ``param_groups[i]["lr"]`` (a device tensor, updated in place, when capturable),
        #: which the member's partition reads at every step.
        self.param_groups = [{"lr": _lr_tensor(v["lr"], device) if capturable else v["lr"]} for v in values]
        #: ``(hyperparameters, runs)``: members with equal values (and equal ``partitions`` keys), as runs
        #: ``(first, end)`` of adjacent members; each partition steps in one call
        self.partitions: list[tuple[dict[str, float], list[tuple[int, int]]]] = []
        seen: list[Any] = []
        for index, value in enumerate(values):
            for (hyper, runs), key in zip(self.partitions, seen):
                if hyper == value and key == keys[index]:
                    if runs[-1][1] == index:
                        runs[-1] = (runs[-1][0], index + 1)
                    else:
                        runs.append((index, index + 1))
                    break
            else:
                self.partitions.append((value, [(index, index + 1)]))
                seen.append(keys[index])
        #: where runs of members begin and end (inside the stack), and each partition's runs as pieces between them
        self._edges = sorted({edge for _, rs in self.partitions for run in rs for edge in run} - {0, self.size})
        piece = {first: k for k, first in enumerate([0, *self._edges])}
        self._pieces = [[piece[first] for first, _ in rs] for _, rs in self.partitions]
        self._fixed: dict[str, list[list[torch.Tensor]]] = {}
        runs = sum(len(r) for _, r in self.partitions)
        per_run = sum(p.numel() for p in self.params) // max(runs, 1)
        #: many small runs on a cpu: step on one thread (see :meth:`step`)
        self._one_thread = device.type == "cpu" and runs > 2 and per_run < SMALL_RUN
        for p in self.params:
            if not _member_major(p):
                raise BenchError(f"a stacked parameter of shape {tuple(p.shape)} and strides {p.stride()} is not "
                                 "dense with the members outermost")

    @classmethod
    def _values(cls, given: Mapping[str, Any]) -> dict[str, float]:
        given = dict(given)
        if "betas" in given:  # torch.optim's spelling
            beta1, beta2 = given.pop("betas")
            given.setdefault("beta1", beta1)
            given.setdefault("beta2", beta2)
        unknown = sorted(set(given) - set(cls.HYPER))
        if unknown:
            raise BenchError(f"{cls.__name__} has no batched form for the parameter(s) {', '.join(unknown)} "
                             f"(it takes: {', '.join(cls.HYPER)})")
        values = {}
        for name, default in cls.HYPER.items():
            value = given.get(name, default)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise BenchError(f"{cls.__name__}: {name} must be a number, got {value!r}")
            values[name] = float(value)
        return values

    def _lr(self, runs: list[tuple[int, int]]):
        """A partition's learning rate now: its first member's (all its members share their schedule)."""
        return self.param_groups[runs[0][0]]["lr"]

    def _segments(self, tensors: Sequence[torch.Tensor]) -> list[list[torch.Tensor]]:
        """Per partition, the memory of each of its runs of members ``first..end-1`` in each stacked tensor, as flat
        1-D views (run by run, tensor by tensor): one split per tensor, not one slice per segment (hundreds a step
        for many partitions, a noticeable share of a small model's step)."""
        pieces = [_flat(t).tensor_split([edge * (t.numel() // self.size) for edge in self._edges]) for t in tensors]
        return [[split[k] for k in ks for split in pieces] for ks in self._pieces]

    def _state(self, name: str) -> list[list[torch.Tensor]]:
        """:meth:`_segments` of a list of tensors that lives as long as the optimizer (parameters, state), made once."""
        if name not in self._fixed:
            self._fixed[name] = self._segments(getattr(self, name))
        return self._fixed[name]

    def _grads(self) -> list[torch.Tensor]:
        """The parameters' gradients, each in its parameter's memory layout (so that the flat views align)."""
        grads = []
        for p in self.params:
            g = p.grad
            if g is None:
                raise BenchError("a stacked parameter has no gradient")
            if g.stride() != p.stride():
                g = torch.empty_strided(p.shape, p.stride(), dtype=g.dtype, device=g.device).copy_(g)
            grads.append(g)
        return grads

    def zero_grad(self) -> None:
        """Drop the gradients (``set_to_none``), so that the next backward writes fresh ones."""
        for p in self.params:
            p.grad = None

    def state_tensors(self) -> list[torch.Tensor]:
        """Every tensor of optimizer state (what a snapshot must save)."""
        raise NotImplementedError

    def step(self) -> None:
        """Update every member. On a cpu, where the members form many small runs of memory (a partition's members
        not adjacent: members of one seed are kept adjacent instead, so that they share their batch; or many
        partitions: a tuning run's learning rates) torch parallelises each run: one thread then steps them
        1.3-4x faster (docs/benchmarks.md)."""
        if self._one_thread:
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                self._step()
            finally:
                torch.set_num_threads(threads)
        else:
            self._step()

    def _step(self) -> None:
        raise NotImplementedError


def _member_major(t: torch.Tensor) -> bool:
    """Dense (its memory covered exactly once, in any order of dimensions) with dimension 0 outermost."""
    if t.dim() == 0 or t.shape[0] == 0 or t.stride(0) != t.numel() // t.shape[0]:
        return False
    expected = 1
    for d in sorted(range(t.dim()), key=t.stride):
        if t.shape[d] != 1 and t.stride(d) != expected:
            return False
        expected *= t.shape[d]
    return True


def _flat(t: torch.Tensor) -> torch.Tensor:
    """A member-major dense tensor's memory as one 1-D view."""
    return t.as_strided((t.numel(),), (1,), t.storage_offset())


class BatchedAdam(_Batched):
    """``torch.optim.Adam`` per member (no amsgrad): ``fused=True`` where torch has the kernel, else ``foreach``.

    All members take every step, so one step count serves them all (on the device, as the fused
    kernel wants, which also makes the step capturable in a CUDA graph).
    """

    HYPER = {"lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.0}
    #: torch.optim.AdamW's decoupled weight decay instead of Adam's L2 term.
    decoupled = False

    def __init__(self, params, members, *, capturable: bool = False, partitions=(), fused: bool | None = None,
                 **defaults):
        super().__init__(params, members, capturable=capturable, partitions=partitions, **defaults)
        device = self.params[0].device
        if fused is None:
            fused = device.type in FUSED_DEVICES and hasattr(torch, "_fused_adam_")
        self.fused = fused
        self.exp_avg = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in self.params]
        # float32 on the device, as torch.optim keeps a fused Adam's step; the foreach path counts on the host
        self.step_t = torch.zeros((), dtype=torch.float32, device=device)
        self.steps = 0
        if capturable and not fused:
            raise BenchError(f"a capturable batched Adam needs torch's fused kernel (on {', '.join(FUSED_DEVICES)})")

    def state_tensors(self) -> list[torch.Tensor]:
        return [*self.exp_avg, *self.exp_avg_sq, self.step_t]

    @torch.no_grad()
    def _step(self) -> None:
        grads = self._grads()
        if self.fused:
            self.step_t.add_(1)
            kernel = torch._fused_adamw_ if self.decoupled else torch._fused_adam_
            for (hyper, runs), params, grad, exp_avg, exp_avg_sq in zip(
                    self.partitions, self._state("params"), self._segments(grads), self._state("exp_avg"),
                    self._state("exp_avg_sq")):
                kernel(params, grad, exp_avg, exp_avg_sq, [], [self.step_t] * len(params), amsgrad=False,
                       lr=self._lr(runs), beta1=hyper["beta1"], beta2=hyper["beta2"],
                       weight_decay=hyper["weight_decay"], eps=hyper["eps"], maximize=False)
            return
        self.steps += 1
        for (hyper, runs), params, grad, exp_avg, exp_avg_sq in zip(
                self.partitions, self._state("params"), self._segments(grads), self._state("exp_avg"),
                self._state("exp_avg_sq")):
            self._foreach_step({**hyper, "lr": self._lr(runs)}, params, grad, exp_avg, exp_avg_sq)

    def _foreach_step(self, hyper, params, grads, exp_avg, exp_avg_sq) -> None:
        """``torch.optim.Adam(foreach=True)``'s arithmetic (host step count, not capturable)."""
        lr, beta1, beta2 = hyper["lr"], hyper["beta1"], hyper["beta2"]
        adam_moments(params, grads, exp_avg, exp_avg_sq, lr, hyper["weight_decay"], beta1, beta2, self.decoupled)
        t = float(self.steps)
        step_size = (lr / (1 - beta1 ** t)) * -1
        bias2_sqrt = (1 - beta2 ** t) ** 0.5
        denom = torch._foreach_sqrt(exp_avg_sq)
        torch._foreach_div_(denom, bias2_sqrt)
        torch._foreach_add_(denom, hyper["eps"])
        torch._foreach_addcdiv_(params, exp_avg, denom, step_size)


class BatchedAdamW(BatchedAdam):
    """``torch.optim.AdamW`` per member: Adam with decoupled weight decay (torch's default 0.01)."""

    HYPER = {**BatchedAdam.HYPER, "weight_decay": 1e-2}
    decoupled = True


class BatchedSGD(_Batched):
    """``torch.optim.SGD(foreach=True)`` per member: momentum (no dampening, no Nesterov), L2 weight decay.

    The momentum buffers start at zero: ``momentum * 0 + g`` is exactly the first gradient, which
    torch.optim copies in, and the step needs no first-step branch (so it can be captured).
    """

    HYPER = {"lr": 1e-3, "momentum": 0.0, "weight_decay": 0.0}

    def __init__(self, params, members, *, capturable: bool = False, partitions=(), **defaults):
        super().__init__(params, members, capturable=capturable, partitions=partitions, **defaults)
        momentum = any(hyper["momentum"] != 0 for hyper, _ in self.partitions)
        self.buffers = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in self.params] if momentum \
            else []

    def state_tensors(self) -> list[torch.Tensor]:
        return list(self.buffers)

    @torch.no_grad()
    def _step(self) -> None:
        grads = self._grads()
        buffers = self._state("buffers") if self.buffers else [[]] * len(self.partitions)
        for (hyper, runs), params, member_grads, bufs in zip(self.partitions, self._state("params"),
                                                             self._segments(grads), buffers):
            if hyper["weight_decay"] != 0:
                member_grads = torch._foreach_add(member_grads, params, alpha=hyper["weight_decay"])
            if hyper["momentum"] != 0:
                torch._foreach_mul_(bufs, hyper["momentum"])
                torch._foreach_add_(bufs, member_grads, alpha=1.0)
                member_grads = bufs
            lr = self._lr(runs)
            if isinstance(lr, torch.Tensor):  # capturable: the device tensor a schedule updates in place
                torch._foreach_add_(params, torch._foreach_mul(member_grads, lr), alpha=-1.0)
            else:
                torch._foreach_add_(params, member_grads, alpha=-lr)
