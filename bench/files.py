"""Untrusted files: bounded reads, paths kept inside their directory, short quotes of bad values.

Everything gridbench reads back (cell records, ``env.json``, study files, a report's ``cells.csv``)
may have been edited, damaged or planted: a multi-GB file, a device (``/dev/zero``), a FIFO, a
symlink (or a ``../..`` path in a record) pointing out of the run directory. The helpers here make each
of those one :class:`BenchError` instead of a hang, an exhausted memory or a read outside the directory.
"""

from __future__ import annotations

import os
import reprlib
import stat
from pathlib import Path

from bench.errors import BenchError

MiB = 1 << 20
#: The most bytes gridbench reads from each kind of file (far above anything it writes itself).
STUDY_MAX = 1 * MiB
RECORD_MAX = 64 * MiB
ENV_MAX = 64 * MiB
TABLE_MAX = 1024 * MiB
#: The most values (mappings, lists and scalars, counted as expanded) a study may hold: YAML aliases
#: can make a 1.5 KB file stand for billions of values.
STUDY_VALUES_MAX = 100_000


class Refused(BenchError):
    """A file that is not read: ``reason`` says why (not a regular file, too large, outside its directory)."""

    def __init__(self, path: Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = path, reason


def _size(n: int) -> str:
    return f"{n / MiB:g} MiB" if n >= MiB else f"{n} bytes"


def read_bounded(path: Path | str, limit: int) -> bytes:
    """The bytes of the regular file ``path``, at most ``limit`` of them.

    A device, FIFO, socket or folder is refused without reading it (opened non-blocking, so a FIFO
    with no writer never hangs), and so is a file larger than ``limit``. Other ``OSError`` s propagate.
    """
    path = Path(path)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_BINARY", 0)
    fd = os.open(path, flags)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise Refused(path, "not a regular file (a device, FIFO, socket or folder): refused")
        if info.st_size > limit:
            raise Refused(path, f"{_size(info.st_size)}, larger than the {_size(limit)} gridbench reads from it")
        chunks, left = [], limit + 1
        while left > 0:
            chunk = os.read(fd, min(left, MiB))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        data = b"".join(chunks)
        if len(data) > limit:  # it grew while being read
            raise Refused(path, f"larger than the {_size(limit)} gridbench reads from it")
        return data
    finally:
        os.close(fd)


def inside(root: Path | str, path: Path | str, what: str = "") -> Path:
    """``path`` resolved (symlinks followed), refused unless it lies inside ``root`` (resolved too).

    A relative ``path`` is taken relative to ``root``; ``what`` names it in the message.
    """
    base = Path(root).resolve()
    target = (base / path).resolve()
    if target != base and not target.is_relative_to(base):
        raise Refused(Path(root) / path, f"{what + ' ' if what else ''}resolves to {target}, outside {base}: refused")
    return target


def check_folder(root: Path | str, name: str) -> Path:
    """The folder ``root/name`` (e.g. ``cells``), refused if it is a symlink or resolves outside ``root``,
    so that nothing is read or written through it elsewhere."""
    folder = Path(root) / name
    if folder.is_symlink():
        raise Refused(folder, f"a symlink (to {os.readlink(folder)}): gridbench reads and writes only inside the "
                              f"run directory; make {name}/ a real folder")
    inside(root, name, f"{name}/")
    return folder


def enclosing(path: Path | str, test) -> Path | None:
    """The nearest existing folder at or above ``path`` (resolved) for which ``test(folder)`` is true."""
    current = Path(path).resolve()
    for folder in (current, *current.parents):
        if folder.is_dir() and test(folder):
            return folder
    return None


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother = 3, 60, 60
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = 6


def excerpt(value: object) -> str:
    """A short ``repr`` of ``value`` for an error message (at most ~200 characters, whatever its size)."""
    text = _REPR.repr(value)
    return text if len(text) <= 200 else text[:197] + "..."


def count_values(data: object, limit: int) -> int:
    """How many values ``data`` holds, counting shared (YAML alias) values each time they appear; stops
    and returns ``limit + 1`` as soon as there are more than ``limit`` (a recursive structure too)."""
    count, stack = 0, [data]
    while stack:
        value = stack.pop()
        count += 1
        if count > limit:
            return count
        if isinstance(value, dict):
            stack.extend(value.keys())
            stack.extend(value.values())
        elif isinstance(value, (list, tuple)):
            stack.extend(value)
    return count
