"""Figures of a configuration or a cell, as small HTML: class templates and the confusion matrix.

They are drawn without matplotlib, because there is one per configuration (and, with ``--cell-figures``,
one per cell): a template is a palette PNG at the input's own resolution (a few hundred bytes), scaled
up by the browser without smoothing, with the class name as its caption; a confusion matrix is an HTML
table of counts shaded by their share of the row. Drawing both takes milliseconds.
"""

from __future__ import annotations

import base64
import io
import math
from html import escape

import numpy as np

#: Palette levels of the diverging template colormap (odd: zero is the middle level, white).
LEVELS = 63
#: Template tiles per row (2 x 5 for ten classes).
COLS = 5
#: Side of the longer edge of a template tile on the page, in CSS pixels.
TILE = 84
#: Confusion matrices with more classes than this are drawn as an image rather than a table of counts.
TABLE_CLASSES = 20
#: Off-diagonal shading is full at this share of the row (errors are rarer than hits).
ERROR_FULL = 0.10


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


def _palette(name: str) -> list[int]:
    from matplotlib import colormaps

    rgb = (colormaps[name](np.linspace(0.0, 1.0, LEVELS))[:, :3] * 255).round().astype(np.uint8)
    return rgb.ravel().tolist()


def png(levels: np.ndarray, palette: list[int]) -> bytes:
    """A palette PNG of a 2-D array of palette indices."""
    from PIL import Image

    image = Image.fromarray(np.ascontiguousarray(levels, dtype=np.uint8), mode="P")
    image.putpalette(palette)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def data_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def template_tiles(templates: np.ndarray) -> tuple[list[bytes], float]:
    """One palette PNG per class (RdBu_r, zero white, symmetric around zero) and the colour limit."""
    images = [as_image(np.asarray(t, dtype=np.float32)) for t in templates]
    limit = float(max(np.abs(im).max() for im in images)) if images else 0.0
    scale = limit or 1.0
    palette = _palette("RdBu_r")
    tiles = [png(np.clip(np.rint((im / scale + 1) / 2 * (LEVELS - 1)), 0, LEVELS - 1), palette) for im in images]
    return tiles, limit


def templates_html(templates: np.ndarray, classes: list[str], kind: str, note: str = "") -> str:
    """The class templates as a grid of tiles with the class names as captions, and their colour scale."""
    tiles, limit = template_tiles(templates)
    height, width = as_image(np.asarray(templates[0])).shape
    if width >= height:
        w, h = TILE, max(8, round(TILE * height / width))
    else:
        w, h = max(8, round(TILE * width / height)), TILE
    names = [str(classes[i]) if i < len(classes) else str(i) for i in range(len(tiles))]
    cells = "".join(f'<figure class="tile"><img src="{data_uri(t)}" width="{w}" height="{h}" alt="{escape(n)}">'
                    f"<figcaption>{escape(n)}</figcaption></figure>" for t, n in zip(tiles, names))
    what = "weights" if kind == "weights" else "input gradient: mean d logit_k / d input over class-k test images"
    scale = (f'<span class="scale"><span class="neg">−{limit:.3g}</span><span class="bar"></span>'
             f'<span class="pos">+{limit:.3g}</span></span>')
    return (f'<div class="templates"><p class="muted">class templates ({escape(what)}){escape(note)} '
            f'{scale}</p><div class="tiles" style="--cols: {min(len(tiles), COLS)}">{cells}</div></div>')


def confusion_html(confusion, classes: list[str], note: str = "") -> str:
    """Counts of true class (rows) against predicted class (columns); blue on the diagonal (correct),
    red off it (errors), each shaded by its share of the row."""
    matrix = np.asarray(confusion, dtype=np.int64)
    n = len(matrix)
    names = [str(c) for c in classes] if len(classes) == n else [str(i) for i in range(n)]
    total = int(matrix.sum())
    accuracy = np.trace(matrix) / total if total else math.nan
    caption = f"confusion matrix (test set{escape(note)}; accuracy {accuracy:.4f})"
    share = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    if n > TABLE_CLASSES:
        levels = np.where(np.eye(n, dtype=bool), share * (LEVELS - 1) / 2 + (LEVELS - 1) / 2,
                          (LEVELS - 1) / 2 - np.minimum(share / ERROR_FULL, 1) * (LEVELS - 1) / 2)
        image = png(np.rint(levels), _palette("RdBu"))
        size = max(160, min(4 * n, 480))
        return (f'<figure class="confusion"><img src="{data_uri(image)}" width="{size}" height="{size}" '
                f'alt="confusion matrix" class="pixels"><figcaption>{caption}: rows true, columns predicted'
                "</figcaption></figure>")
    head = "".join(f"<th>{escape(c)}</th>" for c in names)
    rows = []
    for i in range(n):
        cells = []
        for j in range(n):
            if i == j:
                level = min(9, int(share[i, j] * 10))
                cells.append(f'<td class="d{level}">{matrix[i, j]}</td>')
            elif matrix[i, j]:
                level = min(9, 1 + int(share[i, j] / ERROR_FULL * 9))
                cells.append(f'<td class="e{level}">{matrix[i, j]}</td>')
            else:
                cells.append("<td></td>")
        rows.append(f"<tr><th>{escape(names[i])}</th>{''.join(cells)}</tr>")
    return (f'<figure class="confusion"><table class="cm"><thead><tr><th class="corner">true \\ predicted</th>'
            f"{head}</tr></thead><tbody>{''.join(rows)}</tbody></table><figcaption>{caption}</figcaption></figure>")
