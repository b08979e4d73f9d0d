"""The figure of one run: loss and error curves, real against each predictor."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from ttbench.core.timing import Curves

# One colour per curve source, used by every figure of the project.
COLORS = {
    "real": "black",
    "ode": "tab:blue",
    "discrete": "tab:orange",
    "closed_form": "tab:green",
    "sde": "tab:red",
    "exact_sgd": "tab:purple",
    "subset": "tab:brown",
}


def color(name: str) -> str:
    return COLORS.get(name, "tab:gray")


def plot_curves(curves: Mapping[str, Curves], path: Path, title: str = "") -> None:
    fig, (ax_loss, ax_err) = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    for name, c in curves.items():
        if ":" in name:  # a quantile band, drawn with its predictor
            continue
        steps = np.arange(len(c.loss)) * c.interval
        style = "-" if name == "real" else "--"
        ax_loss.plot(steps, c.loss, style, color=color(name), label=name)
        ax_err.plot(steps, c.error, style, color=color(name), label=name)
        lo, hi = curves.get(f"{name}:q05"), curves.get(f"{name}:q95")
        if lo is not None and hi is not None:
            band = {"color": color(name), "alpha": 0.2, "linewidth": 0}
            ax_loss.fill_between(steps, lo.loss, hi.loss, **band)
            ax_err.fill_between(steps, lo.error, hi.error, **band)
    ax_loss.set(xlabel="step", ylabel="training loss", yscale="log")
    ax_err.set(xlabel="step", ylabel="training error (fraction)")
    ax_loss.legend()
    fig.suptitle(title)
    fig.savefig(path, dpi=100)
    plt.close(fig)
