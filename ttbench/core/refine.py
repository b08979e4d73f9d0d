"""Predictions that use the first k steps of the real training (the paper's closing future
work), on arrays:

* `rescale_time`: a prediction made at w0, its time axis stretched by the factor s that best
  fits the observed prefix L_0..L_k (least squares on log L over t = 1..k); the cheap correction,
  for a network that trains faster or slower than its linearisation but with the same shape;
* `extrapolate`: the usual parametric learning-curve fits of the prefix, extended to step T
  (scipy's curve_fit): "exp" L(t) = c + a exp(-b t) and "power" L(t) = c + a (t + 1)^-b; the
  baselines any prediction from k real steps has to beat;
* `join`: the observed prefix followed by a prediction of the steps after it.

The re-linearised prediction (Theta and f at w_k, the momentum buffer carried as u_k = J_k v_k)
needs no code of its own here: it is the ordinary dynamics started from (f_k, u_k).
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy.optimize import OptimizeWarning, curve_fit, minimize_scalar

FAMILIES = ("exp", "power")
SCALES = (0.2, 5.0)  # the time-scale factors a rescale may fit


def join(prefix: np.ndarray, tail: np.ndarray) -> np.ndarray:
    """The observed values at steps 0..k, then a prediction whose first value is step k."""
    return np.concatenate([np.asarray(prefix, float), np.asarray(tail, float)[1:]])


def _at(curve: np.ndarray, t: np.ndarray) -> np.ndarray:
    """curve (at integer steps) read at real-valued times, linearly interpolated."""
    return np.interp(t, np.arange(len(curve)), curve)


def fit_time_scale(predicted: np.ndarray, prefix: np.ndarray) -> float:
    """The factor s with predicted(s t) closest to prefix(t) for t = 1..k, in log loss.
    `predicted` must reach step SCALES[1] * k."""
    k = len(prefix) - 1
    t = np.arange(1, k + 1, dtype=float)
    target = np.log(np.maximum(prefix[1:], 1e-300))

    def cost(log_s: float) -> float:
        values = np.maximum(_at(predicted, np.exp(log_s) * t), 1e-300)
        return float(np.sum((np.log(values) - target) ** 2))

    lo, hi = np.log(SCALES)
    return float(np.exp(minimize_scalar(cost, bounds=(lo, hi), method="bounded").x))


def rescale_time(predicted: np.ndarray, scale: float, steps: int) -> np.ndarray:
    """predicted(scale * t) for t = 0..steps (`predicted` must reach step scale * steps)."""
    return _at(predicted, scale * np.arange(steps + 1, dtype=float))


def _exp(t, a, b, c):
    return c + a * np.exp(-b * t)


def _power(t, a, b, c):
    return c + a * (t + 1.0) ** -b


def extrapolate(prefix: np.ndarray, steps: int, family: str) -> np.ndarray | None:
    """The fitted curve at t = 0..steps, or None when the fit fails (too short or flat a
    prefix). Fits are bounded to decreasing curves that stay >= 0."""
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    y = np.asarray(prefix, dtype=float)
    if len(y) < 4 or not np.all(np.isfinite(y)):
        return None
    t = np.arange(len(y), dtype=float)
    span = max(float(y[0] - y.min()), 1e-12)
    fn, b0 = (_exp, 1.0 / len(y)) if family == "exp" else (_power, 0.5)
    start = (span, b0, max(float(y.min()) - 0.1 * span, 0.0))
    bounds = ([0.0, 1e-6, 0.0], [np.inf, 50.0, max(float(y.max()), 1e-12)])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", OptimizeWarning)
            params, _ = curve_fit(fn, t, y, p0=start, bounds=bounds, maxfev=20000)
    except (RuntimeError, ValueError):
        return None
    return fn(np.arange(steps + 1, dtype=float), *params)
