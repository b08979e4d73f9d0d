"""The spectrum of Theta (Proposition 2): its eigenvalues lambda_k, eigenvectors v_k and the
projections p_k = (v_k . r_0)^2 of the initial residual r_0 = f0 - Y on them, and the power law
lambda_k / N = c k^-s that the spectrum follows (Fig. 4 right, Appendix D)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class Spectrum:
    """Eigen-decomposition of Theta (descending) and the residual's projections on it."""

    lambdas: torch.Tensor  # (K,)
    vectors: torch.Tensor  # (rows, K)
    p_k: torch.Tensor  # (K,): (v_k . r_0)^2, summed over classes for a trace kernel
    residual: torch.Tensor  # r_0 = f0 - Y, (N, C)


def spectrum(theta: torch.Tensor, f0: torch.Tensor, y: torch.Tensor) -> Spectrum:
    """Theta (exact (N*C)^2 or trace (N, N)) decomposed in float64 on its own device."""
    theta = theta.to(torch.float64)
    f0, y = f0.to(theta.device, torch.float64), y.to(theta.device)
    lambdas, vectors = torch.linalg.eigh(theta)
    lambdas, vectors = lambdas.flip(0).clamp_min(0), vectors.flip(1)  # PSD up to round-off
    r0 = f0 - torch.nn.functional.one_hot(y, f0.shape[1]).to(f0.dtype)
    coef = vectors.T @ (r0.reshape(-1) if theta.shape[0] == r0.numel() else r0)
    p_k = coef**2 if coef.dim() == 1 else (coef**2).sum(1)
    return Spectrum(lambdas, vectors, p_k, r0)


@dataclass(frozen=True)
class PowerLaw:
    c: float
    s: float

    def __call__(self, k: np.ndarray) -> np.ndarray:
        return self.c * np.asarray(k, dtype=np.float64) ** -self.s


def fit_power_law(values: np.ndarray, k_min: int = 1, k_max: int | None = None) -> PowerLaw:
    """Least-squares fit of log v_k = log c - s log k over k_min <= k <= k_max (1-based), using
    the positive values only."""
    v = np.asarray(values, dtype=np.float64)
    k = np.arange(1, v.size + 1)
    sel = (k >= k_min) & (k <= (k_max or v.size)) & (v > 0)
    if sel.sum() < 2:
        raise ValueError("a power law needs at least two positive values to fit")
    slope, intercept = np.polyfit(np.log(k[sel]), np.log(v[sel]), 1)
    return PowerLaw(float(np.exp(intercept)), float(-slope))
