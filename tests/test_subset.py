import numpy as np
import pytest

from ttbench.core.spectrum import fit_power_law
from ttbench.core.subset import extrapolate_projections, extrapolate_rates, mse_loss_curve


def test_power_law_fit_recovers_known_coefficients():
    k = np.arange(1, 400)
    rng = np.random.default_rng(0)
    values = 3.5 * k**-1.3 * np.exp(rng.normal(0, 0.02, k.size))
    law = fit_power_law(values)
    assert law.c == pytest.approx(3.5, rel=0.03) and law.s == pytest.approx(1.3, abs=0.01)
    np.testing.assert_allclose(fit_power_law(2.0 * k**-0.7).s, 0.7)
    with pytest.raises(ValueError, match="needs at least two positive values"):
        fit_power_law(np.array([1.0, 0.0, -1.0]))


def test_slope_correction():
    law = fit_power_law(2.0 * np.arange(1, 50) ** -1.0)
    rates = extrapolate_rates(law, n0=100, n=1000, count=5, alpha=0.15)
    np.testing.assert_allclose(rates, 2.0 * np.arange(1, 6) ** (-1.0 + 0.15 * (0.1 - 1)))
    np.testing.assert_allclose(extrapolate_rates(law, 100, 100, 5), 2.0 * np.arange(1, 6) ** -1.0)


def test_projection_rule_meets_both_constraints():
    p_sub = 10.0 * np.arange(1, 201) ** -1.2
    total, count, k0 = 40.0, 1000, 100
    p = extrapolate_projections(p_sub, total, count, k0)
    assert p.size == count
    np.testing.assert_allclose(p[: k0 - 1], p_sub[: k0 - 1])  # the head is the subset's
    assert p[k0 - 1] == pytest.approx(p_sub[k0 - 1])  # p_k0 = p'_k0
    assert p.sum() == pytest.approx(total)  # sum p_k = |dy|^2
    tail = p[k0 - 1 :]
    slopes = np.diff(np.log(tail)) / np.diff(np.log(np.arange(k0, count + 1)))
    np.testing.assert_allclose(slopes, slopes[0])  # a power law
    with pytest.raises(ValueError, match="leave no positive tail to extrapolate"):
        extrapolate_projections(p_sub, p_sub[:99].sum() * 0.5, count, k0)


def test_mse_curve_is_eq5():
    rates, p = np.array([2.0, 0.5]), np.array([3.0, 1.0])
    curve = mse_loss_curve(rates, p, n=4, lr_eff=0.1, steps=3)
    t = np.arange(4)
    np.testing.assert_allclose(curve, (3 * np.exp(-0.4 * t) + np.exp(-0.1 * t)) / 8)
