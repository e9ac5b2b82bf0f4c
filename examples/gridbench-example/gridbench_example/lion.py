"""Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms"): the sign of an
interpolated momentum, with decoupled weight decay.

Written against gridbench's optimizer contract without ``torch.optim``: one param group whose
``lr`` is read at every step, ``state_dict()``/``load_state_dict()`` (the latter copies into the
live state, so a captured CUDA graph keeps pointing at it), and ``capturable``: the learning rate
becomes a tensor on the parameters' device, which a schedule updates in place.
"""

from __future__ import annotations

import torch


class Lion:
    """``c = beta1 * m + (1 - beta1) * g``; ``p = p * (1 - lr * wd) - lr * sign(c)``;
    ``m = beta2 * m + (1 - beta2) * g``."""

    def __init__(self, params, lr=1e-4, weight_decay=0.0, beta1=0.9, beta2=0.99, capturable=False):
        for name, beta in (("beta1", beta1), ("beta2", beta2)):
            if not 0.0 <= beta < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {beta}")
        if lr < 0 or weight_decay < 0:
            raise ValueError(f"lr and weight_decay must be >= 0, got {lr} and {weight_decay}")
        self.params = [p for p in params if p.requires_grad]
        if not self.params:
            raise ValueError("no trainable parameters")
        device = self.params[0].device
        lr = torch.tensor(float(lr), device=device) if capturable else float(lr)
        self.param_groups = [{"params": self.params, "lr": lr, "weight_decay": float(weight_decay),
                              "beta1": float(beta1), "beta2": float(beta2)}]
        # created here, not on the first step: a graph capture finds it in place
        self.exp_avg = [torch.zeros_like(p) for p in self.params]

    def zero_grad(self, set_to_none=True):
        for p in self.params:
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.zero_()

    @torch.no_grad()
    def step(self, closure=None):
        group = self.param_groups[0]
        lr, weight_decay, beta1, beta2 = group["lr"], group["weight_decay"], group["beta1"], group["beta2"]
        for p, m in zip(self.params, self.exp_avg):
            if p.grad is None:
                continue
            g = p.grad
            if weight_decay:
                p.mul_(1 - lr * weight_decay)
            update = m.lerp(g, 1 - beta1).sign_()
            if isinstance(lr, torch.Tensor):
                p.addcmul_(update, lr, value=-1)  # lr stays on the device
            else:
                p.add_(update, alpha=-lr)
            m.lerp_(g, 1 - beta2)

    def state_dict(self):
        group = {k: v for k, v in self.param_groups[0].items() if k != "params"}
        return {"state": {i: {"exp_avg": m} for i, m in enumerate(self.exp_avg)},
                "param_groups": [{**group, "params": list(range(len(self.params)))}]}

    @torch.no_grad()
    def load_state_dict(self, state_dict):
        group = self.param_groups[0]
        for key, value in state_dict["param_groups"][0].items():
            if key == "params":
                continue
            if isinstance(group[key], torch.Tensor):
                group[key].copy_(torch.as_tensor(value))
            else:
                group[key] = float(value)
        for i, entry in state_dict["state"].items():
            self.exp_avg[int(i)].copy_(entry["exp_avg"])
