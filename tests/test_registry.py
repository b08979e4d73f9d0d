"""One registry of predictors: validation, the prediction stage, the record, the results table
and the figures all follow it, so a new predictor is one entry (plus its config)."""

import pytest

from tests.conftest import TINY, run_in_process, spec_of
from ttbench import figures, predict
from ttbench.collect import gather
from ttbench.core import dynamics
from ttbench.figures.style import ordered
from ttbench.predictors import (
    DETERMINISTIC,
    PREDICTORS,
    STOCHASTIC,
    Predictor,
    Solved,
    color,
    label,
    stochastic,
)
from ttbench.record import read_curves
from ttbench.validate import ConfigError


def test_the_registry_says_what_each_predictor_needs():
    plain = ["ode", "heavy_ball", "discrete", "closed_form", "subset", "sde", "exact_sgd"]
    chain = ["relin_half", "relin_2k", "relin_4k", "relin_settled"]
    refined = ["relin", *chain, "relin_sgd", "rescaled", "fit_exp", "fit_power"]
    assert list(PREDICTORS) == [*plain, *refined, "constant"]
    assert [n for n, p in PREDICTORS.items() if p.pooled] == ["constant"]
    assert "computed by python -m ttbench.collect" in PREDICTORS["constant"].applies("ce", "gd", 0)
    assert [n for n, p in PREDICTORS.items() if p.prefix] == refined
    assert {n for n, p in PREDICTORS.items() if p.kind == STOCHASTIC} == {
        "sde",
        "exact_sgd",
        "relin_sgd",
    }
    assert [n for n, p in PREDICTORS.items() if p.theta is None] == [
        "subset",
        "fit_exp",
        "fit_power",
        "constant",
    ]
    assert [n for n, p in PREDICTORS.items() if p.theta == "wk"] == ["relin", *chain, "relin_sgd"]
    assert [PREDICTORS[n].at for n in chain] == ["half", "2k", "4k", "settled"]
    assert "starts at step 60: it needs 0 < 4k < steps=50" in PREDICTORS["relin_4k"].applies(
        "ce", "gd", 15, 50
    )
    assert [n for n, p in PREDICTORS.items() if p.diagonal_noise] == ["sde"]
    assert PREDICTORS["closed_form"].applies("ce", "gd", 0) == "closed_form needs loss=mse"
    assert PREDICTORS["sde"].applies("ce", "gd", 0) == "sde needs optim=sgd"
    assert PREDICTORS["discrete"].applies("mse", "sgd", 0) is None
    assert "needs refine.steps > 0" in PREDICTORS["relin"].applies("ce", "gd", 0)
    assert len({p.color for p in PREDICTORS.values()} | {color("real")}) == len(PREDICTORS) + 1
    assert stochastic("sde") and not stochastic("ode") and not stochastic("real")
    assert ordered(["sde", "zzz", "real", "ode"]) == ["real", "ode", "sde", "zzz"]


def test_predict_dispatches_the_deterministic_predictors(problem):
    _, _, y, lin = problem
    kw = {"lr": 0.1, "momentum": 0.5, "steps": 5, "loss": "mse"}
    for name in ("ode", "discrete", "closed_form"):
        got = predict(name, lin.theta, lin.f0, y, **kw).curves.loss
        want = getattr(dynamics, name)(lin.theta, lin.f0, y, **kw).curves.loss
        assert (got == want).all()
    with pytest.raises(ValueError, match="predictor must be one of"):
        predict("sde", lin.theta, lin.f0, y, **kw)


def _half_step(i):
    """The discrete map at half the learning rate: a stand-in for a new method."""
    kw = i.spec.train.dynamics | {"lr": i.spec.train.lr / 2}
    return Solved(dynamics.discrete(i.theta, i.f0, i.y, **kw).curves)


def test_a_new_predictor_is_one_registry_entry(monkeypatch, tmp_path, cache_dir):
    new = Predictor("half", DETERMINISTIC, "half-step map", "tab:olive", _half_step, "exact")
    monkeypatch.setitem(PREDICTORS, "half", new)
    assert spec_of(["predictor=all", "refine.steps=0"]).predictors == (
        "ode",
        "heavy_ball",
        "discrete",
        "half",
    )
    with pytest.raises(ConfigError, match=r"predictor\.names='nope'"):
        spec_of(["predictor.names=[ode,nope]"])

    names = "predictor.names=[ode,half]"
    rec = run_in_process([*TINY, names], tmp_path / "runs" / "a", cache_dir)
    assert list(rec.predictors) == ["ode", "half"]
    half = rec.predictors["half"]
    assert half.kind == DETERMINISTIC
    assert half.stages == ("jacobian", "theta", "solve_half", "stability")
    assert half.signals == ("watch",)
    curves, _ = read_curves(tmp_path / "runs" / "a" / "curves.parquet")
    assert curves["half"].loss[-1] > curves["ode"].loss[-1]  # half the step: slower
    tables = gather([tmp_path / "runs"])
    assert set(tables.results.predictor) == {"ode", "half", "constant"}
    assert set(tables.curves.curve) == {"real", "ode", "half"}
    assert color("half") == "tab:olive" and label("half") == "half-step map"
    loaded = figures.Tables(tables.results, tables.curves)
    status, line = figures.render("fig1_scatter", loaded, tmp_path / "figs")
    assert status == "wrote", line
