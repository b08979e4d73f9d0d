"""Which rows of a results table are scorable points, shared by the figures and by the band
calibration: the real run did not diverge and reached its T_eps after step 0 (a flat curve has
nothing to predict), and, for a refined predictor, after the k steps it observed (those were
observed, not predicted)."""

from __future__ import annotations

import pandas as pd

from ttbench.predictors import PREDICTORS


def _observed(rows: pd.DataFrame) -> pd.Series:
    """Points a refined predictor observed rather than predicted: real T_eps <= k."""
    prefix = rows["predictor"].map(lambda n: n in PREDICTORS and PREDICTORS[n].prefix)
    k = rows["cfg.refine.steps"].fillna(0) if "cfg.refine.steps" in rows else 0
    return prefix.astype(bool) & (rows["t_real"] <= k)


def valid(rows: pd.DataFrame) -> pd.DataFrame:
    """Points that can be scored: the real run did not diverge and reached its T_eps after
    step 0 (a flat curve has nothing to predict), and, for a refined predictor, after the k
    steps it observed."""
    if not len(rows):
        return rows
    keep = rows["t_real"].notna() & (rows["t_real"] > 0)
    if "real_diverged" in rows:
        keep &= ~rows["real_diverged"].fillna(False).astype(bool)
    return rows[keep & ~_observed(rows)]


def left_out(rows: pd.DataFrame) -> pd.DataFrame:
    """Per predictor, the points `valid` leaves out, by reason."""
    if not len(rows):
        return pd.DataFrame(columns=["predictor", "no_real_time", "flat", "diverged", "observed"])
    diverged = rows["real_diverged"].fillna(False).astype(bool)
    reasons = pd.DataFrame(
        {
            "predictor": rows["predictor"],
            "diverged": diverged,
            "no_real_time": ~diverged & rows["t_real"].isna(),
            "flat": ~diverged & (rows["t_real"] == 0),
            "observed": ~diverged & (rows["t_real"] > 0) & _observed(rows),
        }
    )
    return reasons.groupby("predictor", sort=False).sum().reset_index()
