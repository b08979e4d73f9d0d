"""The figure of one run: loss and error curves, real against each predictor, with the 5-95%
band of the stochastic ones. Drawn on a bare matplotlib Figure: no pyplot state, no backend."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ttbench.core.curves import Curves
from ttbench.predictors import REAL, color


def curves_figure(
    curves: Mapping[str, Curves], bands: Mapping[str, Mapping[float, Curves]], title: str = ""
):
    """Loss (log) and error curves side by side, a band's 5-95% shaded; a matplotlib Figure."""
    from matplotlib.figure import Figure  # ~0.4 s to import: only once it is drawn

    fig = Figure(figsize=(10, 4), layout="constrained")
    ax_loss, ax_err = fig.subplots(1, 2)
    for name, c in curves.items():
        steps = np.arange(len(c.loss)) * c.interval
        style = "-" if name == REAL else "--"
        ax_loss.plot(steps, c.loss, style, color=color(name), label=name)
        ax_err.plot(steps, c.error, style, color=color(name), label=name)
        if name in bands:
            lo, hi = bands[name][min(bands[name])], bands[name][max(bands[name])]
            band = {"color": color(name), "alpha": 0.2, "linewidth": 0}
            ax_loss.fill_between(steps, lo.loss, hi.loss, **band)
            ax_err.fill_between(steps, lo.error, hi.error, **band)
    ax_loss.set(xlabel="step", ylabel="training loss", yscale="log")
    ax_err.set(xlabel="step", ylabel="training error (fraction)")
    ax_loss.legend()
    fig.suptitle(title)
    return fig


def plot_curves(
    curves: Mapping[str, Curves],
    bands: Mapping[str, Mapping[float, Curves]],
    path: Path,
    title: str = "",
) -> None:
    curves_figure(curves, bands, title).savefig(path, dpi=100)
