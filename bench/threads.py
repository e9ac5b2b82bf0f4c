"""CPU threading for honest timings on shared machines: settle it before torch loads OpenMP.

PyTorch's CPU kernels run on an OpenMP pool whose idle threads spin for a while before they sleep.
On a quiet machine that spinning is what makes small kernels fast; on an oversubscribed one (other
processes, other benchmarks each with their own spinning pool) a spinning or descheduled thread
stalls every parallel region. Measured (docs/benchmarks.md, OpenMP waiting): with the cores busy,
passive waiting made epochs tens of times faster than the default policy; with the machine quiet, the
default was about twice as fast. So, unless the user chose a policy, the command line asks for passive waiting only
when the machine is already oversubscribed (1-minute load average above the core count) when it
starts, and records the choice in ``env.json`` (``openmp_choice``).
"""

from __future__ import annotations

import os
import sys

#: Environment variables through which a user already chose how OpenMP threads wait.
USER_CHOICES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")


#: What this process chose and why (:func:`prefer_passive_openmp`; ``None``: it was not asked to choose).
_choice: str | None = None


def openmp_choice() -> str | None:
    """What :func:`prefer_passive_openmp` chose in this process and why (``env.json``'s ``openmp_choice``)."""
    return _choice


def choose_passive(load: float, cores: int) -> bool:
    """Passive waiting when the machine is oversubscribed: more runnable work than cores."""
    return load > cores


def prefer_passive_openmp() -> bool:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` if torch is not loaded yet, the user set no policy and the
    machine is oversubscribed; returns whether it did. Once torch (and so OpenMP) is loaded the
    setting would have no effect."""
    global _choice
    if "torch" in sys.modules or any(name in os.environ for name in USER_CHOICES):
        _choice = _choice or "as set by the user or the environment"
        return False
    try:
        load = os.getloadavg()[0]
    except OSError:  # no load average on this platform: keep OpenMP's default
        return False
    cores = os.cpu_count() or 1
    passive = choose_passive(load, cores)
    _choice = (f"{'passive' if passive else 'default'} waiting: load average {load:.2f} "
               f"{'>' if passive else '<='} {cores} cores at start")
    if passive:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    return passive


def available_cores() -> int:
    """The CPUs this process may run on (its affinity where the platform has one, else all)."""
    if hasattr(os, "sched_getaffinity"):
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except OSError:
            pass
    return os.cpu_count() or 1


def set_threads(threads: int | None) -> str | None:
    """``torch.set_num_threads(threads)`` when given (``None``/0: torch's default, one per core).

    A count above the cores this process may use is capped to them, and the returned note says so:
    more threads than cores only slow a run down, and a huge count (100000) crashes OpenMP with a
    segmentation fault rather than failing cleanly.
    """
    if not threads:
        return None
    import torch

    cores = available_cores()
    note = None
    if threads > cores:
        note = f"{threads} CPU threads asked for, but this process may use {cores} core(s): using {cores}"
        threads = cores
    torch.set_num_threads(threads)
    return note
