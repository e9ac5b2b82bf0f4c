"""Where gridbench keeps files of its own outside run directories."""

from __future__ import annotations

from pathlib import Path


def default_data_dir() -> Path:
    """The cache for downloadable datasets: the platform's user cache folder, from ``platformdirs``
    (Linux: ``$XDG_CACHE_HOME/gridbench``, i.e. ``~/.cache/gridbench``; macOS:
    ``~/Library/Caches/gridbench``; Windows: ``%LOCALAPPDATA%\\gridbench\\Cache``)."""
    from platformdirs import user_cache_path

    return user_cache_path("gridbench", appauthor=False)
