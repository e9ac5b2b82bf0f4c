"""Reports over run directories: tables, comparative figures, per-cell figures and one HTML page.

Reports read only what a run directory holds (``results.csv``, ``history.csv``, ``env.json``,
``cells/ID.json``, ``weights/ID.templates.safetensors``); they never import plugins or rebuild
models, so a report can be made anywhere, from any run, long after it ran.
"""

from bench.reports.build import Report, build_report

__all__ = ["Report", "build_report"]
