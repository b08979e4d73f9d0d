"""Bands that hold: normalised split-conformal calibration, tested on a synthetic case whose
error distribution is known."""

import json
import math

import numpy as np
import pandas as pd
import pytest

from ttbench import bands, validity


def _table(
    n_runs: int, seed: int, name: str = "discrete", model: str = "m", spread: float = 1.0
) -> pd.DataFrame:
    """Runs whose real times are the predicted ones times exp(spread * scale * noise), scale
    growing with each run's validity, the model the bands assume (plus heavy tails)."""
    rng = np.random.default_rng(seed)
    rows = []
    for r in range(n_runs):
        v = rng.uniform(0.0, 0.5)
        for e in (0.01, 0.05, 0.1, 0.4):
            p = float(rng.integers(5, 120))
            t = round((p + 1) * math.exp(spread * bands.scale(v) * rng.standard_t(5)) - 1)
            rows.append(
                {"run": f"{model}{r}", "predictor": name, "kind": "loss", "eps": e,
                 "t_real": max(t, 1), "t_pred": p, "validity": v, "real_diverged": False,
                 "cfg.preset": "p", "cfg.model.name": model}
            )  # fmt: skip
    return pd.DataFrame(rows)


def test_conformal_quantiles_are_order_statistics():
    z = np.arange(1.0, 20.0)  # n = 19: (n + 1) 0.95 = 19 -> the largest; 0.05 -> the smallest
    assert bands.conformal_quantiles(z) == (1.0, 10.0, 19.0)
    assert bands.conformal_quantiles(z[:10]) == (-math.inf, 6.0, math.inf)  # too few for 90%


def test_bands_cover_about_ninety_percent_of_unseen_runs():
    cal = bands.calibrate(_table(400, 0), "synthetic")
    entry = cal.entries[("discrete", "loss", "*", "*")]
    assert entry.n == 1600 and entry.z[0] < 0 < entry.z[2]
    test = _table(400, 1)
    got = [
        cal.band("discrete", "loss", p, v) for p, v in zip(test.t_pred, test.validity, strict=True)
    ]
    lo, mid, hi = (np.array([g[i] for g in got]) for i in range(3))
    covered = (test.t_real >= lo) & (test.t_real <= hi)
    assert 0.87 <= covered.mean() <= 0.93, covered.mean()
    assert abs(np.mean(test.t_real <= mid) - 0.5) < 0.04
    narrow, wide = test.validity < 0.1, test.validity > 0.4  # wider where validity says so
    assert np.median((hi - lo)[wide] / test.t_pred[wide]) > 3 * np.median(
        (hi - lo)[narrow] / test.t_pred[narrow]
    )
    assert cal.band("discrete", "loss", None, 0.1) is None and cal.band("ode", "loss", 5, 0) is None
    # a band wider than the budget says nothing: unknown
    assert cal.band("discrete", "loss", 100, 0.45, steps=1000) is not None
    assert cal.band("discrete", "loss", 100, 0.45, steps=50) is None


def test_mondrian_bands_hold_in_each_family():
    """Two model families, one with four times the spread: a pooled calibration covers one too
    often and the other too rarely; the calibration per family holds in both."""
    train = pd.concat([_table(300, 4, model="a"), _table(300, 5, model="b", spread=4.0)])
    test = pd.concat([_table(300, 6, model="a"), _table(300, 7, model="b", spread=4.0)])
    cal = bands.calibrate(train, "synthetic")
    pooled = bands.Calibration(
        {k: e for k, e in cal.entries.items() if k[2:] == ("*", "*")}, "pooled"
    )
    for c, lo_ok, hi_ok in ((cal, 0.86, 0.94), (pooled, 0.0, 1.0)):
        for fam in ("a", "b"):
            part = test[test["cfg.model.name"] == fam]
            pairs = zip(part.t_pred, part.validity, strict=True)
            got = [c.band("discrete", "loss", p, v, fam) for p, v in pairs]
            lo, hi = (np.array([g[i] for g in got]) for i in (0, 2))
            covered = ((part.t_real >= lo) & (part.t_real <= hi)).mean()
            assert lo_ok <= covered <= hi_ok, (c.source, fam, covered)
            if c is pooled:
                assert covered > 0.97 if fam == "a" else covered < 0.84
    assert ("discrete", "loss", "b", "high") in cal.entries


def test_leave_one_out_bands_calibrate_on_the_other_runs_of_the_sweep():
    table = _table(200, 2)
    loo = bands.loo_bands(table)
    assert 0.86 <= loo["sweep_covered"].astype(float).mean() <= 0.94
    # a run's band does not depend on its own real times
    moved = table.copy()
    moved.loc[moved.run == "r0", "t_real"] += 1000
    assert (
        bands.loo_bands(moved)
        .loc[moved.run == "r0", "sweep_q95"]
        .equals(loo.loc[table.run == "r0", "sweep_q95"])
    )


def test_calibration_round_trips_and_the_shipped_one_loads(tmp_path):
    cal = bands.calibrate(_table(50, 3), "synthetic")
    back = bands.from_json(json.loads(json.dumps(bands.to_json(cal))))
    assert back == cal
    shipped = bands.default_calibration()
    assert isinstance(shipped.source, str)


def test_disagreement_is_the_median_log_gap():
    from ttbench.validity import disagreement

    assert disagreement([10, 20, 30], [10, 20, 30], 150) == 0.0
    assert disagreement([21, 21, 21], [10, 10, 10], 150) == pytest.approx(math.log(2))
    assert disagreement([None, None, 10], [10, 10, 10], 150) == pytest.approx(math.log(301 / 11))


def _runs(n_runs: int, seed: int) -> pd.DataFrame:
    """GD runs where relin is right and `discrete` is off by a factor exp(+-0.6) on a third
    of them (its disagreement with relin shows it), by at most 3% on the others."""
    rng = np.random.default_rng(seed)
    rows = []
    for r in range(n_runs):
        off = 0.6 * rng.choice([-1, 1]) if r % 3 == 0 else rng.uniform(-0.03, 0.03)
        for e in (0.01, 0.02, 0.05, 0.1, 0.2, 0.4):
            t = int(rng.integers(20, 120))
            base = {"run": f"r{r}", "kind": "loss", "eps": e, "t_real": t, "cfg.steps": 150,
                    "cfg.refine.steps": 15, "cfg.preset": "p", "cfg.model.name": "m",
                    "real_outcome": "converged", "real_diverged": False,
                    "signal.stability": 0.1}  # fmt: skip
            rows.append(base | {"predictor": "relin", "t_pred": t, "k": 15})
            rows.append(base | {"predictor": "discrete", "t_pred": round((t + 1) * np.exp(off))})
    return pd.DataFrame(rows)


def test_a_prediction_made_before_training_gets_the_band_of_what_it_cannot_know():
    """A run reads `discrete`'s disagreement with relin; a plan has only the stability at w0.
    Banded as if relin had agreed (every other signal 0), the plan's band misses the third of
    runs where discrete is far off; the BEFORE cells, calibrated on the same runs read without
    those signals, hold about 90% on runs they never saw."""
    train = _runs(300, 0)
    cal = bands.calibrate(train, "synthetic", validity.fit(train))
    test = _runs(300, 1)
    test = test[test["predictor"] == "discrete"]
    x = validity.before_features({"stability": 0.1})
    plain_v = cal.validity.expected("discrete", np.zeros(6))
    key = validity.before("discrete")
    early_v = cal.validity.expected(key, x)
    assert early_v > 5 * plain_v  # it cannot know which runs are the far-off ones

    def coverage(name: str, v: float) -> float:
        qs = [cal.band(name, "loss", p, v, "m") for p in test["t_pred"]]
        hits = [lo <= t <= hi for (lo, _, hi), t in zip(qs, test["t_real"], strict=True)]
        return float(np.mean(hits))

    assert coverage("discrete", plain_v) < 0.75
    assert 0.85 <= coverage(key, early_v) <= 0.97
