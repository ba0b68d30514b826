"""Figures a person would rather look at than read: datasets, tracking results, comparisons.

Every function writes a PNG with the non-interactive Agg backend and returns its path.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ddcontrol.data.dataset import TrajectoryDataset


def _figure(rows: int, cols: int = 1, width: float = 7.0, height_per_row: float = 2.0):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height_per_row * rows + 0.6), dpi=110)
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False)
    return fig, axes


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path)
    return path


def plot_dataset(dataset: TrajectoryDataset, path: str | Path, num_trajectories: int = 8) -> Path:
    """Inputs and outputs of the first ``num_trajectories`` trajectories against time (s)."""
    names_u = dataset.metadata.get("input_names") or [f"u{i}" for i in range(dataset.input_dim)]
    names_y = dataset.metadata.get("output_names") or [f"y{i}" for i in range(dataset.output_dim)]
    rows = dataset.input_dim + dataset.output_dim
    fig, axes = _figure(rows)
    t = np.arange(dataset.length) * dataset.dt
    k = min(num_trajectories, dataset.num_trajectories)
    for c in range(rows):
        ax = axes[c, 0]
        data = dataset.u[:k, :, c] if c < dataset.input_dim else \
            dataset.y[:k, :, c - dataset.input_dim]
        ax.plot(t, data.T, lw=0.9)
        ax.set_ylabel(names_u[c] if c < dataset.input_dim else names_y[c - dataset.input_dim])
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("time [s]")
    axes[0, 0].set_title(f"{dataset.metadata.get('env_id', 'dataset')}: {k} of "
                         f"{dataset.num_trajectories} trajectories "
                         f"({dataset.metadata.get('excitation', '?')} excitation)")
    return _save(fig, path)


def plot_tracking(t: np.ndarray, reference: np.ndarray, outputs: Mapping[str, np.ndarray],
                  path: str | Path, channel_names: Sequence[str] | None = None,
                  title: str = "", shade_until: float | None = None,
                  markers: Mapping[str, Sequence[int]] | None = None) -> Path:
    """Tracked outputs of several runs against the reference.

    Parameters
    ----------
    t : ndarray, shape (T,)
        Time in seconds.
    reference : ndarray, shape (T, q)
        Reference of the q tracked channels.
    outputs : mapping name -> ndarray (T', q)
        Each run's tracked outputs (T' ≤ T allowed, e.g. a failed run).
    shade_until : float, optional
        Grey out ``t < shade_until`` (s): the warm-up that is not scored.
    markers : mapping name -> sample indices, optional
        Samples of a run to mark on its curve (red crosses): the steps a controller flagged as
        out of its data's distribution.
    """
    q = reference.shape[1]
    fig, axes = _figure(q)
    for c in range(q):
        ax = axes[c, 0]
        if shade_until:
            ax.axvspan(t[0], shade_until, color="0.92", lw=0, label="warm-up" if c == 0 else None)
        ax.plot(t, reference[:, c], "k--", lw=1.6, label="reference")
        for name, y in outputs.items():
            y = np.asarray(y)
            ax.plot(t[: len(y)], y[:, c], lw=1.2, label=name)
            idx = [k for k in (markers or {}).get(name) or () if 0 <= k < len(y)]
            if idx:
                ax.plot(t[idx], y[idx, c], "x", color="red", ms=4, mew=1.0,
                        label=f"{name}: flagged step" if c == 0 else None)
        ax.set_ylabel(channel_names[c] if channel_names else f"y{c}")
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=7, ncol=3, loc="best")
    axes[-1, 0].set_xlabel("time [s]")
    if title:
        axes[0, 0].set_title(title)
    return _save(fig, path)


def plot_series(series: Mapping[str, np.ndarray], path: str | Path, xlabel: str, ylabel: str,
                title: str = "", logy: bool = False, x: Mapping[str, np.ndarray] | None = None
                ) -> Path:
    """One panel of named curves (e.g. loss per step, cost per iteration, solve time per step)."""
    fig, axes = _figure(1, height_per_row=3.0)
    ax = axes[0, 0]
    for name, values in series.items():
        values = np.asarray(values, dtype=float)
        xs = np.asarray(x[name]) if x is not None and name in x else np.arange(len(values))
        if values.ndim == 2:  # several channels: one line each
            for c in range(values.shape[1]):
                ax.plot(xs, values[:, c], lw=1.1, label=f"{name}[{c}]")
        else:
            ax.plot(xs, values, lw=1.2, label=name)
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    if title:
        ax.set_title(title)
    return _save(fig, path)
