"""The figure of one run: loss and error curves, real against each predictor."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from ttbench.core.timing import Curves

# One colour per curve source, used by every figure of the project.
COLORS = {"real": "black", "ode": "tab:blue", "discrete": "tab:orange", "closed_form": "tab:green"}


def color(name: str) -> str:
    return COLORS.get(name, "tab:gray")


def plot_curves(curves: Mapping[str, Curves], path: Path, title: str = "") -> None:
    fig, (ax_loss, ax_err) = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    for name, c in curves.items():
        style = "-" if name == "real" else "--"
        ax_loss.plot(c.loss, style, color=color(name), label=name)
        ax_err.plot(c.error, style, color=color(name), label=name)
    ax_loss.set(xlabel="step", ylabel="training loss", yscale="log")
    ax_err.set(xlabel="step", ylabel="training error (fraction)")
    ax_loss.legend()
    fig.suptitle(title)
    fig.savefig(path, dpi=100)
    plt.close(fig)
