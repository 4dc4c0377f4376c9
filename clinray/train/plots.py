"""Loss per mixture source against tokens seen (the paper's Figure 1) as a PNG, from ``metrics.jsonl``.

Plotting reads the metrics file rather than the live run, so it works on a finished, resumed or
running run alike; the trade-off is that it only sees what was logged (every ``log_every`` steps).
"""

from __future__ import annotations

from pathlib import Path

from clinray.plotting import pyplot, save_figure
from clinray.train.metrics import read_metrics


def plot_loss_per_source(
    metrics_path: str | Path, out: str | Path, *, title: str = "Loss per source"
) -> Path:
    """Draw ``loss_<source>`` and ``loss`` against ``tokens_seen``; return the PNG path."""
    plt = pyplot()

    rows = read_metrics(metrics_path)
    if not rows:
        raise ValueError(f"{metrics_path} holds no metrics rows to plot")
    keys = sorted({k for row in rows for k in row if k.startswith("loss_")})
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    for key in keys:
        pts = [(r["tokens_seen"], r[key]) for r in rows if r.get(key) is not None]
        if pts:
            ax.plot(*zip(*pts), label=key.removeprefix("loss_"))
    ax.plot(
        [r["tokens_seen"] for r in rows],
        [r["loss"] for r in rows],
        label="all",
        color="black",
        lw=0.8,
        ls="--",
    )
    ax.set_xlabel("tokens seen")
    ax.set_ylabel("cross-entropy loss")
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    return save_figure(fig, out)
