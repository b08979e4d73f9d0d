"""Shared pieces of every figure: the skip signal, saving as PNG and PDF, labels, colours."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from ttbench.predictors import PREDICTORS, REAL, color, label

__all__ = [
    "Skip",
    "color",
    "label",
    "log_ticks",
    "no_data",
    "ordered",
    "require",
    "save",
    "subplots",
]


class Skip(Exception):
    """Raised by a figure function whose rows or table are absent; the message is the reason."""


def ordered(names) -> list[str]:
    """Curve sources in one fixed order everywhere (real first, then the registry's order,
    unknown names last), so legends read alike across figures."""
    rank = {n: i for i, n in enumerate([REAL, *PREDICTORS])}
    return sorted(set(names), key=lambda n: (rank.get(n, len(rank)), n))


def require(frame: pd.DataFrame, what: str, columns: tuple[str, ...] = ()) -> None:
    """Skip unless `frame` has rows and the given columns."""
    if frame is None or not len(frame):
        raise Skip(f"no {what}")
    missing = [c for c in columns if c not in frame]
    if missing:
        raise Skip(f"{what} lacks column(s) {', '.join(missing)}")


def subplots(nrows: int, ncols: int, width: float = 4.2, height: float = 3.4, **kw):
    fig = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
    return fig, fig.subplots(nrows, ncols, squeeze=False, **kw)


def no_data(ax, text: str) -> None:
    """An empty panel that says why it is empty."""
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="gray")
    ax.set_xticks([])
    ax.set_yticks([])


def log_ticks(ax, values, axis: str = "x") -> None:
    """A log axis labelled at the data's own values (e.g. 64, 256, 1024), without the
    crowded minor-tick labels matplotlib adds on a range shorter than a decade."""
    from matplotlib.ticker import NullFormatter

    values = sorted({float(v) for v in values if v > 0})
    target = ax.xaxis if axis == "x" else ax.yaxis
    (ax.set_xscale if axis == "x" else ax.set_yscale)("log")
    labels, last = [], None
    for v in values:  # a label too close to the previous one would overprint it
        crowded = last is not None and v < 1.5 * last
        labels.append("" if crowded else f"{v:g}")
        last = last if crowded else v
    target.set_ticks(values, labels=labels)
    target.set_minor_formatter(NullFormatter())


def save(fig, out_path: str | Path) -> list[Path]:
    """Write out_path.png and out_path.pdf (any suffix of out_path is replaced)."""
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    paths = [out.with_suffix(".png"), out.with_suffix(".pdf")]
    for p in paths:
        fig.savefig(p, dpi=150)
    return paths
