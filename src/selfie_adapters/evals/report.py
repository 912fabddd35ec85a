"""Report helpers for evals: table cells (``fmt``) and PNG heatmaps (matplotlib, imported lazily).

Tables are printed by the CLI (``cli/display.py``); Markdown reports format their cells here too.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

from ..errors import SelfieError
from ..files import save_figure


def fmt(v) -> str:
    """A table cell: floats to 3 decimals, None/NaN as a dash."""
    if isinstance(v, float):
        return "—" if not math.isfinite(v) else f"{v:.3f}"
    return "—" if v is None else str(v)


def save_heatmap(path: str | os.PathLike, values, *, row_labels: Sequence[str], col_labels: Sequence[str],
                 title: str = "", xlabel: str = "", ylabel: str = "", vmin: float = 0.0,
                 vmax: float = 1.0) -> Path:
    """Write a (rows × cols) heatmap PNG with the given tick labels (Agg backend, imported lazily)."""
    try:
        import matplotlib
    except ImportError:
        raise SelfieError("figures need matplotlib; install it with: pip install 'selfie-adapters[eval]'") from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n_rows, n_cols = len(row_labels), len(col_labels)
    fig, ax = plt.subplots(figsize=(max(4.0, 0.45 * n_cols + 2), max(3.0, 0.3 * n_rows + 1.5)))
    try:
        im = ax.imshow(values, aspect="auto", origin="lower", vmin=vmin, vmax=vmax, cmap="viridis")
        ax.set_xticks(range(n_cols), labels=list(col_labels), rotation=60, ha="right", fontsize=8)
        ax.set_yticks(range(n_rows), labels=list(row_labels), fontsize=8)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=10)
        fig.colorbar(im, ax=ax)
        fig.tight_layout()
        save_figure(fig, path, dpi=120)
    finally:
        plt.close(fig)
    return path
