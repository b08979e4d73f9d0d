"""Predictions from the first k real steps: exact for a model linear in its weights, the
curve-fit baselines, and the run's signals and stability check."""

import numpy as np
import pytest
import torch
from torch import nn

from tests.conftest import TINY, run_in_process, spec_of
from ttbench.core import dynamics, refine
from ttbench.models.classifier import Classifier
from ttbench.prediction import after_prefix, at_w0
from ttbench.predictors import PREDICTORS
from ttbench.stages import Stages
from ttbench.train import finetune_run

NAMES = "predictor.names=[discrete,relin,rescaled,fit_exp,fit_power]"


def _linear_problem():
    torch.manual_seed(0)
    x = torch.randn(24, 6, dtype=torch.float64)
    y = torch.arange(24) % 3
    return Classifier(nn.Identity(), nn.Linear(6, 3)).double().eval(), x, y


@pytest.mark.parametrize("k", [1, 7, 20])
@pytest.mark.parametrize("loss", ["ce", "mse"])
def test_refinement_of_a_model_linear_in_its_weights_is_the_plain_prediction(k, loss):
    """The network is its own linearisation: re-linearising at w_k (with the momentum buffer
    carried as u_k = J_k v_k) continues the plain prediction exactly, the time scale fitted to
    the prefix is 1, and the signals say the network has not moved off its linearisation."""
    model, x, y = _linear_problem()
    spec = spec_of(
        [f"loss={loss}", "lr=0.3", "momentum=0.8", "steps=40", f"refine.steps={k}", NAMES]
    )
    stages = Stages(torch.device("cpu"))
    inputs, plain, signals = at_w0(spec, model, x, y, stages)
    kept: dict = {}
    real = finetune_run(spec, model, x, y, keep=lambda t, _: ["k"] if t == k else [], kept=kept)
    state = kept["states"]["k"]
    assert set(state) == {"step", "model", "velocity", "seconds"} and state["velocity"]
    assert state["step"] == k
    model_k = Classifier(nn.Identity(), nn.Linear(6, 3)).double().eval()
    model_k.load_state_dict(state["model"])
    chosen = [PREDICTORS[n] for n in spec.predictors if PREDICTORS[n].prefix]
    refined, more = after_prefix(
        spec, chosen, "k", k, model_k, state["velocity"], real, inputs, stages
    )
    plain_loss = plain["discrete"].curves.loss
    np.testing.assert_allclose(real.loss, plain_loss, rtol=1e-9)  # the premise
    np.testing.assert_allclose(refined["relin"].curves.loss, plain_loss, rtol=1e-9)
    np.testing.assert_allclose(refined["relin"].curves.error, plain["discrete"].curves.error)
    assert more["drift"] < 1e-9 and more["kernel_change"] < 1e-12
    assert more["time_scale"] == pytest.approx(1.0, abs=1e-3)
    np.testing.assert_allclose(refined["rescaled"].curves.loss, plain_loss, rtol=1e-2)
    assert 0 < signals["stability"] < 1
    assert refined["relin"].stages == (
        "prefix",
        "jacobian_k",
        "theta_k",
        "velocity_k",
        "solve_relin",
    )
    assert refined["fit_exp"].stages == ("prefix", "solve_fit_exp")
    assert refined["rescaled"].stages == ("prefix", "jacobian", "theta", "solve_rescaled")


def test_a_run_re_linearises_again_along_the_way(tmp_path, cache_dir):
    """relin at k / 2, k, 2k, 4k and where the loss has settled: each starts from its own
    step, counts the real steps before it, and leaves out the points it observed."""
    names = "predictor.names=[relin_half,relin,relin_2k,relin_4k,relin_settled]"
    rec = run_in_process([*TINY, "steps=20", "refine.steps=4", names], tmp_path / "r", cache_dir)
    p = rec.predictors
    assert [p[n].k for n in ("relin_half", "relin", "relin_2k", "relin_4k")] == [2, 4, 8, 16]
    assert p["relin_settled"].k >= 4 and rec.real.outcome == "converged"
    assert p["relin_settled"].k == 4  # a smooth run has settled at k already
    # ... and its Theta_k is relin's, built once
    # (the watch its validity reads is counted apart)
    assert p["relin_settled"].stages == ("prefix", "jacobian_k", "theta_k", "solve_relin_settled")
    assert "watch" in p["relin_settled"].signals
    assert "theta_settled" not in rec.stages
    assert p["relin_2k"].stages == ("prefix_2k", "jacobian_2k", "theta_2k", "solve_relin_2k")
    assert {"prefix", "prefix_half", "prefix_2k", "prefix_4k"} <= set(rec.stages)
    rows = [r for r in rec.rows() if r["predictor"] == "relin_4k"]
    assert {r["k"] for r in rows} == {16}


def test_curve_fits_recover_their_family_and_join_the_prefix():
    t = np.arange(101, dtype=float)
    exp = 0.2 + 1.5 * np.exp(-0.05 * t)
    power = 0.1 + 2.0 * (t + 1) ** -0.7
    np.testing.assert_allclose(refine.extrapolate(exp[:21], 100, "exp"), exp, rtol=1e-4)
    np.testing.assert_allclose(refine.extrapolate(power[:21], 100, "power"), power, rtol=1e-3)
    assert refine.extrapolate(exp[:3], 100, "exp") is None  # too short to fit
    assert refine.extrapolate(np.array([1.0, np.nan, 0.5, 0.4]), 10, "exp") is None
    joined = refine.join(exp[:11], exp[10:])
    np.testing.assert_array_equal(joined, exp)
    stretched = refine.rescale_time(exp, 2.0, 50)
    assert refine.fit_time_scale(exp, stretched[:11]) == pytest.approx(2.0, rel=1e-3)
    with pytest.raises(ValueError, match="family"):
        refine.extrapolate(exp, 10, "cubic")


def test_a_run_records_refined_predictions_and_signals(tmp_path, cache_dir, capsys):
    names = "predictor.names=[ode,relin,rescaled,fit_exp]"
    rec = run_in_process([*TINY, "steps=20", "refine.steps=4", names], tmp_path / "r", cache_dir)
    assert list(rec.predictors) == ["ode", "relin", "rescaled", "fit_exp"]
    signals = {"stability", "drift", "kernel_change", "time_scale", "stability_prefix"}
    assert set(rec.signals) == signals
    assert rec.stages["prefix"]["wall_s"] < rec.stages["finetune"]["wall_s"]
    for name in ("relin", "rescaled", "fit_exp"):
        assert rec.timing(name)["prefix_s"] == rec.stages["prefix"]["wall_s"]
    assert "drift" in capsys.readouterr().out


def test_an_unstable_learning_rate_is_reported_not_predicted(tmp_path, cache_dir):
    """At lr = 50 with momentum 0.9 the real run explodes; the ODE, which cannot, says GD is
    strongly unstable from w0 (the forecast's rule), and the linearised map explodes too.
    Without momentum a catapult is as likely: the ODE then gives its time."""
    job = [*TINY, "lr=50", "momentum=0.9", "predictor.names=[ode,discrete]"]
    rec = run_in_process(job, tmp_path / "r", cache_dir)
    assert rec.real.diverged and rec.signals["stability"] > 2
    for name in ("ode", "discrete"):
        assert rec.predictors[name].diverged
        assert set(rec.predictors[name].t_eps["loss"]) == {None}
    job = [*TINY, "lr=10", "predictor.names=[ode,discrete]"]
    rec = run_in_process(job, tmp_path / "m0", cache_dir)
    assert rec.signals["stability"] > 1.1 and not rec.predictors["ode"].diverged


def test_a_real_blow_up_before_step_k_leaves_the_refined_predictions_diverged(tmp_path, cache_dir):
    rec = run_in_process(
        [*TINY, "lr=50", "steps=20", "refine.steps=10", "predictor.names=[ode,relin,fit_exp]"],
        tmp_path / "r",
        cache_dir,
    )
    assert rec.real.diverged and rec.predictors["relin"].diverged
    assert rec.predictors["fit_exp"].diverged
    # the refined ones predicted nothing, so cost nothing (not the stability at w0 alone)
    assert "stability" in rec.stages and rec.timing("ode")["predict_s"] > 0
    assert rec.timing("relin")["predict_s"] is None and rec.timing("fit_exp")["predict_s"] is None


def test_refine_steps_are_validated():
    from ttbench.validate import ConfigError

    for bad in ("refine.steps=150", "refine.steps=-1"):
        with pytest.raises(ConfigError, match=r"refine\.steps"):
            spec_of([bad])
    with pytest.raises(ConfigError, match=r"relin needs refine\.steps > 0"):
        spec_of(["refine.steps=0", "predictor=ode", "predictor.names=[relin]"])
    assert dynamics.elr(0.1, 0.5) == pytest.approx(0.2)


def test_sgd_predictions_of_a_linear_model_along_the_real_batches_are_the_real_run(
    monkeypatch,
):
    """Given the real run's own batches as their one path, `exact_sgd` (from w0) and
    `relin_sgd` (from w_k, with the momentum buffer carried) reproduce real SGD on a model
    linear in its weights, and the SGD branch of the drift signal is 0."""
    import ttbench.predictors
    from ttbench.train import sgd_batches

    k = 10
    model, x, y = _linear_problem()
    spec = spec_of(
        ["optim=sgd", "optim.batch_size=6", "lr=0.05", "momentum=0.5", "steps=40",
         f"refine.steps={k}", "stochastic.paths=1", "predictor.names=[exact_sgd,relin_sgd]"]
    )  # fmt: skip
    real_batches = sgd_batches(spec.train, len(y), spec.seed)
    monkeypatch.setattr(
        ttbench.predictors.sgd,
        "batch_paths",
        lambda n, b, steps, scheme, paths, seed: real_batches[-steps:].unsqueeze(0),
    )
    stages = Stages(torch.device("cpu"))
    inputs, plain, _ = at_w0(spec, model, x, y, stages)
    kept: dict = {}
    real = finetune_run(spec, model, x, y, keep=lambda t, _: ["k"] if t == k else [], kept=kept)
    state = kept["states"]["k"]
    model_k = Classifier(nn.Identity(), nn.Linear(6, 3)).double().eval()
    model_k.load_state_dict(state["model"])
    refined, more = after_prefix(
        spec, [PREDICTORS["relin_sgd"]], "k", k, model_k, state["velocity"], real, inputs, stages
    )
    np.testing.assert_allclose(plain["exact_sgd"].curves.loss, real.loss, rtol=1e-9)
    np.testing.assert_allclose(refined["relin_sgd"].curves.loss, real.loss, rtol=1e-9)
    assert more["drift"] < 1e-12
