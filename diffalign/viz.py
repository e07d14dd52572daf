"""Plots for experiments and notebooks (matplotlib is imported only when a plot is made)."""

from __future__ import annotations

import numpy as np


def _plt():
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ImportError("plots need matplotlib: pip install 'diffalign[experiments]'") from e
    return plt


def plot_2d(path: str, samples, reference=None, trajectories=None, source=None, title: str = "") -> str:
    """Scatter of 2-D samples beside the reference set, and sampled trajectories if given.

    ``trajectories`` has shape (T, N, 2), ordered from source (T = 0) to data.
    """
    plt = _plt()
    panels = [p for p in (reference, samples, trajectories) if p is not None]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.0 * len(panels), 3.6), squeeze=False)
    axes = axes[0]
    everything = [np.asarray(samples)] + ([np.asarray(reference)] if reference is not None else [])
    if trajectories is not None:
        everything.append(np.asarray(trajectories).reshape(-1, 2))
    lim = _limits(everything)
    i = 0
    if reference is not None:
        axes[i].scatter(*np.asarray(reference).T, s=1, alpha=0.3, c="tab:gray")
        axes[i].set_title(f"reference ({len(reference)})")
        i += 1
    axes[i].scatter(*np.asarray(samples).T, s=1, alpha=0.3, c="tab:blue")
    axes[i].set_title(f"samples ({len(samples)})")
    i += 1
    if trajectories is not None:
        tr = np.asarray(trajectories)
        axes[i].plot(tr[:, :, 0], tr[:, :, 1], c="olive", alpha=0.15, lw=0.6)
        axes[i].scatter(*tr[0].T, s=3, c="black", label="source")
        axes[i].scatter(*tr[-1].T, s=3, c="tab:blue", label="sample")
        axes[i].legend(loc="upper right", fontsize=8)
        axes[i].set_title("trajectories")
    for ax in axes:
        ax.set_xlim(*lim[0])
        ax.set_ylim(*lim[1])
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _limits(arrays):
    x = np.concatenate([a[np.isfinite(a).all(1)] for a in arrays])
    lo, hi = np.percentile(x, 0.5, axis=0), np.percentile(x, 99.5, axis=0)
    pad = 0.1 * (hi - lo)
    return (lo[0] - pad[0], hi[0] + pad[0]), (lo[1] - pad[1], hi[1] + pad[1])


def image_grid(path: str, images, *, rows: int, title: str = "", row_labels=None, vmax: float | None = None) -> str:
    """Save a grid of grayscale images (N, H, W) with ``rows`` rows."""
    plt = _plt()
    images = np.asarray(images)
    n = len(images)
    cols = int(np.ceil(n / rows))
    fig, axes = plt.subplots(rows, cols, figsize=(0.6 * cols + 0.8, 0.6 * rows + 0.4), squeeze=False)
    for idx, ax in enumerate(axes.ravel()):
        ax.set_xticks([])
        ax.set_yticks([])
        for s in ax.spines.values():
            s.set_visible(False)
        if idx < n:
            ax.imshow(images[idx], cmap="gray_r", vmin=0, vmax=vmax if vmax is not None else images.max())
    if row_labels is not None:
        for r, label in enumerate(row_labels):
            axes[r, 0].set_ylabel(str(label), rotation=0, labelpad=10, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
