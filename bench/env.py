"""What makes timings comparable: versions, device, driver, CPU, threads, how steps ran, command line."""

from __future__ import annotations

import os
import platform
import shlex
import sys
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import torch

from bench import __version__
from bench.device import cpu_model, device_name

if TYPE_CHECKING:
    from bench.step import Execution


def cuda_driver_version() -> str | None:
    """The NVIDIA driver's CUDA version (e.g. ``"13.0"``), or None where torch cannot tell."""
    try:
        version = int(torch._C._cuda_getDriverVersion())
    except Exception:
        return None
    return f"{version // 1000}.{version % 1000 // 10}" if version > 0 else None


def nvidia_driver() -> str | None:
    """The NVIDIA kernel driver's version from /proc, where the machine has one."""
    try:
        with open("/proc/driver/nvidia/version") as f:
            first = f.readline()
    except OSError:
        return None
    words = [w for w in first.split() if w[:1].isdigit() and "." in w]
    return words[0] if words else first.strip() or None


def environment(device: torch.device, argv: list[str] | None = None,
                execution: Execution | None = None) -> dict[str, Any]:
    env: dict[str, Any] = {
        "gridbench": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "openmp_choice": os.environ.get("BENCH_OPENMP_CHOICE"),
        "device": str(device),
        "device_name": device_name(device),
        "command": shlex.join(argv if argv is not None else sys.argv),
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if execution is not None:
        env["step"] = execution.step_mode(device)
        env["cuda_graphs"] = execution.cuda_graphs
        env["cuda_graphs_used"] = env["step"] == "graph"
        env["compile"] = execution.compile
        env["fuse"] = execution.fuse
        env["fuse_max"] = execution.fuse_max
    if device.type == "cuda":
        env["cuda"] = torch.version.cuda
        env["cuda_driver"] = cuda_driver_version()
        env["nvidia_driver"] = nvidia_driver()
        env["cudnn"] = torch.backends.cudnn.version()
        major, minor = torch.cuda.get_device_capability(device)
        env["compute_capability"] = f"{major}.{minor}"
        env["gpu_memory_gb"] = round(torch.cuda.get_device_properties(device).total_memory / 2**30, 1)
    return env
