"""Choosing the torch device and talking to it (synchronise, describe)."""

from __future__ import annotations

import re

import torch

from bench.errors import OptionError

DEVICE_CHOICES = "auto, cpu, cuda, cuda:N, mps"


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend and backend.is_available())


def resolve_device(spec: str) -> torch.device:
    """``auto`` picks cuda, then mps, then cpu; an unavailable device is a clear error."""
    spec = spec.strip().lower()
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    if spec == "cpu":
        return torch.device("cpu")
    match = re.fullmatch(r"cuda(?::(\d+))?", spec)
    if match:
        if not torch.cuda.is_available():
            raise OptionError("device", f"{spec}: CUDA is not available here (torch {torch.__version__}, "
                             f"built for CUDA {torch.version.cuda or 'none'}); use --device cpu or auto")
        index = int(match.group(1) or 0)
        count = torch.cuda.device_count()
        if index >= count:
            raise OptionError("device", f"{spec}: only {count} CUDA device(s) here (cuda:0..cuda:{count - 1})")
        return torch.device("cuda", index)
    if spec == "mps":
        if not _mps_available():
            raise OptionError("device", "mps: Apple's MPS backend is not available here; use cpu or auto")
        return torch.device("mps")
    raise OptionError("device", f"{spec}: unknown device; valid: {DEVICE_CHOICES}")


def synchronize(device: torch.device) -> None:
    """Wait for all queued work on ``device`` so that a clock read afterwards is honest."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "mps":
        return "Apple MPS"
    return cpu_model()


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()
