"""Validity: a prediction's expected error from the run's own signals, fitted on development
runs, and the warning it gives."""

import math

import numpy as np
import pandas as pd
import pytest

from tests.conftest import TINY, run_in_process
from ttbench import bands, run, validity
from ttbench.figures import tables as tb


def test_the_model_recovers_non_negative_weights_and_flags_every_far_prediction():
    rng = np.random.default_rng(0)
    n = 400
    f = pd.DataFrame(rng.uniform(0, 1, (n, len(validity.FEATURES))), columns=validity.FEATURES)
    truth = np.array([0.4, 0.0, 0.2, 0.0, 0.3, 0.6])  # per feature
    name = np.where(np.arange(n) % 2, "ode", "discrete")
    intercept = np.where(name == "ode", 0.15, 0.05)
    error = intercept + f.to_numpy() @ truth + rng.normal(0, 0.01, n)
    table = f.assign(predictor=name, family="plain", error=error)
    m = validity.fit_table(table)
    np.testing.assert_allclose(m.weights["plain"], truth, atol=0.01)
    assert m.intercepts == pytest.approx({"ode": 0.15, "discrete": 0.05}, abs=0.01)
    expected = np.array([m.expected(p, row) for p, row in zip(name, f.to_numpy(), strict=True)])
    far = error > validity.FAR
    for p in ("ode", "discrete"):  # every far prediction is flagged by its predictor's limit
        mine = far & (name == p)
        assert mine.any() and (expected[mine] >= m.limit[p] - 1e-12).all()
    flagged = np.array([not m.trusted(p, v) for p, v in zip(name, expected, strict=True)])
    assert flagged[far].all() and not flagged.all()
    assert m.trusted("ode", m.limit["ode"] - 1e-9) and not m.trusted("ode", m.limit["ode"])
    assert m.expected("relin", f.to_numpy()[0]) is None  # no refined family fitted
    back = validity.from_json(validity.to_json(m))
    assert back == m


def test_features_from_a_results_table():
    """Disagreement with relin for a plain prediction, 0 for a refined one; a spike counts for
    a prediction that had seen it; the error leaves out what a refined prediction observed."""
    eps = (0.1, 0.4)
    base = {"run": "r", "kind": "loss", "cfg.steps": 100, "cfg.refine.steps": 10,
            "signal.kernel_change": math.e - 1, "signal.drift": 0.0, "signal.time_scale": 2.0,
            "signal.stability": 0.5, "signal.stability_prefix": 3.0, "real_spike_at": 20,
            "forecast_at": None, "real_outcome": "catapult"}  # fmt: skip
    rows = []
    for e, t in zip(eps, (60, 8), strict=True):
        point = base | {"eps": e, "t_real": t}
        rows.append(point | {"predictor": "discrete", "t_pred": 2 * t + 1})
        rows.append(point | {"predictor": "relin", "t_pred": t, "k": 10})
        rows.append(point | {"predictor": "relin_2k", "t_pred": 99, "k": 20})
    got = validity.table_features(pd.DataFrame(rows)).set_index("predictor")
    assert got.loc["discrete", "disagreement"] == pytest.approx(math.log(2))
    assert got.loc["relin", "disagreement"] == 0
    assert got.loc["discrete", "kernel_change"] == pytest.approx(1.0)
    assert got.loc["discrete", "time_scale"] == pytest.approx(math.log(2))
    assert got.loc["discrete", "instability"] == pytest.approx(math.log(4))
    # the spike at step 20: seen by relin_2k (k = 20), not by relin (k = 10) nor the plain one
    assert got["spike"].to_dict() == {
        "discrete": 0.0, "discrete@before": 0.0, "relin": 0.0, "relin_2k": 1.0
    }  # fmt: skip
    # the plain one again, as read before training: the stability at w0 its only signal
    early = got.loc["discrete@before"]
    assert early["family"] == "before" and early["error"] == got.loc["discrete", "error"]
    assert early["instability"] == pytest.approx(math.log(1.5))  # 0.5 at w0, not the prefix's 3
    assert (early[["disagreement", "kernel_change", "drift", "time_scale", "spike"]] == 0).all()
    assert got.loc["discrete", "error"] == pytest.approx(math.log(2))  # median of 2 gaps
    assert got.loc["relin", "error"] == 0  # t_real 8 <= k 10 is not scored
    assert got.loc["relin_2k", "error"] == pytest.approx(math.log(100 / 61))


def test_a_run_says_what_it_does_not_trust(tmp_path, cache_dir, capsys, monkeypatch):
    """With a model whose limit everything exceeds, every prediction is flagged."""
    model = validity.Model({"plain": (0.0,) * 6, "refined": (0.0,) * 6},
                           {"ode": 1.0, "discrete": 1.0, "relin": 0.01},
                           {"ode": 0.5, "discrete": 0.5, "relin": 0.5})  # fmt: skip
    shipped = bands.default_calibration()
    monkeypatch.setattr(
        run, "default_calibration", lambda: bands.Calibration(shipped.entries, "test", model)
    )
    rec = run_in_process([*TINY, "steps=20", "predictor=default"], tmp_path / "r", cache_dir)
    assert rec.predictors["discrete"].validity == pytest.approx(1.0)
    assert rec.predictors["discrete"].trusted is False and rec.predictors["relin"].trusted
    out = capsys.readouterr().out
    assert "NOT TRUSTWORTHY: discrete (expected error 172%)" in out
    assert "NOT TRUSTWORTHY: relin" not in out
    rows = pd.DataFrame([{"run": "r", **row} for row in rec.rows()])
    fid = tb.fidelity(rows.assign(**{"cfg.lr": 0.003, "cfg.momentum": 0.0}), by=("predictor",))
    fid = fid.set_index("predictor")
    assert pd.isna(fid.loc["discrete", "n_trusted"]) and fid.loc["discrete", "n_flagged"] > 0
    assert fid.loc["relin", "n_trusted"] > 0 and pd.isna(fid.loc["relin", "n_flagged"])


def _rows(run: str, predictor: str, pairs, **extra) -> list[dict]:
    return [
        {"run": run, "predictor": predictor, "kind": "loss", "eps": e, "t_real": t,
         "t_pred": p, "real_outcome": "converged", **extra}
        for e, (t, p) in zip((0.01, 0.1, 0.4), pairs, strict=True)
    ]  # fmt: skip


def test_following_scores_each_re_linearisation_on_its_own_points():
    rows = []
    for name in ("a", "b"):
        rows += _rows(name, "relin", [(100, 100), (40, 60), (12, 12)], k=10)
        rows += _rows(name, "relin_2k", [(100, 101), (40, 40), (12, 30)], k=20)
        rows += _rows(name, "constant", [(100, 150), (40, 41), (12, 12)])
    got = tb.following(pd.DataFrame(rows)).set_index("predictor")
    # relin: 4 points after step 10, 2 of them within 13%; relin_2k: 4 after step 20, all
    assert (got.loc["relin", "n"], got.loc["relin", "within_13"]) == (6, pytest.approx(4 / 6))
    assert (got.loc["relin_2k", "n"], got.loc["relin_2k", "within_13"]) == (4, 1.0)
    assert got.loc["relin_2k", "constant_13"] == 0.5 and got.loc["relin_2k", "relin_13"] == 0.5
    assert got.loc["relin_2k", "k"] == 20


def test_observed_bins_the_chain_by_the_fraction_of_the_run_it_saw():
    rows = _rows("a", "relin", [(100, 100), (40, 60), (12, 12)], k=3)  # k/T 3%, 7.5%, 25%
    rows += _rows("a", "relin_2k", [(100, 130), (40, 40), (12, 30)], k=6)  # 6%, 15%, 50%
    rows += _rows("a", "constant", [(100, 100), (40, 41), (12, 20)])
    got = tb.observed(pd.DataFrame(rows)).set_index("observed")
    assert list(got.index) == ["0%-5%", "5%-10%", "10%-20%", "20%-40%", "40%-100%"]
    assert list(got["n"]) == [1, 2, 1, 1, 1]
    assert list(got["within_13"]) == [1.0, 0.0, 1.0, 1.0, 0.0]
    assert list(got["constant_13"]) == [1.0, 1.0, 1.0, 0.0, 0.0]


def test_trust_counts_the_far_runs_the_validity_flagged():
    rows = []
    for i, (rel, flagged) in enumerate([(0.05, False), (0.1, False), (0.8, True), (0.9, False)]):
        t = 100
        rows += _rows(f"r{i}", "ode", [(t, t * (1 + rel))] * 3, validity=rel, trusted=not flagged)
    for r in rows:
        r["rel_err"] = abs(r["t_pred"] - r["t_real"]) / r["t_real"]
    got = tb.trust(pd.DataFrame(rows)).set_index("predictor").loc["ode"]
    assert (got["runs"], got["off"], got["off_flagged"], got["flagged"]) == (4, 2, 1, 1)
    assert got["spearman"] == pytest.approx(1.0)


def test_announcements_count_what_was_said_before_the_spike():
    runs = [  # (outcome, spike at, forecast, announced at)
        ("catapult", 8, "spike ahead", 4),
        ("catapult", 8, "spike ahead", 8),  # at the spike itself: late
        ("exploded", 3, "diverges", 1),
        ("exploded", 3, "converges", None),
        ("converged", None, "spike ahead", 6),  # a false alarm
        ("converged", None, "converges", None),
    ]
    rows = pd.DataFrame(
        [{"run": f"r{i}", "real_outcome": o, "real_spike_at": s, "forecast": f, "forecast_at": a}
         for i, (o, s, f, a) in enumerate(runs)]
    )  # fmt: skip
    got = tb.announcements(rows).iloc[0].to_dict()
    assert got == {
        "catapults": 2,
        "catapults_announced": 1,
        "explosions": 2,
        "explosions_announced": 1,
        "explosions_diverges": 1,
        "converged": 2,
        "false_alarms": 1,
        "catapults_diverges": 0,
    }


def test_the_band_median_as_a_prediction_corrects_a_bias():
    rows = pd.DataFrame(
        _rows("a", "ode", [(100, 150), (40, 60), (20, 30)], q50=None)
        + _rows("b", "ode", [(100, 150), (40, 60), (20, 30)])
    )
    rows["q50"] = rows["t_real"].where(rows["run"] == "a")  # a's calibration fixed its bias
    rows = rows.assign(**{"cfg.lr": 0.01, "cfg.momentum": 0.0, "finetune_s": 1.0, "predict_s": 1.0})
    got = tb.fidelity(rows, by=("predictor",)).set_index("predictor").loc["ode"]
    assert got["loss_13"] == 0 and got["loss_13_q50"] == 0.5


def test_band_coverage_counts_the_unknown_bands_apart():
    rows = pd.DataFrame(_rows("a", "ode", [(100, 110), (40, 45), (20, 21)]))
    rows["q05"] = [90.0, 50.0, None]  # the last band was wider than the budget: unknown
    rows["q95"] = [120.0, 60.0, None]
    got = tb.band_stats(rows, ("predictor",)).loc["ode"]
    assert (got["coverage"], got["n"], got["unknown"]) == (0.5, 2, 1)
