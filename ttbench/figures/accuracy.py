"""How accurate the predicted training times are: Fig. 1 (predicted vs real T_eps), Table 1
(mean absolute error by dataset, eps and learning rate) and Fig. 6 (error vs learning rate,
batch size and dataset size)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ttbench.figures import tables as tb
from ttbench.figures.style import (
    Skip,
    color,
    label,
    log_ticks,
    ordered,
    require,
    save,
    subplots,
)

_BANDS = tuple(zip(tb.TOLERANCES, (":", "--"), strict=True))  # drawn around the bisector
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def fig1_rows(results: pd.DataFrame, optim: str, kind: str = "loss") -> pd.DataFrame:
    """A Fig. 1 panel's points: preset fig1_<optim> (else every run with that optimiser),
    one curve kind, scorable points only."""
    rows = tb.preset_rows(results, f"fig1_{optim}", tb.optim_rows(optim))
    if not len(rows):
        return rows
    return tb.valid(rows[rows["kind"] == kind])


def fig1_scatter(tables: tb.Tables, out_path: Path, kind: str = "loss") -> None:
    """Fig. 1: predicted vs real T_eps, GD and SGD panels, bisector, +/-13% and +/-20% bands,
    and per predictor the share of points inside each band."""
    require(tables.results, "results table", ("t_real", "t_pred", "predictor"))
    panels = {o: fig1_rows(tables.results, o, kind) for o in ("gd", "sgd")}
    panels = {o: rows for o, rows in panels.items() if len(rows)}  # no empty panel
    if not panels:
        raise Skip("no GD or SGD points with a real T_eps")
    fig, axes = subplots(1, len(panels), width=4.8, height=4.6)
    for ax, (optim, rows) in zip(axes[0], panels.items(), strict=True):
        ax.set_title(f"{optim.upper()}: T_eps of the {kind} curve")
        exploded = tb.exploded(rows)
        missing = rows["t_pred"].isna() & ~exploded
        drawn = rows[~missing & ~exploded]
        top = float(max(drawn["t_real"].max(), drawn["t_pred"].max(), 1)) * 1.05
        x = np.array([0.0, top])
        ax.plot(x, x, color="0.3", lw=1, label="bisector")
        for tol, style in _BANDS:
            ax.fill_between(x, x * (1 - tol), x * (1 + tol), color="0.5", alpha=0.08, lw=0)
            for f in (1 - tol, 1 + tol):
                ax.plot(x, x * f, style, color="0.5", lw=0.8)
            ax.plot([], [], style, color="0.5", lw=0.8, label=f"±{tol:.0%}")
        share = tb.share_within(rows).set_index("predictor")
        lines = []
        for i, name in enumerate(ordered(drawn["predictor"])):
            part = drawn[drawn["predictor"] == name]
            # hollow markers of distinct shapes: predictors often agree, points then overlap
            ax.scatter(
                part["t_real"],
                part["t_pred"],
                s=22,
                marker=_MARKERS[i % len(_MARKERS)],
                facecolors="none",
                edgecolors=color(name),
                linewidths=0.9,
                alpha=0.8,
                label=label(name),
            )
        for name in ordered(share.index):
            s = share.loc[name]
            lines.append(
                f"{label(name)}: {s['within_13']:.0%} ≤13%, {s['within_20']:.0%} ≤20%"
                f" (n={int(s['n'])})"
            )
        if missing.any():  # a predicted curve that never got within eps: outside every band
            lines.append(f"{int(missing.sum())} point(s) with no predicted time")
        if exploded.any():  # no real time to draw: a hit only where it said "diverges"
            said = int((exploded & tb.predicted_divergence(rows)).sum())
            lines.append(
                f"{int(exploded.sum())} point(s) of runs that exploded, not drawn, "
                f"{said} said diverges"
            )
        ax.text(
            0.03,
            0.97,
            "\n".join(lines),
            transform=ax.transAxes,
            va="top",
            fontsize=7,
            bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "0.8"},
        )
        ax.set(xlim=(0, top), ylim=(0, top), aspect="equal")
        ax.set(xlabel="real T_eps (steps)", ylabel="predicted T_eps (steps)")
        ax.legend(loc="lower right", fontsize=7)
    save(fig, out_path)


def table1_write(
    tables: tb.Tables, out_path: Path, high_lr: float = tb.HIGH_LR, predictor: str = "ode"
) -> None:
    """Table 1: mean absolute error (steps) of the ODE's T_eps of the loss by dataset x eps in
    {1, 10, 40}% x learning rate, as out_path.md and out_path.tex."""
    require(tables.results, "results table", ("abs_err", "cfg.lr", "dataset"))
    frame = tb.table1(tables.results, predictor=predictor)
    if not len(frame):
        raise Skip(f"no GD {predictor} points at eps in {{1, 10, 40}}%")
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    note = (
        f"Mean absolute error of the {predictor} predictor's T_eps of the loss, in steps. "
        f"Regime: lr >= {high_lr:g} is high, below it low.\n\n"
    )
    out.with_suffix(".md").write_text(note + tb.table1_markdown(frame, high_lr))
    out.with_suffix(".tex").write_text(tb.table1_latex(frame, high_lr))


# Fig. 6's three panels: (preset, fallback optimiser, x column, x label, log x)
FIG6_PANELS = (
    ("fig6_lr", "gd", "cfg.lr", "learning rate", True),
    ("fig6_batch", "sgd", "cfg.optim.batch_size", "batch size (samples)", True),
    ("fig6_size", "sgd", "N", "task size N (samples)", False),
)


def _span(values: pd.Series) -> float:
    """The scale of a linear dodge: the x range, or for a single x value 1/4 of it."""
    span = float(values.max() - values.min())
    return span if span > 0 else max(1e-9, abs(float(values.max())) / 4)


def fig6_rows(results: pd.DataFrame, preset: str, optim: str, kind: str = "loss"):
    rows = tb.preset_rows(results, preset, tb.optim_rows(optim))
    if not len(rows):
        return rows
    return tb.valid(rows[rows["kind"] == kind])


def fig6_sensitivity(tables: tb.Tables, out_path: Path, kind: str = "loss") -> None:
    """Fig. 6: mean and 95% CI of the absolute error in steps (over runs and eps) against the
    learning rate (GD), the batch size (SGD) and the task size (SGD); one colour per
    predictor, one marker per dataset."""
    require(tables.results, "results table", ("abs_err", "predictor"))
    panels = [
        (fig6_rows(tables.results, preset, optim, kind), col, xlabel, logx, optim)
        for preset, optim, col, xlabel, logx in FIG6_PANELS
    ]
    # only the panels with data: a figure for a paper has no "no runs" placeholders
    panels = [p for p in panels if len(p[0]) and p[1] in p[0] and p[0][p[1]].notna().any()]
    if not panels:
        raise Skip("no runs for any of the learning-rate, batch-size or size panels")
    datasets = sorted({d for p in panels if len(p[0]) for d in p[0]["dataset"].unique()})
    marker = {d: _MARKERS[i % len(_MARKERS)] for i, d in enumerate(datasets)}
    fig, axes = subplots(1, len(panels))
    for ax, (rows, col, xlabel, logx, optim) in zip(axes[0], panels, strict=True):
        ax.set_title(f"{optim.upper()}: error vs {xlabel.split(' (')[0]}")
        ci = tb.mean_ci(rows[rows[col].notna()], ["predictor", "dataset", col])
        present = set(zip(ci["predictor"], ci["dataset"], strict=True))
        series = [(n, d) for n in ordered(ci["predictor"]) for d in datasets if (n, d) in present]
        for i, (name, ds) in enumerate(series):
            part = ci[(ci["predictor"] == name) & (ci["dataset"] == ds)].sort_values(col)
            # dodge the series sideways a little: predictors often agree and would hide
            shift = (i - (len(series) - 1) / 2) * 0.02
            x = part[col] * (1 + shift) if logx else part[col] + shift * _span(ci[col])
            ax.errorbar(
                x,
                part["mean"],
                yerr=[part["mean"] - part["lo"], part["hi"] - part["mean"]],
                marker=marker[ds],
                color=color(name),
                capsize=3,
                elinewidth=0.8,
                label=f"{label(name)}, {ds}",
            )
        if logx and (rows[col] > 0).all():
            log_ticks(ax, rows[col].unique())
        else:  # ticks at the values swept, not at the dodged positions
            values = sorted(rows[col].dropna().unique())
            ax.set_xticks(values)
            if len(values) == 1:  # one value: centre it, the dodge is then narrow
                ax.set_xlim(values[0] - _span(ci[col]), values[0] + _span(ci[col]))
        ax.set(xlabel=xlabel, ylabel=f"|T_eps error| of the {kind} (steps)")
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=7)
    save(fig, out_path)
