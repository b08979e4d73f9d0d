"""The typed record: one writer, one reader, format 2 round trips; format 1 is refused."""

import json

import numpy as np
import pandas as pd
import pytest

from ttbench import record
from ttbench.core.curves import Curves


def _record(**kw) -> record.Record:
    eps = (0.4, 0.1)
    real = record.Real({"loss": (2, 4), "error": (1, 3)}, diverged=False)
    ode = record.PredictorRecord(
        "deterministic",
        {"loss": (3, 4), "error": (1, None)},
        False,
        ("theta", "solve_ode", "stability"),
        signals=("watch",),
    )
    q = record.Quantiles
    sde = record.PredictorRecord(
        "stochastic",
        {"loss": (2, 5), "error": (0, 3)},
        False,
        ("theta", "solve_sde"),
        paths=8,
        quantiles={
            "loss": (q(1.0, 2.0, 3.0), q(6.0, 7.0, 9.0)),
            "error": (q(None, None, None), q(3.0, 3.0, 3.0)),
        },
        band={
            "loss": (q(1.0, 2.0, 4.0), q(3.0, 5.0, 6.0)),
            "error": (q(0.0, 0.0, 1.0), q(2.0, 3.0, 4.0)),
        },
        validity=0.25,
    )
    base = {
        "config": {"seed": 3, "lr": 0.1, "momentum": 0.0, "steps": 5, "loss": "ce"},
        "overrides": ("seed=3",),
        "versions": {"torch": "x"},
        "device": "cpu",
        "cpu_threads": 2,
        "task": record.TaskInfo("digits", (1, 2), 10, 2, 100),
        "stages": {
            s: {"wall_s": w, "peak_rss_mb": 1.0, "start_rss_mb": 0.5}
            for s, w in (
                ("theta", 1.0),
                ("stability", 0.5),
                ("solve_ode", 0.5),
                ("solve_sde", 3.0),
                ("finetune", 6.0),
                ("watch", 1.5),
            )
        },
        "eps": eps,
        "real": real,
        "predictors": {"ode": ode, "sde": sde},
    }
    return record.Record(**(base | kw))


def test_derived_numbers():
    rec = _record()
    assert rec.seed == 3
    assert rec.errors("ode", "loss") == [(1, 0.5), (0, 0.0)]
    assert rec.errors("ode", "error") == [(0, 0.0), (None, None)]
    # theta, the solve and the stability before training; the watch along it, apart
    assert rec.timing("ode") == {
        "theta_s": 1.0,
        "solve_ode_s": 0.5,
        "stability_s": 0.5,
        "watch_s": 1.5,
        "predict_s": 2.0,
        "signals_s": 1.5,
        "total_s": 3.5,
        "finetune_over_predict": 3.0,
        "finetune_over_total": 6.0 / 3.5,
    }
    rows = pd.DataFrame(rec.rows())
    assert len(rows) == 2 * 2 * 2
    sde = rows[(rows.predictor == "sde") & (rows.kind == "loss")]
    assert list(sde.path_covered) == [True, False] and list(sde.path_q95) == [3.0, 9.0]
    assert list(sde.covered) == [True, True] and list(sde.q95) == [4.0, 6.0]  # the band
    err = rows[(rows.predictor == "sde") & (rows.kind == "error")]
    assert err.path_covered.iloc[0] is None and bool(err.path_covered.iloc[1]) is True
    ode = rows[rows.predictor == "ode"]
    assert ode.q05.isna().all() and ode.covered.isna().all() and ode.validity.isna().all()
    assert set(rows.predict_s) == {2.0, 4.0} and set(rows.finetune_s) == {6.0}
    assert set(rows[rows.predictor == "ode"].signals_s) == {1.5}


def test_write_read_round_trip_and_marker(tmp_path):
    rec = _record()
    curves = {
        "real": Curves(np.array([1.0, 0.5, 0.25]), np.array([0.8, 0.2, 0.0])),
        "ode": Curves(np.array([1.0, 0.6, np.nan]), np.array([0.8, 0.3, np.nan]), diverged=True),
        "sde": Curves(np.array([1.0, 0.7]), np.array([0.5, 0.4]), interval=5),
    }
    bands = {"sde": {0.05: Curves(np.array([0.9, 0.6]), np.array([0.4, 0.3]), interval=5)}}
    assert not record.is_done(tmp_path)
    record.write(tmp_path, rec, curves, bands)
    assert record.is_done(tmp_path)
    assert record.read(tmp_path) == rec
    back, back_bands = record.read_curves(tmp_path / record.CURVES, {"ode": True})
    assert list(back) == ["real", "ode", "sde"] and list(back_bands) == ["sde"]
    assert back["sde"].interval == 5 and back["sde"].steps == 5
    for name, c in curves.items():
        np.testing.assert_array_equal(back[name].loss, c.loss)
        np.testing.assert_array_equal(back[name].error, c.error)
        assert back[name].diverged == c.diverged
    np.testing.assert_array_equal(back_bands["sde"][0.05].loss, [0.9, 0.6])
    text = json.loads((tmp_path / record.RESULT).read_text())
    assert text["format_version"] == 2 and text["real"]["t_eps"]["loss"] == [2, 4]
    assert text["predictors"]["ode"]["errors"]["loss"][0] == {"abs": 1, "rel": 0.5}
    assert text["predictors"]["sde"]["quantiles"]["loss"][1]["covered"] is False
    # a record written when the signals were listed among the stages reads them apart
    text["predictors"]["ode"]["stages"] += text["predictors"]["ode"].pop("signals")
    (tmp_path / record.RESULT).write_text(json.dumps(text))
    assert record.read(tmp_path) == rec


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("{", "Expecting property name"),
        ('{"format_version": 9}', "unknown record format version 9"),
        ('{"format_version": 1}', "format 1 record, written by a development version"),
        ('{"format_version": 2, "eps": []}', "malformed record .KeyError"),
        ("[]", "malformed record .AttributeError"),
    ],
)
def test_unreadable_records_raise_value_error(tmp_path, text, said):
    (tmp_path / record.RESULT).write_text(text)
    with pytest.raises(ValueError, match=said):
        record.read(tmp_path)


def test_write_is_atomic_and_refuses_nan(tmp_path):
    rec = _record()
    curves = {"real": Curves(np.array([1.0, 0.5]), np.array([0.5, 0.0]))}
    record.write(tmp_path, rec, curves)
    before = (tmp_path / record.RESULT).read_text()
    bad = _record(config={"seed": float("nan")})
    with pytest.raises(ValueError, match="Out of range float values are not JSON compliant"):
        record.write(tmp_path / "x", bad, curves)
    assert (tmp_path / record.RESULT).read_text() == before
    assert not [p for p in tmp_path.rglob("*.tmp")]  # no temporary file left behind


def test_t_eps_of_both_kinds():
    real = Curves(np.array([10.0, 6, 3, 2, 1.5, 1]), np.array([0.8, 0.4, 0.2, 0.1, 0, 0]))
    assert record.t_eps(real, [0.4, 0.1]) == {"loss": (2, 4), "error": (2, 4)}


def test_outcomes_the_watch_and_trust_round_trip(tmp_path):
    """What the issue on real architectures added: the real outcome and its spike, the watch
    (a stability past an explosion is NaN, written as null), a refined prediction's step and
    a prediction's trust; a record from before them reads as converged or exploded."""
    from dataclasses import replace

    real = record.Real({"loss": (None, None), "error": (None, None)}, True, None, "exploded", 3, 4)
    watch = record.Watched({0: 0.4, 1: 2.5, 2: float("nan")}, "diverges", 1, 1.1)
    rec = _record(real=real, watch=watch)
    marked = {n: replace(p, trusted=False, k=7) for n, p in rec.predictors.items()}
    rec = replace(rec, predictors=marked)
    record.write(tmp_path, rec, {"real": Curves(np.array([1.0, 2e9]), np.array([0.5, 0.5]))})
    back = record.read(tmp_path)
    assert back.real == real and back.predictors == rec.predictors
    assert back.watch.stability[1] == 2.5 and np.isnan(back.watch.stability[2])
    assert (back.watch.verdict, back.watch.at) == ("diverges", 1)
    row = back.rows()[0]
    assert (row["real_outcome"], row["real_spike_at"], row["forecast"], row["k"]) == (
        "exploded",
        3,
        "diverges",
        7,
    )
    old = json.loads((tmp_path / record.RESULT).read_text())
    for key in ("outcome", "spike_at", "stopped_at"):
        del old["real"][key]
    del old["watch"]
    assert record.from_json(old).real.outcome == "exploded" and record.from_json(old).watch is None
