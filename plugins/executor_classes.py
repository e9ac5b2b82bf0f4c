"""The built-in executors' classes (plugins/executors.py registers them; this module imports torch)."""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import sys
from collections import deque
from collections.abc import Iterator
from dataclasses import replace
from multiprocessing.connection import wait
from typing import Any

import torch

from bench.errors import BenchError, one_line
from bench.grid import Cell
from bench.plugins.executors import RAY_INSTALL_HINT
from bench.record import CellRecord
from bench.runner import Fatal, Job, WorkSpec, execute_group, failed_record, fused_groups


def _exit_reason(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


# -- process ---------------------------------------------------------------------------------------


def _die_with_parent() -> None:
    """On Linux, have the kernel kill this worker when the driver dies (even by SIGKILL)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # elsewhere a worker finds out at its next send or receive


def _worker_main(conn, spec: WorkSpec, threads: int) -> None:
    """A worker process: train the groups of cells the driver sends (one cell, or a fused group of
    cells of one shape: bench/fuse.py), one group at a time, until told to stop."""
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's to handle
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the driver's clean stop (fork): a worker has nothing to save
    torch.set_num_threads(threads)
    while True:
        try:
            task = conn.recv()
            if task is None:
                return
            conn.send(execute_group(task, spec))
        except (EOFError, OSError):  # the driver is gone
            return


class _Worker:
    def __init__(self, context, spec: WorkSpec, threads: int):
        self.conn, child = context.Pipe()
        self.proc = context.Process(target=_worker_main, args=(child, spec, threads), daemon=True,
                                    name=f"bench-worker-{spec.device}")
        self.proc.start()
        child.close()
        self.spec, self.threads = spec, threads
        self.task: list[tuple[int, Cell]] | None = None

    def send(self, task: list[tuple[int, Cell]] | None) -> None:
        self.conn.send(task)
        self.task = task

    def stop(self) -> None:
        """Let an idle worker exit; a busy one (Ctrl-C, an error in the driver) is terminated."""
        if self.task is None:
            try:
                self.conn.send(None)
            except OSError:
                pass
            self.proc.join(timeout=5)
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(timeout=5)
        self.conn.close()


def start_method(device: torch.device, threads: int) -> str:
    """How worker processes start: ``fork`` for one-thread cpu workers, ``spawn`` otherwise.

    A forked worker starts in milliseconds with torch and the plugins already imported; a spawned
    one first imports torch (seconds, as long as a whole cell of a small model takes). But
    a forked child hangs in its first OpenMP parallel region once the driver has run one (GNU
    libgomp keeps the parent's thread pool, whose threads do not exist in the child), and CUDA
    cannot be used after a fork. With one thread torch never opens a parallel region, so fork is
    safe exactly there, on Linux (macOS system libraries are not fork-safe: Python itself spawns
    there by default); ``BENCH_WORKER_START=spawn`` forces spawn anyway.
    """
    forkable = device.type == "cpu" and threads == 1 and sys.platform.startswith("linux")
    return "fork" if forkable and os.environ.get("BENCH_WORKER_START") != "spawn" else "spawn"


class ProcessExecutor:
    """``--jobs N`` worker processes on this machine, each training one cell (or one fused group) at a time."""

    def __init__(self, jobs: int | None = None):
        if jobs is not None and jobs < 1:
            raise BenchError(f"--jobs must be >= 1, got {jobs}")
        self.jobs = jobs

    def slots(self, device: torch.device) -> list[tuple[str, int]]:
        """(device, threads) for each worker."""
        if device.type == "cuda":
            count = torch.cuda.device_count()
            jobs = self.jobs or count
            if jobs > count:
                raise BenchError(f"--jobs {jobs}: the process executor gives each worker its own GPU, "
                                 f"and there are {count} here")
            return [(f"cuda:{i}", 1) for i in range(jobs)]
        cores = torch.get_num_threads()
        jobs = self.jobs or cores
        return [(str(device), max(1, cores // jobs))] * jobs

    def run(self, tasks: list[tuple[int, Cell]], job: Job) -> Iterator[CellRecord | Fatal]:
        if not tasks:
            return
        groups = fused_groups(tasks, job.execution, job.registry)  # a group of one is one cell
        slots = self.slots(job.device)[:len(groups)]
        context = multiprocessing.get_context(start_method(job.device, slots[0][1]))
        queue = deque(groups)
        workers: list[_Worker] = []

        def give_work(worker: _Worker | None, spec: WorkSpec, threads: int) -> None:
            """Send the next task to ``worker``, or to a fresh one on the same slot if it is gone."""
            if not queue:
                return
            if worker is not None:
                try:
                    worker.send(queue[0])
                    queue.popleft()
                    return
                except OSError:  # it died while idle: nothing of ours was lost with it
                    worker.stop()
                    workers.remove(worker)
            worker = _Worker(context, spec, threads)
            workers.append(worker)
            worker.send(queue.popleft())

        try:
            for device, threads in slots:
                give_work(None, replace(job.spec, device=device), threads)
            while any(w.task is not None for w in workers):
                busy = [w for w in workers if w.task is not None]
                ready = set(wait([w.conn for w in busy] + [w.proc.sentinel for w in busy]))
                for worker in busy:
                    if worker.conn not in ready and worker.proc.sentinel not in ready:
                        continue
                    group = worker.task
                    try:
                        records = worker.conn.recv() if worker.conn.poll() else None
                    except (EOFError, OSError):
                        records = None
                    worker.task = None
                    if records is None:  # the worker died before it could report: only its cell(s) are lost
                        worker.proc.join(timeout=5)
                        what = "this cell" if len(group) == 1 else f"this fused group of {len(group)} cells"
                        records = [failed_record(index, cell, f"worker process died while training {what} "
                                                              f"({_exit_reason(worker.proc.exitcode)})")
                                   for index, cell in group]
                        worker.stop()
                        workers.remove(worker)
                        give_work(None, worker.spec, worker.threads)
                    else:
                        give_work(worker, worker.spec, worker.threads)
                    yield from records  # the worker already has its next group while the driver writes these
        finally:
            for worker in workers:
                worker.stop()


# -- ray -------------------------------------------------------------------------------------------


def _ray_group(group: list[tuple[int, Cell]], spec: WorkSpec, threads: int) -> list[CellRecord | Fatal]:
    """The body of one Ray task: one cell, or a fused group (a plain function, so Ray ships it by reference)."""
    torch.set_num_threads(threads)
    return execute_group(group, spec)


class RayExecutor:
    """Each cell (or fused group) a Ray task; records come back to the driver as tasks finish."""

    #: CPUs (and torch threads) per cell.
    cpus = 1

    def __init__(self, address: str | None = None):
        try:
            import ray  # noqa: F401
        except ImportError:
            raise BenchError(f"--executor ray needs Ray, an optional extra: {RAY_INSTALL_HINT}") from None
        self.address = address

    def _connect(self) -> bool:
        """Start or join Ray unless this process already has; True when we must shut it down."""
        import ray

        if ray.is_initialized():
            return False
        options: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING,
                                   "configure_logging": True}
        try:
            if self.address:
                ray.init(address=self.address, **options)
            else:
                ray.init(**options)
        except Exception as exc:  # no cluster there, a version mismatch, ...
            where = f" at --address {self.address}" if self.address else ""
            raise BenchError(f"--executor ray: cannot start or join Ray{where}: {one_line(exc, first=True)}") from None
        return True

    def run(self, tasks: list[tuple[int, Cell]], job: Job) -> Iterator[CellRecord | Fatal]:
        if not tasks:
            return
        import ray

        started = self._connect()
        cuda = job.device.type == "cuda"
        # Ray hands each GPU task its own device as CUDA_VISIBLE_DEVICES, so inside the task it is cuda:0.
        spec = replace(job.spec, device="cuda:0" if cuda else job.spec.device)
        task = ray.remote(_ray_group).options(num_cpus=self.cpus, num_gpus=1 if cuda else 0, max_retries=0,
                                              name="bench-cell")
        groups = fused_groups(tasks, job.execution, job.registry)
        pending = {task.remote(group, spec, self.cpus): group for group in groups}
        try:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                for ref in ready:
                    group = pending.pop(ref)
                    try:
                        records = ray.get(ref)
                    except ray.exceptions.RayError as exc:  # the worker died, the node was lost, ...
                        records = [failed_record(index, cell, f"Ray task failed while training this cell: "
                                                              f"{one_line(exc, first=True)}") for index, cell in group]
                    yield from records
        finally:
            for ref in pending:
                try:
                    ray.cancel(ref, force=True)
                except Exception:  # already finished or its worker is gone
                    pass
            if started:
                ray.shutdown()
