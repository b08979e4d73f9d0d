"""The tables written by `python -m ttbench.collect`, and every number the figures, Table 1 and
the report show, as plain pandas computations (no plotting here, so tests can check them).

Conventions used throughout:
- a point is one row of results.parquet: (run, predictor, curve kind, eps);
- a point counts when its real T_eps exists and is > 0, or when the real run exploded, and,
  for a refined predictor, when it was not observed in the k steps it saw (ttbench.points;
  `left_out` says how many not);
- a prediction is within a tolerance r when |t_pred - t_real| <= r * t_real; a missing t_pred
  (the predicted curve never got within eps, or it says "diverges") is outside every
  tolerance; on a run that exploded, a prediction is right ("within") exactly when it says
  "diverges", and a finite T_eps is a miss.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from ttbench.files import MANIFEST, manifest_files, stale
from ttbench.points import GD_TOLERANCE, TOLERANCES, exploded, predicted_divergence, valid
from ttbench.record import check_curves

TABLE1_EPS = (0.01, 0.1, 0.4)
# Table 1's learning-rate regime: lr >= HIGH_LR is "high". The paper's ResNet runs use high
# {0.005} and small {0.001, 0.0001}; the threshold is a parameter (--high-lr) because the
# regime in which the linearisation breaks depends on the model.
HIGH_LR = 0.005
_SLACK = 1e-9  # 0.13 * 100 is 13.000000000000002 in floating point: compare with slack


@dataclass
class Tables:
    """results.parquet and curves.parquet, plus any probe_<name> / spectra_<name> tables."""

    results: pd.DataFrame
    curves: pd.DataFrame
    extra: dict[str, pd.DataFrame] = field(default_factory=dict)
    source: Path | None = None

    def table(self, name: str) -> pd.DataFrame:
        """An extra table by file stem (e.g. "probe_spectrum"); empty when absent."""
        return self.extra.get(name, pd.DataFrame())


def load(directory: str | Path) -> Tables:
    """Every table of one collect in its output folder (those its manifest lists, when it
    has one); absent files give empty frames. A set that a kill during collect's write left
    half old, half new is refused (ValueError), never read as one."""
    directory = Path(directory)
    manifest = directory / MANIFEST
    mixed = stale(manifest)
    if mixed:
        raise ValueError(
            f"{', '.join(mixed)} in {directory} are not the ones its last collect wrote (it was "
            "stopped while writing): run python -m ttbench.collect again"
        )
    listed = manifest_files(manifest)

    def read(path: Path) -> pd.DataFrame:
        return pd.read_parquet(path) if path.is_file() else pd.DataFrame()

    extra = {
        p.stem: pd.read_parquet(p)
        for p in sorted(directory.glob("*.parquet"))
        if p.stem not in ("results", "curves") and (listed is None or p.name in listed)
    }
    curves = read(directory / "curves.parquet")
    if len(curves):
        curves = check_curves(curves)
    return Tables(read(directory / "results.parquet"), curves, extra, directory)


# --- selection ---------------------------------------------------------------------------


def preset_rows(
    frame: pd.DataFrame,
    presets: str | Sequence[str],
    fallback: Callable[[pd.DataFrame], pd.DataFrame] | None = None,
) -> pd.DataFrame:
    """The rows of the given experiment presets when there are any, otherwise
    `fallback(frame)` (all rows when None), so a plain sweep still fills every figure."""
    presets = [presets] if isinstance(presets, str) else list(presets)
    if len(frame) and "cfg.preset" in frame:
        chosen = frame[frame["cfg.preset"].isin(presets)]
        if len(chosen):
            return chosen
    return fallback(frame) if fallback is not None else frame


def optim_rows(name: str) -> Callable[[pd.DataFrame], pd.DataFrame]:
    """A fallback choosing the rows fine-tuned with the given optimiser (gd | sgd)."""

    def pick(frame: pd.DataFrame) -> pd.DataFrame:
        if "cfg.optim.name" not in frame:
            return frame.iloc[:0]
        return frame[frame["cfg.optim.name"] == name]

    return pick


def eps_rows(rows: pd.DataFrame, eps: Iterable[float]) -> pd.DataFrame:
    """Rows whose eps is one of the given values (compared with a tolerance)."""
    eps = np.asarray(list(eps), dtype=float)
    return rows[np.isclose(rows["eps"].to_numpy(float)[:, None], eps[None, :]).any(axis=1)]


def within(rows: pd.DataFrame, tol: float) -> pd.Series:
    """Whether each point's prediction is within tol * t_real of the real time; on a run that
    exploded, whether it says "diverges"."""
    t_real = rows["t_real"].astype(float)
    t_pred = rows["t_pred"].astype(float)
    timed = t_pred.notna() & ((t_pred - t_real).abs() <= tol * t_real + _SLACK)
    return timed.where(~exploded(rows), predicted_divergence(rows))


def share_within(
    rows: pd.DataFrame, by: Sequence[str] = ("predictor",), tols: Sequence[float] = TOLERANCES
) -> pd.DataFrame:
    """Share of points within each tolerance, and the number of points, per group."""
    rows = valid(rows)
    frame = rows[list(by)].copy()
    names = [f"within_{round(t * 100)}" for t in tols]
    for name, tol in zip(names, tols, strict=True):
        frame[name] = within(rows, tol).astype(float)
    out = frame.groupby(list(by), sort=True).agg(
        **{n: (n, "mean") for n in names}, n=(names[0], "size")
    )
    return out.reset_index()


def mean_ci(rows: pd.DataFrame, by: Sequence[str], value: str = "abs_err", level: float = 0.95):
    """Mean of `value` per group with the Student-t confidence interval of the mean (NaN
    bounds for a group of one)."""
    rows = rows[rows[value].notna()]
    g = rows.groupby(list(by), sort=True)[value]
    out = g.agg(mean="mean", sd="std", n="size").reset_index()
    half = stats.t.ppf(0.5 + level / 2, out["n"] - 1) * out["sd"] / np.sqrt(out["n"])
    out["lo"] = out["mean"] - half
    out["hi"] = out["mean"] + half
    return out.drop(columns="sd")


# --- Table 1 -----------------------------------------------------------------------------


def regime(lr: float, high_lr: float = HIGH_LR) -> str:
    return "high" if lr >= high_lr else "low"


def table1_rows(results: pd.DataFrame, predictor: str = "ode", kind: str = "loss"):
    """Table 1's points: preset table1 (else every GD run), one predictor, one curve kind."""
    rows = preset_rows(results, "table1", optim_rows("gd"))
    if not len(rows):
        return rows
    rows = valid(rows[(rows["predictor"] == predictor) & (rows["kind"] == kind)])
    return rows[rows["abs_err"].notna() & ~exploded(rows)]  # an error in steps needs two times


def table1(
    results: pd.DataFrame,
    eps: Sequence[float] = TABLE1_EPS,
    predictor: str = "ode",
    kind: str = "loss",
) -> pd.DataFrame:
    """Mean absolute error in steps, rows = dataset, columns = (eps, lr). Points whose
    predicted time is missing have no error in steps and are left out."""
    rows = eps_rows(table1_rows(results, predictor, kind), eps)
    if not len(rows):
        return pd.DataFrame()
    rows = rows.assign(eps=rows["eps"].round(6))
    return rows.pivot_table(
        index="dataset", columns=["eps", "cfg.lr"], values="abs_err", aggfunc="mean"
    ).sort_index(axis=1)


def _cell(v: float) -> str:
    return "-" if pd.isna(v) else f"{v:.1f}"


def _eps_label(e: float) -> str:
    return f"eps = {e * 100:g}%"


def _lr_label(lr: float, high_lr: float) -> str:
    return f"lr {lr:g} ({regime(lr, high_lr)})"


def table1_markdown(frame: pd.DataFrame, high_lr: float = HIGH_LR) -> str:
    """Markdown, one header row naming eps and the learning rate with its regime."""
    head = ["dataset"] + [f"{_eps_label(e)}, {_lr_label(lr, high_lr)}" for e, lr in frame.columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" + "---:|" * len(frame.columns)]
    for name, row in frame.iterrows():
        lines.append("| " + " | ".join([str(name), *map(_cell, row.to_numpy())]) + " |")
    return "\n".join(lines) + "\n"


def table1_latex(frame: pd.DataFrame, high_lr: float = HIGH_LR) -> str:
    """A booktabs tabular: eps spanning its learning rates, as the paper's Table 1."""
    eps = list(dict.fromkeys(e for e, _ in frame.columns))
    spans = [sum(1 for e2, _ in frame.columns if e2 == e) for e in eps]
    top = " & ".join(
        rf"\multicolumn{{{n}}}{{c}}{{$\epsilon = {e * 100:g}\%$}}"
        for e, n in zip(eps, spans, strict=True)
    )
    rules, start = [], 2
    for n in spans:
        rules.append(rf"\cmidrule(lr){{{start}-{start + n - 1}}}")
        start += n
    sub = " & ".join(f"{lr:g} ({regime(lr, high_lr)})" for _, lr in frame.columns)
    body = [
        " & ".join([str(name).replace("_", r"\_"), *map(_cell, row.to_numpy())]) + r" \\"
        for name, row in frame.iterrows()
    ]
    return "\n".join(
        [
            r"\begin{tabular}{l" + "r" * len(frame.columns) + "}",
            r"\toprule",
            rf"TT error (steps) & {top} \\",
            "".join(rules),
            rf"Dataset / lr & {sub} \\",
            r"\midrule",
            *body,
            r"\bottomrule",
            r"\end{tabular}",
            "",
        ]
    )


# --- costs, coverage, per-dataset ----------------------------------------------------------


def costs(results: pd.DataFrame) -> pd.DataFrame:
    """One row per (run, predictor): wall-clock of fine-tuning, of the prediction (what its
    T_eps needed: Theta, the real steps a refined one observed, the stability, the solve) and
    of the signals its validity reads on the fine-tuning (`signals_s`: drift, watch; 0 in
    tables written before they were counted apart), and the ratios fine-tuning / prediction
    (`ratio`) and fine-tuning / (prediction + signals) (`ratio_signals`)."""
    cols = ["run", "predictor", "dataset", "device", "finetune_s", "predict_s", "signals_s"]
    if not len(results):
        return pd.DataFrame(columns=[*cols, "ratio", "ratio_signals"])
    return _with_ratios(results.reindex(columns=cols).drop_duplicates(["run", "predictor"]))


def _with_ratios(per: pd.DataFrame) -> pd.DataFrame:
    """Rows of one (run, predictor) each, with `ratio` and `ratio_signals` (costs)."""
    per = per.reset_index(drop=True)
    signals = per.reindex(columns=["signals_s"])["signals_s"].astype(float).fillna(0.0)
    finetune, predict = per["finetune_s"].astype(float), per["predict_s"].astype(float)
    return per.assign(
        signals_s=signals, ratio=finetune / predict, ratio_signals=finetune / (predict + signals)
    )


def cost_summary(results: pd.DataFrame, by: Sequence[str] = ("device", "predictor")):
    """Median wall-clocks of fine-tuning, prediction and signals, and median ratios, per
    group."""
    c = costs(results)
    return (
        c.groupby(list(by), sort=True)
        .agg(
            runs=("run", "nunique"),
            finetune_s=("finetune_s", "median"),
            predict_s=("predict_s", "median"),
            signals_s=("signals_s", "median"),
            ratio=("ratio", "median"),
            ratio_signals=("ratio_signals", "median"),
        )
        .reset_index()
    )


def coverage(results: pd.DataFrame, by: Sequence[str] = ("predictor", "kind")) -> pd.DataFrame:
    """Per group, the share of points whose real T_eps fell inside each band (the run's, the
    sweep's leave-one-out one, the stochastic paths'), and the run band's median width."""
    out = []
    for name, prefix in (*BANDS.items(), ("paths", "path_q")):
        if not len(results) or f"{prefix}05" not in results:
            continue
        stats_ = band_stats(results, by, prefix).add_prefix(f"{name}_")
        out.append(stats_)
    if not out:
        return pd.DataFrame(columns=[*by, "run_coverage", "run_n"])
    frame = pd.concat(out, axis=1)
    frame = frame.loc[:, frame.notna().any()]
    return frame[frame.filter(like="_n").fillna(0).sum(axis=1) > 0].reset_index()


def per_dataset(results: pd.DataFrame, kind: str = "loss") -> pd.DataFrame:
    """Per (dataset, optimiser, predictor): runs, points, mean absolute error in steps,
    median relative error and the shares within the paper's tolerances."""
    rows = valid(results[results["kind"] == kind]) if len(results) else results
    by = ["dataset", "cfg.optim.name", "predictor"]
    if not len(rows):
        return pd.DataFrame()
    base = rows.groupby(by, sort=True).agg(
        runs=("run", "nunique"), mae_steps=("abs_err", "mean"), median_rel=("rel_err", "median")
    )
    shares = share_within(rows, by).set_index(by)
    return base.join(shares).reset_index().rename(columns={"cfg.optim.name": "optim"})


# --- curves --------------------------------------------------------------------------------


def runs_frame(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per run with its config columns (the first row of each run)."""
    return rows.drop_duplicates("run").reset_index(drop=True) if len(rows) else rows


def runs_with_curves(tables: Tables, rows: pd.DataFrame) -> pd.DataFrame:
    """One row per run of `rows` that has curves in curves.parquet."""
    runs = runs_frame(rows)
    if not len(runs) or not len(tables.curves):
        return runs.iloc[:0] if len(runs) else runs
    return runs[runs["run"].isin(set(tables.curves["run"]))]


def _of_run(curves: pd.DataFrame, run: str) -> pd.DataFrame:
    return curves[curves["run"] == run] if len(curves) else curves


def run_curves(curves: pd.DataFrame, run: str) -> dict[str, pd.DataFrame]:
    """{curve name: its rows sorted by step} for one run (its bands left out)."""
    part = _of_run(curves, run)
    if not len(part):
        return {}
    part = part[part["quantile"].isna()]
    return {str(k): v.sort_values("step") for k, v in part.groupby("curve", sort=False)}


def run_bands(curves: pd.DataFrame, run: str) -> dict[str, tuple[pd.DataFrame, pd.DataFrame]]:
    """{predictor: (lowest, highest) quantile's rows sorted by step}: its per-step band."""
    part = _of_run(curves, run)
    if not len(part):
        return {}
    part = part[part["quantile"].notna()]
    out = {}
    for name, rows in part.groupby("curve", sort=False):
        lo, hi = rows["quantile"].min(), rows["quantile"].max()
        pick = (rows[rows["quantile"] == q].sort_values("step") for q in (lo, hi))
        out[str(name)] = tuple(pick)
    return out


def markdown(frame: pd.DataFrame, floatfmt: str = ".3g", percent: Iterable[str] = ()) -> str:
    """A pipe table without the optional tabulate dependency; `percent` columns as %."""
    percent = set(percent)

    def fmt(col: str, v) -> str:
        if v is None or (isinstance(v, float) and np.isnan(v)):
            return "-"
        if col in percent:
            return f"{v:.0%}"
        if isinstance(v, float | np.floating):
            return format(v, floatfmt)
        return str(v)

    cols = list(frame.columns)
    lines = ["| " + " | ".join(map(str, cols)) + " |", "|" + "---|" * len(cols)]
    for row in frame.itertuples(index=False):
        lines.append("| " + " | ".join(fmt(c, v) for c, v in zip(cols, row, strict=True)) + " |")
    return "\n".join(lines) + "\n"


# --- the fidelity evaluation: regimes, predictors, bands, signals, cost ------------------------


def regimes(rows: pd.DataFrame) -> pd.Series:
    """A readable regime per row: model (when not the default as pretrained), optimiser and
    batch size, learning rate, momentum."""

    def name(r) -> str:
        parts = []
        model = r.get("cfg.model.name", "small_resnet")
        scale = r.get("cfg.model.pretrain.conv_scale", 1.0)
        if model != "small_resnet":
            parts.append(str(model))
        elif pd.notna(scale) and scale != 1:
            parts.append(f"lazy x{scale:g}")
        optim = str(r.get("cfg.optim.name", "gd"))
        if optim == "sgd":
            optim += f" B={r.get('cfg.optim.batch_size'):g}"
        parts += [optim, f"lr={r['cfg.lr']:g}", f"m={r['cfg.momentum']:g}"]
        return " ".join(parts)

    runs = rows.drop_duplicates("run")
    names = {run: name(r) for run, r in zip(runs["run"], runs.to_dict("records"), strict=True)}
    return rows["run"].map(names)


BANDS = {"run": "q", "sweep": "sweep_q"}  # the run's band, and collect's leave-one-out band


def band_stats(rows: pd.DataFrame, by: Sequence[str], prefix: str = "q") -> pd.DataFrame:
    """Per group, over scorable points with a band (columns <prefix>05, <prefix>95): the share
    whose real time lies inside (a run that exploded is inside only a band open to "never"),
    the band's median width in steps, and `unknown`: the points with a predicted time but no
    band (wider than the budget, ttbench.bands.WIDTH)."""
    lo_col, hi_col = f"{prefix}05", f"{prefix}95"
    rows = valid(rows)
    if lo_col not in rows:
        return pd.DataFrame(columns=["coverage", "width", "n", "unknown"])
    unknown = (rows["t_pred"].notna() & rows[lo_col].isna()).groupby([rows[b] for b in by]).sum()
    rows = rows[rows[lo_col].notna()]
    lo, hi = rows[lo_col].astype(float), rows[hi_col].astype(float)
    t = rows["t_real"].astype(float)
    inside = ((t >= lo) & (hi.isna() | (t <= hi))).where(~exploded(rows), hi.isna() & lo.notna())
    g = rows.assign(_in=inside.astype(float), _w=hi - lo).groupby(list(by))
    out = pd.DataFrame({"coverage": g["_in"].mean(), "width": g["_w"].median(), "n": g.size()})
    return out.join(unknown.rename("unknown"), how="outer")


def fidelity(results: pd.DataFrame, by: Sequence[str] = ("regime", "predictor")) -> pd.DataFrame:
    """Per group: shares of loss and error T_eps within 13% and 20%, the same for the band's
    median q50 as the prediction (loss_13_q50: the calibration's bias correction), the shares
    of the points the run trusted and of those it flagged, the points scored and left out,
    coverage and median width (steps) of the run's band and of the sweep's leave-one-out band
    (loss T_eps), and the median cost ratio fine-tuning / prediction."""
    if not len(results):
        return pd.DataFrame()
    rows = results.assign(regime=regimes(results))
    frames = []
    for kind in ("loss", "error"):
        part = share_within(rows[rows["kind"] == kind], by)
        frames.append(
            part.rename(
                columns={"within_13": f"{kind}_13", "within_20": f"{kind}_20", "n": f"n_{kind}"}
            ).set_index(list(by))
        )
    out = frames[0].join(frames[1], how="outer")
    gone = rows[rows["kind"] == "loss"]
    if "q50" in gone:  # the band's median as the prediction: the bias its calibration corrects
        median = gone.assign(t_pred=gone["q50"].where(gone["q50"].notna(), gone["t_pred"]))
        out["loss_13_q50"] = share_within(median, by).set_index(list(by))["within_13"]
    if "trusted" in gone:  # the points a run flagged "not trustworthy", in a column of their own
        flagged = gone["trusted"].astype("boolean").fillna(True)
        for name, part in (("trusted", gone[flagged]), ("flagged", gone[~flagged])):
            shares = share_within(part, by).set_index(list(by))
            out[f"loss_13_{name}"] = shares["within_13"]
            out[f"n_{name}"] = shares["n"]
    kept = valid(gone)
    out["left_out"] = gone.groupby(list(by)).size().sub(kept.groupby(list(by)).size(), fill_value=0)
    for name, prefix in BANDS.items():
        stats_ = band_stats(gone, by, prefix)
        out[f"{name}_coverage"] = stats_["coverage"]
        out[f"{name}_width"] = stats_["width"]
        if name == "run":
            out["run_unknown"] = stats_["unknown"]
    per = _with_ratios(rows.drop_duplicates(["run", "predictor"])).groupby(list(by))
    out["cost_ratio"] = per["ratio"].median()
    out["cost_ratio_signals"] = per["ratio_signals"].median()
    return out.reset_index()


def announcements(results: pd.DataFrame, by: Sequence[str] = ()) -> pd.DataFrame:
    """Per group, the watch's forecast (ttbench.core.stability) against what each run did:
    catapults and explosions, and how many of them it announced before the loss spiked
    (forecast_at < real_spike_at); explosions it called "diverges"; runs that converged without
    a spike, and how many it announced anyway (false alarms); catapults it called "diverges"."""
    cols = ["catapults", "catapults_announced", "explosions", "explosions_announced"]
    cols += ["explosions_diverges", "converged", "false_alarms", "catapults_diverges"]
    if not len(results) or "forecast" not in results:
        return pd.DataFrame(columns=[*by, *cols])
    runs = results.drop_duplicates("run")
    runs = runs.assign(regime=regimes(runs)) if "regime" in by else runs
    said = runs["forecast"].fillna("converges")
    early = runs["forecast_at"].astype(float) < runs["real_spike_at"].astype(float)
    outcome = runs["real_outcome"]
    flags = pd.DataFrame(
        {
            "catapults": outcome == "catapult",
            "catapults_announced": (outcome == "catapult") & early,
            "explosions": outcome == "exploded",
            "explosions_announced": (outcome == "exploded") & early,
            "explosions_diverges": (outcome == "exploded") & (said == "diverges"),
            "converged": outcome == "converged",
            "false_alarms": (outcome == "converged") & (said != "converges"),
            "catapults_diverges": (outcome == "catapult") & (said == "diverges"),
        }
    ).astype(int)
    if not by:
        return flags.sum().to_frame().T
    return flags.groupby([runs[b] for b in by]).sum().reset_index()


CHAIN = ("relin_half", "relin", "relin_2k", "relin_4k", "relin_settled")


def following(results: pd.DataFrame, by: Sequence[str] = ()) -> pd.DataFrame:
    """Predictions that follow the run: per re-linearisation of the chain (CHAIN: k/2, k, 2k,
    4k, after a spike) the median step it started from, its share of loss T_eps within 13% on
    the points it had to predict (real T_eps after its step), and on the same points the
    shares of `constant` (the other seeds) and of `relin` (k)."""
    rows = valid(results[results["kind"] == "loss"]) if len(results) else results
    out = []
    if not len(rows):
        return pd.DataFrame()
    rows = rows.assign(regime=regimes(rows)) if "regime" in by else rows
    for keys, part in rows.groupby(list(by)) if by else [((), rows)]:
        for name in CHAIN:
            mine = part[part["predictor"] == name]
            if not len(mine):
                continue
            same = mine[["run", "eps"]]
            row = dict(zip(by, keys if isinstance(keys, tuple) else (keys,), strict=True))
            row |= {"predictor": name, "k": float(mine["k"].median()), "n": len(mine)}
            row["within_13"] = float(within(mine, GD_TOLERANCE).mean())
            for other in ("constant", "relin"):
                theirs = part[part["predictor"] == other].merge(same, on=["run", "eps"])
                row[f"{other}_13"] = (
                    float(within(theirs, GD_TOLERANCE).mean()) if len(theirs) else None
                )
            out.append(row)
    return pd.DataFrame(out)


OBSERVED = (0.05, 0.10, 0.20, 0.40, 1.0)  # the k = 5, 10, 20, 40% of T, and beyond


def observed(results: pd.DataFrame, edges: Sequence[float] = OBSERVED) -> pd.DataFrame:
    """The chain's accuracy against the fraction of the run it had observed: every CHAIN
    prediction of a loss T_eps, binned by k / T (its step over the real T_eps, so "up to 5%"
    is a prediction made in the first 5% of the run), with its share within 13% and, on the
    same points, `constant`'s. This is also what an ETA in a training loop would offer."""
    rows = valid(results[results["kind"] == "loss"]) if len(results) else results
    if not len(rows) or "k" not in rows:
        return pd.DataFrame()
    mine = rows[rows["predictor"].isin(CHAIN) & ~exploded(rows)]
    if not len(mine):
        return pd.DataFrame()
    fraction = mine["k"].astype(float) / mine["t_real"].astype(float)
    labels = [f"{a:.0%}-{b:.0%}" for a, b in zip((0.0, *edges[:-1]), edges, strict=True)]
    mine = mine.assign(observed=pd.cut(fraction, [0.0, *edges], labels=labels))
    constant = rows[rows["predictor"] == "constant"]
    out = []
    for label, part in mine.groupby("observed", observed=True):
        theirs = constant.merge(part[["run", "eps"]], on=["run", "eps"])
        out.append({
            "observed": label, "n": len(part),
            "within_13": float(within(part, GD_TOLERANCE).mean()),
            "constant_13": float(within(theirs, GD_TOLERANCE).mean()) if len(theirs) else None,
        })  # fmt: skip
    return pd.DataFrame(out)


def trust(results: pd.DataFrame, far: float = 0.5) -> pd.DataFrame:
    """Per predictor, over runs that did not explode: how many were more than `far` off (the
    median relative error of their loss T_eps, as `run_error`), how many of those the run
    flagged "not trustworthy", how many it flagged in all, and the Spearman correlation of the
    validity (expected error) with the error."""
    rows = results[results["kind"] == "loss"] if len(results) else results
    if not len(rows) or "validity" not in rows:
        return pd.DataFrame()
    out = []
    for name, part in rows.groupby("predictor", sort=False):
        part = part[~exploded(part)]
        error = run_error(part)
        first = part.groupby("run").first()
        v = first["validity"].astype(float)
        flagged = pd.Series(False, index=first.index)
        if "trusted" in first:
            flagged = ~first["trusted"].astype("boolean").fillna(True)
        both = pd.DataFrame({"v": v, "e": error, "f": flagged}).dropna(subset=["e"])
        if not len(both):
            continue
        off = both["e"] > far
        ranked = both.dropna(subset=["v"])
        rho = (
            stats.spearmanr(ranked["v"], ranked["e"]).statistic
            if len(ranked) >= 3 and ranked["v"].nunique() > 1
            else np.nan
        )
        out.append(
            {
                "predictor": name,
                "runs": len(both),
                "off": int(off.sum()),
                "off_flagged": int((off & both["f"]).sum()),
                "flagged": int(both["f"].sum()),
                "spearman": rho,
            }
        )
    return pd.DataFrame(out)


def confusion(results: pd.DataFrame, by: Sequence[str] = ("predictor",)) -> pd.DataFrame:
    """Per group, runs counted by what the prediction said (converges: a T_eps, or diverges)
    against what the real run did (converged, catapult: spiked and recovered, exploded); runs
    whose explosion a refined predictor observed are left out. `misses`: "diverges" for a run
    that did not explode, and a finite prediction for one that did."""
    from ttbench.core.curves import OUTCOMES

    cols = [*by, "said", *OUTCOMES, "misses"]
    rows = valid(results[results["kind"] == "loss"]) if len(results) else results
    if not len(rows) or "real_outcome" not in rows:
        return pd.DataFrame(columns=cols)
    runs = rows.drop_duplicates(["run", *by])
    said = np.where(predicted_divergence(runs), "diverges", "converges")
    out = (
        runs.assign(said=said)
        .groupby([*by, "said", "real_outcome"], sort=True)
        .size()
        .unstack("real_outcome", fill_value=0)
        .reindex(columns=list(OUTCOMES), fill_value=0)
        .reset_index()
    )
    wrong = np.where(out["said"] == "diverges", out["converged"] + out["catapult"], out["exploded"])
    return out.assign(misses=wrong)[cols]


SIGNALS = ("validity", "drift", "kernel_change", "time_scale", "stability", "stability_prefix")


def run_error(rows: pd.DataFrame) -> pd.Series:
    """Per run, the median relative error of the loss T_eps over its scorable points, a missing
    prediction counting as 100%, as does a finite one for a run that exploded (0% when it said
    "diverges")."""
    rows = valid(rows[rows["kind"] == "loss"])
    err = rows["rel_err"].astype(float).fillna(1.0).clip(upper=1.0)
    err = err.where(~exploded(rows), (~predicted_divergence(rows)).astype(float))
    return err.groupby(rows["run"]).median()


def validity(results: pd.DataFrame, predictors: Sequence[str] = ("ode", "discrete")):
    """Spearman rank correlation over runs between each signal and a plain prediction's error
    (`run_error`): the prediction's own validity (its disagreement with the refined one), and
    the run's signals (for time_scale its distance from 1, |log s|)."""
    out = []
    for name in predictors:
        part = results[results["predictor"] == name] if len(results) else results
        if not len(part):
            continue
        error = run_error(part)
        first = part.groupby("run").first()
        for signal in SIGNALS:
            col = signal if signal == "validity" else f"signal.{signal}"
            if col not in first or first[col].isna().all():
                continue
            values = first[col].astype(float)
            if signal == "time_scale":
                values = np.log(values).abs()
            both = pd.DataFrame({"signal": values, "error": error}).dropna()
            if len(both) < 3:
                continue
            rho = stats.spearmanr(both["signal"], both["error"]).statistic
            out.append({"predictor": name, "signal": signal, "spearman": rho, "runs": len(both)})
    return pd.DataFrame(out, columns=["predictor", "signal", "spearman", "runs"])
