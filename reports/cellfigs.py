"""Figures of one cell: its class templates and its confusion matrix."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from reports.figures import plt, save, sns, text

COLS = 5


def as_image(template: np.ndarray) -> np.ndarray:
    """A 2-D picture of one class template of any input shape.

    ``(H, W)`` and ``(1, H, W)`` are drawn as they are; ``(C, H, W)`` as the channel mean;
    anything else as one row of its flattened values.
    """
    if template.ndim == 2:
        return template
    if template.ndim == 3:
        return template.mean(axis=0)
    return template.reshape(1, -1)


def templates_figure(templates: np.ndarray, classes: list[str], kind: str, title: str, path: Path) -> Path:
    """One panel per class (2x5 for ten), a diverging colormap centred at zero, class names as titles."""
    n = len(templates)
    cols = min(n, COLS)
    rows = math.ceil(n / cols)
    images = [as_image(np.asarray(t, dtype=np.float32)) for t in templates]
    limit = float(max(np.abs(im).max() for im in images)) or 1.0
    aspect = images[0].shape[1] / images[0].shape[0]
    panel = 2.0
    fig, axes = plt.subplots(rows, cols, figsize=(panel * cols * min(aspect, 3) + 1.2, panel * rows + 0.9),
                             squeeze=False, layout="constrained")
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= n:
            continue
        shown = ax.imshow(images[i], cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest",
                          aspect="auto" if images[i].shape[0] == 1 else "equal")
        ax.set_title(text(classes[i]) if i < len(classes) else str(i), fontsize=12)
    fig.colorbar(shown, ax=axes.ravel().tolist(), shrink=0.8,
                 label="weight" if kind == "weights" else "d logit / d input")
    what = "weights" if kind == "weights" else "input gradient: mean d logit_k / d input over class-k test images"
    fig.suptitle(f"{text(title)}\nclass templates ({what})", fontsize=12)
    return save(fig, path)


def confusion_figure(confusion: list[list[int]], classes: list[str], title: str, path: Path) -> Path:
    """Counts of true class (rows) against predicted class (columns); the diagonal is correct."""
    matrix = np.asarray(confusion, dtype=np.int64)
    n = len(matrix)
    names = [text(c) for c in classes] if len(classes) == n else [str(i) for i in range(n)]
    size = max(4.5, 0.5 * n + 2.5)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    sns.heatmap(matrix, annot=n <= 20, fmt="d", cmap="Blues", square=True, cbar_kws={"label": "test images"},
                xticklabels=names, yticklabels=names, ax=ax, annot_kws={"fontsize": 8})
    total = matrix.sum()
    accuracy = np.trace(matrix) / total if total else float("nan")
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.tick_params(axis="y", rotation=0)
    ax.set_title(f"{text(title)}\nconfusion matrix (test accuracy {accuracy:.4f})", fontsize=11)
    return save(fig, path)

