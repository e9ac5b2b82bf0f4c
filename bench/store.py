"""The run directory: one JSON record per finished cell, tables derived from them, weights, env.

Layout of a run directory::

    results.csv   one row per cell (RESULT_COLUMNS), rebuilt from the records
    history.csv   one row per cell and epoch (HISTORY_COLUMNS), rebuilt from the records
    env.json      versions, device, CPU, threads, command line (and those of earlier runs into it)
    cells/ID.json the record of one cell: the source of truth
    weights/ID.safetensors  final weights (tensors only: loading them never unpickles code)
    .gridbench.lock         held by the one ``bench run`` writing the directory (see :meth:`RunStore.claim`)

The directory belongs to gridbench: :meth:`RunStore.claim` refuses a directory that exists, is not
empty and is not a gridbench run, and locks it, so that two runs never write one directory at once.

Every file is written to a temporary name and renamed, so a crash at any moment leaves either the
old file or the new one, never a torn one (and a stale temporary file, which ``kill -9`` can leave,
is removed by the next claim). A cell's record is written only after its weights, so a record marks
a cell whose outputs are all on disk: a rerun skips exactly those (see :meth:`RunStore.finished`).

The records are the source of truth: :meth:`RunStore.results` and :meth:`RunStore.history` are
derived from them, never read back from the CSV files, which exist for people and scripts. A record
that cannot be read (truncated, not JSON, without its row, under another cell's name) is never
skipped: every read of the records raises a :class:`BenchError` that names the file. Its contents
cannot be rebuilt (its metrics exist nowhere else), so the user decides: move it away, and the next
run trains that cell again.
"""

from __future__ import annotations

import csv
import errno
import io
import json
import os
import re
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bench.config import IDENTITY_COLUMNS
from bench.errors import BenchError, OptionError
from bench.safe_text import csv_cell, read_csv_frame

#: One row per cell: its id and identity (bench.config), then outcome, metrics, timings and how it ran.
RESULT_COLUMNS = [
    "cell_id", *IDENTITY_COLUMNS, "phase", "trial", "tuning", "status", "error", "test_acc", "test_loss", "val_acc",
    "val_loss",
    "train_time_s", "epoch_time_s", "eval_time_s", "samples_per_s", "n_params", "weights",
    "data_time_s", "warmup_time_s", "step", "cuda_graphs", "compiled", "execution_note",
    "target", "target_epoch", "target_steps", "target_time_s", "fused_group", "fused_size",
]
#: One row per cell and epoch.
HISTORY_COLUMNS = [
    "cell_id", "model", "loss", "dataset", "params", "seed", "epoch", "train_loss", "train_acc", "val_loss",
    "val_acc", "epoch_time_s",
]

#: Held (``filelock``) by the process writing the directory; its presence marks a gridbench run directory.
LOCK_FILE = ".gridbench.lock"
#: Who holds the lock (PID, host, since when), for the message of a run that finds it taken.
HOLDER_FILE = ".gridbench.lock.json"
#: The suffix of :func:`atomic_write`'s temporary files.
TMP_SUFFIX = ".tmp"
#: A temporary file of :func:`atomic_write`: ``.NAME.RANDOM.tmp`` (``.NAME.RANDOM`` before gridbench 0.3).
_TEMPORARY = re.compile(r"^\..+\.(csv|json|safetensors)\.[A-Za-z0-9_]+(\.tmp)?$")
#: errno values that mean the disk (or the user's quota) is full.
_NO_SPACE = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


#: New files get the mode ``open()`` would give them (``mkstemp`` alone makes them owner-only).
_FILE_MODE = 0o666 & ~_umask()


def write_error(path: Path, exc: OSError) -> BenchError:
    """One line for a file that cannot be written; a full disk says what to do about it."""
    if exc.errno in _NO_SPACE:
        return BenchError(f"cannot write {path}: no space left on the device (errno {exc.errno}): free some space "
                          "and run the same command again; what was written before is intact")
    return BenchError(f"cannot write {path}: {exc.strerror or exc}")


def atomic_write(path: Path, data: bytes | str) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename.

    Any ``OSError`` (a full disk above all) becomes one :class:`BenchError` naming the file; the
    temporary file is removed and the previous ``path``, if any, is left as it was.
    """
    path = Path(path)
    payload = data.encode() if isinstance(data, str) else data
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    except OSError as exc:
        raise write_error(path, exc) from None
    try:
        with os.fdopen(fd, "wb") as f:
            if hasattr(os, "fchmod"):
                os.fchmod(f.fileno(), _FILE_MODE)
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise write_error(path, exc) from None
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    """Make a rename durable across a power loss (a process crash alone cannot undo it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems cannot fsync a directory
    finally:
        os.close(fd)


def _csv_text(rows: list[dict[str, Any]], columns: list[str], spreadsheet_safe: bool = False) -> str:
    """The rows as CSV text; ``spreadsheet_safe`` for a file people open (see :mod:`bench.safe_text`)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    cell = csv_cell if spreadsheet_safe else (lambda value: value)
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else cell(row.get(k))) for k in columns})
    return buffer.getvalue()


def _read_table(text: str, source: Path, **kwargs):
    """A CSV text as a DataFrame; a table that pandas cannot parse is one error naming ``source``."""
    import pandas as pd

    try:
        return pd.read_csv(io.StringIO(text), **kwargs)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as exc:
        raise BenchError(f"{source} is not a readable table ({' '.join(str(exc).split()) or 'empty'})") from None


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _pid_alive(pid: int) -> bool:
    if sys.platform == "win32":  # os.kill(pid, 0) would terminate it there: assume it lives
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def describe_holder(holder: dict[str, Any] | None) -> str:
    """``PID 4242 on host box, since 2025-01-01 12:00:00 UTC`` (or that it is unknown)."""
    if not holder:
        return "a process whose PID is not recorded"
    text = f"PID {holder.get('pid', '?')} on host {holder.get('host', '?')}"
    return text + (f", since {holder['since']}" if holder.get("since") else "")


class RunLocked(BenchError):
    """Another process holds the run directory's lock; ``holder`` says who (PID, host, since), if known."""

    def __init__(self, root: Path, holder: dict[str, Any] | None):
        super().__init__(f"the run directory {root} is being written by another bench run "
                         f"({describe_holder(holder)}); one run at a time can write it")
        self.root, self.holder = root, holder


class RunStore:
    """Reads and writes one run directory."""

    def __init__(self, root: Path | str):
        self.root = Path(root)
        if self.root.exists() and not self.root.is_dir():
            raise OptionError("out", f"{self.root}: exists and is not a directory")

    @property
    def cells_dir(self) -> Path:
        return self.root / "cells"

    # -- ownership and the lock -----------------------------------------------------------------

    def is_run_dir(self) -> bool:
        """Whether the directory is a gridbench run: claimed by ``bench run`` (its lock file is there),
        or with gridbench's ``env.json`` (also a damaged one beside a ``cells/`` folder)."""
        if (self.root / LOCK_FILE).is_file():
            return True
        env = self.root / "env.json"
        if not env.is_file():
            return False
        try:
            data = json.loads(env.read_bytes())
        except (OSError, ValueError):
            return self.cells_dir.is_dir()  # ours, damaged: read_env names it
        return isinstance(data, dict) and "gridbench" in data

    def check_owned(self) -> None:
        """Refuse a directory that exists, is not empty and is not a gridbench run directory: gridbench
        would overwrite files there (``results.csv``, ``env.json``, ...) that are not its own."""
        if not self.root.exists():
            return
        if not self.root.is_dir():
            raise BenchError(f"{self.root} exists and is not a directory")
        try:
            entries = sorted(p.name for p in self.root.iterdir())
        except OSError as exc:
            raise BenchError(f"cannot read the directory {self.root}: {exc.strerror}") from None
        if not entries or self.is_run_dir():
            return
        shown = ", ".join(entries[:4]) + (f" and {len(entries) - 4} more" if len(entries) > 4 else "")
        raise BenchError(f"{self.root} is not empty and is not a gridbench run directory (it holds {shown}): "
                         "gridbench writes only into a new or empty directory or an earlier run's; choose another")

    def holder(self) -> dict[str, Any] | None:
        """Who holds (or last held) the lock, from the holder file: ``{"pid", "host", "since"}``."""
        try:
            data = json.loads((self.root / HOLDER_FILE).read_bytes())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def held_here(self) -> bool:
        """Whether this process holds the directory's lock (for code that only runs under it)."""
        holder = self.holder() or {}
        return holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname()

    def _current_holder(self, patience: float = 2.0) -> dict[str, Any] | None:
        """The holder of a lock just found taken. The holder writes its file right after it takes the
        lock, so a missing file or one naming a dead process is waited for a moment."""
        deadline = time.monotonic() + patience
        while True:
            holder = self.holder()
            live = holder is not None and (holder.get("host") != socket.gethostname()
                                           or (isinstance(holder.get("pid"), int) and _pid_alive(holder["pid"])))
            if live or time.monotonic() > deadline:
                return holder
            time.sleep(0.05)

    @contextmanager
    def claim(self, wait: bool = False, on_wait: Callable[[str], None] | None = None) -> Iterator[RunStore]:
        """Make the directory this process's to write until the ``with`` block ends.

        Refuses a directory that is not empty and not a gridbench run (:meth:`check_owned`); creates
        it; takes its lock (``filelock`` on ``.gridbench.lock``, which the operating system releases
        when the holder dies, so a killed run never leaves it locked) or raises :class:`RunLocked`
        naming the holder, or with ``wait`` waits for it (after calling ``on_wait`` with a line
        saying so); then removes temporary files that a killed run left.
        """
        from filelock import FileLock, Timeout

        self.check_owned()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise BenchError(f"cannot create the run directory {self.root}: {exc.strerror}") from None
        lock = FileLock(str(self.root / LOCK_FILE))
        try:
            try:
                lock.acquire(timeout=0)
            except Timeout:
                holder = self._current_holder()
                if not wait:
                    raise RunLocked(self.root, holder) from None
                if on_wait is not None:
                    on_wait(f"waiting for the bench run that is writing {self.root} ({describe_holder(holder)})")
                lock.acquire()
        except OSError as exc:
            raise BenchError(f"cannot lock the run directory {self.root}: {exc.strerror or exc}") from None
        try:
            atomic_write(self.root / HOLDER_FILE, json.dumps({
                "pid": os.getpid(), "host": socket.gethostname(),
                "since": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")}) + "\n")
            self.remove_temporary_files()
            self.create()
            yield self
        finally:
            (self.root / HOLDER_FILE).unlink(missing_ok=True)
            lock.release()

    def remove_temporary_files(self) -> list[Path]:
        """Delete the temporary files of writes that never finished (a process killed mid-write).
        Only safe under the lock: a live writer's temporary file would be taken from under it."""
        removed = []
        for folder in (self.root, self.cells_dir, self.root / "weights"):
            if not folder.is_dir():
                continue
            for path in folder.iterdir():
                if _TEMPORARY.match(path.name) and path.is_file():
                    path.unlink(missing_ok=True)
                    removed.append(path)
        return removed

    def create(self) -> None:
        try:
            self.cells_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise write_error(self.cells_dir, exc) from None

    # -- env.json -------------------------------------------------------------------------------

    def write_env(self, env: dict[str, Any]) -> None:
        atomic_write(self.root / "env.json", json.dumps(env, indent=2, sort_keys=True) + "\n")

    def write_text(self, name: str, text: str) -> None:
        """Write a text file of the run directory (e.g. ``study.yaml``) atomically."""
        atomic_write(self.root / name, text)

    def read_env(self) -> dict[str, Any]:
        """``env.json`` (``{}`` where there is none); a damaged one is an error naming it."""
        path = self.root / "env.json"
        if not path.exists():
            return {}
        try:
            env = json.loads(path.read_bytes())
        except OSError as exc:
            raise BenchError(f"cannot read {path}: {exc.strerror}") from None
        except ValueError as exc:
            raise BenchError(f"{path} is damaged (not valid JSON: {_one_line(exc)}): move it away, and the next "
                             "bench run into this directory writes a new one") from None
        if not isinstance(env, dict):
            raise BenchError(f"{path} is damaged (not a JSON object): move it away, and the next bench run into "
                             "this directory writes a new one")
        return env

    # -- cells ----------------------------------------------------------------------------------

    def write_weights(self, cell_id: str, tensors: dict) -> str:
        """Save tensors with safetensors; returns the path relative to the run directory."""
        from safetensors.torch import save

        rel = f"weights/{cell_id}.safetensors"
        atomic_write(self.root / rel, save({k: v.contiguous() for k, v in tensors.items()}))
        return rel

    def write_cell(self, record: dict[str, Any]) -> None:
        """Persist one finished (or failed) cell, then the staged env.json, then rebuild the tables."""
        atomic_write(self.cells_dir / f"{record['row']['cell_id']}.json", json.dumps(record, sort_keys=True))
        self.rebuild_tables()

    def record_paths(self) -> list[Path]:
        """The record files: ``cells/*.json`` (temporary files, whose names start with a dot, are not)."""
        if not self.cells_dir.is_dir():
            return []
        return sorted(p for p in self.cells_dir.glob("*.json") if not p.name.startswith("."))

    def records(self) -> list[dict[str, Any]]:
        """Every cell record, in grid order. A record that cannot be read is an error naming it (with
        how many others are damaged too): never skipped, since the tables would silently lose its cell."""
        records, damaged = [], []
        for path in self.record_paths():
            try:
                records.append(_read_record(path))
            except _Damaged as exc:
                damaged.append((path, str(exc)))
        if damaged:
            path, why = damaged[0]
            more = f" (and {len(damaged) - 1} more damaged record(s) in {self.cells_dir})" if len(damaged) > 1 else ""
            raise BenchError(f"{path} is damaged ({why}){more}: a cell record cannot be rebuilt from anything else; "
                             f"move it out of {self.cells_dir} (the next run of the same grid trains that cell again) "
                             "or restore it")
        return sorted(records, key=lambda r: (r.get("index", 0), r["row"]["cell_id"]))

    def finished(self) -> dict[str, dict[str, Any]]:
        """Rows of the cells already done (status ``ok`` with their weights on disk, or ``skipped``),
        by cell id. Failed cells are not done: a rerun retries them."""
        done = {}
        for record in self.records():
            row = record["row"]
            if row.get("status") == "skipped" or (
                    row.get("status") == "ok" and (not row.get("weights") or (self.root / row["weights"]).is_file())):
                done[row["cell_id"]] = row
        return done

    def rebuild_tables(self) -> None:
        """Write ``results.csv`` and ``history.csv`` from the records (and the staged env.json first)."""
        records = self.records()
        rows = [r["row"] for r in records]
        history = [h for r in records for h in r.get("history", [])]
        atomic_write(self.root / "results.csv", _csv_text(rows, RESULT_COLUMNS, spreadsheet_safe=True))
        atomic_write(self.root / "history.csv", _csv_text(history, HISTORY_COLUMNS, spreadsheet_safe=True))

    def results(self, records: list[dict[str, Any]] | None = None):
        """One row per cell as a pandas DataFrame, derived from the records (``results.csv`` as it would
        be written now: a stale, cut or damaged ``results.csv`` changes nothing). Only a directory
        without ``cells/`` (a bare ``results.csv``) is read from its CSV. ``records``: those already
        read with :meth:`records`, to save reading them again."""
        path = self.root / "results.csv"
        if self.cells_dir.is_dir():
            records = self.records() if records is None else records
            text, source = _csv_text([r["row"] for r in records], RESULT_COLUMNS), self.cells_dir
        elif path.is_file():
            text, source = _read_text(path), path
        else:
            raise BenchError(f"{self.root} is not a run directory (no results.csv)")
        frame = _read_table(text, source, keep_default_na=False, na_values=[""])
        if source == path:  # the file: its spreadsheet-safe cells as they were
            frame = read_csv_frame(frame)
        if "cell_id" not in frame.columns:
            raise BenchError(f"{source} is not a gridbench results table (it has no cell_id column)")
        return frame

    def history(self, records: list[dict[str, Any]] | None = None):
        """One row per cell and epoch as a pandas DataFrame, derived from the records like :meth:`results`."""
        path = self.root / "history.csv"
        if self.cells_dir.is_dir():
            records = self.records() if records is None else records
            history = [h for r in records for h in r.get("history", [])]
            text, source = _csv_text(history, HISTORY_COLUMNS), self.cells_dir
        elif path.is_file():
            text, source = _read_text(path), path
        else:
            text, source = _csv_text([], HISTORY_COLUMNS), path
        frame = _read_table(text, source)
        return read_csv_frame(frame) if source == path else frame


class _Damaged(Exception):
    """Why one record file cannot be used."""


def _read_text(path: Path) -> str:
    try:
        return path.read_text()
    except OSError as exc:
        raise BenchError(f"cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise BenchError(f"{path} is not a readable table (not text: a binary or damaged file)") from None


def _read_record(path: Path) -> dict[str, Any]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise _Damaged(f"cannot be read: {exc.strerror}") from None
    if not data.strip():
        raise _Damaged("empty")
    try:
        record = json.loads(data)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        raise _Damaged(f"not valid JSON: {_one_line(exc)}") from None
    if not isinstance(record, dict) or not isinstance(record.get("row"), dict):
        raise _Damaged("no 'row' object: not a cell record")
    cell_id = record["row"].get("cell_id")
    if cell_id != path.stem:
        raise _Damaged(f"its row is for cell {cell_id!r}, not {path.stem!r}")
    if not isinstance(record["row"].get("status"), str):
        raise _Damaged("its row has no status")
    return record
