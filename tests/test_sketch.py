import pytest
import torch

from ttbench.bench.engine import models
from ttbench.core.linearize import linearize
from ttbench.core.projected import projected_features, sketch_is_cheaper
from ttbench.core.sketch import SKETCHES, Sketch

from .test_linearize import _randomise_bn, conv_net


@pytest.fixture(scope="module")
def problem():
    torch.manual_seed(0)
    model = _randomise_bn(conv_net().double())
    x = torch.randn(16, 2, 5, 5, dtype=torch.float64)
    return model, x, linearize(model, x).theta


def _matrix(kind, d, dim, seed=0):
    out = torch.zeros(d, dim, dtype=torch.float64)
    Sketch(kind, dim, seed).project_into(out, 0, torch.eye(d, dtype=torch.float64))
    return out


def test_projection_matrices_have_the_documented_entries():
    p = _matrix("achlioptas", 3000, 50)
    scale = (3 / 50) ** 0.5
    assert set(torch.unique(p / scale).tolist()) == {-1.0, 0.0, 1.0}
    assert abs((p == 0).double().mean().item() - 2 / 3) < 0.01
    c = _matrix("countsketch", 500, 40)
    assert torch.all((c != 0).sum(1) == 1) and torch.all(c.abs().sum(1) == 1)
    g = _matrix("gaussian", 2000, 40)
    assert abs(g.var().item() * 40 - 1) < 0.05
    assert torch.equal(_matrix("gaussian", 20, 8, seed=3), _matrix("gaussian", 20, 8, seed=3))


@pytest.mark.parametrize("route", ["materialised", "structured"])
@pytest.mark.parametrize("kind", SKETCHES)
def test_projected_theta_is_unbiased_and_error_shrinks_like_inverse_sqrt_dim(problem, kind, route):
    """Both ways of sketching a weight matrix: its materialised per-sample gradients, or its
    factors (route "structured": the Kronecker-factored sketch, never forming them)."""
    model, x, exact = problem
    norm = exact.norm()

    def thetas(dim, seeds):
        return [
            linearize(model, x, "projected", route=route, sketch=Sketch(kind, dim, s)).theta
            for s in seeds
        ]

    small = thetas(64, range(12))
    large = thetas(1024, range(4))
    err_small = sum((t - exact).norm() / norm for t in small) / len(small)
    err_large = sum((t - exact).norm() / norm for t in large) / len(large)
    assert 2.5 < err_small / err_large < 6.5  # sqrt(16) = 4
    mean = sum(small) / len(small)
    assert (mean - exact).norm() / norm < 0.5 * err_small  # averaging seeds converges to Theta


@pytest.mark.parametrize("route", ["materialised", "structured"])
@pytest.mark.parametrize("kind", SKETCHES)
def test_projected_theta_is_not_one_percent_off(problem, kind, route):
    """E[Θ̂] = Θ, checked by Θ̂'s share of Θ, <Θ̂, Θ> / <Θ, Θ>, averaged over fixed seeds at
    D0 = 16384 (the variance falls as 1/D0: standard error 0.001-0.003 here): within 0.5% of
    1, so a sketch scaled 1% wrong in either direction fails."""
    model, x, exact = problem
    dense = route == "materialised" and kind != "countsketch"  # 735 x 16384 per seed: fewer
    seeds = range(8 if dense else 24)
    share = [
        float((linearize(model, x, "projected", route=route, sketch=Sketch(kind, 16384, s)).theta
               * exact).sum() / (exact * exact).sum())
        for s in seeds
    ]  # fmt: skip
    assert abs(sum(share) / len(share) - 1) < 0.005


@pytest.mark.parametrize("route", ["auto", "materialised", "structured"])
@pytest.mark.parametrize("outputs", [None, 2])
def test_streamed_projection_equals_unstreamed(problem, route, outputs):
    """Every chunk sees the same sketch and the same output directions."""
    model, x, _ = problem
    sketch = Sketch("achlioptas", 128, seed=7)
    f_a, phi_a = projected_features(model, x, sketch, 5, outputs, seed=3, route=route)
    f_b, phi_b = projected_features(model, x, sketch, len(x), outputs, seed=3, route=route)
    torch.testing.assert_close(f_a, f_b, rtol=0, atol=1e-13)
    torch.testing.assert_close(phi_a, phi_b, rtol=1e-12, atol=1e-13)
    assert phi_a.shape == (len(x) * (outputs or 3), 128)


def test_factored_sketch_is_chosen_where_it_costs_less():
    sketch = Sketch("countsketch", 4096, seed=0)
    A = torch.zeros(1, 64, 432)  # a 3x3 convolution 48 -> 48 at 8x8: O K = 20736 > D0
    D = torch.zeros(5, 1, 64, 48)
    assert sketch.factored_dims(48, 432) == (48, 85)
    assert sketch.factored_is_cheaper(A, D)
    # O K barely above D0 over many positions: projecting both sides costs more
    assert not sketch.factored_is_cheaper(torch.zeros(1, 64, 65), torch.zeros(5, 1, 64, 64))


def test_projected_trace_estimates_the_class_averaged_theta(problem):
    """With output directions the projected mode sketches Theta_s: P = C directions and an
    averaged sketch converge to it."""
    model, x, exact = problem
    n = len(x)
    trace = torch.einsum("icjc->ij", exact.reshape(n, 3, n, 3)) / 3
    lins = [
        linearize(model, x, "projected", sketch=Sketch("gaussian", 256, s), outputs=3, seed=s)
        for s in range(8)
    ]
    assert lins[0].mode == "trace" and lins[0].theta.shape == (n, n)
    errs = [((lin.theta - trace).norm() / trace.norm()).item() for lin in lins]
    mean = sum(lin.theta for lin in lins) / len(lins)
    assert ((mean - trace).norm() / trace.norm()).item() < 0.6 * sum(errs) / len(errs)


def test_the_sketch_is_chosen_only_where_it_costs_fewer_multiply_adds():
    """The benchmark's MLP (784-512-512-10, N = 128): the exact Theta costs less than a
    4096-column sketch, more than a 1024-column one (measured: 0.048 s, 0.080 s, 0.025 s)."""
    model, x = models(None)["mlp"]
    assert not sketch_is_cheaper(model, x, Sketch("countsketch", 4096, 0))
    assert sketch_is_cheaper(model, x, Sketch("countsketch", 1024, 0))


def test_hybrid_theta_is_exact_where_no_weight_matrix_is_wider_than_the_sketch(problem):
    """Nothing of conv_net is wider than 4096: every layer is contracted exactly."""
    model, x, exact = problem
    hybrid = linearize(model, x, "hybrid", sketch=Sketch("countsketch", 4096, 0))
    assert (hybrid.built, hybrid.mode) == ("hybrid", "exact")
    torch.testing.assert_close(hybrid.theta, exact, rtol=1e-12, atol=1e-12)


def test_hybrid_theta_is_unbiased_and_closer_than_the_projected_one(problem):
    """At D0 = 64 the two convolutions (widths 72 and 216, materialised route) are sketched and
    the rest is exact: averaging seeds converges to Theta, and each draw is closer to it than
    the projected Theta's, which sketches every weight."""
    model, x, exact = problem
    norm = exact.norm()

    def errors(mode):
        thetas = [linearize(model, x, mode, sketch=Sketch("countsketch", 64, s)).theta
                  for s in range(16)]  # fmt: skip
        return thetas, torch.stack([(t - exact).norm() / norm for t in thetas])

    hybrid, err = errors("hybrid")
    _, err_projected = errors("projected")
    assert err.min() > 0  # something was sketched
    assert err.mean() < 0.7 * err_projected.mean()
    assert (sum(hybrid) / len(hybrid) - exact).norm() / norm < 0.4 * err.mean()


def test_hybrid_theta_streams_a_sketch_where_every_samples_factors_do_not_fit(problem):
    model, x, _ = problem
    sketch = Sketch("countsketch", 64, 0)
    lin = linearize(model, x, "hybrid", sketch=sketch, memory_gb=1e-6)
    assert lin.built == "projected"
    torch.testing.assert_close(lin.theta, linearize(model, x, "projected", sketch=sketch).theta)
