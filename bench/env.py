"""What makes timings comparable: versions, device, CPU, threads, command line."""

from __future__ import annotations

import os
import platform
import shlex
import sys
from datetime import datetime, timezone
from typing import Any

import torch

from bench import __version__
from bench.device import cpu_model, device_name


def environment(device: torch.device, argv: list[str] | None = None) -> dict[str, Any]:
    env: dict[str, Any] = {
        "gridbench": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "device_name": device_name(device),
        "command": shlex.join(argv if argv is not None else sys.argv),
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if device.type == "cuda":
        env["cuda"] = torch.version.cuda
        env["cudnn"] = torch.backends.cudnn.version()
        major, minor = torch.cuda.get_device_capability(device)
        env["compute_capability"] = f"{major}.{minor}"
    return env
