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
that cannot be read (truncated, not JSON, without its row, under another cell's name, too large) or
holds a value of the wrong type or range (:func:`check_record`) is never skipped: every read of the
records raises a :class:`BenchError` that names the file.

Nothing is read or written outside the directory: a symlinked ``cells/`` or ``weights/`` is refused,
and so is a path in a record that leads out of ``weights/`` (see :mod:`bench.files`). Its contents
cannot be rebuilt (its metrics exist nowhere else), so the user decides: move it away, and the next
run trains that cell again.
"""

from __future__ import annotations

import csv
import errno
import io
import json
import math
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
from bench.files import ENV_MAX, RECORD_MAX, TABLE_MAX, Refused, check_folder, excerpt, inside, read_bounded
from bench.safe_text import csv_cell, read_csv_frame

#: One row per cell: its id and identity (bench.config), then outcome, metrics, timings and how it ran.
RESULT_COLUMNS = [
    "cell_id", *IDENTITY_COLUMNS, "phase", "trial", "tuning", "status", "error", "test_acc", "test_loss", "val_acc",
    "val_loss",
    "train_time_s", "epoch_time_s", "eval_time_s", "samples_per_s", "n_params", "weights",
    "data_time_s", "warmup_time_s", "setup_time_s", "step", "cuda_graphs", "compiled", "execution_note",
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


def _lock_file(name: str) -> bool:
    """The lock, its holder file, or the holder file's temporary: what a starting ``bench run`` writes first."""
    return name in (LOCK_FILE, HOLDER_FILE) or (name.startswith(f".{HOLDER_FILE}.") and name.endswith(TMP_SUFFIX))


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

    def folder(self, name: str) -> Path:
        """``cells/`` or ``weights/``, refused (:class:`BenchError`) if a symlink or outside the run directory:
        records and weights are read and written only inside it."""
        return check_folder(self.root, name)

    def path_of(self, relative: str) -> Path:
        """A file a record names (``weights/ID.safetensors``), refused unless it resolves inside the run."""
        return inside(self.root, relative)

    # -- ownership and the lock -----------------------------------------------------------------

    def is_run_dir(self) -> bool:
        """Whether the directory is a gridbench run: claimed by ``bench run`` (its lock file is there),
        or with gridbench's ``env.json`` (also a damaged one beside a ``cells/`` folder)."""
        if (self.root / LOCK_FILE).is_file() and self.cells_dir.is_dir():
            return True  # claimed by bench run (a lock file alone, e.g. an empty one a user made, is not)
        env = self.root / "env.json"
        if not env.is_file():
            return False
        try:
            data = json.loads(read_bounded(env, ENV_MAX))
        except (OSError, ValueError, RecursionError):
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
        if all(_lock_file(name) for name in entries) or self.is_run_dir():
            return  # new, empty but for the lock of a run starting (or killed as it started), or an earlier run's
        shown = ", ".join(entries[:4]) + (f" and {len(entries) - 4} more" if len(entries) > 4 else "")
        raise BenchError(f"{self.root} is not empty and is not a gridbench run directory (it holds {shown}): "
                         "gridbench writes only into a new or empty directory or an earlier run's; choose another")

    def holder(self) -> dict[str, Any] | None:
        """Who holds (or last held) the lock, from the holder file: ``{"pid", "host", "since"}``."""
        try:
            data = json.loads(read_bounded(self.root / HOLDER_FILE, 64 * 1024))
        except (OSError, ValueError, RecursionError):
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
        for folder in (self.root, self.folder("cells"), self.folder("weights")):
            if not folder.is_dir():
                continue
            for path in folder.iterdir():
                if _TEMPORARY.match(path.name) and path.is_file():
                    path.unlink(missing_ok=True)
                    removed.append(path)
        return removed

    def create(self) -> None:
        """Create ``cells/``; a symlinked ``cells/`` or ``weights/`` is refused before anything is written."""
        self.folder("weights")
        try:
            self.folder("cells").mkdir(parents=True, exist_ok=True)
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
            inside(self.root, "env.json")
            env = json.loads(read_bounded(path, ENV_MAX))
        except Refused as exc:
            raise BenchError(f"{path} is not read ({exc.reason}): move it away, and the next bench run into this "
                             "directory writes a new one") from None
        except OSError as exc:
            raise BenchError(f"cannot read {path}: {exc.strerror}") from None
        except (ValueError, RecursionError) as exc:
            raise BenchError(f"{path} is damaged (not valid JSON: {_one_line(exc)[:200]}): move it away, and the "
                             "next bench run into this directory writes a new one") from None
        if not isinstance(env, dict):
            raise BenchError(f"{path} is damaged (not a JSON object): move it away, and the next bench run into "
                             "this directory writes a new one")
        return env

    # -- cells ----------------------------------------------------------------------------------

    def write_weights(self, cell_id: str, tensors: dict) -> str:
        """Save tensors with safetensors; returns the path relative to the run directory."""
        from safetensors.torch import save

        rel = f"weights/{cell_id}.safetensors"
        self.folder("weights")
        atomic_write(self.root / rel, save({k: v.contiguous() for k, v in tensors.items()}))
        return rel

    def write_cell(self, record: dict[str, Any]) -> None:
        """Persist one finished (or failed) cell, then the staged env.json, then rebuild the tables."""
        atomic_write(self.folder("cells") / f"{record['row']['cell_id']}.json", json.dumps(record, sort_keys=True))
        self.rebuild_tables()

    def record_paths(self) -> list[Path]:
        """The record files: ``cells/*.json`` (temporary files, whose names start with a dot, are not)."""
        if not self.folder("cells").is_dir():
            return []
        return sorted(p for p in self.cells_dir.glob("*.json") if not p.name.startswith("."))

    def records(self) -> list[dict[str, Any]]:
        """Every cell record, in grid order. A record that cannot be read is an error naming it (with
        how many others are damaged too): never skipped, since the tables would silently lose its cell."""
        records, damaged = [], []
        for path in self.record_paths():
            try:
                inside(self.root, path.relative_to(self.root), "the record")
                records.append(_read_record(path))
            except Refused as exc:
                damaged.append((path, exc.reason))
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
                    row.get("status") == "ok" and (not row.get("weights") or self.path_of(row["weights"]).is_file())):
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
        return read_bounded(path, TABLE_MAX).decode()
    except OSError as exc:
        raise BenchError(f"cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise BenchError(f"{path} is not a readable table (not text: a binary or damaged file)") from None


def _read_record(path: Path) -> dict[str, Any]:
    """One record file, checked (:func:`check_record`); every problem is a :class:`_Damaged` saying what."""
    try:
        data = read_bounded(path, RECORD_MAX)
    except Refused as exc:
        raise _Damaged(exc.reason) from None
    except OSError as exc:
        raise _Damaged(f"cannot be read: {exc.strerror}") from None
    if not data.strip():
        raise _Damaged("empty")
    try:
        record = json.loads(data)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        raise _Damaged(f"not valid JSON: {_one_line(exc)[:200]}") from None
    except RecursionError:
        raise _Damaged("not valid JSON: nested too deeply") from None
    if not isinstance(record, dict) or not isinstance(record.get("row"), dict):
        raise _Damaged("no 'row' object: not a cell record")
    cell_id = record["row"].get("cell_id")
    if cell_id != path.stem:
        raise _Damaged(f"its row is for cell {excerpt(cell_id)}, not {path.stem!r}")
    check_record(record)
    return record


#: The record's row: columns that must be there, and the type (and range) of those that may be.
_STATUSES = ("ok", "failed", "skipped")
_NAMES = ("model", "loss", "dataset")
_TEXT = ("params", "device", "optimizer", "schedule", "phase", "tuning", "error", "weights", "step",
         "execution_note", "target", "fused_group")
_COUNTS = {"epochs": 1, "batch_size": 1, "limit": 0, "n_params": 0, "trial": 0, "target_epoch": 0,
           "target_steps": 0, "fused_size": 1}
_FRACTIONS = ("test_acc", "val_acc", "train_acc")
_NUMBERS = ("test_loss", "val_loss", "train_loss")
_NON_NEGATIVE = ("lr", "weight_decay", "train_time_s", "epoch_time_s", "eval_time_s", "samples_per_s",
                 "data_time_s", "warmup_time_s", "target_time_s")
#: The largest count a confusion matrix may hold (no test set comes near it; int64 sums stay exact).
CONFUSION_MAX = 10 ** 12


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_values(entry: dict[str, Any], where: str) -> None:
    """Types and ranges of the known columns of a row or history entry (None and "" mean no value)."""
    for key, value in entry.items():
        if value is None or (value == "" and key not in _NAMES):
            continue
        if key in _NAMES or key in _TEXT or key == "cell_id":
            ok, want = isinstance(value, str), "a string"
        elif key in _COUNTS or key in ("seed", "epoch"):
            low = 1 if key == "epoch" else _COUNTS.get(key, 0)
            ok, want = _is_int(value) and (key == "seed" or value >= low), f"an integer >= {low}"
            want = "an integer" if key == "seed" else want
        elif key in _FRACTIONS:
            ok = _is_number(value) and (math.isnan(value) or 0 <= value <= 1)
            want = "a number from 0 to 1"
        elif key in _NUMBERS:
            ok, want = _is_number(value), "a number"
        elif key in _NON_NEGATIVE:
            ok, want = _is_number(value) and not value < 0, "a number >= 0"
        else:
            continue
        if not ok:
            raise _Damaged(f"{where}{key} is {excerpt(value)}, not {want}")


def _relative_file(value: Any, folder: str, where: str) -> None:
    """A path a record holds: relative, inside ``folder`` of the run directory, no ``..``."""
    if not isinstance(value, str) or not value:
        raise _Damaged(f"{where} is {excerpt(value)}, not a path")
    parts = value.replace("\\", "/").split("/")
    if value.startswith(("/", "\\")) or ":" in parts[0] or parts[0] != folder or len(parts) != 2 \
            or parts[1] in ("", ".", ".."):
        raise _Damaged(f"{where} is {excerpt(value)}, not a file in the run directory's {folder}/")


def check_record(record: dict[str, Any]) -> None:
    """Raise :class:`_Damaged` unless ``record`` has the shape ``bench run`` writes: a row naming its cell
    (model, loss, dataset, seed, status) with values of the right type and range, a list of history
    entries, a confusion matrix of counts, paths that stay inside the run directory."""
    row = record["row"]
    status = row.get("status")
    if status not in _STATUSES:
        raise _Damaged(f"its row has status {excerpt(status)}, not one of {', '.join(_STATUSES)}"
                       if status is not None else "its row has no status")
    for key in _NAMES:
        if not isinstance(row.get(key), str) or not row[key].strip():
            raise _Damaged(f"its row has no {key}" if row.get(key) in (None, "") else
                           f"row.{key} is {excerpt(row[key])}, not a name")
    if not _is_int(row.get("seed")):
        raise _Damaged("its row has no seed" if row.get("seed") is None else
                       f"row.seed is {excerpt(row['seed'])}, not an integer")
    _check_values(row, "row.")
    if row.get("params") not in (None, ""):
        try:
            params = json.loads(row["params"])
        except ValueError:
            params = None
        if not isinstance(params, dict):
            raise _Damaged(f"row.params is {excerpt(row['params'])}, not a JSON object")
    if row.get("weights"):
        _relative_file(row["weights"], "weights", "row.weights")
    if not _is_int(record.get("index", 0)) or record.get("index", 0) < 0:
        raise _Damaged(f"index is {excerpt(record['index'])}, not an integer >= 0")
    history = record.get("history", [])
    if not isinstance(history, list):
        raise _Damaged(f"history is {excerpt(history)}, not a list")
    for i, entry in enumerate(history):
        if not isinstance(entry, dict):
            raise _Damaged(f"history[{i}] is {excerpt(entry)}, not an object")
        _check_values(entry, f"history[{i}].")
    classes = record.get("classes", [])
    if not isinstance(classes, list) or not all(isinstance(c, (str, int)) for c in classes):
        raise _Damaged(f"classes is {excerpt(classes)}, not a list of class names")
    confusion = record.get("confusion")
    if confusion is not None:
        n = len(confusion) if isinstance(confusion, list) else -1
        if not (isinstance(confusion, list) and all(isinstance(r, list) and len(r) == n for r in confusion)):
            raise _Damaged(f"confusion is {excerpt(confusion)}, not a square matrix")
        if any(not _is_int(v) or not 0 <= v <= CONFUSION_MAX for r in confusion for v in r):
            bad = next(v for r in confusion for v in r if not _is_int(v) or not 0 <= v <= CONFUSION_MAX)
            raise _Damaged(f"confusion holds {excerpt(bad)}, not a count from 0 to {CONFUSION_MAX:.0e}")
    templates = record.get("templates")
    if templates is not None:
        if not isinstance(templates, dict) or not all(isinstance(v, str) for v in templates.values()):
            raise _Damaged(f"templates is {excerpt(templates)}, not an object of strings")
        if "path" in templates:
            _relative_file(templates["path"], "weights", "templates.path")
