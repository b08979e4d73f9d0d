"""Training time on a larger dataset from a subset (Section 4, Appendix D), MSE loss.

With the loss of `losses` (1/(2N) |f - Y|^2) gradient flow gives
    L_t = 1/(2N) sum_k p_k exp(-2 elr (lambda_k / N) t),
so what converges as N grows is the spectrum of Theta / N (Fig. 4 right). From the subset's
Theta_0 (N0 samples): fit lambda_k / N0 = c k^-s, then predict for N samples
    lambda_k / N = c k^(-s + alpha (N0/N - 1))          (the slope correction, alpha ~ 0.15),
and the projections p_k = (v_k . dy)^2 as the subset's p'_k for k < k0 and a k^-b beyond,
with a, b fixed by p_k0 = p'_k0 and sum_k p_k = |dy|^2 (dy = f0 - Y on all N samples, which
needs only a forward pass). One departure from Appendix D: p'_k is first scaled by
|dy|^2 / |dy_0|^2 (all samples over the subset, about N / N0), since the leading projections grow
with the dataset like |dy|^2 does; docs/theta.md ("Cheaper Θ") gives the measurement behind it.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import brentq

from ttbench.core.dynamics import elr
from ttbench.core.spectrum import PowerLaw, fit_power_law, spectrum


def extrapolate_rates(
    law: PowerLaw, n0: int, n: int, count: int, alpha: float = 0.15
) -> np.ndarray:
    """Predicted lambda_k / N for k = 1..count, from a law fitted to lambda'_k / N0."""
    k = np.arange(1, count + 1, dtype=np.float64)
    return law.c * k ** (-law.s + alpha * (n0 / n - 1))


def extrapolate_projections(
    p_sub: np.ndarray, total: float, count: int, k0: int = 100
) -> np.ndarray:
    """p_k for k = 1..count: the subset's p'_k below k0, then a k^-b tail through p'_k0 whose
    sum makes sum_k p_k = total."""
    p_sub = np.asarray(p_sub, dtype=np.float64)
    k0 = min(k0, p_sub.size, count)
    head = p_sub[: k0 - 1]
    anchor = p_sub[k0 - 1]
    ks = np.arange(k0, count + 1, dtype=np.float64)
    target = total - head.sum()
    if anchor <= 0 or target <= 0:
        raise ValueError("the subset's projections leave no positive tail to extrapolate")

    def excess(b: float) -> float:
        return anchor * np.sum((ks / k0) ** -b) - target

    lo, hi = -10.0, 50.0
    if excess(lo) < 0 or excess(hi) > 0:
        raise ValueError("no power-law tail meets the sum constraint")
    b = brentq(excess, lo, hi)
    return np.concatenate([head, anchor * (ks / k0) ** -b])


def mse_loss_curve(
    rates: np.ndarray, p_k: np.ndarray, n: int, lr_eff: float, steps: int
) -> np.ndarray:
    """L_t = 1/(2N) sum_k p_k exp(-2 elr rate_k t), t = 0..steps."""
    t = np.arange(steps + 1, dtype=np.float64)[:, None]
    return (p_k * np.exp(-2 * lr_eff * rates * t)).sum(1) / (2 * n)


def predict_from_subset(
    theta0: torch.Tensor,
    f0_sub: torch.Tensor,
    y_sub: torch.Tensor,
    f0_all: torch.Tensor,
    y_all: torch.Tensor,
    *,
    lr: float,
    momentum: float,
    steps: int,
    alpha: float = 0.15,
    k0: int = 100,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The MSE loss curve on all N samples predicted from Theta_0 on N0 of them. Returns the
    curve (t = 0..steps) and the spectra used (subset and predicted rates and projections)."""
    n0, n = len(y_sub), len(y_all)
    sub = spectrum(theta0, f0_sub, y_sub)
    rates0 = (sub.lambdas / n0).cpu().numpy()
    law = fit_power_law(rates0)
    count = n * f0_all.shape[1] if theta0.shape[0] == sub.residual.numel() else n
    rates = extrapolate_rates(law, n0, n, count, alpha)
    onehot = torch.nn.functional.one_hot(y_all, f0_all.shape[1]).to(torch.float64)
    total = float(((f0_all.to(torch.float64) - onehot) ** 2).sum())
    # |dy|^2 grows with N, and so do the leading projections: scale the subset's by the ratio
    # of the squared residual norms on all samples and on the subset
    p_sub = sub.p_k.cpu().numpy()
    p_k = extrapolate_projections(p_sub * total / p_sub.sum(), total, count, k0)
    curve = mse_loss_curve(rates, p_k, n, elr(lr, momentum), steps)
    return curve, {
        "rates_subset": rates0,
        "p_subset": sub.p_k.cpu().numpy(),
        "rates": rates,
        "p_k": p_k,
    }
