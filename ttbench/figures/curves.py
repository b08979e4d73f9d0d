"""Figures drawn from curves.parquet: Figs. 2 and 12 (real curves at equal effective learning
rate), Figs. 8 and 10 (real vs predicted loss and error curves with the stochastic bands, and
T_eps per eps) and Figs. 7 and 11 (subset-to-full extrapolation and its spectra)."""

from __future__ import annotations

from pathlib import Path

import matplotlib as mpl
import pandas as pd

from ttbench.core.dynamics import elr
from ttbench.figures import tables as tb
from ttbench.figures.style import (
    Skip,
    color,
    label,
    log_ticks,
    no_data,
    ordered,
    require,
    save,
    subplots,
)

# one fine-tuning task under one optimiser: its curves differ only by (lr, momentum)
_TASK = [
    "dataset",
    "classes",
    "cfg.seed",
    "cfg.task.n",
    "cfg.loss",
    "cfg.optim.name",
    "cfg.optim.batch_size",
]
_STYLES = ("-", "--", ":", "-.")
MAX_PANELS = 4


# --- Figs. 2 and 12 ------------------------------------------------------------------------


def elr_tasks(results: pd.DataFrame) -> list[pd.DataFrame]:
    """Tasks fine-tuned with several (lr, momentum), those with most runs sharing an
    effective learning rate first, then most combinations (at most MAX_PANELS)."""
    runs = tb.runs_frame(tb.preset_rows(results, "fig2_elr"))
    if not len(runs):
        return []
    keys = [k for k in _TASK if k in runs]
    groups = [g for _, g in runs.groupby(keys, sort=True, dropna=False)]

    def rank(g: pd.DataFrame) -> tuple[int, int]:
        combos = _lrm(g).drop_duplicates()
        shared = [_elr(r.lr, r.m) for r in combos.itertuples()]
        return (-int(pd.Series(shared).duplicated(keep=False).sum()), -len(combos))

    groups.sort(key=rank)
    if groups and rank(groups[0])[0] < 0:  # some task repeats an elr: show only those
        groups = [g for g in groups if rank(g)[0] < 0]
    return groups[:MAX_PANELS]


def fig2_elr(tables: tb.Tables, out_path: Path) -> None:
    """Figs. 2 (right) and 12: real loss and error curves of one task fine-tuned with several
    (lr, momentum); one colour per effective learning rate lr / (1 - m), one line style per
    combination, so curves of one colour should coincide."""
    require(tables.results, "results table", ("cfg.lr", "cfg.momentum"))
    require(tables.curves, "curves table", ("run", "curve", "step", "loss"))
    tasks = [g[g["run"].isin(set(tables.curves["run"]))] for g in elr_tasks(tables.results)]
    tasks = [g for g in tasks if len(g)]
    if not tasks:
        raise Skip("no runs with real curves")
    all_elr = sorted({_elr(r.lr, r.m) for g in tasks for r in _lrm(g).itertuples()})
    cmap = mpl.colormaps["viridis"]
    shade = {e: cmap(i / max(1, len(all_elr) - 1) * 0.85) for i, e in enumerate(all_elr)}
    fig, axes = subplots(2, len(tasks))
    for j, task in enumerate(tasks):
        # legend grouped by effective learning rate, then by lr
        task = task.assign(_elr=[_elr(r.lr, r.m) for r in _lrm(task).itertuples()])
        task = task.sort_values(["_elr", "cfg.lr"])
        first = task.iloc[0]
        optim = str(first.get("cfg.optim.name", "")).upper()
        loss = str(first.get("cfg.loss", "")).upper()
        head = f"{first['dataset']} seed {first['cfg.seed']}, N={first['N']}, {optim}, {loss}"
        axes[0, j].set_title(head, fontsize=9)
        seen: dict[float, int] = {}
        for r, (_, run) in zip(_lrm(task).itertuples(), task.iterrows(), strict=True):
            real = tb.run_curves(tables.curves, run["run"]).get("real")
            if real is None:
                continue
            e = _elr(r.lr, r.m)
            style = _STYLES[seen.setdefault(e, 0) % len(_STYLES)]
            seen[e] += 1
            name = rf"$\tilde\eta$={e:.3g} ($\eta$={r.lr:g}, m={r.m:g})"
            axes[0, j].plot(real["step"], real["loss"], style, color=shade[e], label=name)
            axes[1, j].plot(real["step"], real["error"], style, color=shade[e], label=name)
        axes[0, j].set(yscale="log", ylabel="training loss", xlabel="step")
        axes[1, j].set(ylabel="training error (fraction)", xlabel="step")
        axes[0, j].legend(fontsize=6)
    save(fig, out_path)


def _elr(lr: float, momentum: float) -> float:
    """The effective learning rate to 6 digits: 0.0003 / (1 - 0.9) is 0.0029999999999999996,
    which must share 0.003's colour."""
    return float(f"{elr(lr, momentum):.6g}")


def _lrm(runs: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({"lr": runs["cfg.lr"].to_numpy(), "m": runs["cfg.momentum"].to_numpy()})


# --- Figs. 8 and 10 ------------------------------------------------------------------------


def fig8_runs(tables: tb.Tables) -> pd.DataFrame:
    """Fig. 8's columns: one GD run (left), then preset fig8_noise's SGD runs, one per noise
    schedule (else one SGD run); runs with the most predicted curves first."""
    runs = tb.runs_with_curves(tables, tables.results)
    if not len(runs):
        return runs
    n_curves = tables.curves.groupby("run")["curve"].nunique()
    runs = runs.assign(n_curves=runs["run"].map(n_curves).fillna(0))
    runs = runs.sort_values(["n_curves", "run"], ascending=[False, True])
    gd = runs[runs["cfg.optim.name"] == "gd"].head(1)
    sgd = tb.preset_rows(runs, "fig8_noise", lambda f: f.iloc[:0])
    if len(sgd) and "cfg.stochastic.schedule" in sgd:
        sgd = sgd.sort_values(["cfg.seed", "run"]).drop_duplicates("cfg.stochastic.schedule")
    elif not len(sgd):
        sgd = runs[runs["cfg.optim.name"] == "sgd"].head(1)
    return pd.concat([gd, sgd], ignore_index=True).head(MAX_PANELS)


def _draw_run(ax_loss, ax_err, curves: dict[str, pd.DataFrame], bands: dict) -> None:
    for name in ordered(curves):
        c = curves[name]
        real = name == "real"
        for ax, col in ((ax_loss, "loss"), (ax_err, "error")):
            if c[col].isna().all():  # the subset predictor has no error curve
                continue
            ax.plot(
                c["step"],
                c[col],
                "-" if real else "--",
                color=color(name),
                lw=1.6 if real else 1.2,
                label=label(name),
            )
            if name in bands:
                lo, hi = bands[name]
                # light fills with their edges drawn: overlapping bands stay readable
                ax.fill_between(
                    lo["step"],
                    lo[col],
                    hi[col].to_numpy(),
                    color=color(name),
                    alpha=0.12,
                    lw=0,
                    label=f"{label(name)} 5-95%",
                )
                for edge in (lo, hi):
                    ax.plot(edge["step"], edge[col], ":", color=color(name), lw=0.7)


def fig8_curves(tables: tb.Tables, out_path: Path) -> None:
    """Figs. 8 and 10: per run, real vs predicted loss (log) and error curves with the
    stochastic predictors' 5-95% bands, and (bottom) predicted vs real T_eps of the loss per
    eps."""
    require(tables.results, "results table", ("run",))
    require(tables.curves, "curves table", ("run", "curve", "step", "loss", "error"))
    runs = fig8_runs(tables)
    require(runs, "runs with curves")
    fig, axes = subplots(3, len(runs))
    for j, (_, run) in enumerate(runs.iterrows()):
        title = (
            f"{run['dataset']} {str(run['cfg.optim.name']).upper()} lr={run['cfg.lr']:g} "
            f"{str(run.get('cfg.loss', '')).upper()}"
        )
        if run["cfg.optim.name"] == "sgd":
            b = run.get("cfg.optim.batch_size")
            title += f" B={b:g}, noise {run.get('cfg.stochastic.schedule', '')}"
        axes[0, j].set_title(title, fontsize=9)
        run_id = run["run"]
        curves, bands = tb.run_curves(tables.curves, run_id), tb.run_bands(tables.curves, run_id)
        _draw_run(axes[0, j], axes[1, j], curves, bands)
        axes[0, j].set(yscale="log", xlabel="step", ylabel="training loss")
        axes[1, j].set(xlabel="step", ylabel="training error (fraction)")
        axes[0, j].legend(fontsize=6)
        _draw_t_eps(axes[2, j], tables.results[tables.results["run"] == run["run"]])
    save(fig, out_path)


def _draw_t_eps(ax, rows: pd.DataFrame, kind: str = "loss") -> None:
    rows = rows[rows["kind"] == kind].sort_values("eps")
    if not len(rows):
        no_data(ax, "no T_eps rows")
        return
    real = rows.drop_duplicates("eps")
    ax.plot(real["eps"] * 100, real["t_real"], "o-", color=color("real"), label=label("real"))
    for name in ordered(rows["predictor"]):
        part = rows[rows["predictor"] == name]
        ax.plot(part["eps"] * 100, part["t_pred"], "s--", color=color(name), label=label(name))
        if "q05" in part and part["q05"].notna().any():
            ax.fill_between(
                part["eps"] * 100, part["q05"], part["q95"], color=color(name), alpha=0.2, lw=0
            )
    log_ticks(ax, rows["eps"].unique() * 100)
    ax.set(xlabel="eps (% of the loss range)", ylabel=f"T_eps of the {kind} (steps)")
    ax.legend(fontsize=6)


# --- Figs. 7 and 11 ------------------------------------------------------------------------


def fig7_subset(tables: tb.Tables, out_path: Path) -> None:
    """Figs. 7 and 11, per subset run (at most MAX_PANELS rows): real loss vs the curve
    extrapolated from N0 samples; predicted vs real T_eps per eps; eigenvalues lambda_k / N of
    the subset, extrapolated to N and (from the spectrum probe, when present) measured at N;
    the projections p_k on the subset and extrapolated."""
    require(tables.results, "results table", ("predictor",))
    rows = tables.results[tables.results["predictor"] == "subset"]
    rows = tb.preset_rows(rows, "fig7_subset")
    runs = tb.runs_with_curves(tables, rows)
    if "cfg.subset.n0" in runs:  # one row per subset size N0 (Fig. 7: large, Fig. 11: small)
        runs = runs.sort_values(["cfg.subset.n0", "cfg.seed", "run"]).drop_duplicates(
            "cfg.subset.n0"
        )
    runs = runs.head(MAX_PANELS)
    require(runs, "runs with the subset predictor")
    spectra = tables.table("spectra_subset")
    measured = tables.table("probe_spectrum")
    fig, axes = subplots(len(runs), 4, width=3.8)
    for i, (_, run) in enumerate(runs.iterrows()):
        curves = tb.run_curves(tables.curves, run["run"])
        ax = axes[i, 0]
        for name in ("real", "closed_form", "subset"):
            if name in curves:
                c = curves[name]
                ax.plot(c["step"], c["loss"], "-" if name == "real" else "--", color=color(name))
                ax.lines[-1].set_label(label(name))
        n0 = min(int(run.get("cfg.subset.n0", run["N"])), int(run["N"]))
        ax.set(yscale="log", xlabel="step", ylabel="training loss (MSE)")
        ax.set_title(f"{run['dataset']}: N={run['N']} from N0={n0}", fontsize=9)
        ax.legend(fontsize=6)
        _draw_t_eps(axes[i, 1], tables.results[tables.results["run"] == run["run"]])
        own = spectra[spectra["run"] == run["run"]] if len(spectra) else spectra
        _draw_spectrum(axes[i, 2], axes[i, 3], own, measured, run)
    save(fig, out_path)


def _series(frame: pd.DataFrame, name: str) -> pd.DataFrame:
    return frame[frame["series"] == name].sort_values("k")


def _draw_spectrum(ax_rate, ax_proj, own: pd.DataFrame, measured: pd.DataFrame, run) -> None:
    if not len(own) or not {"series", "k", "value"} <= set(own):
        no_data(ax_rate, "no spectra_subset table")
        no_data(ax_proj, "no spectra_subset table")
        return
    sub, pred = "0.6", color("subset")  # measured at N0 grey, at N black (real), predicted
    for ax, (s_sub, s_pred, what) in (
        (ax_rate, ("rates_subset", "rates", "eigenvalue λ_k / N")),
        (ax_proj, ("p_subset", "p_k", "projection p_k")),
    ):
        a, b = _series(own, s_sub), _series(own, s_pred)
        ax.plot(a["k"], a["value"], "-", color=sub, label="subset (N0)")
        ax.plot(b["k"], b["value"], "--", color=pred, label="extrapolated to N")
        ax.set(xscale="log", yscale="log", xlabel="index k", ylabel=what)
        ax.set_title(f"{what.split()[0]}s: subset vs N", fontsize=9)
    if len(measured) and {"run", "n", "k", "eigenvalue"} <= set(measured):
        full = measured[(measured["run"] == run["run"]) & (measured["n"] == run["N"])]
        if len(full):
            full = full.sort_values("k")
            # the probe's eigenvalue is already lambda_k / n
            ax_rate.plot(full["k"], full["eigenvalue"], color=color("real"), label="measured at N")
    ax_rate.legend(fontsize=6)
    ax_proj.legend(fontsize=6)
