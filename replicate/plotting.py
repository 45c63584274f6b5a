"""One figure style for every paper: axes grids, log-spaced bins, grouped bars, per-seed curves with their mean.

Figures are pure functions of tidy frames (DESIGN.md §2); they build on these helpers so every paper's plots look
alike and the binning or seed display is written once. matplotlib is imported on first use (configs and the CLI
never pay for it).
"""

from __future__ import annotations

import numpy as np

STYLE = {"axes.spines.top": False, "axes.spines.right": False, "axes.grid": True, "grid.alpha": 0.25,
         "legend.frameon": False, "legend.fontsize": 7, "font.size": 9}


def axes(n: int = 1, w: float = 5.0, h: float = 3.6, rows: int = 1):
    """A figure with ``rows`` x ``n`` panels of ``w`` x ``h`` inches in the project style; returns (fig, flat
    list of axes)."""
    import matplotlib.pyplot as plt

    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(rows, n, figsize=(w * n, h * rows), squeeze=False)
    for a in ax.flat:  # rc_context only lasts while the axes are created; keep the look on the objects
        a.spines["top"].set_visible(False)
        a.spines["right"].set_visible(False)
        a.grid(True, alpha=STYLE["grid.alpha"])
    return fig, list(ax.flat)


def finish(fig):
    """Tight layout; returns the figure (what ``Results.figure`` expects)."""
    fig.tight_layout()
    return fig


def log_bins(x, y, n_bins: int = 40):
    """Means of ``y`` over contiguous, log-spaced bins of the (sorted) points ``x`` (positions 1..n): the first
    points stay single, later bins grow geometrically. Returns (x_means, y_means)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    starts = np.unique(np.geomspace(1, len(x), n_bins).astype(int)) - 1
    edges = np.append(starts, len(x))
    return (np.array([x[a:b].mean() for a, b in zip(edges[:-1], edges[1:])]),
            np.array([y[a:b].mean() for a, b in zip(edges[:-1], edges[1:])]))


def grouped_bars(ax, table, xlabels=None, log: bool = False):
    """One bar group per row of ``table`` (a DataFrame: index = x categories, one column per series)."""
    width = 0.8 / max(1, table.shape[1])
    x = np.arange(len(table.index))
    for i, col in enumerate(table.columns):
        ax.bar(x + i * width - 0.4 + width / 2, table[col].to_numpy(dtype=float), width, label=str(col))
    ax.set_xticks(x, xlabels if xlabels is not None else [str(v) for v in table.index])
    if log:
        ax.set_yscale("log")
    ax.legend()
    return ax


def seed_curves(ax, frame, x: str, y: str, group: str, seed: str = "seed", labels: dict | None = None,
                scale_x: float = 1.0):
    """Each seed of each ``group`` as faint points and the seed mean (at each distinct ``step``-like x) as a line:
    the spread is visible, a single seed cannot pass for a trend."""
    for i, (g, d) in enumerate(frame.groupby(group, sort=False)):
        color = f"C{i}"
        ax.plot(d[x] * scale_x, d[y], "o", ms=3, color=color, alpha=0.45)
        m = d.groupby(d.groupby(seed).cumcount()).agg(x=(x, "mean"), y=(y, "mean")).sort_values("x")
        n = d[seed].nunique()
        ax.plot(m["x"] * scale_x, m["y"], "-", color=color,
                label=f"{(labels or {}).get(g, g)} (mean of {n} seed{'s' if n > 1 else ''})")
    ax.legend()
    return ax
