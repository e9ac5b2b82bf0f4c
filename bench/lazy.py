"""A registered factory whose implementation is imported when it is first used.

Built-in plugins register their torch-backed classes through :class:`LazyFactory`, so that loading
the plugins (``bench plugins``, ``bench list``) does not import torch: the registration's name,
params and description are plain data, and the class is imported on the first call.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from typing import Any


class LazyFactory:
    """Stands for ``module:attr``: calling it, its signature and any other attribute (an optimizer's
    ``batched`` form, for one) are those of the object it names, imported on first use."""

    def __init__(self, target: str) -> None:
        module, _, attr = target.partition(":")
        if not (module and attr):
            raise ValueError(f"a lazy factory names 'module:attr', got {target!r}")
        self.target = target

    def resolve(self) -> Callable[..., Any]:
        """The object the factory names (imports its module)."""
        module, _, attr = self.target.partition(":")
        return getattr(importlib.import_module(module), attr)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.resolve()(*args, **kwargs)

    @property
    def __signature__(self) -> inspect.Signature:
        return inspect.signature(self.resolve())

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name == "target":  # not during unpickling, not for dunder probes
            raise AttributeError(name)
        return getattr(self.resolve(), name)

    def __repr__(self) -> str:
        return f"LazyFactory({self.target!r})"
