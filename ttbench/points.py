"""Which rows of a results table are scorable points, shared by the figures and by the band
calibration, and what counts as a hit.

A point of a run that converged (catapults included) is scored on its time: the real T_eps
exists and is after step 0 (a flat curve has nothing to predict). A point of a run that
exploded is scored on the divergence: a prediction that says "diverges" is right, a finite
T_eps is a miss. For a refined predictor, points it observed rather than predicted are left
out: real T_eps <= k, or an explosion that had stopped the run by step k."""

from __future__ import annotations

import pandas as pd

from ttbench.core.curves import EXPLODED
from ttbench.predictors import PREDICTORS

# The paper's headline tolerances: a GD prediction within 13% of the real T_eps, SGD within 20%
GD_TOLERANCE, SGD_TOLERANCE = 0.13, 0.20
TOLERANCES = (GD_TOLERANCE, SGD_TOLERANCE)


def exploded(rows: pd.DataFrame) -> pd.Series:
    """Whether each row's real run exploded (tables from before outcomes: real_diverged)."""
    if "real_outcome" in rows:
        return (rows["real_outcome"] == EXPLODED).fillna(False).astype(bool)
    if "real_diverged" in rows:
        return rows["real_diverged"].fillna(False).astype(bool)
    return pd.Series(False, index=rows.index)


def predicted_divergence(rows: pd.DataFrame) -> pd.Series:
    """Whether each row's prediction says "diverges" (no column: never)."""
    if "pred_diverged" not in rows:
        return pd.Series(False, index=rows.index)
    return rows["pred_diverged"].fillna(False).astype(bool)


def _observed(rows: pd.DataFrame) -> pd.Series:
    """Points a refined predictor observed rather than predicted."""
    prefix = rows["predictor"].map(lambda n: n in PREDICTORS and PREDICTORS[n].prefix)
    k = rows["cfg.refine.steps"].fillna(0) if "cfg.refine.steps" in rows else 0
    if "k" in rows:  # the step each refined prediction started from (records since outcomes)
        k = rows["k"].astype(float).fillna(k)
    stopped = rows["real_stopped_at"] if "real_stopped_at" in rows else float("nan")
    stopped = pd.Series(stopped, index=rows.index, dtype=float)
    seen = (rows["t_real"] <= k) | (exploded(rows) & ~(stopped > k))
    return prefix.astype(bool) & seen


def valid(rows: pd.DataFrame) -> pd.DataFrame:
    """Points that can be scored (module docstring)."""
    if not len(rows):
        return rows
    ex = exploded(rows)
    timed = rows["t_real"].notna() & (rows["t_real"] > 0) & ~ex
    return rows[(timed | ex) & ~_observed(rows)]


def left_out(rows: pd.DataFrame) -> pd.DataFrame:
    """Per predictor, the points `valid` leaves out, by reason."""
    if not len(rows):
        return pd.DataFrame(columns=["predictor", "no_real_time", "flat", "observed"])
    ex = exploded(rows)
    no_time, flat = ~ex & rows["t_real"].isna(), ~ex & (rows["t_real"] == 0)
    reasons = pd.DataFrame(
        {
            "predictor": rows["predictor"],
            "no_real_time": no_time,
            "flat": flat,
            "observed": _observed(rows) & ~no_time & ~flat,
        }
    )
    return reasons.groupby("predictor", sort=False).sum().reset_index()
