"""Figures drawn from the probe tables (probe_<name>.parquet, see ttbench/probes): Fig. 3
(t-SNE of gradients vs features), Fig. 4 (projected Theta and spectra vs N) and Fig. 9
(weight-space vs function-space prediction error)."""

from __future__ import annotations

from pathlib import Path

import matplotlib as mpl
import numpy as np
import pandas as pd

from ttbench.figures import tables as tb
from ttbench.figures.style import Skip, color, log_ticks, no_data, require, save, subplots


def probe_rows(tables: tb.Tables, name: str, preset: str) -> pd.DataFrame:
    """The probe table's rows of the preset's runs when it has any, else all its rows
    (collect copies cfg.preset onto every probe row)."""
    frame = tables.table(f"probe_{name}")
    require(frame, f"probe_{name} table")
    return tb.preset_rows(frame, preset)


def first_run(frame: pd.DataFrame) -> pd.DataFrame:
    """One run's rows (the first by name), for figures of a single task."""
    if "run" not in frame:
        return frame
    return frame[frame["run"] == sorted(frame["run"].unique())[0]]


def _sizes(values) -> dict[int, tuple]:
    """A sequential colour per subset size n (sizes are not predictors)."""
    values = sorted(set(int(v) for v in values))
    cmap = mpl.colormaps["plasma"]
    return {v: cmap(0.85 * i / max(1, len(values) - 1)) for i, v in enumerate(values)}


# --- Fig. 4 --------------------------------------------------------------------------------


# The settings under which an exact-Theta run and a projected-Theta run are the same task.
_SAME_TASK = ("dataset", "classes", "cfg.seed", "cfg.lr", "cfg.momentum", "cfg.loss", "cfg.steps")


def projection_pair(tables: tb.Tables) -> tuple[pd.Series, pd.Series] | None:
    """(exact run, projected run) of one task for Fig. 4 left: preset fig4_projection's runs,
    else any; None when no projected run has an exact twin."""
    rows = tb.preset_rows(tables.results, "fig4_projection")
    runs = tb.runs_with_curves(tables, rows)
    if not len(runs) or "cfg.theta.mode" not in runs:
        return None
    keys = [k for k in _SAME_TASK if k in runs]
    exact = runs[runs["cfg.theta.mode"] == "exact"]
    for _, p in runs[runs["cfg.theta.mode"] == "projected"].sort_values("run").iterrows():
        twin = exact[(exact[keys] == p[keys]).all(axis=1)]
        if len(twin):
            return twin.iloc[0], p
    return None


def _draw_projected_curves(ax, tables: tb.Tables, pair) -> None:
    if pair is None:
        no_data(ax, "no exact / projected pair of runs")
        return
    exact, projected = pair
    ce = tb.run_curves(tables.curves, exact["run"])
    cp = tb.run_curves(tables.curves, projected["run"])
    ode = color("ode")
    if "real" in ce:
        ax.plot(ce["real"]["step"], ce["real"]["loss"], color=color("real"), label="real")
    if "ode" in ce:
        ax.plot(ce["ode"]["step"], ce["ode"]["loss"], "--", color=ode, label="ODE, exact Θ")
    if "ode" in cp:
        d0 = projected.get("cfg.theta.dim")
        ax.plot(cp["ode"]["step"], cp["ode"]["loss"], ":", color=ode, lw=2, label=f"ODE, D0={d0}")
    ax.set(yscale="log", xlabel="step", ylabel="training loss")
    ax.set_title(f"{exact['dataset']} seed {exact['cfg.seed']}: exact vs projected Θ", fontsize=9)
    ax.legend(fontsize=6)


def fig4_projection(tables: tb.Tables, out_path: Path) -> None:
    """Fig. 4: (left) real fine-tuning against the ODE on the exact and on a projected Theta
    (a pair of runs differing only by theta.mode); (centre) relative Frobenius error of the
    sketched Theta vs its dimension D0, and its build time against the exact Theta's
    (probe_projection, mean over runs); (right) eigenvalues lambda_k / n and projections p_k
    of Theta on nested subsets of n samples (probe_spectrum, one task) with the power law
    fitted at the largest n."""
    proj = _or_empty(tables, "projection", "fig4_projection")
    spec = _or_empty(tables, "spectrum", "fig4_spectrum")
    has_proj = {"n", "dim", "rel_error", "build_s", "method"} <= set(proj)
    has_spec = {"n", "k", "eigenvalue"} <= set(spec)
    pair = projection_pair(tables) if len(tables.results) and len(tables.curves) else None
    if not (has_proj or has_spec or pair):
        raise Skip("no probe_projection or probe_spectrum table, no exact/projected run pair")
    fig, axes = subplots(1, 5, width=3.7)
    ax_curve, ax_err, ax_time, ax_eig, ax_p = axes[0]
    _draw_projected_curves(ax_curve, tables, pair)
    if has_proj:
        sketched = proj[proj["method"] != "exact"]
        exact = proj[proj["method"] == "exact"].groupby("n")["build_s"].mean()
        mean = sketched.groupby(["n", "dim"], sort=True)[["rel_error", "build_s"]].mean()
        shade = _sizes(proj["n"])
        for n, part in mean.groupby(level="n"):
            d = part.index.get_level_values("dim")
            ax_err.plot(d, part["rel_error"], "o-", color=shade[n], label=f"n={n}")
            ax_time.plot(d, part["build_s"], "o-", color=shade[n], label=f"n={n} sketched")
            if n in exact:
                ax_time.axhline(exact[n], ls="--", color=shade[n], lw=0.8)
        ax_time.plot([], [], "k--", lw=0.8, label="exact Θ (same colour: same n)")
        kind = ", ".join(sorted(sketched["method"].unique()))
        dims = sketched["dim"].unique()
        log_ticks(ax_err, dims)
        log_ticks(ax_time, dims)
        ax_err.set(yscale="log", xlabel="sketch dimension D0")
        ax_err.set(ylabel="‖Θ̂ - Θ‖_F / ‖Θ‖_F", title=f"projected Θ ({kind})")
        ax_time.set(yscale="log", xlabel="sketch dimension D0")
        ax_time.set(ylabel="build time (seconds)", title="cost of Θ")
        ax_err.legend(fontsize=6)
        ax_time.legend(fontsize=6)
    else:
        no_data(ax_err, "no probe_projection table")
        no_data(ax_time, "no probe_projection table")
    if has_spec:
        one = first_run(spec)
        shade = _sizes(one["n"])
        for n, part in one.groupby("n", sort=True):
            part = part.sort_values("k")
            ax_eig.plot(part["k"], part["eigenvalue"], color=shade[n], label=f"n={n}")
            if "projection" in part:
                ax_p.plot(part["k"], part["projection"], color=shade[n], alpha=0.8, label=f"n={n}")
        top = one[one["n"] == one["n"].max()]
        if {"c", "s"} <= set(top) and np.isfinite(top["c"].iloc[0]):
            k = top["k"].to_numpy(float)
            law = top["c"].iloc[0] * k ** -top["s"].iloc[0]
            ax_eig.plot(k, law, "k:", lw=1, label=f"c k^-s, s={top['s'].iloc[0]:.2f}")
        ax_eig.set(xscale="log", yscale="log", xlabel="index k", ylabel="eigenvalue λ_k / n")
        ax_eig.set_title("spectrum of Θ vs n")
        ax_p.set(xscale="log", yscale="log", xlabel="index k", ylabel="projection p_k")
        ax_p.set_title("residual projections vs n")
        ax_eig.legend(fontsize=6)
        ax_p.legend(fontsize=6)
    else:
        no_data(ax_eig, "no probe_spectrum table")
        no_data(ax_p, "no probe_spectrum table")
    save(fig, out_path)


def _or_empty(tables: tb.Tables, name: str, preset: str) -> pd.DataFrame:
    try:
        return probe_rows(tables, name, preset)
    except Skip:
        return pd.DataFrame()


# --- Fig. 9 --------------------------------------------------------------------------------


def fig9_weight_function(tables: tb.Tables, out_path: Path) -> None:
    """Fig. 9: relative error of the linearised prediction of the weights w_t and of the
    outputs f_t(X) against real fine-tuning, over time (mean over runs, band min-max)."""
    frame = probe_rows(tables, "weight_function", "fig9_weight_vs_function")
    require(frame, "probe_weight_function table", ("step", "weight_rel_error", "output_rel_error"))
    fig, axes = subplots(1, 1, width=5.0, height=3.8)
    ax = axes[0, 0]
    spaces = (
        ("weight_rel_error", "weight space: ‖ŵ_t - w_t‖ / ‖w_t - w_0‖", "tab:olive"),
        ("output_rel_error", "function space: ‖f̂_t - f_t‖ / ‖f_t - f_0‖", color("ode")),
    )
    for col, name, shade in spaces:
        g = frame.groupby("step", sort=True)[col]
        mean, lo, hi = g.mean(), g.min(), g.max()
        ax.plot(mean.index, mean, color=shade, label=name)
        ax.fill_between(mean.index, lo, hi, color=shade, alpha=0.2, lw=0)
    runs = frame["run"].nunique() if "run" in frame else 1
    ax.set(xlabel="step", ylabel="relative prediction error", yscale="log")
    ax.set_title(f"linearised vs real fine-tuning ({runs} run(s))", fontsize=9)
    ax.legend(fontsize=7)
    save(fig, out_path)


# --- Fig. 3 --------------------------------------------------------------------------------


def tsne(points: np.ndarray, seed: int = 0) -> np.ndarray:
    """2-D t-SNE (sklearn) with a perplexity the sample count allows."""
    from sklearn.manifold import TSNE  # imported here: slow to import, used by one figure

    n = len(points)
    if n < 4:
        raise Skip(f"{n} samples: too few for t-SNE")
    perplexity = float(min(30.0, (n - 1) / 3))
    # exact gradients below 500 points: faster there than Barnes-Hut, whose threads also
    # stall on a loaded machine (measured: 250 points, 4 s against 30 s on 2 busy cores)
    method = "exact" if n <= 500 else "barnes_hut"
    tsne = TSNE(2, perplexity=perplexity, init="pca", method=method, random_state=seed)
    return tsne.fit_transform(points)


def fig3_clustering(tables: tb.Tables, out_path: Path) -> None:
    """Fig. 3 (one task): t-SNE of the first principal components of the per-sample features
    (feat_pc*) and of the per-sample loss gradients (grad_pc*), coloured by class; t-SNE of
    the predicted per-sample loss trajectories (loss_t<step>), coloured by class and by the
    predicted per-sample training time (t_eps, steps)."""
    frame = first_run(probe_rows(tables, "clustering", "fig3_clustering"))
    require(frame, "probe_clustering table", ("label",))
    spaces = clustering_spaces(frame)
    panels = [(s, "class") for s in ("features", "gradients") if s in spaces]
    if "trajectories" in spaces:
        panels += [("trajectories", "class"), ("trajectories", "time")]
    if not panels:
        raise Skip("probe_clustering has no feat_pc, grad_pc or loss_t columns")
    labels = frame["label"].to_numpy()
    times = frame["t_eps"].to_numpy(float) if "t_eps" in frame else None
    fig, axes = subplots(1, len(panels), width=3.8, height=3.6)
    embedded = {s: tsne(spaces[s]) for s in dict.fromkeys(s for s, _ in panels)}
    cmap = mpl.colormaps["tab10"]  # classes, not predictors
    for ax, (space, by) in zip(axes[0], panels, strict=True):
        xy = embedded[space]
        ax.set_title(f"{space} by {by if by == 'class' else 'training time'}", fontsize=9)
        ax.set(xlabel="t-SNE 1", ylabel="t-SNE 2", xticks=[], yticks=[])
        if by == "class":
            for i, c in enumerate(sorted(np.unique(labels))):
                m = labels == c
                ax.scatter(*xy[m].T, s=10, color=cmap(i % 10), label=f"class {c}")
            ax.legend(fontsize=6, markerscale=1.5)
        elif times is None or np.isnan(times).all():
            no_data(ax, "no predicted training time")
        else:
            sc = ax.scatter(*xy.T, s=10, c=times, cmap="viridis")
            fig.colorbar(sc, ax=ax, label="predicted T_eps of the sample (steps)")
    save(fig, out_path)


# Column prefixes of the clustering table (ttbench/probes/clustering.py): one row per sample.
_PREFIXES = {"features": "feat_pc", "gradients": "grad_pc", "trajectories": "loss_t"}


def clustering_spaces(frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """{features | gradients | trajectories: (samples, dims)}, columns in numeric order."""
    out = {}
    for space, prefix in _PREFIXES.items():
        index = {c: str(c)[len(prefix) :] for c in frame.columns if str(c).startswith(prefix)}
        cols = sorted((c for c, i in index.items() if i.isdigit()), key=lambda c: int(index[c]))
        if cols:
            out[space] = frame[cols].to_numpy(float)
    return out
