"""The fidelity evaluation as one markdown page (fidelity.md): how far each predictor can be
trusted, per regime (model, optimiser, learning rate, momentum), with its bands, its cost and
how well the validity signals rank its errors; from the fidelity presets' rows when the table
has any, else from every row."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ttbench.figures import tables as tb
from ttbench.figures.style import Skip, ordered, require
from ttbench.points import left_out
from ttbench.predictors import PREDICTORS

PRESETS = (
    "fidelity_gd",
    "fidelity_lazy",
    "fidelity_sgd",
    "fidelity_resnet",
    "fidelity_resnet_strong",
    "fidelity_vit",
    "own_weights",
)
_PERCENT = (
    "loss_13",
    "loss_20",
    "error_13",
    "error_20",
    "loss_13_q50",
    "loss_13_trusted",
    "loss_13_flagged",
    "run_coverage",
    "sweep_coverage",
    "within_13",
    "constant_13",
    "relin_13",
)
_COLUMNS = [
    "loss_13",
    "loss_20",
    "error_13",
    "error_20",
    "n_loss",
    "loss_13_q50",
    "loss_13_trusted",
    "n_trusted",
    "loss_13_flagged",
    "n_flagged",
    "left_out",
    "run_coverage",
    "run_width",
    "run_unknown",
    "sweep_coverage",
    "sweep_width",
    "cost_ratio",
    "cost_ratio_signals",
]


def _ordered(frame: pd.DataFrame) -> pd.DataFrame:
    rank = {n: i for i, n in enumerate(ordered(frame["predictor"]))}
    keys = [c for c in ("regime",) if c in frame]
    return frame.sort_values(
        [*keys, "predictor"], key=lambda c: c.map(rank) if c.name == "predictor" else c
    )


def fidelity_markdown(results: pd.DataFrame) -> str:
    rows = tb.preset_rows(results, PRESETS)
    if not len(rows):
        raise Skip("no results")
    overall = _ordered(tb.fidelity(rows, by=("predictor",)))
    per_regime = _ordered(tb.fidelity(rows))
    plain = [n for n in ordered(rows["predictor"]) if n in PREDICTORS and not PREDICTORS[n].prefix]
    plain = [n for n in plain if not PREDICTORS[n].pooled]
    signals = tb.validity(rows, plain)
    gone = left_out(rows[rows["kind"] == "loss"])
    runs, seeds = rows["run"].nunique(), sorted(rows["cfg.seed"].dropna().unique())
    cols = [c for c in _COLUMNS if c in overall]
    return "\n".join(
        [
            "# Fidelity: how far each prediction can be trusted",
            "",
            f"{runs} runs, seeds {', '.join(f'{s:g}' for s in seeds)}. A point is one (run, "
            "predictor, curve kind, eps); `loss_13` is the share of loss T_eps within 13% of "
            "the real one (`error_20`: error T_eps within 20%), over the points left after "
            "`left_out` (no or zero real time, or, for a refined predictor, "
            "a real time within the k steps it observed). `run_*`: the band a run reports "
            "(5-95%, calibrated by ttbench's shipped calibration); `sweep_*`: the band "
            "calibrated leave-one-out on the other runs of the sweep (ttbench.bands); width in "
            "steps (median). `cost_ratio`: fine-tuning wall-clock over the prediction's "
            "(the k real steps and every Theta included); `cost_ratio_signals`: over the "
            "prediction's and the signals' its validity reads on the fine-tuning (drift, watch).",
            "",
            "## Every regime together",
            "",
            tb.markdown(overall[["predictor", *cols]], percent=_PERCENT),
            "## Per regime",
            "",
            tb.markdown(per_regime[["regime", "predictor", *cols]], percent=_PERCENT),
            "## Following the run: re-linearised again as it proceeds",
            "",
            "Per re-linearisation (k/2, k, 2k, 4k, and once the loss has settled after a "
            "spike): the median step `k` it started from, its share of loss T_eps within 13% "
            "over the points it had to predict (real T_eps after its step), and on the same "
            "points the shares of `constant` and of `relin` (k).",
            "",
            tb.markdown(tb.following(rows), percent=_PERCENT) if len(tb.following(rows)) else "",
            tb.markdown(tb.following(rows, by=("regime",)), percent=_PERCENT)
            if len(tb.following(rows))
            else "No re-linearisations.\n",
            "Against the fraction of the run observed (k / T, the real T_eps): every "
            "re-linearisation's loss T_eps, binned by how much of the run it had seen.",
            "",
            tb.markdown(tb.observed(rows), percent=_PERCENT)
            if len(tb.observed(rows))
            else "No re-linearisations.\n",
            "## Trust: the validity against the error, per predictor",
            "",
            "Runs that did not explode; `off`: runs whose median relative error of loss T_eps "
            "is above 50%, `off_flagged`: of those, the ones the run said were not trustworthy; "
            "`flagged`: all the runs it said so of; `spearman`: of the validity (expected "
            "error) with the error.",
            "",
            tb.markdown(tb.trust(rows), ".2f") if len(tb.trust(rows)) else "No validity.\n",
            "## The watch: spikes and explosions announced before they happen",
            "",
            "Runs by what they did (a catapult spiked and recovered; an explosion did not) and "
            "what the stability watched along the fine-tuning announced: `*_announced` before "
            "the loss spiked, `explosions_diverges` called an explosion; `false_alarms`: runs "
            "that never spiked but were announced; `catapults_diverges`: catapults called "
            "explosions.",
            "",
            tb.markdown(tb.announcements(rows)) if "forecast" in rows else "No watch.\n",
            tb.markdown(tb.announcements(rows, by=("regime",))) if "forecast" in rows else "",
            "## Divergence: what each prediction said against what the real run did",
            "",
            "Runs per predictor: `converges` (it gave T_eps) or `diverges`, against the real "
            "run's outcome: converged, catapult (spiked, then recovered) or exploded. A finite "
            "T_eps for a run that exploded is a miss, as is `diverges` for one that did not.",
            "",
            tb.markdown(tb.confusion(rows)),
            "## Validity: Spearman correlation of each signal with the plain prediction's error",
            "",
            "Per run, the error is the median relative error of its loss T_eps (a missing "
            "prediction counts as 100%); `validity` is the prediction's disagreement with the "
            "run's refined prediction.",
            "",
            tb.markdown(signals, ".2f") if len(signals) else "No signals.\n",
            "## Points left out (loss T_eps)",
            "",
            tb.markdown(gone),
        ]
    )


def fidelity_write(tables: tb.Tables, out_path: Path) -> None:
    require(tables.results, "results table", ("t_real", "t_pred", "predictor"))
    out = Path(out_path).with_suffix(".md")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(fidelity_markdown(tables.results))
