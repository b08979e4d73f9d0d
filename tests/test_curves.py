import numpy as np
import pytest

from ttbench.core.curves import (
    CATAPULT,
    CONVERGED,
    EXPLODED,
    Curves,
    blew_up,
    exploding,
    outcome,
    relative_error,
    smooth,
    spike_at,
    t_eps,
    t_eps_grid,
    t_eps_quantiles,
)


def test_exponential_decay_matches_closed_form():
    t = np.arange(151)
    curve = np.exp(-t / 20.0)
    # range R = 1 - e^{-7.5}; inside the band when e^{-t/20} - e^{-7.5} < eps * R
    for eps in (0.01, 0.1, 0.4):
        r = 1 - np.exp(-7.5)
        expected = int(np.ceil(-20 * np.log(eps * r + np.exp(-7.5))))
        assert t_eps(curve, eps) == expected


def test_hand_made_curve():
    curve = [10.0, 6.0, 3.0, 2.0, 1.5, 1.0]  # R = 9; final 1
    assert t_eps(curve, 0.4) == 2  # |3-1| = 2 < 3.6, |6-1| = 5 >= 3.6
    assert t_eps(curve, 0.1) == 4  # |1.5-1| = 0.5 < 0.9, |2-1| = 1 >= 0.9
    assert t_eps(curve, 0.05) == 5  # only the last point is within 0.45
    assert t_eps_grid(curve, [0.4, 0.1]) == {0.4: 2, 0.1: 4}


def test_flat_curve_has_converged_at_start():
    assert t_eps([0.7] * 10, 0.01) == 0


def test_never_inside_before_the_end():
    # a curve that jumps only at the last step is inside its band only at t = T
    assert t_eps([5.0, 5.0, 5.0, 0.0], 0.2) == 3


def test_noisy_curve_must_stay_in_band():
    # dips into the band at t=1, leaves it at t=2, stays from t=4 on
    curve = [10.0, 0.5, 5.0, 3.0, 0.8, 0.2, 0.6, 0.0]
    assert t_eps(curve, 0.1) == 4
    # a decreasing curve gives the same answer as "first time inside"
    mono = np.linspace(1, 0, 11) ** 2
    first_inside = int(np.argmax(np.abs(mono - mono[-1]) < 0.3))
    assert t_eps(mono, 0.3) == first_inside


def test_increasing_curve_uses_range():
    assert t_eps([0.0, 1.0, 2.0, 3.0, 4.0], 0.3) == 3


def test_a_spike_above_the_start_does_not_widen_the_range():
    # R = max(L_0, L_T) - min = 10 - 1, not 50 - 1: the band is measured against the progress
    curve = [10.0, 4.0, 50.0, 6.0, 2.0, 1.2, 1.0]
    assert t_eps(curve, 0.1) == 5  # |1.2 - 1| = 0.2 < 0.9, |2 - 1| = 1 >= 0.9
    assert t_eps(curve, 0.4) == 4  # the spike and its descent lie outside the band


def test_outcomes_converged_catapult_exploded():
    assert outcome([2.0, 1.0, 0.5, 0.4]) == CONVERGED
    # a bump that undoes a quarter of the progress is not a spike
    assert outcome([2.0, 1.0, 1.25, 0.5]) == CONVERGED
    # undoing half of it (1.0 -> 1.5 of 2.0 -> 1.0) is, above the start or not
    assert outcome([2.0, 1.0, 1.5, 0.5]) == CATAPULT
    assert spike_at([2.0, 1.0, 1.5, 0.5]) == 2
    assert outcome([2.0, 1.0, 100.0, 0.5]) == CATAPULT  # 50x its start, then recovered
    # near zero, a large relative bump is no spike: it rises by less than 10% of the start
    assert outcome([2.0, 0.01, 0.15, 0.001]) == CONVERGED
    assert outcome([2.0, 1.0, 2001.0, 0.5]) == EXPLODED  # above 1000x its start
    assert outcome([2.0, 1.0, 3.0]) == EXPLODED  # ends above its start: no recovery
    assert outcome([2.0, np.nan]) == EXPLODED
    assert exploding(2.0, np.inf) and exploding(2.0, 2001.0) and not exploding(2.0, 1999.0)
    assert blew_up([2.0, 1.0, 3.0]) and not blew_up([2.0, 30.0, 1.0])


def test_curves_outcome_reads_spikes_after_smoothing_and_in_steps():
    noisy = np.array([2.0, 1.6, 1.2, 1.7, 0.9, 0.7, 0.6, 0.5, 0.45])
    c = Curves(noisy, np.zeros(9), interval=5)
    assert c.outcome() == CATAPULT and c.spike_at() == 15
    assert c.outcome(window=5) == CONVERGED  # batch noise, smoothed away
    stopped = Curves(np.array([2.0, 50.0, 5000.0, np.nan]), np.zeros(4), True, interval=2)
    assert stopped.outcome() == EXPLODED and stopped.stopped_at == 4  # 5000 > 1000 x 2


def test_non_finite_curve_has_no_time():
    assert t_eps([1.0, np.nan, 0.5], 0.1) is None
    assert t_eps([1.0, np.inf], 0.1) is None


@pytest.mark.parametrize("eps", [0, 1, -0.1, 1.5])
def test_eps_outside_unit_interval_rejected(eps):
    with pytest.raises(ValueError, match="eps"):
        t_eps([1.0, 0.0], eps)


def test_relative_error():
    assert relative_error(11, 10) == pytest.approx(0.1)
    assert relative_error(5, 0) is None
    assert relative_error(None, 3) is None


def test_curves_shape_checked():
    with pytest.raises(ValueError, match="1-d arrays of the same length"):
        Curves(np.zeros(3), np.zeros(4))
    assert Curves(np.zeros(4), np.zeros(4)).steps == 3


def test_smooth_is_a_centred_moving_average():
    c = np.array([0.0, 3.0, 0.0, 3.0, 0.0, 6.0])
    np.testing.assert_allclose(smooth(c, 3), [0, 1, 2, 1, 3, 6])
    np.testing.assert_array_equal(smooth(c, 1), c)
    with pytest.raises(ValueError, match="window must be a positive odd number, got 4"):
        smooth(c, 4)


def test_curves_t_eps_in_steps_with_interval_and_smoothing():
    c = Curves(np.array([10.0, 6.0, 3.0, 2.0, 1.5, 1.0]), np.zeros(6), interval=10)
    assert c.steps == 50
    assert c.t_eps("loss", [0.4, 0.1]) == {0.4: 20, 0.1: 40}
    noisy = Curves(np.array([8.0, 4.0, 0.0, 2.0, 0.0, 1.0, 0.0]), np.zeros(7))
    assert noisy.t_eps("loss", [0.1]) == {0.1: 6}
    assert noisy.t_eps("loss", [0.1], window=3) == {0.1: 5}  # smoothed: 8 4 2 .67 1 .33 0


def test_t_eps_quantiles_over_paths():
    t = np.arange(51)
    paths = np.stack([np.exp(-t / tau) for tau in (5.0, 10.0, 20.0)])
    q = t_eps_quantiles(paths, [0.1], q=(0.0, 0.5, 1.0))[0.1]
    assert q == [
        float(t_eps(paths[0], 0.1)),
        float(t_eps(paths[1], 0.1)),
        float(t_eps(paths[2], 0.1)),
    ]
    assert t_eps_quantiles(np.full((2, 3), np.nan), [0.1])[0.1] == [None, None, None]
