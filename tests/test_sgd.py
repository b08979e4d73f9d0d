import copy

import numpy as np
import pytest
import torch

from ttbench.bench.baseline import jacobian
from ttbench.core import dynamics, losses, sgd
from ttbench.core.curves import t_eps_quantiles
from ttbench.core.jacobian import blocks, jacobian_factors, materialise
from ttbench.core.linearize import LinearizedModel, diagonal_noise_gram
from ttbench.core.projected import diagonal_noise_features, weight_variances
from ttbench.core.sketch import Sketch
from ttbench.train import finetune


@pytest.fixture(scope="module")
def sgd_problem(problem):
    model, x, y, lin = problem
    return model, x, y, lin, 0.3 * 12 / torch.linalg.eigvalsh(lin.theta)[-1].item()


def test_batch_schemes():
    g = torch.Generator().manual_seed(0)
    b = sgd.batch_indices(10, 5, 7, "epoch", g)
    assert b.shape == (7, 5)
    for epoch in range(3):
        assert sorted(b[2 * epoch : 2 * epoch + 2].flatten().tolist()) == list(range(10))
    assert sgd.batch_indices(10, 3, 4, "epoch", g).unique().numel() <= 9  # tail dropped
    r1 = sgd.batch_paths(10, 4, 6, "with_replacement", 3, seed=1)
    r2 = sgd.batch_paths(10, 4, 6, "with_replacement", 3, seed=1)
    assert r1.shape == (3, 6, 4) and torch.equal(r1, r2) and not torch.equal(r1[0], r1[1])
    with pytest.raises(ValueError, match=r"batch size must be in 1\.\.10, got 11"):
        sgd.batch_indices(10, 11, 3, "epoch", g)


@pytest.mark.parametrize("loss", ["ce", "mse"])
def test_full_batch_without_replacement_is_gd(sgd_problem, loss):
    _, _, y, lin, lr = sgd_problem
    n, steps = 12, 25
    batches = sgd.batch_paths(n, n, steps, "epoch", 2, seed=0)
    gd = dynamics.discrete(lin.theta, lin.f0, y, lr=lr, momentum=0.7, steps=steps, loss=loss)
    sim = sgd.exact_sgd(lin.theta, lin.f0, y, lr=lr, momentum=0.7, loss=loss, batches=batches)
    np.testing.assert_allclose(sim.paths_loss, np.tile(gd.curves.loss, (2, 1)), rtol=1e-12)
    gd0 = dynamics.discrete(lin.theta, lin.f0, y, lr=lr, momentum=0.0, steps=steps, loss=loss)
    noise = sgd.noise_factor(torch.eye(lin.theta.shape[0], dtype=torch.float64))
    for kind in sgd.NOISES:
        path = sgd.sde(
            lin.theta,
            lin.f0,
            y,
            lr=lr,
            momentum=0.0,
            steps=steps,
            loss=loss,
            batch_size=n,
            scheme="epoch",
            paths=3,
            seed=0,
            noise=kind,
            noise_sqrt=noise,
        )
        np.testing.assert_allclose(path.paths_loss, np.tile(gd0.curves.loss, (3, 1)), rtol=1e-12)


@pytest.mark.parametrize("loss", ["ce", "mse"])
def test_exact_simulator_reproduces_real_sgd_of_the_linearised_model(sgd_problem, loss):
    model, x, y, lin, lr = sgd_problem
    batches = sgd.batch_indices(12, 4, 30, "with_replacement", torch.Generator().manual_seed(3))
    real = finetune(
        LinearizedModel(copy.deepcopy(model)),
        x,
        y,
        lr=lr,
        momentum=0.9,
        steps=30,
        loss=loss,
        batches=batches,
    )
    sim = sgd.exact_sgd(lin.theta, lin.f0, y, lr=lr, momentum=0.9, loss=loss, batches=batches[None])
    assert np.max(np.abs(sim.paths_loss[0] - real.loss) / real.loss) <= 1e-6
    np.testing.assert_array_equal(sim.paths_error[0], real.error)


def test_sde_increment_covariance_matches_minibatch_updates(sgd_problem):
    _, _, y, lin, lr = sgd_problem
    n, b, draws = 12, 3, 6000
    f0 = lin.f0.to(torch.float64)
    batches = sgd.batch_paths(n, b, 1, "with_replacement", draws, seed=5)
    sim = sgd.exact_sgd(lin.theta, f0, y, lr=lr, momentum=0.0, loss="ce", batches=batches)
    sde = sgd.sde(
        lin.theta,
        f0,
        y,
        lr=lr,
        momentum=0.0,
        steps=1,
        loss="ce",
        batch_size=b,
        scheme="with_replacement",
        paths=draws,
        seed=1,
        noise="full",
    )
    # analytic covariance of one linearised SGD step: lr^2 / B * J Sigma J^T, J h_i = Theta_i s_i
    s = losses.grad_f(f0, y, "ce") * n
    m = torch.einsum("ajc,jc->aj", lin.theta.view(-1, n, 3), s)
    cov = lr**2 / b * ((m @ m.T) / n - torch.outer(m.mean(1), m.mean(1)))
    mean = f0.reshape(-1) - lr * m.mean(1)
    for pred in (sim, sde):
        inc = pred.final.reshape(draws, -1)
        emp = torch.cov(inc.T)
        assert ((emp - cov).norm() / cov.norm()).item() < 0.08  # MC error ~ sqrt(2 / draws) * few
        assert ((inc.mean(0) - mean).norm() / (lr * m.mean(1)).norm()).item() < 0.2


def test_diagonal_noise_gram_equals_explicit(sgd_problem):
    model, x, y, lin, _ = sgd_problem
    with torch.no_grad():
        s = losses.grad_f(model(x), y, "ce") * 12
    J = jacobian(model, x)  # (N*C, D), by the independent route
    h = torch.einsum("icd,ic->id", J.view(12, 3, -1), s)
    expected = J @ torch.diag(h.var(0, unbiased=False)) @ J.T
    got = diagonal_noise_gram(jacobian_factors(model, x), s)
    assert ((got - expected).norm() / expected.norm()).item() < 1e-10
    assert torch.allclose(lin.theta, J @ J.T, rtol=1e-9, atol=1e-12)


def test_sketched_diagonal_noise_is_an_unbiased_square_root(sgd_problem):
    """The run's noise: phi = J diag(sigma) P, streamed over chunks, with E[phi phi^T] equal to
    the exact J diag(sigma^2) J^T; the error of one sketch falls like 1 / sqrt(D0)."""
    model, x, _, _, _ = sgd_problem
    y = torch.arange(12) % 3
    with torch.no_grad():
        s = losses.grad_f(model(x), y, "ce") * 12
    exact = diagonal_noise_gram(jacobian_factors(model, x), s)

    def err(cov):
        return ((cov - exact).norm() / exact.norm()).item()

    def phi(dim, seed, chunk=5):
        return diagonal_noise_features(model, x, s, Sketch("countsketch", dim, seed), chunk)

    torch.testing.assert_close(phi(64, 1), phi(64, 1, chunk=12), rtol=1e-12, atol=1e-14)
    small = [phi(16, k) for k in range(16)]
    large = [phi(256, k) for k in range(8)]
    e_small = sum(err(p @ p.T) for p in small) / len(small)
    e_large = sum(err(p @ p.T) for p in large) / len(large)
    assert 2.5 < e_small / e_large < 6.5  # sqrt(16) = 4
    assert err(sum(p @ p.T for p in small) / len(small)) < 0.4 * e_small
    # trace form: C output directions (one orthonormal group) and the class-averaged covariance
    n, C = 12, 3
    cov_s = torch.einsum("icjc->ij", exact.view(n, C, n, C)) / C
    ls = [
        diagonal_noise_features(model, x, s, Sketch("countsketch", 64, k), 5, outputs=C, seed=k)
        for k in range(16)
    ]
    assert ls[0].shape == (n, C * 64)
    mean = sum(L @ L.T for L in ls) / len(ls)
    one = ((ls[0] @ ls[0].T - cov_s).norm() / cov_s.norm()).item()
    assert ((mean - cov_s).norm() / cov_s.norm()).item() < 0.5 * one


def test_quantiles_ordered_and_seeded(sgd_problem):
    _, _, y, lin, lr = sgd_problem
    s = losses.grad_f(lin.f0, y, "ce") * 12
    cov = diagonal_noise_gram(jacobian_factors(sgd_problem[0], sgd_problem[1]), s)
    kw = dict(
        lr=lr,
        momentum=0.5,
        steps=40,
        loss="ce",
        batch_size=3,
        scheme="with_replacement",
        paths=16,
        seed=4,
        noise_sqrt=sgd.noise_factor(cov),
    )
    a, b = sgd.sde(lin.theta, lin.f0, y, **kw), sgd.sde(lin.theta, lin.f0, y, **kw)
    np.testing.assert_array_equal(a.paths_loss, b.paths_loss)
    assert not np.allclose(a.paths_loss[0], a.paths_loss[1])
    q = t_eps_quantiles(a.paths_loss, [0.05, 0.2], window=5)
    for lo, mid, hi in q.values():
        assert lo <= mid <= hi


def test_sde_with_momentum_is_stable_where_heavy_ball_is(sgd_problem):
    """MSE, lr * lambda_max = 1 and m = 0.9: heavy-ball is stable (1 < 2 (1 + m)), a single
    Euler-Maruyama step at the effective rate lr / (1 - m) is not (10 > 2). The SDE, its drift
    and noise entering a velocity, stays bounded and its mean follows linearised SGD's."""
    _, _, y, lin, _ = sgd_problem
    lam = dynamics.sharpness(lin.theta, lin.f0, "mse")
    lr, m, steps, b = 1.0 / lam, 0.9, 60, 6
    common = {"steps": steps, "loss": "mse", "batch_size": b, "scheme": "with_replacement"}
    old = sgd.sde(lin.theta, lin.f0, y, lr=lr / (1 - m), momentum=0.0, paths=8, seed=0,
                  noise="full", **common)  # fmt: skip
    assert old.curves.diverged  # the former scheme: one step at the effective learning rate
    new = sgd.sde(lin.theta, lin.f0, y, lr=lr, momentum=m, paths=2048, seed=0, noise="full",
                  **common)  # fmt: skip
    assert not new.curves.diverged and np.isfinite(new.paths_loss).all()
    batches = sgd.batch_paths(12, b, steps, "with_replacement", 2048, seed=1)
    exact = sgd.exact_sgd(lin.theta, lin.f0, y, lr=lr, momentum=m, loss="mse", batches=batches)
    gap = np.abs(new.curves.loss - exact.curves.loss) / exact.curves.loss[0]
    assert gap.max() < 0.03, gap.max()  # Monte-Carlo and Gaussian-noise error only


def test_weight_variances_equal_those_of_the_materialised_gradients(sgd_problem):
    """The diagonal of Sigma, by both routes: per-sample gradients materialised, and the GEMM
    of position pairs for layers with few positions (this small ResNet's 2x2 stage)."""
    model, x, _, _, _ = sgd_problem
    y = torch.arange(12) % 3
    with torch.no_grad():
        s = losses.grad_f(model(x), y, "ce") * 12
    factors = jacobian_factors(model, x)
    pieces = blocks(factors, lambda A, D: True)  # the order weight_variances uses
    grads = [materialise(*p) if isinstance(p, tuple) else p for p in pieces]
    want = [torch.einsum("ncd,nc->nd", g, s).var(0, unbiased=False) for g in grads]
    got = weight_variances(model, x, s, chunk=5)
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w.double(), rtol=1e-9, atol=1e-14)
