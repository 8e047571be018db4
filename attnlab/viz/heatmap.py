"""Attention heatmaps with matplotlib.

Rows are queries (the token that attends), columns are keys (the token attended to), so
row ``i`` reads as "where token ``i`` looks". The figure is built with matplotlib's
object API and the Agg canvas: it never opens a window, never touches ``pyplot``'s global
state, and works on a machine without a display.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence

from .._io import atomic_path

__all__ = ["plot_attention", "save_figure"]

# Annotate every cell with its value up to this many cells per panel; beyond it the
# numbers no longer fit and only the colours are drawn.
_ANNOTATE_MAX_CELLS = 24 * 24
_MAX_GRID_COLS = 4


def _as_array(weights):
    import numpy as np

    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        torch = None
    if torch is not None and isinstance(weights, torch.Tensor):
        weights = weights.detach().to("cpu", torch.float64).numpy()
    arr = np.asarray(weights)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise TypeError(f"weights must be a real-valued tensor or array, got dtype {arr.dtype}")
    return arr.astype(np.float64)


def _check_labels(labels, name: str, expected: int, axis_desc: str, shape) -> list[str]:
    if labels is None:
        return [str(i) for i in range(expected)]
    if isinstance(labels, str):
        raise TypeError(f"{name} must be a sequence of labels (one per {axis_desc}), not a single string")
    labels = [str(s) for s in labels]
    if len(labels) != expected:
        raise ValueError(
            f"{name} has {len(labels)} labels but weights has {expected} {axis_desc}s "
            f"(weights shape {tuple(int(s) for s in shape)})"
        )
    return labels


def plot_attention(
    weights,
    row_labels: Sequence[str] | None = None,
    col_labels: Sequence[str] | None = None,
    title: str | None = None,
    path: str | os.PathLike | None = None,
    ax=None,
    *,
    head_titles: Sequence[str] | None = None,
    annotate: bool | None = None,
    cmap: str = "viridis",
    vmax: float | None = None,
):
    """Draw attention weights as a heatmap, one panel per head.

    Args:
        weights: attention weights, a torch tensor or array-like; rows are queries and
            columns keys. Each panel uses the same colour scale (0 to the largest weight,
            or ``vmax``) so panels can be compared.
        row_labels: one label per query (row); default ``0 .. Tq-1``.
        col_labels: one label per key (column); default ``0 .. Tk-1``.
        title: the panel's title for 2-D weights; the figure's title above the grid for 3-D.
        path: when given, the figure is saved there (format from the suffix, PNG by
            default), atomically: a temporary file in the same folder is renamed over it.
        ax: a matplotlib Axes to draw a single head into (2-D weights only).
        head_titles: one title per head (3-D weights); default ``head 0``, ``head 1``...
        annotate: print each cell's value; default: when a panel has at most 576 cells.
        cmap: a matplotlib colormap name.
        vmax: top of the colour scale (default: the largest weight).

    Shape:
        weights ``(Tq, Tk)`` or ``(H, Tq, Tk)``; H heads are laid out in a grid of at
        most 4 columns.

    Returns:
        The :class:`matplotlib.figure.Figure` (the one holding ``ax`` when given).

    Raises:
        ValueError: weights is not 2-D or 3-D, is empty, or a label count does not match.
        TypeError: weights is not numeric, or labels is a string.
    """
    import numpy as np
    from matplotlib.figure import Figure

    arr = _as_array(weights)
    if arr.ndim not in (2, 3):
        raise ValueError(f"weights must have shape (Tq, Tk) or (H, Tq, Tk), got shape {arr.shape}")
    if 0 in arr.shape:
        raise ValueError(f"weights must not be empty, got shape {arr.shape}")
    shape = arr.shape
    heads = arr if arr.ndim == 3 else arr[None]  # (H, Tq, Tk)
    H, Tq, Tk = heads.shape
    rows = _check_labels(row_labels, "row_labels", Tq, "query row", shape)
    cols = _check_labels(col_labels, "col_labels", Tk, "key column", shape)
    if head_titles is not None:
        head_titles = [str(t) for t in head_titles]
        if len(head_titles) != H:
            raise ValueError(f"head_titles has {len(head_titles)} titles but weights has {H} heads (shape {shape})")
    elif arr.ndim == 3:
        head_titles = [f"head {h}" for h in range(H)]
    if ax is not None and arr.ndim == 3:
        raise ValueError(
            f"ax draws one head, but weights has shape {shape}; pass 2-D weights (Tq, Tk), "
            "or leave ax out to get a grid of heads"
        )
    if not np.isfinite(heads).all():
        raise ValueError("weights contains NaN or infinite values")
    if annotate is None:
        annotate = Tq * Tk <= _ANNOTATE_MAX_CELLS

    lo = min(0.0, float(heads.min()))
    hi = float(heads.max()) if vmax is None else float(vmax)
    if hi <= lo:
        hi = lo + 1.0

    if ax is not None:
        fig = ax.figure
        axes = [ax]
    else:
        ncols = min(H, _MAX_GRID_COLS)
        nrows = math.ceil(H / ncols)
        # ~0.42 inch per token keeps labels and 2-decimal annotations legible.
        cell = 0.42 if annotate else 0.25
        panel_w = max(3.5, 1.4 + cell * Tk)
        panel_h = max(3.0, 1.2 + cell * Tq)
        fig = Figure(figsize=(panel_w * ncols + 1.2, panel_h * nrows + (0.6 if title else 0.2)), layout="constrained")
        grid = fig.subplots(nrows, ncols, squeeze=False)
        axes = list(grid.ravel())
        for extra in axes[H:]:
            extra.set_visible(False)

    image = None
    for h in range(H):
        a = axes[h]
        w = heads[h]  # (Tq, Tk)
        image = a.imshow(w, cmap=cmap, vmin=lo, vmax=hi, aspect="auto", interpolation="nearest")
        a.set_xticks(range(Tk), labels=cols, rotation=60, ha="right", rotation_mode="anchor")
        a.set_yticks(range(Tq), labels=rows)
        a.set_xlabel("key (attended to)")
        if ax is not None or h % _MAX_GRID_COLS == 0:
            a.set_ylabel("query (attending)")
        if head_titles is not None:
            a.set_title(head_titles[h], fontsize="medium")
        elif title is not None:  # one head: its panel carries the title
            a.set_title(title)
        if annotate:
            fontsize = 7 if max(Tq, Tk) > 14 else 8
            mid = lo + 0.6 * (hi - lo)
            for i in range(Tq):
                for j in range(Tk):
                    # Light text on the dark low end of the colormap, dark text on the bright top.
                    color = "black" if w[i, j] > mid else "white"
                    a.text(j, i, f"{w[i, j]:.2f}", ha="center", va="center", fontsize=fontsize, color=color)
    colorbar_axes = axes[0] if ax is not None else axes[:H]
    fig.colorbar(image, ax=colorbar_axes, label="attention weight", shrink=0.9)
    if title is not None and arr.ndim == 3:
        fig.suptitle(title)
    if path is not None:
        save_figure(fig, path)
    return fig


def save_figure(fig, path: str | os.PathLike, *, dpi: int = 150) -> Path:
    """Save ``fig`` to ``path`` atomically: write a temporary file beside it, then rename.

    A reader never sees a half-written image, and a failed save leaves an existing file
    untouched. The format comes from the suffix (``.png``, ``.svg``, ``.pdf``); PNG when
    there is none.

    Raises:
        FileNotFoundError: the folder of ``path`` does not exist.
    """
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise FileNotFoundError(f"cannot save the figure to {str(path)!r}: folder {str(folder)!r} does not exist")
    fmt = path.suffix[1:].lower() or "png"
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=fmt, dpi=dpi)
    return path
