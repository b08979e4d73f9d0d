"""Training curves, their outcome, and the epsilon-training-time T_eps (Appendix A, Section 5).

T_eps is the first step after which the curve stays within eps * R of its final value L_T:
    T_eps = min{t : |L_s - L_T| < eps * R for every s >= t},  R = max(L_0, L_T) - min_t L_t.
Normalising eps by the range reached within the budget T is the paper's 'normalised threshold'
(Section 5); for a decreasing curve R = L_0 - L_T. Requiring the curve to *stay* in the band
("the first time after which the loss is within an eps threshold", Appendix C) equals Algorithm
1's "first time inside" on monotone curves and is robust to noisy ones. A spike above the start
does not widen R: T_eps then measures when the curve has settled after it. A flat curve (R = 0)
has T_eps = 0; an exploded curve has none.

Every curve, real or predicted, has one of three outcomes (`outcome`):
* exploded: a non-finite value, a value above EXPLODE times its start, or an end above its start
  (no recovery within the budget): such a run is not converging and has no T_eps;
* catapult: it spiked (`spike_at`: the loss rose back by at least half of the progress made
  so far, and by at least SPIKE_FLOOR of its start) and then recovered: the large learning rate
  phase of Lewkowycz et al. (2020), where the network leaves its linearisation and settles in a
  flatter region; it has T_eps, measured after the spike;
* converged: neither.
Real fine-tuning stops only at an explosion in the first sense (`exploding`), so a catapult is
recorded whole.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

DEFAULT_EPS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.4)
QUANTILES = (0.05, 0.5, 0.95)  # every band: 5-95% with its median
EXPLODE = 1000.0  # a loss above this multiple of its start has exploded (catapults reach 60x)
SPIKE_UNDO = 0.5  # a spike undoes at least this share of the progress made so far
SPIKE_FLOOR = 0.1  # and rises by at least this share of the starting loss (not batch noise)
SETTLE = 0.1  # a spike has settled once the loss is back within this share of the progress
CONVERGED, CATAPULT, EXPLODED = "converged", "catapult", "exploded"
OUTCOMES = (CONVERGED, CATAPULT, EXPLODED)


def exploding(start: float, value: float) -> bool:
    """Whether a loss `value` is an explosion of a curve that started at `start`: non-finite, or
    above EXPLODE times the start. Real fine-tuning stops there."""
    if not np.isfinite(value):
        return True
    return bool(start > 0 and value > EXPLODE * start)


def blew_up(loss: Sequence[float] | np.ndarray) -> bool:
    """Whether a loss curve exploded (module docstring): a non-finite value, one above EXPLODE x
    its first, or a last value above the first (no recovery within the budget)."""
    c = np.asarray(loss, dtype=np.float64)
    if c.size == 0:
        return False
    if not np.all(np.isfinite(c)):
        return True
    return bool(c[0] > 0 and (np.max(c) > EXPLODE * c[0] or c[-1] > c[0]))


def spike_at(loss: Sequence[float] | np.ndarray) -> int | None:
    """The first index t at which the loss undoes at least SPIKE_UNDO of the progress made so
    far, L_t - m_t >= SPIKE_UNDO (L_0 - m_t) with m_t = min_{s<t} L_s, rising by at least
    SPIKE_FLOOR L_0 (or is not finite); None when it never does."""
    c = np.asarray(loss, dtype=np.float64)
    if c.size < 2:
        return None
    low = np.minimum.accumulate(c)[:-1]
    rise = c[1:] - low
    spike = (rise >= SPIKE_UNDO * (c[0] - low)) & (rise >= SPIKE_FLOOR * abs(c[0])) & (rise > 0)
    hits = np.flatnonzero(spike | ~np.isfinite(c[1:]))
    return int(hits[0]) + 1 if hits.size else None


def settled(loss: Sequence[float] | np.ndarray) -> bool:
    """Whether a curve's last value is settled, no spike in progress: L_t - m <= SETTLE (L_0 -
    m), m the lowest value so far (a curve that keeps falling is always settled)."""
    c = np.asarray(loss, dtype=np.float64)
    if not np.all(np.isfinite(c)):
        return False
    low = c.min()
    return bool(c[-1] - low <= SETTLE * (c[0] - low))


def outcome(loss: Sequence[float] | np.ndarray) -> str:
    """EXPLODED, CATAPULT or CONVERGED (module docstring)."""
    if blew_up(loss):
        return EXPLODED
    return CONVERGED if spike_at(loss) is None else CATAPULT


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

    def outcome(self, window: int = 1) -> str:
        """EXPLODED, CATAPULT or CONVERGED (module docstring), spikes read on the loss smoothed
        over `window` points as T_eps is (batch noise is not a spike)."""
        if self.diverged or blew_up(self.loss):
            return EXPLODED
        return CONVERGED if self.spike_at(window) is None else CATAPULT

    @property
    def stopped_at(self) -> int | None:
        """The step of the first explosion (`exploding`), where real fine-tuning stops."""
        start = self.loss[0] if len(self.loss) else np.nan
        bad = [t for t, v in enumerate(self.loss) if exploding(start, v)]
        return bad[0] * self.interval if bad else None

    def spike_at(self, window: int = 1) -> int | None:
        """The step at which the loss (smoothed over `window` points) first spiked, or None."""
        onset = spike_at(smooth(self.loss, window))
        return None if onset is None else onset * self.interval

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
    spread = max(c[0], c[-1]) - c.min()
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
    q: Sequence[float] = QUANTILES,
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
