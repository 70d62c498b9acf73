"""The validation-error picture of :class:`~lightning_online.StudyMonitor`: per-run error against
each parameter over a histogram of the launched runs (one count scale, a legend), and a map of the
error over the two parameters that vary it most.

Where code runs: rank 0's training thread, after a validation (matplotlib's object API, no pyplot).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from lightning_online.sampling.samplers import ParameterSpace

__all__ = ["plot_validation_error"]


def plot_validation_error(
    theta: np.ndarray,
    loss: np.ndarray,
    space: ParameterSpace,
    *,
    launched: np.ndarray | None = None,
    title: str = "validation error per run",
    max_dims: int = 8,
) -> Any:
    """A matplotlib ``Figure``: per-run validation error against each parameter, and where it
    is large.

    One panel per parameter (the first ``max_dims``): each validation run is a dot at its
    parameter value and error (log axes for log parameters and for the error when it is
    positive), over a light histogram of the launched runs' parameters (right axis: runs, one
    integer scale shared by every panel), which shows where in parameter space the study went;
    a legend says which is which. With two or more parameters, a last panel maps the error
    over the two parameters that explain most of its variation (:func:`_most_telling`),
    interpolated between the validation runs (coloured dots, the colour bar gives the error),
    with the launched runs overlaid (grey crosses). Needs matplotlib (pyplot is not used).
    """
    from matplotlib.figure import Figure  # optional dependency: the `plot` extra
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch
    from matplotlib.ticker import MaxNLocator

    theta = np.atleast_2d(np.asarray(theta, dtype=np.float64))
    loss = np.asarray(loss, dtype=np.float64)
    d = min(space.dim, max_dims)
    ok = np.isfinite(loss)
    has_map = space.dim >= 2 and int(ok.sum()) >= 2
    fig = Figure(figsize=(2.8 * d + (4.2 if has_map else 0.0), 3.4), layout="constrained")
    ratios = [1.0] * d + ([1.5] if has_map else [])
    panels = fig.subplots(1, len(ratios), squeeze=False, width_ratios=ratios)[0]
    axes = list(panels[:d])
    for ax in axes[1:]:
        ax.sharey(axes[0])
    positive = bool(ok.any() and np.all(loss[ok] > 0))
    have_runs = launched is not None and len(launched) > 0
    # One count scale for every panel: the largest bar of any, in the lower half.
    bins: list[np.ndarray] = []
    top = 1.0
    for i in range(d):
        lo, hi = float(space.low[i]), float(space.high[i])
        edges = (
            np.logspace(np.log10(lo), np.log10(hi), 21) if space.log[i] else np.linspace(lo, hi, 21)
        )
        bins.append(edges)
        if have_runs:
            assert launched is not None
            top = max(top, float(np.histogram(launched[:, i], bins=edges)[0].max(initial=0)))
    for i, ax in enumerate(axes):
        lo, hi = float(space.low[i]), float(space.high[i])
        is_log = bool(space.log[i])
        if have_runs:
            assert launched is not None
            twin = ax.twinx()
            twin.hist(launched[:, i], bins=bins[i], color="0.85", zorder=0)
            twin.set_ylim(0, 2.0 * top)  # bars in the lower half
            twin.yaxis.set_major_locator(MaxNLocator(integer=True, nbins=4))
            twin.tick_params(axis="y", colors="0.45", labelsize=7)
            if i == d - 1:
                twin.set_ylabel("runs launched", color="0.45")
            else:
                twin.tick_params(axis="y", labelright=False)
            ax.set_zorder(twin.get_zorder() + 1)
            ax.patch.set_visible(False)
        ax.scatter(theta[ok, i], loss[ok], s=18, c="C0", edgecolors="k", linewidths=0.3)
        if is_log:
            ax.set_xscale("log")
        if positive:
            ax.set_yscale("log")
        ax.set_xlim(lo, hi)
        ax.set_xlabel(space.names[i] + (" (log)" if is_log else ""))
        ax.tick_params(labelsize=7)
        if i:
            ax.tick_params(axis="y", labelleft=False)
    axes[0].set_ylabel("validation error (per run)")
    handles: list[Any] = [
        Line2D(
            [], [], marker="o", ls="", mfc="C0", mec="k", mew=0.3, label="validation run: its error"
        )
    ]
    if have_runs:
        handles.append(Patch(color="0.85", label="runs launched (right axis)"))
    if has_map:
        handles.append(
            Line2D([], [], marker="x", ls="", color="0.35", label="a launched run (map)")
        )
        _error_map(panels[-1], theta[ok], loss[ok], space, launched, positive, fig)
    fig.legend(
        handles=handles, loc="outside lower center", ncols=len(handles), fontsize=7, frameon=False
    )
    fig.suptitle(title, fontsize=9)
    return fig


def _most_telling(theta: np.ndarray, values: np.ndarray, space: ParameterSpace) -> list[int]:
    """The two parameters along which ``values`` vary most: ranked by the share of their
    variance that the mean over thirds of each parameter's range explains (a correlation
    ratio, which sees a bump as well as a slope); ties keep the parameters' order."""
    scores = []
    total = float(np.var(values))
    for i in range(space.dim):
        lo, hi = float(space.low[i]), float(space.high[i])
        x = theta[:, i]
        if space.log[i]:
            x, lo, hi = np.log(x), math.log(lo), math.log(hi)
        cut = np.clip(((x - lo) / max(hi - lo, 1e-300) * 3).astype(int), 0, 2)
        between = sum(
            (cut == k).sum() * (values[cut == k].mean() - values.mean()) ** 2
            for k in range(3)
            if (cut == k).any()
        )
        scores.append(between / (len(values) * total) if total > 0 else 0.0)
    order = sorted(range(space.dim), key=lambda i: (-scores[i], i))
    return order[:2]


def _error_map(
    ax: Any,
    theta: np.ndarray,
    loss: np.ndarray,
    space: ParameterSpace,
    launched: np.ndarray | None,
    positive: bool,
    fig: Any,
) -> None:
    """The error over two parameters (see :func:`plot_validation_error`) on ``ax``."""
    from matplotlib.colors import LogNorm, Normalize
    from matplotlib.tri import Triangulation

    values = np.log10(loss) if positive else loss
    i, j = _most_telling(theta, values, space)
    x, y = theta[:, i], theta[:, j]
    norm = LogNorm(loss.min(), loss.max()) if positive and loss.max() > loss.min() else Normalize()
    try:
        tri = Triangulation(np.log(x) if space.log[i] else x, np.log(y) if space.log[j] else y)
        tri = Triangulation(x, y, tri.triangles)  # the triangles of the (log) plane
        if len(tri.triangles):
            levels = (
                np.logspace(np.log10(loss.min()), np.log10(loss.max()), 12)
                if isinstance(norm, LogNorm)
                else 12
            )
            ax.tricontourf(tri, loss, levels=levels, norm=norm, cmap="viridis", alpha=0.85)
    except (ValueError, RuntimeError):  # too few points, or all on a line: dots only
        pass
    dots = ax.scatter(
        x, y, c=loss, norm=norm, cmap="viridis", s=26, edgecolors="k", linewidths=0.5, zorder=3
    )
    if launched is not None and len(launched):
        ax.scatter(
            launched[:, i], launched[:, j], marker="x", s=10, c="0.35", linewidths=0.6, zorder=2
        )
    for axis, k in ((ax.xaxis, i), (ax.yaxis, j)):
        if space.log[k]:
            (ax.set_xscale if axis is ax.xaxis else ax.set_yscale)("log")
    ax.set_xlim(float(space.low[i]), float(space.high[i]))
    ax.set_ylim(float(space.low[j]), float(space.high[j]))
    ax.set_xlabel(space.names[i] + (" (log)" if space.log[i] else ""))
    ax.set_ylabel(space.names[j] + (" (log)" if space.log[j] else ""), fontsize=8)
    ax.tick_params(labelsize=7)
    ax.set_title(f"error over {space.names[i]} and {space.names[j]}", fontsize=8)
    bar = fig.colorbar(dots, ax=ax, shrink=0.9)  # the dots' scale: plain log ticks
    bar.set_label("validation error", fontsize=7)
    bar.ax.tick_params(labelsize=7)
