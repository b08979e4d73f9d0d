"""Spectrum probe (Fig. 4 right, Fig. 11): on nested random subsets of n samples, the
eigenvalues of the exact Theta divided by n (the normalisation under which they converge as n
grows, Appendix D), the projections p_k = (v_k . dy)^2 of the residual dy = f0 - Y on its
eigenvectors, and the power law lambda_k / n = c k^-s fitted to them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import numpy as np
import pandas as pd
import torch
from torch import nn

from ttbench.core.linearize import linearize
from ttbench.core.spectrum import PowerLaw, fit_power_law, spectrum
from ttbench.probes.subsets import nested_subsets
from ttbench.spec import RunSpec

log = logging.getLogger(__name__)


def fit_spectrum(rates: np.ndarray) -> PowerLaw:
    """The power law over 2 <= k <= count / 2: lambda_1 stands above the law (the direction
    shared by all samples) and the last half bends down, a finite-n effect; NaN when fewer than
    two positive values remain."""
    try:
        return fit_power_law(rates, k_min=2, k_max=max(2, len(rates) // 2))
    except ValueError:
        return PowerLaw(float("nan"), float("nan"))


def spectrum_frame(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    sizes: Iterable[int],
    seed: int,
    memory_gb: float | None = None,
) -> pd.DataFrame:
    """One row per (n, k), k from 1 in descending order of the eigenvalues: columns n, k,
    eigenvalue (lambda_k / n), projection (p_k), and the fitted c, s of that n. Each exact
    Theta is built within `memory_gb` (ttbench.core.linearize.linearize)."""
    frames = []
    for idx in nested_subsets(len(y), sizes, seed):
        idx = idx.to(x.device)
        n = len(idx)
        lin = linearize(model, x[idx], memory_gb=memory_gb)
        s = spectrum(lin.theta, lin.f0, y[idx])
        rates = (s.lambdas / n).cpu().numpy()
        law = fit_spectrum(rates)
        log.info("spectrum probe: n=%d, power law c=%.4g s=%.3f", n, law.c, law.s)
        frames.append(
            pd.DataFrame(
                {
                    "n": n,
                    "k": np.arange(1, len(rates) + 1),
                    "eigenvalue": rates,
                    "projection": s.p_k.cpu().numpy(),
                    "c": law.c,
                    "s": law.s,
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def spectrum_probe(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, spec: RunSpec
) -> pd.DataFrame:
    return spectrum_frame(model, x, y, spec.probes.sizes, spec.seed, spec.theta.memory_gb)
