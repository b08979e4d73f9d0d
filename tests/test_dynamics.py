import copy

import numpy as np
import pytest
import torch
from torch import nn

from ttbench import predict
from ttbench.core import dynamics
from ttbench.core.curves import Curves, blew_up
from ttbench.core.linearize import LinearizedModel, linearize
from ttbench.core.spectrum import spectrum
from ttbench.train import finetune


def _stiff_lr(lin, scale):
    """A learning rate `scale` times the inverse of the fastest rate lambda_max / N."""
    return scale * lin.n_samples / torch.linalg.eigvalsh(lin.theta)[-1].item()


def _rel(a, b):
    return np.max(np.abs(np.asarray(a) - np.asarray(b)) / np.abs(np.asarray(b)))


@pytest.mark.parametrize("loss", ["ce", "mse"])
@pytest.mark.parametrize("kind", ["logistic", "linearised_cnn"])
def test_discrete_map_reproduces_gd_of_a_model_linear_in_its_weights(problem, loss, kind):
    model, x, y, lin = problem
    if kind == "logistic":
        torch.manual_seed(1)
        net = nn.Sequential(nn.Flatten(), nn.Linear(64, 3)).double()
        lin = linearize(net, x)
    else:
        net = LinearizedModel(copy.deepcopy(model))
    lr, m, steps = _stiff_lr(lin, 0.5), 0.9, 40
    real = finetune(net, x, y, lr=lr, momentum=m, steps=steps, loss=loss)
    pred = dynamics.discrete(lin.theta, lin.f0, y, lr=lr, momentum=m, steps=steps, loss=loss)
    assert not real.diverged and real.loss[-1] < 0.8 * real.loss[0]  # it trained
    assert _rel(pred.curves.loss, real.loss) <= 1e-6
    np.testing.assert_array_equal(pred.curves.error, real.error)


def test_ode_matches_closed_form_on_mse(problem):
    _, _, y, lin = problem
    kw = {"lr": _stiff_lr(lin, 0.2), "momentum": 0.5, "steps": 60, "loss": "mse"}
    ode = dynamics.ode(lin.theta, lin.f0, y, **kw, rtol=1e-10, atol=1e-12)
    closed = dynamics.closed_form(lin.theta, lin.f0, y, **kw)
    assert _rel(ode.curves.loss, closed.curves.loss) <= 1e-5
    assert torch.allclose(ode.outputs, closed.outputs, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("loss", ["ce", "mse"])
def test_discrete_tends_to_ode_as_lr_goes_to_zero(problem, loss):
    _, _, y, lin = problem

    def gap(scale, steps):
        kw = {"lr": _stiff_lr(lin, scale), "momentum": 0.5, "steps": steps, "loss": loss}
        ode = dynamics.ode(lin.theta, lin.f0, y, **kw, rtol=1e-10, atol=1e-12)
        return _rel(dynamics.discrete(lin.theta, lin.f0, y, **kw).curves.loss, ode.curves.loss)

    gaps = [gap(s, n) for s, n in [(0.4, 20), (0.1, 80), (0.025, 320)]]  # equal flow time
    assert gaps[0] > gaps[1] > gaps[2] and gaps[2] < gaps[0] / 4
    assert gaps[2] < 0.025
    large = gap(2.5, 6)  # at a large learning rate the ELR flow is not GD
    assert large > 0.02 and large > gaps[2]


def test_trace_kernel_equals_its_kronecker_expansion(problem):
    model, x, y, _ = problem
    tr = linearize(model, x, mode="trace")
    kw = {"lr": 0.3, "momentum": 0.0, "steps": 30}
    for method, loss in [("ode", "ce"), ("discrete", "ce"), ("closed_form", "mse")]:
        a = predict(method, tr.theta, tr.f0, y, loss=loss, **kw)
        b = predict(method, tr.full_theta(), tr.f0, y, loss=loss, **kw)
        assert _rel(a.curves.loss, b.curves.loss) <= 1e-6, method


def test_spectrum_projections_sum_to_residual_norm(problem):
    _, _, y, lin = problem
    s = spectrum(lin.theta, lin.f0, y)
    assert torch.all(s.lambdas[:-1] >= s.lambdas[1:]) and torch.all(s.lambdas >= 0)
    assert torch.isclose(s.p_k.sum(), (s.residual**2).sum(), rtol=1e-10)
    # eq. 5 at t = 0 and the trace of Theta
    assert torch.isclose(s.lambdas.sum(), torch.trace(lin.theta), rtol=1e-10)


def test_closed_form_refuses_cross_entropy(problem):
    _, _, y, lin = problem
    with pytest.raises(ValueError, match="mse"):
        dynamics.closed_form(lin.theta, lin.f0, y, lr=0.1, momentum=0, steps=3, loss="ce")


def test_divergent_discrete_map_is_flagged(problem):
    _, _, y, lin = problem
    pred = dynamics.discrete(lin.theta, lin.f0, y, lr=1e5, momentum=0.9, steps=200, loss="mse")
    assert pred.curves.diverged and np.isnan(pred.curves.loss[-1])


def test_elr():
    assert dynamics.elr(0.01, 0.9) == pytest.approx(0.1)


def test_heavy_ball_ode_is_the_elr_flow_without_momentum_and_tracks_the_map_with_it(problem):
    _, _, y, lin = problem
    kw = {"lr": _stiff_lr(lin, 0.02), "steps": 60, "loss": "ce"}
    hb = dynamics.heavy_ball(lin.theta, lin.f0, y, momentum=0.0, **kw)
    ode = dynamics.ode(lin.theta, lin.f0, y, momentum=0.0, **kw)
    np.testing.assert_array_equal(hb.curves.loss, ode.curves.loss)
    m = 0.9
    hb = dynamics.heavy_ball(lin.theta, lin.f0, y, momentum=m, **kw).curves.loss
    exact = dynamics.discrete(lin.theta, lin.f0, y, momentum=m, **kw).curves.loss
    elr_flow = dynamics.ode(lin.theta, lin.f0, y, momentum=m, **kw).curves.loss
    # the warm-up of the velocity over the first ~1 / (1 - m) steps: the ELR flow runs ahead
    early = slice(1, 11)
    assert _rel(hb[early], exact[early]) < 0.2 * _rel(elr_flow[early], exact[early])
    assert _rel(hb, exact) < 0.03


def test_sharpness_is_the_stability_edge_of_gd(problem):
    _, _, y, lin = problem
    lam = dynamics.sharpness(lin.theta, lin.f0, "mse")
    theta = lin.theta.to(torch.float64)
    assert lam == pytest.approx(torch.linalg.eigvalsh(theta)[-1].item() / 12, rel=1e-5)
    for m in (0.0, 0.9):
        edge = 2 * (1 + m) / lam
        kw = {"momentum": m, "steps": 300, "loss": "mse"}
        assert not dynamics.discrete(theta, lin.f0, y, lr=0.95 * edge, **kw).curves.diverged
        assert dynamics.discrete(theta, lin.f0, y, lr=1.05 * edge, **kw).curves.diverged


def test_a_finite_blow_up_is_a_divergence():
    loss = np.array([1.0, 3.0, 1e8, 2e8])
    assert blew_up(loss) and blew_up([1.0, np.inf]) and not blew_up([1.0, 9.0, 0.5])
    c = Curves(loss, np.zeros(4), diverged=blew_up(loss))
    assert c.t_eps("loss", [0.1, 0.4]) == {0.1: None, 0.4: None}
