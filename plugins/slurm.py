"""The ``slurm`` executor: a grid's cells as jobs on a SLURM cluster, submitted with submitit.

Run ``bench run`` on the cluster's login node with ``--executor slurm``; the run directory must be on a
filesystem the compute nodes share (it is checked before anything is submitted). Cells (whole fused
groups, never split) are packed into a few jobs, submitted as one job array. Each job trains its groups
one after another and leaves each group's records in the run directory's spool, ``slurm/``; the driver
(``bench run``) reads them as they appear and alone writes the records, tables and trackers.

The spool keeps the submitted jobs (``slurm/jobs.json``), so the same command after the driver died
re-attaches to jobs still queued or running, collects those that finished, and submits only cells no job
holds. A requeued job (preempted, near its time limit: submitit's checkpointing; or ``scontrol requeue``)
starts over from its first group without records. A job that ends otherwise (cancelled, failed, out of
time or memory, a lost node) turns its cells without records into failed rows naming the scheduler's
state; the rest of the grid goes on. ``bench cancel RUN_DIR`` cancels what a run submitted.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench import hookimpl
from bench.errors import BenchError
from bench.grid import Cell
from bench.record import CellRecord

if TYPE_CHECKING:  # torch and the runner load when cells train, not when bench --help lists `bench cancel`
    from bench.runner import Fatal, Job, WorkSpec

SLURM_INSTALL_HINT = "pip install -e '.[slurm]'"
#: The run directory's folder that jobs write (submitit's scripts, logs and results; each job's finished groups).
SPOOL = "slurm"
JOBS_FILE = "jobs.json"
#: Job states after which a job never runs again (squeue's %T).
ENDED = {"COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "OUT_OF_MEMORY", "BOOT_FAIL",
         "DEADLINE", "REVOKED"}
#: Seconds between two looks at the spool; the queue is asked first as often, then less and less often,
#: up to every SQUEUE_MAX_S (a cluster's scheduler should not be polled every second for hours).
POLL_S = 1.0
SQUEUE_MAX_S = 30.0
#: Without ``cells_per_job``, a grid is spread over at most this many jobs.
DEFAULT_JOBS = 4
#: Filesystems in one machine's memory: a compute node never sees them.
LOCAL_FS = {"tmpfs", "ramfs", "devtmpfs"}

DEFAULTS: dict[str, Any] = {"partition": None, "time": 60, "cpus_per_task": 1, "gpus_per_task": 0, "mem": None,
                            "account": None, "qos": None, "sbatch": None, "cells_per_job": 0, "max_jobs": 0}


def _fail(text: str) -> BenchError:
    return BenchError(f"--executor slurm: {text}")


def _command(args: list[str], timeout: float = 60) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise _fail(f"{args[0]} did not answer: {exc}") from None


def _minutes(limit: str) -> float:
    """A SLURM time limit (``H:MM:SS``, ``D-HH:MM:SS``, minutes such as ``30``, or ``infinite``) in minutes."""
    if limit in ("infinite", "UNLIMITED", "n/a", ""):
        return math.inf
    days, _, rest = limit.rpartition("-")
    parts = [int(p) for p in rest.split(":")]
    seconds = {1: lambda p: p[0] * 60, 2: lambda p: p[0] * 60 + p[1],
               3: lambda p: p[0] * 3600 + p[1] * 60 + p[2]}[len(parts)](parts)
    return (int(days or 0) * 86400 + seconds) / 60


def _whole(key: str, value: Any, minimum: int) -> int:
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _fail(f"{key} must be a whole number >= {minimum}, got {value!r}")
    return value


def _sbatch_args(value: Any) -> dict[str, Any]:
    """Extra sbatch arguments (``"--constraint=a100 --exclusive"`` or a list) as submitit's additional parameters."""
    if value in (None, "", []):
        return {}
    words = shlex.split(value) if isinstance(value, str) else [str(v) for v in value]
    out: dict[str, Any] = {}
    for word in words:
        if not word.startswith("--") or len(word) < 3:
            raise _fail(f"sbatch arguments must be long options (--key=value or --flag), got {word!r}")
        key, eq, val = word[2:].partition("=")
        out[key] = val if eq else True
    return out


@dataclass
class _Tracked:
    """One job (an array task) whose records this run waits for."""

    job_id: str | None
    token: str
    groups: list[list[str]]
    #: The ids of this run's cells that the job holds and that have no record yet.
    pending: set[str] = field(default_factory=set)
    seen: set[int] = field(default_factory=set)
    #: The state the driver last saw it in.
    state: str = ""

    @property
    def cells(self) -> list[str]:
        return [cid for group in self.groups for cid in group]


class SlurmTask:
    """The body of one job: train its groups one after another, leaving each group's records in its spool
    folder; a group whose records are there already (the job was requeued) is not trained again.
    Checkpointable (submitit): on preemption or near the time limit the job is requeued as it is."""

    def __init__(self, groups: list[list[tuple[int, Cell]]], spec: WorkSpec, spool: str, threads: int):
        self.groups, self.spec, self.spool, self.threads = groups, spec, spool, threads

    def __call__(self) -> int:
        import torch

        from bench.runner import execute_group

        torch.set_num_threads(self.threads)
        spool = Path(self.spool)
        spool.mkdir(parents=True, exist_ok=True)
        preempted = _watch_preemption()
        done = [k for k in range(len(self.groups)) if (spool / f"{k}.pkl").exists()]
        if done:
            print(f"gridbench: resuming at group {len(done)} of {len(self.groups)} "
                  f"(groups {done} have their records)", flush=True)
        for k, group in enumerate(self.groups):
            path = spool / f"{k}.pkl"
            if path.exists():
                continue
            records = execute_group(group, self.spec)
            if preempted:  # submitit's exit hit a cell, which recorded it as its own failure: not its records
                print(f"gridbench: preempted during group {k}; it trains again when the job restarts", flush=True)
                sys.exit(-1)
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            with open(tmp, "wb") as f:
                pickle.dump(records, f)
            os.replace(tmp, path)  # the driver never sees half a file
            print(f"gridbench: group {k} done ({len(group)} cell(s))", flush=True)
        return len(self.groups)

    def checkpoint(self, *args, **kwargs):
        import submitit

        return submitit.helpers.DelayedSubmission(self)


def _watch_preemption() -> list[int]:
    """A list that gets an item when submitit's preemption signal arrives (its handler then checkpoints,
    requeues the job and raises ``SystemExit`` wherever the job is: inside a cell, which would record it
    as the cell's failure)."""
    import signal

    preempted: list[int] = []
    try:
        from submitit import JobEnvironment

        signum = JobEnvironment._usr_sig()
    except Exception:  # not in a submitit job, or another submitit
        signum = signal.SIGUSR2
    original = signal.getsignal(signum)
    if callable(original):
        def on_preempt(number, frame):
            preempted.append(number)
            original(number, frame)

        signal.signal(signum, on_preempt)
    return preempted


class SlurmExecutor:
    """Cells packed into a few SLURM jobs (one job array); records come back to the driver as each job
    finishes a group. See the module's docstring."""

    def __init__(self, partition=None, time=60, cpus_per_task=1, gpus_per_task=0, mem=None, account=None,
                 qos=None, sbatch=None, cells_per_job=0, max_jobs=0):
        try:
            import submitit  # noqa: F401
        except ImportError:
            raise BenchError(f"--executor slurm needs submitit, an optional extra: {SLURM_INSTALL_HINT}") from None
        self.time = _whole("time (minutes)", time, 1)
        self.cpus_per_task = _whole("cpus_per_task", cpus_per_task, 1)
        self.gpus_per_task = _whole("gpus_per_task", gpus_per_task, 0)
        self.cells_per_job = _whole("cells_per_job", cells_per_job, 0)
        self.max_jobs = _whole("max_jobs", max_jobs, 0)
        if mem is not None and not re.fullmatch(r"\d+[KMGT]?B?", str(mem)):
            raise _fail(f"mem must be an amount such as 4G or 500M, got {mem!r}")
        self.mem = None if mem is None else str(mem)
        self.extra = _sbatch_args(sbatch)
        for key, value in (("partition", partition), ("account", account), ("qos", qos)):
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise _fail(f"{key} must be a name, got {value!r}")
        self.partition, self.account, self.qos = partition, account, qos
        for tool in ("sbatch", "squeue", "sinfo", "srun"):
            if shutil.which(tool) is None:
                raise _fail(f"{tool} is not on the PATH: run bench on a SLURM cluster's login node")
        self.nodes = self._check_partition()

    def _check_partition(self) -> list[str]:
        """The partition exists and allows the time limit; the nodes it has."""
        result = _command(["sinfo", "-h", "-o", "%P|%l|%N"])
        if result.returncode != 0:
            raise _fail(f"sinfo failed: {' '.join(result.stderr.split())}")
        partitions: dict[str, tuple[str, str]] = {}
        default = None
        for line in result.stdout.splitlines():
            name, limit, nodes = (line.split("|") + ["", ""])[:3]
            if name.endswith("*"):
                name = default = name[:-1]
            partitions.setdefault(name, (limit, nodes))
        name = self.partition or default
        if name not in partitions:
            if self.partition is None:
                raise _fail("the cluster has no default partition: give one (partition=NAME)")
            raise _fail(f"unknown partition '{self.partition}'; the cluster has: {', '.join(partitions) or 'none'}")
        limit, nodes = partitions[name]
        if self.time > _minutes(limit):
            raise _fail(f"time {self.time} min is more than partition '{name}' allows ({limit})")
        return [n for n in _expand_nodes(nodes)]

    # -- the run directory as the jobs see it ------------------------------------------------------

    def check_visible(self, run_dir: Path) -> None:
        """Refuse a run directory that the jobs cannot read, before anything is submitted."""
        run_dir = run_dir.resolve()
        slurmd = _local_slurmd()
        if slurmd is not None:
            try:
                theirs = os.stat(f"/proc/{slurmd}/root{run_dir}")
                ours = os.stat(run_dir)
                seen = (theirs.st_dev, theirs.st_ino) == (ours.st_dev, ours.st_ino)
            except PermissionError:  # another user's slurmd: nothing to learn here
                seen = True
            except OSError:
                seen = False
            if not seen:
                raise _fail(f"the jobs cannot read the run directory {run_dir}: the slurmd on this machine does "
                            f"not see it (a private mount?); put --out on a filesystem the compute nodes share")
        here = {socket.gethostname().split(".")[0]}
        if set(self.nodes) - here:
            fs = _filesystem(run_dir)
            if fs in LOCAL_FS or any(str(run_dir).startswith(p) for p in ("/tmp/", "/var/tmp/", "/dev/shm/")):
                raise _fail(f"the jobs cannot read the run directory {run_dir}: it is on this machine only "
                            f"({fs}); put --out on a filesystem the compute nodes share (e.g. under $HOME)")

    # -- running ----------------------------------------------------------------------------------

    def run(self, tasks: list[tuple[int, Cell]], job: Job) -> Iterator[CellRecord | Fatal]:
        if not tasks:
            return
        if job.run_dir is None:
            raise _fail("needs a run directory")
        run_dir = Path(job.run_dir).resolve()
        self.check_visible(run_dir)
        spool = run_dir / SPOOL
        spool.mkdir(exist_ok=True)
        jobs = _JobsFile(spool / JOBS_FILE)
        by_id = {cell.cell_id: (index, cell) for index, cell in tasks}
        tracked: list[_Tracked] = []

        # jobs submitted by earlier runs into this directory: re-attach to live ones, collect what ended
        old = [t for t in jobs.tracked() if set(t.cells) & set(by_id)]
        for t in old:
            t.pending = set(t.cells) & set(by_id)
        if old:
            jobs.recover_ids(old)
            states = _states([t.job_id for t in old if t.job_id])
            live = [t for t in old if t.job_id and states.get(t.job_id, ("", ""))[0] not in ENDED | {""}]
            for t in old:
                yield from self._collect(t, spool, by_id)
                if t not in live:
                    jobs.mark_done(t)  # it ended while no driver watched: what it did not do is submitted again
            tracked = [t for t in live if t.pending]
            held = {cid for t in tracked for cid in t.pending}
            if tracked:
                print(f"slurm: re-attached to {len(tracked)} job(s) still queued or running "
                      f"({', '.join(str(t.job_id) for t in tracked)}), holding {len(held)} cell(s)",
                      file=sys.stderr)
        reported = {cid for t in old for cid in set(t.cells) & set(by_id) if cid not in t.pending}
        held = {cid for t in tracked for cid in t.pending}
        todo = [(i, c) for i, c in tasks if c.cell_id not in held and c.cell_id not in reported]
        if todo:
            tracked += self._submit(todo, job, spool, jobs)
        every, asked = POLL_S, 0.0
        try:
            while any(t.pending for t in tracked):
                waiting = [t for t in tracked if t.pending]
                states = None  # the queue is not asked every time
                if time.monotonic() - asked >= every:
                    states = _states([t.job_id for t in waiting if t.job_id])
                    asked, every = time.monotonic(), min(SQUEUE_MAX_S, every * 1.2)
                for t in waiting:
                    yield from self._collect(t, spool, by_id)
                    if not t.pending:
                        jobs.mark_done(t)
                    if states is None or not t.pending:
                        continue
                    state, reason = states.get(t.job_id, ("", ""))
                    state, t.state = state, state or t.state
                    if t.pending and (state in ENDED or not state):
                        if state == "COMPLETED":  # its last records may still be on their way (a shared filesystem)
                            for _ in range(10):
                                time.sleep(POLL_S)
                                yield from self._collect(t, spool, by_id)
                                if not t.pending:
                                    break
                        why = _why(t, state, reason, spool)
                        from bench.runner import failed_record

                        for cid in sorted(t.pending, key=lambda c: by_id[c][0]):
                            index, cell = by_id[cid]
                            yield failed_record(index, cell, why)
                        t.pending.clear()
                    if not t.pending:
                        jobs.mark_done(t)
                if any(t.pending for t in tracked):
                    time.sleep(POLL_S)
        finally:
            left = [t for t in tracked if t.pending]
            if left:
                print(f"slurm: {len(left)} job(s) still queued or running ({', '.join(str(t.job_id) for t in left)});"
                      f" the same command collects them, bench cancel {run_dir} cancels them", file=sys.stderr)

    def _collect(self, t: _Tracked, spool: Path, by_id: dict[str, tuple[int, Cell]]) -> Iterator[CellRecord | Fatal]:
        """The records of the groups that ``t`` finished since the last look."""
        from bench.runner import Fatal

        folder = spool / "parts" / t.token
        for k in range(len(t.groups)):
            if k in t.seen or not (folder / f"{k}.pkl").exists():
                continue
            with open(folder / f"{k}.pkl", "rb") as f:
                records = pickle.load(f)
            t.seen.add(k)
            for record in records:
                if isinstance(record, Fatal):
                    yield record
                    continue
                if record.cell_id in t.pending:
                    t.pending.discard(record.cell_id)
                    record.index = by_id[record.cell_id][0]
                    yield record

    def _submit(self, tasks: list[tuple[int, Cell]], job: Job, spool: Path, jobs: _JobsFile) -> list[_Tracked]:
        import submitit

        from bench.runner import fused_groups

        groups = fused_groups(tasks, job.execution, job.registry)
        packs = self.pack(groups)
        device = job.device
        if device.type == "cuda" and self.gpus_per_task < 1:
            raise _fail("--device cuda needs gpus_per_task >= 1")
        # each job sees its own GPU(s) from 0 on (CUDA_VISIBLE_DEVICES)
        spec = replace(job.spec, device="cuda:0" if device.type == "cuda" else str(device))
        token = uuid.uuid4().hex[:12]
        tracked = [_Tracked(None, f"{token}_{a}", [[c.cell_id for _, c in group] for group in pack],
                            pending={c.cell_id for group in pack for _, c in group}) for a, pack in enumerate(packs)]
        jobs.add(token, tracked)  # before sbatch: a driver killed now finds the jobs again by their name
        executor = submitit.SlurmExecutor(folder=spool / "jobs")
        parameters: dict[str, Any] = {
            "job_name": f"gridbench-{token}", "time": self.time, "cpus_per_task": self.cpus_per_task,
            "signal_delay_s": min(90, max(10, self.time * 6)),  # a 1-minute job gets its signal 10 s early
            "array_parallelism": self.max_jobs or len(packs),
        }
        for key in ("partition", "account", "qos"):
            if getattr(self, key) is not None:
                parameters[key] = getattr(self, key)
        if self.gpus_per_task:
            parameters["gpus_per_task"] = self.gpus_per_task
        extra = dict(self.extra)
        extra.setdefault("requeue", True)
        if self.mem is not None:
            extra["mem"] = self.mem
        parameters["additional_parameters"] = extra
        try:
            executor.update_parameters(**parameters)
        except ValueError as exc:
            raise _fail(" ".join(str(exc).split())[:300]) from None
        bodies = [SlurmTask(pack, spec, str(spool / "parts" / t.token), self.cpus_per_task)
                  for pack, t in zip(packs, tracked)]
        try:
            submitted = executor.submit_array(bodies)
        except Exception as exc:  # sbatch refused: a bad account, qos, extra argument, ...
            jobs.remove(token)
            lines = [line.strip() for line in str(exc).splitlines() if "error" in line.lower()]
            raise _fail(f"sbatch refused the jobs: {lines[-1] if lines else ' '.join(str(exc).split())[:300]}") \
                from None
        ids = [str(s.job_id) for s in submitted]
        for t, job_id in zip(tracked, ids):
            t.job_id = job_id
        jobs.set_ids(token, ids)
        cells = sum(len(t.cells) for t in tracked)
        print(f"slurm: submitted {len(ids)} job(s) ({', '.join(ids)}) for {cells} cell(s)", file=sys.stderr)
        return tracked

    def pack(self, groups: list[list[tuple[int, Cell]]]) -> list[list[list[tuple[int, Cell]]]]:
        """Groups packed into jobs, whole: ``cells_per_job`` cells at most in each (a larger group alone),
        or by default spread over at most a few jobs, the largest groups first."""
        if self.cells_per_job:
            packs: list[list] = []
            size = 0
            for group in groups:
                if not packs or size + len(group) > self.cells_per_job:
                    packs.append([])
                    size = 0
                packs[-1].append(group)
                size += len(group)
            return packs
        count = min(DEFAULT_JOBS, len(groups))
        packs = [[] for _ in range(count)]
        for group in sorted(groups, key=len, reverse=True):
            min(packs, key=lambda p: sum(len(g) for g in p)).append(group)
        return [sorted(p, key=lambda g: g[0][0]) for p in packs]


# -- the jobs a run directory holds ----------------------------------------------------------------


class _JobsFile:
    """``slurm/jobs.json``: every submission of this run directory (its name token, job ids, cells per group),
    written by the driver alone."""

    def __init__(self, path: Path):
        self.path = path
        try:
            self.data = json.loads(path.read_text()) if path.exists() else {"submissions": []}
        except (OSError, ValueError) as exc:
            raise _fail(f"cannot read {path}: {exc}") from None

    def _write(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1))
        os.replace(tmp, self.path)

    def add(self, token: str, tracked: list[_Tracked]) -> None:
        self.data["submissions"].append({"token": token, "job_id": None, "submitted_at": time.time(),
                                         "jobs": [{"job_id": None, "groups": t.groups, "done": False}
                                                  for t in tracked]})
        self._write()

    def remove(self, token: str) -> None:
        self.data["submissions"] = [s for s in self.data["submissions"] if s["token"] != token]
        self._write()

    def set_ids(self, token: str, ids: list[str]) -> None:
        sub = self._find(token)
        sub["job_id"] = ids[0].split("_")[0]
        for entry, job_id in zip(sub["jobs"], ids):
            entry["job_id"] = job_id
        self._write()

    def _find(self, token: str) -> dict:
        return next(s for s in self.data["submissions"] if s["token"] == token)

    def tracked(self) -> list[_Tracked]:
        """The jobs that the driver has not yet seen to the end."""
        return [_Tracked(entry["job_id"], f"{sub['token']}_{a}", entry["groups"])
                for sub in self.data["submissions"] for a, entry in enumerate(sub["jobs"]) if not entry["done"]]

    def recover_ids(self, tracked: list[_Tracked]) -> None:
        """Job ids that a killed driver did not write down, found again by the jobs' name."""
        for token in {t.token.rsplit("_", 1)[0] for t in tracked if t.job_id is None}:
            result = _command(["squeue", "-h", "-r", "-t", "all", "--name", f"gridbench-{token}", "-o", "%i"])
            ids = sorted(result.stdout.split(), key=lambda i: int(i.rsplit("_", 1)[-1]) if "_" in i else 0)
            if ids:
                self.set_ids(token, ids)
                for t in tracked:
                    if t.token.startswith(token + "_"):
                        a = int(t.token.rsplit("_", 1)[1])
                        t.job_id = ids[a] if a < len(ids) else None

    def mark_done(self, t: _Tracked) -> None:
        token, a = t.token.rsplit("_", 1)
        entry = self._find(token)["jobs"][int(a)]
        if not entry["done"]:
            entry["done"] = True
            self._write()


# -- asking the scheduler --------------------------------------------------------------------------


def _states(job_ids: list[str]) -> dict[str, tuple[str, str]]:
    """job id -> (state, reason) for the jobs SLURM still knows (finished ones for a while: MinJobAge).

    Array tasks that never started are one record under the array's id (``14``, not ``14_2``): a task
    missing from the answer takes its array's record.
    """
    if not job_ids:
        return {}
    arrays = sorted({job_id.split("_")[0] for job_id in job_ids})
    result = _command(["squeue", "-h", "-r", "-t", "all", "-j", ",".join(arrays), "-o", "%i|%T|%r"])
    known = {}
    for line in result.stdout.splitlines():
        job_id, state, reason = (line.split("|") + ["", ""])[:3]
        known[job_id.strip()] = (state.strip(), reason.strip())
    return {job_id: known.get(job_id) or known.get(job_id.split("_")[0]) or ("", "") for job_id in job_ids}


def _why(t: _Tracked, state: str, reason: str, spool: Path) -> str:
    """Why job ``t`` ended without training a cell, in the scheduler's words (and the job's)."""
    from submitit.core.utils import JobPaths

    paths = JobPaths(spool / "jobs", job_id=t.job_id, task_id=0)
    said = ""
    try:
        lines = paths.stderr.read_text(errors="replace").splitlines()
        said = next((line.split("error:", 1)[-1].strip(" *") for line in reversed(lines)
                     if "slurmstepd" in line and "***" in line), "")
        if not said:
            said = next((line.strip() for line in reversed(lines)
                         if re.match(r"^\w*(Error|Exception)\b", line.strip())), "")
    except OSError:
        pass
    if state:
        what = f"ended {state}"
    elif t.state == "PENDING" and not paths.stderr.exists():  # SLURM forgets an array task cancelled while pending
        what = "was CANCELLED while pending (it left the queue without starting)"
    else:
        what = "is gone from the queue"
    if reason and reason not in ("None", "NonZeroExitCode"):
        what += f" ({reason})"
    return f"slurm job {t.job_id} {what} before it trained this cell" + (f": {said}" if said else "")


def _local_slurmd() -> int | None:
    """The pid of a slurmd running on this machine, if any."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() in ("slurmd", "slurmd-wlm"):
                    return int(entry.name)
            except OSError:
                continue
    return None


def _filesystem(path: Path) -> str:
    """The type of the filesystem that holds ``path`` (Linux; '' elsewhere)."""
    best, fs = "", ""
    try:
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            left, _, right = line.partition(" - ")
            mount = left.split()[4].replace("\\040", " ")
            if (str(path) + "/").startswith(mount.rstrip("/") + "/") and len(mount) >= len(best):
                best, fs = mount, right.split()[0]
    except OSError:
        pass
    return fs


def _expand_nodes(nodes: str) -> list[str]:
    """``node[1-3],gpu7`` -> node names (scontrol's expansion when there is one)."""
    if not nodes or nodes == "n/a":
        return []
    if "[" in nodes and shutil.which("scontrol"):
        result = _command(["scontrol", "show", "hostnames", nodes])
        if result.returncode == 0:
            return result.stdout.split()
    return nodes.split(",")


def cancel(run_dir: Path) -> list[str]:
    """Cancel the jobs of a run directory that are still queued or running; their ids."""
    path = Path(run_dir) / SPOOL / JOBS_FILE
    if not path.is_file():
        raise BenchError(f"{run_dir} holds no SLURM jobs (no {SPOOL}/{JOBS_FILE})")
    if shutil.which("scancel") is None:
        raise BenchError("scancel is not on the PATH: run bench cancel on the cluster's login node")
    jobs = _JobsFile(path)
    tracked = jobs.tracked()
    jobs.recover_ids(tracked)
    states = _states([t.job_id for t in tracked if t.job_id])
    live = [t.job_id for t in tracked if t.job_id and states[t.job_id][0] not in ENDED | {""}]
    if live:
        result = _command(["scancel", *live])
        if result.returncode != 0:
            raise BenchError(f"scancel failed: {' '.join(result.stderr.split())}")
    return live


# -- registration ----------------------------------------------------------------------------------


@hookimpl
def bench_register_executors(register):
    register("slurm", SlurmExecutor, params=dict(DEFAULTS),
             description=f"cells packed into a few SLURM jobs (submitit) on the cluster this is the login node of; "
                         f"options: -X KEY=VALUE or the study's executor block; needs {SLURM_INSTALL_HINT}")


@hookimpl
def bench_cli(cli):
    import click

    @cli.command("cancel")
    @click.argument("run_dir", type=click.Path(path_type=Path, file_okay=False, exists=True))
    def cancel_command(run_dir):
        """Cancel the SLURM jobs that bench run --executor slurm submitted for RUN_DIR and that are not over.

        Their cells get failed rows when a driver is watching (or on the next run, which submits them again).
        """
        ids = cancel(run_dir)
        click.echo(f"cancelled {len(ids)} job(s){': ' + ', '.join(ids) if ids else ''}")
