"""The two halves every clinray chart shares: a headless pyplot, and writing the PNG.

matplotlib is imported on first use (plots are a side product of runs, not worth its import time at
start-up), with the Agg backend so charts render on nodes without a display.
"""

from __future__ import annotations

from pathlib import Path


def pyplot():
    """``matplotlib.pyplot`` on the headless Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | Path, *, dpi: float | None = None) -> Path:
    """Lay out ``fig``, write it to ``path`` (parent folders created), close it; return the path."""
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    pyplot().close(fig)
    return path
