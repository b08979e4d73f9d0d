"""Validity: how far each prediction of a run can be trusted, from what the run itself measured,
and when to say "I don't know".

Agreement with the refined prediction alone is not enough: where the network leaves its
linearisation both are wrong together (a ResNet-18 fine-tuned at a large learning rate: 11%
disagreement, 100% off). So a prediction's validity is its expected error, |log((t_real + 1) /
(t_pred + 1))| over its loss T_eps, predicted from every signal the run has (`features`):

* disagreement: for a plain prediction, its median |log| gap to the refined reference (relin,
  else relin_sgd, when it did not diverge; `disagreement`); 0 for a refined one;
* kernel_change, drift, time_scale (|log s|): how far the real network left its linearisation
  in the first k steps (ttbench.prediction);
* instability: log(1 + s), s the largest stability at w0 and watched over the first k steps
  (ttbench.core.stability);
* spike: 1 when the loss spiked within those steps, or the watch announced a spike there.

The model is linear in the features with non-negative weights (scipy.optimize.nnls: each
signal can only add doubt), one set per family (plain, refined) with an intercept per
predictor, fitted on development runs only (`fit`, by `python -m ttbench.bands`; shipped in
calibration.json). Before training (a plan, `ttbench.predict_job`, the Tracker at w0) a plain
prediction has none of these but the stability at w0: reading the others as 0 would claim the
agreement no run has shown yet. Its expected error comes from a third family, BEFORE, fitted
on the same predictions with only that feature (`before_features`): the mean error of a plain
prediction at that stability. A prediction whose expected error is above its predictor's
`limit` is flagged "not trustworthy": the limit is the lowest expected error at which the
development runs' predictions that were more than 50% off are all flagged (so a warning says
"this one may well be more than 50% off"); BEFORE has no limit (its one signal cannot tell).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.optimize import nnls

from ttbench.predictors import PREDICTORS

FEATURES = ("disagreement", "kernel_change", "drift", "time_scale", "instability", "spike")
FAMILIES = ("plain", "refined")
BEFORE = "before"  # a plain prediction made before training: stability at w0 its only signal
REFERENCES = ("relin", "relin_sgd")  # the refined predictions a plain one is compared with
FAR = math.log(1.5)  # "more than 50% off"


def family(name: str) -> str:
    return "refined" if PREDICTORS[name].prefix else "plain"


def before(name: str) -> str:
    """The key of a plain predictor's before-training cell (its intercept, its bands)."""
    return f"{name}@{BEFORE}"


def before_features(signals: Mapping[str, float]) -> np.ndarray:
    """The feature vector of a prediction made before training: the stability at w0 alone."""
    s = signals.get("stability", 0.0)
    unstable = math.log1p(s) if math.isfinite(s) else math.log1p(1e6)
    return np.array([0.0, 0.0, 0.0, 0.0, unstable, 0.0])


def disagreement(t: Sequence[int | None], ref: Sequence[int | None], steps: int) -> float:
    """The median over eps of |log((t + 1) / (r + 1))| between a prediction's T_eps and a
    reference's; a missing time counts as 2 x steps."""

    def at(v: int | None) -> float:
        return 2.0 * steps if v is None else float(v)

    gaps = [abs(math.log((at(a) + 1) / (at(b) + 1))) for a, b in zip(t, ref, strict=True)]
    return float(np.median(gaps))


def features(
    times: Mapping[str, Sequence[int | None]],
    ks: Mapping[str, int | None],
    signals: Mapping[str, float],
    spike_at: int | None,
    announced_at: int | None,
    steps: int,
    refine_steps: int,
) -> dict[str, np.ndarray]:
    """Per prediction (those in `times`: its loss T_eps per eps; `ks`: the step a refined one
    starts from), its feature vector in FEATURES' order (module docstring). `signals`: the
    run's (ttbench.prediction); `spike_at`, `announced_at`: the real loss's spike and the
    watch's announcement (None when none)."""
    ref = next((times[n] for n in REFERENCES if n in times and set(times[n]) != {None}), None)
    kc = math.log1p(signals.get("kernel_change", 0.0))
    drift = math.log1p(signals.get("drift", 0.0))
    ts = signals.get("time_scale")
    ts = abs(math.log(ts)) if ts else 0.0
    s = max(signals.get("stability", 0.0), signals.get("stability_prefix", 0.0))
    unstable = math.log1p(s) if math.isfinite(s) else math.log1p(1e6)
    out = {}
    for name, t in times.items():
        k = ks.get(name) if family(name) == "refined" else None
        seen = refine_steps if k is None else k
        v = disagreement(t, ref, steps) if ref is not None and k is None else 0.0
        spiked = any(a is not None and a <= seen for a in (spike_at, announced_at))
        out[name] = np.array([v, kc, drift, ts, unstable, float(spiked)])
    return out


@dataclass(frozen=True)
class Model:
    """Expected |log error| = the predictor's intercept + the family's weights . features, and
    the warning limit per predictor."""

    weights: dict[str, tuple[float, ...]]  # family -> one weight per feature
    intercepts: dict[str, float]  # predictor -> its error where every signal is 0
    limit: dict[str, float]  # predictor -> expected error above which "not trustworthy"

    def expected(self, name: str, f: np.ndarray) -> float | None:
        """`name` a predictor, or before(predictor) for a prediction made before training."""
        fam = BEFORE if name.endswith(before("")) else family(name)
        w, b = self.weights.get(fam), self.intercepts.get(name)
        return None if w is None or b is None else float(b + np.dot(w, f))

    def trusted(self, name: str, validity: float | None) -> bool:
        limit = self.limit.get(name)
        return validity is None or limit is None or validity < limit


def run_error(
    t: Sequence[int | None], real: Sequence[int | None], steps: int, after: int = 0
) -> float | None:
    """The median |log((t_real + 1) / (t_pred + 1))| over eps whose real time is after step
    `after` (what a refined prediction observed is not scored), a missing prediction counting
    as 2 x steps; None when there is none."""
    gaps = [
        abs(math.log((real_t + 1) / ((2.0 * steps if p is None else p) + 1)))
        for p, real_t in zip(t, real, strict=True)
        if real_t is not None and real_t > max(after, 0)
    ]
    return float(np.median(gaps)) if gaps else None


def table_features(results: pd.DataFrame) -> pd.DataFrame:
    """Per (run, predictor) of a results table: FEATURES and the actual error (`error`, as
    run_error, over loss T_eps), from the rows alone; runs that exploded are left out (their
    error is the divergence, scored apart)."""
    rows = results[(results["kind"] == "loss") & (results["predictor"].isin(list(PREDICTORS)))]
    rows = rows[~rows["predictor"].map(lambda n: PREDICTORS[n].pooled)]
    out = []
    for run, part in rows.groupby("run", sort=False):
        first = part.iloc[0]
        if first.get("real_outcome") == "exploded":
            continue
        part = part.sort_values("eps")
        by = {n: g for n, g in part.groupby("predictor", sort=False)}
        times = {n: [None if pd.isna(v) else v for v in g["t_pred"]] for n, g in by.items()}
        real = [None if pd.isna(v) else v for v in next(iter(by.values()))["t_real"]]
        ks = {n: _int(g["k"].iloc[0]) if "k" in g else None for n, g in by.items()}
        signals = {c[7:]: float(first[c]) for c in part if c.startswith("signal.")}
        signals = {k: v for k, v in signals.items() if math.isfinite(v)}
        steps, k = int(first["cfg.steps"]), int(first.get("cfg.refine.steps") or 0)
        f = features(
            times,
            ks,
            signals,
            _int(first.get("real_spike_at")),
            _int(first.get("forecast_at")),
            steps,
            k,
        )
        for name, vec in f.items():
            error = run_error(times[name], real, steps, ks.get(name) or 0)
            fam = family(name)
            out.append(
                {
                    "run": run,
                    "predictor": name,
                    "family": fam,
                    **dict(zip(FEATURES, vec, strict=True)),
                    "error": error,
                }
            )
            if fam == "plain":  # the same prediction, as it reads before training
                row = dict(zip(FEATURES, before_features(signals), strict=True))
                out.append(
                    {"run": run, "predictor": before(name), "family": BEFORE, **row, "error": error}
                )
    return pd.DataFrame(out)


def _int(v) -> int | None:
    return None if v is None or pd.isna(v) else int(v)


def fit(results: pd.DataFrame) -> Model:
    """The model of each family fitted on a results table (module docstring)."""
    return fit_table(table_features(results))


def fit_table(table: pd.DataFrame) -> Model:
    """The model fitted on a table of FEATURES, `predictor`, `family` and `error` per
    prediction: per family one non-negative weight per feature and one intercept per predictor
    (the curve fits are worse than relin whatever the signals say), and per predictor the
    lowest expected error of its development predictions more than 50% off (FAR) as its limit
    (none when it never was, and none before training: the stability alone cannot tell)."""
    table = table.dropna(subset=["error"])
    weights, intercepts, limit = {}, {}, {}
    for fam, part in table.groupby("family"):
        names = sorted(part["predictor"].unique())
        dummies = (part["predictor"].to_numpy()[:, None] == np.array(names)).astype(float)
        a = np.column_stack([dummies, part[list(FEATURES)].to_numpy(float)])
        w, _ = nnls(a, part["error"].to_numpy(float))
        intercepts |= {n: float(b) for n, b in zip(names, w[: len(names)], strict=True)}
        weights[str(fam)] = tuple(float(x) for x in w[len(names) :])
        if fam == BEFORE:  # its one signal cannot tell the predictions far off: no limit
            continue
        part = part.assign(_expected=a @ w)
        for name, mine in part.groupby("predictor"):
            far = mine.loc[mine["error"] > FAR, "_expected"]
            if len(far):
                limit[str(name)] = float(far.min()) - 1e-9  # the far one itself is flagged
    return Model(weights, intercepts, limit)


def to_json(m: Model) -> dict:
    return {
        "features": list(FEATURES),
        "weights": m.weights,
        "intercepts": m.intercepts,
        "limit": m.limit,
    }


def from_json(d: Mapping) -> Model:
    if list(d["features"]) != list(FEATURES):
        raise ValueError(f"validity model for features {d['features']}, expected {FEATURES}")
    weights = {k: tuple(v) for k, v in d["weights"].items()}
    return Model(weights, dict(d["intercepts"]), dict(d["limit"]))
