"""CPU threading for honest timings on shared machines: settle it before torch loads OpenMP.

PyTorch's CPU kernels run on an OpenMP pool whose idle threads spin while they wait. When the
machine's cores are shared (other processes, other benchmarks), a spinning or descheduled thread
stalls every parallel region: on a 2-core box with other work running, a linear-model epoch took a
median 12.8 s with the default policy and 0.29 s with ``OMP_WAIT_POLICY=PASSIVE`` (see
benchmarks/README.md). So, unless the user chose a policy, the
command line asks for passive waiting before torch is imported.
"""

from __future__ import annotations

import os
import sys

#: Environment variables through which a user already chose how OpenMP threads wait.
USER_CHOICES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")


def prefer_passive_openmp() -> bool:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` if torch is not loaded yet and the user set no policy.

    Returns whether it did; once torch (and so OpenMP) is loaded the setting would have no effect.
    """
    if "torch" in sys.modules or any(name in os.environ for name in USER_CHOICES):
        return False
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    return True


def set_threads(threads: int | None) -> None:
    """``torch.set_num_threads(threads)`` when given (``None``/0: torch's default, one per core)."""
    if threads:
        import torch

        torch.set_num_threads(threads)
