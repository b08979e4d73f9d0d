"""Fig. 5: wall-clock of the prediction (Theta included) against fine-tuning for T steps, per
dataset, one panel per device."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.ticker import FuncFormatter, NullFormatter

from ttbench.figures import tables as tb
from ttbench.figures.style import color, label, ordered, require, save, subplots


def fig5_cost(tables: tb.Tables, out_path: Path) -> None:
    """Bars: median seconds over runs (whiskers: min-max) of fine-tuning and of each
    predictor; above each predictor's bar the ratio of the two bars, fine-tuning /
    prediction, so that the numbers read as the bars do."""
    require(tables.results, "results table", ("finetune_s", "predict_s", "device"))
    c = tb.costs(tables.results)
    c = c[c["predict_s"].notna() & c["finetune_s"].notna()]
    require(c, "runs with recorded wall-clock")
    devices = sorted(c["device"].unique())
    fig, axes = subplots(1, len(devices), width=max(4.5, 1.6 * c["dataset"].nunique() + 2.5))
    for i, (ax, device) in enumerate(zip(axes[0], devices, strict=True)):
        part = c[c["device"] == device]
        datasets = sorted(part["dataset"].unique())
        predictors = ordered(part["predictor"])
        bars = ["real", *predictors]  # "real" = fine-tuning, drawn in the real curve's colour
        width = 0.8 / len(bars)
        finetune = None  # the first bar's medians, over which each predictor's ratio is read
        for j, name in enumerate(bars):
            med, lo, hi = [], [], []
            for ds in datasets:
                rows = part[part["dataset"] == ds]
                if name == "real":
                    v = rows.drop_duplicates("run")["finetune_s"]
                else:
                    v = rows[rows["predictor"] == name]["predict_s"]
                med.append(v.median())
                lo.append(v.min())
                hi.append(v.max())
            x = np.arange(len(datasets)) + (j - (len(bars) - 1) / 2) * width
            med, lo, hi = map(np.asarray, (med, lo, hi))
            finetune = med if name == "real" else finetune
            ratios = [] if name == "real" else finetune / med
            ax.bar(
                x,
                med,
                width,
                color=color(name),
                label="fine-tuning" if name == "real" else label(name),
                yerr=[med - lo, hi - med],
                capsize=2,
                error_kw={"lw": 0.8},
            )
            for xi, m, r in zip(x, hi, ratios, strict=False):
                if np.isfinite(r):
                    ax.text(xi, m, f"×{r:.3g}", ha="center", va="bottom", fontsize=6, rotation=90)
        ax.set_xticks(np.arange(len(datasets)), datasets)
        ax.set_yscale("log")  # plain numbers (0.1, 1, 10 s), no crowded minor labels
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set(ylabel="wall-clock (seconds)", title=f"runs on {device}")
        if i == len(devices) - 1:  # one legend, outside the bars
            ax.legend(
                fontsize=7,
                title="×: fine-tuning / prediction",
                title_fontsize=7,
                loc="upper left",
                bbox_to_anchor=(1.01, 1.0),
            )
    save(fig, out_path)
