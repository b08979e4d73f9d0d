"""Training curves and the epsilon-training-time T_eps (Appendix A, Section 5).

T_eps is the first step after which the curve stays within eps * R of its final value L_T:
    T_eps = min{t : |L_s - L_T| < eps * R for every s >= t},  R = max_t L_t - min_t L_t.
Normalising eps by the range R reached within the budget T is the paper's 'normalised
threshold' (Section 5); for a decreasing curve R = L_0 - L_T. Requiring the curve to *stay* in
the band ("the first time after which the loss is within an eps threshold", Appendix C) equals
Algorithm 1's "first time inside" on monotone curves and is robust to noisy ones. A flat curve
(R = 0) has T_eps = 0; a diverged curve has none.

A curve, real or predicted, has diverged when a value is non-finite or rises above BLOWUP times
its start: such a run is not converging, whatever its range says (a finite blow-up, e.g. to
1e8, would otherwise give a T_eps).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

DEFAULT_EPS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.4)
BLOWUP = 10.0


def blew_up(loss: Sequence[float] | np.ndarray) -> bool:
    """Whether a loss curve diverged: a non-finite value, or one above BLOWUP x its first."""
    c = np.asarray(loss, dtype=np.float64)
    if c.size == 0:
        return False
    if not np.all(np.isfinite(c)):
        return True
    return bool(np.max(c) > BLOWUP * max(c[0], 0.0)) if c[0] > 0 else False


@dataclass(frozen=True)
class Curves:
    """Training loss and error at steps t = 0, interval, 2 interval, ..., T (before the update
    of that step)."""

    loss: np.ndarray
    error: np.ndarray
    diverged: bool = False
    interval: int = 1

    def __post_init__(self) -> None:
        if np.shape(self.loss) != np.shape(self.error) or np.ndim(self.loss) != 1:
            raise ValueError("loss and error must be 1-d arrays of the same length")

    @property
    def steps(self) -> int:
        return (len(self.loss) - 1) * self.interval

    def t_eps(self, kind: str, eps: Iterable[float], window: int = 1) -> dict[float, int | None]:
        """T_eps in steps of the loss or error curve, after smoothing over `window` points;
        None for every eps when the curve diverged."""
        if self.diverged:
            return {float(e): None for e in eps}
        curve = smooth(getattr(self, kind), window)
        return {
            e: None if t is None else t * self.interval for e, t in t_eps_grid(curve, eps).items()
        }


def t_eps(curve: Sequence[float] | np.ndarray, eps: float) -> int | None:
    """First step after which `curve` stays within eps * range of its last value."""
    if not 0 < eps < 1:
        raise ValueError(f"eps must be in (0, 1), got {eps}")
    c = np.asarray(curve, dtype=np.float64)
    if c.ndim != 1 or c.size == 0:
        raise ValueError("curve must be a non-empty 1-d array")
    if not np.all(np.isfinite(c)):
        return None
    spread = c.max() - c.min()
    if spread == 0:
        return 0
    outside = np.flatnonzero(np.abs(c - c[-1]) >= eps * spread)
    return 0 if outside.size == 0 else int(outside[-1]) + 1


def t_eps_grid(
    curve: Sequence[float] | np.ndarray, eps: Iterable[float]
) -> dict[float, int | None]:
    """T_eps for each eps of a grid."""
    return {float(e): t_eps(curve, e) for e in eps}


def smooth(curve: Sequence[float] | np.ndarray, window: int) -> np.ndarray:
    """Centred moving average over `window` points (odd), the window shrinking at both ends so
    that the first and last values stay centred. window=1 returns the curve unchanged."""
    c = np.asarray(curve, dtype=np.float64)
    if window < 1 or window % 2 == 0:
        raise ValueError(f"window must be a positive odd number, got {window}")
    if window == 1 or c.size == 0:
        return c
    half = window // 2
    out = np.empty_like(c)
    for t in range(c.size):
        r = min(half, t, c.size - 1 - t)
        out[t] = c[t - r : t + r + 1].mean()
    return out


def relative_error(t_pred: int | None, t_real: int | None) -> float | None:
    """|t_pred - t_real| / t_real; None when undefined (a missing time or t_real = 0)."""
    if t_pred is None or t_real is None or t_real == 0:
        return None
    return abs(t_pred - t_real) / t_real


def t_eps_quantiles(
    paths: np.ndarray,
    eps: Iterable[float],
    window: int = 1,
    interval: int = 1,
    q: Sequence[float] = (0.05, 0.5, 0.95),
) -> dict[float, list[float | None]]:
    """Quantiles over sample paths (R, points) of their T_eps in steps. A diverged path (see
    `blew_up`) never gets within eps: it counts as an infinite time, and a quantile that falls
    on such paths is None ("never")."""
    out = {}
    paths = np.asarray(paths)
    live = [(p, blew_up(p)) for p in paths]
    never = 1e18  # stands for "no time" in the quantile; a quantile near it is None
    for e in eps:
        times = [t_eps(smooth(p, window), e) * interval if not d else never for p, d in live]
        values = np.array(times, dtype=float)
        out[float(e)] = [None if v >= never / 2 else float(v) for v in np.quantile(values, q)]
    return out
