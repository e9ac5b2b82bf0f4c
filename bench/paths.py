"""Where gridbench keeps files of its own outside run directories."""

from __future__ import annotations

import os
from pathlib import Path

#: The environment variable that chooses the cache for downloadable datasets (CLI and ``bench.run`` alike).
DATA_DIR_VARIABLE = "BENCH_DATA_DIR"


def platform_data_dir() -> Path:
    """The platform's user cache folder, from ``platformdirs`` (Linux: ``$XDG_CACHE_HOME/gridbench``, i.e.
    ``~/.cache/gridbench``; macOS: ``~/Library/Caches/gridbench``; Windows: ``%LOCALAPPDATA%\\gridbench\\Cache``)."""
    from platformdirs import user_cache_path

    return user_cache_path("gridbench", appauthor=False)


def default_data_dir() -> Path:
    """The cache for downloadable datasets: ``$BENCH_DATA_DIR`` where set, else :func:`platform_data_dir`.
    ``bench run`` and ``bench.run`` both use it when no data folder is given."""
    chosen = os.environ.get(DATA_DIR_VARIABLE)
    return Path(chosen).expanduser() if chosen else platform_data_dir()
