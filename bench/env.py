"""What makes timings comparable: versions, device, driver, CPU, threads, how steps ran, command line; and
what code ran (:func:`provenance`: the project's git commit, the dependencies' and plugins' distributions)."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import re
import shlex
import subprocess
import sys
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import torch

from bench import __version__
from bench.device import cpu_model, device_name
from bench.threads import openmp_choice

if TYPE_CHECKING:
    from bench.engine import Execution
    from bench.host import Host

#: How long one ``git`` command may take before the commit is left out (a huge or networked checkout).
GIT_TIMEOUT_S = 5.0


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
        "openmp_choice": openmp_choice(),
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


def git_state(folder: str | os.PathLike | None = None) -> dict[str, Any] | None:
    """The git checkout holding ``folder`` (default: the current directory): ``{"commit", "dirty", "root"}``;
    ``dirty`` is True when tracked files differ from the commit (untracked files do not count). None where
    it is no checkout, git is not installed, or git does not answer within :data:`GIT_TIMEOUT_S`."""
    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", *args], cwd=folder, capture_output=True, text=True,
                                  timeout=GIT_TIMEOUT_S, stdin=subprocess.DEVNULL)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    root = git("rev-parse", "--show-toplevel")
    if not root:
        return None
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": git("rev-parse", "--verify", "--quiet", "HEAD^{commit}") or None,  # None before the first commit
            "dirty": None if status is None else bool(status), "root": root}


def _requirement_names(distribution: str) -> list[str]:
    """The distributions ``distribution`` requires, its extras' included except the test suite's."""
    names = []
    for requirement in importlib.metadata.requires(distribution) or ():
        if re.search(r"""extra\s*==\s*["']test["']""", requirement):
            continue
        name = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement.strip())
        if name:
            names.append(name.group(0))
    return list(dict.fromkeys(names))


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except Exception:  # not installed (an extra), or broken metadata: left out, never a reason to fail
        return None


def dependency_versions() -> dict[str, str]:
    """``{distribution: version}`` of gridbench's requirements that are installed (the optional ones of
    ``ray``, ``mlflow`` and ``tensorboard`` too; the test suite's not)."""
    try:
        names = _requirement_names("gridbench")
    except importlib.metadata.PackageNotFoundError:  # run from a source checkout that was never installed
        names = ["torch", "torchvision", "pluggy", "click", "pandas", "numpy", "safetensors", "scipy", "pyyaml",
                 "optuna"]
    versions = {name: _version(name) for name in names}
    return {name: version for name, version in sorted(versions.items(), key=lambda kv: kv[0].lower()) if version}


def plugin_versions(host: Host) -> dict[str, dict[str, str]]:
    """Every plugin the host loaded: ``{name: {"source", "distribution", "version", "status"}}`` (what
    ``bench plugins`` lists): where each came from, so that a result names the plugin code that made it."""
    out = {}
    for name, info in sorted(host.plugins.items()):
        entry = {"source": info.source, "distribution": info.distribution, "version": info.version,
                 "status": info.status}
        if not info.distribution:
            module = sys.modules.get(name)
            if getattr(module, "__file__", None):
                entry["file"] = str(module.__file__)
        out[name] = entry
    return out


def provenance(host: Host | None = None, folder: str | os.PathLike | None = None) -> dict[str, Any]:
    """What code ran: ``git`` (the current project's checkout, absent where there is none), ``packages``
    (gridbench's dependencies) and ``plugins`` (each loaded plugin's distribution and version)."""
    out: dict[str, Any] = {}
    git = git_state(folder)
    if git is not None:
        out["git"] = git
    out["packages"] = dependency_versions()
    if host is not None:
        out["plugins"] = plugin_versions(host)
    return out
