"""Projection probe (Fig. 4 centre): how well, how fast and how compactly a random sketch
Theta ~ (J P)(J P)^T (core.sketch) replaces the exact Theta, as the dataset size grows.

On nested random subsets of n samples (those of the spectrum probe) the exact Theta is built
and timed, then for each sketch dimension D0 the projected one: its relative Frobenius error
||Theta_hat - Theta||_F / ||Theta||_F, top-eigenvalue ratio, build time, and the bytes the route
stores for the gradients: n C D0 for the sketch against n C D for the Jacobian it replaces.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import pandas as pd
import torch
from torch import nn

from ttbench.core.linearize import linearize
from ttbench.core.sketch import Sketch
from ttbench.probes.subsets import nested_subsets
from ttbench.spec import RunSpec
from ttbench.stages import timed

log = logging.getLogger(__name__)


def compare(theta_hat: torch.Tensor, theta: torch.Tensor) -> tuple[float, float]:
    """(||Theta_hat - Theta||_F / ||Theta||_F, lambda_max(Theta_hat) / lambda_max(Theta))."""
    a, b = theta_hat.to(torch.float64), theta.to(torch.float64)
    error = ((a - b).norm() / b.norm()).item()
    top = (torch.linalg.eigvalsh(a)[-1] / torch.linalg.eigvalsh(b)[-1]).item()
    return error, top


def projection_frame(
    model: nn.Module,
    x: torch.Tensor,
    sizes: Iterable[int],
    dims: Iterable[int],
    kind: str,
    seed: int,
    chunk: int,
    memory_gb: float | None = None,
) -> pd.DataFrame:
    """One row per (n, method): method "exact" (dim = D, the number of trainable weights) or
    the sketch kind (dim = D0); columns n, method, dim, build_s, rel_error, top_eig_ratio,
    stored_bytes. Each exact Theta is built within `memory_gb`."""
    n_weights = sum(p.numel() for p in model.parameters() if p.requires_grad)
    linearize(model, x[:1])  # warm-up, so that the first timing holds no one-off costs
    rows = []
    for idx in nested_subsets(len(x), sizes, seed):
        xs = x[idx.to(x.device)]
        exact, build_s = timed(lambda xs=xs: linearize(model, xs, memory_gb=memory_gb), x.device)
        n, c = exact.f0.shape
        runs = [("exact", n_weights, build_s, 0.0, 1.0)]
        for dim in map(int, dims):
            sketch = Sketch(kind, dim, seed)
            approx, build_s = timed(
                lambda xs=xs, sk=sketch: linearize(model, xs, "projected", sketch=sk, chunk=chunk),
                x.device,
            )
            runs.append((kind, dim, build_s, *compare(approx.theta, exact.theta)))
        log.info("projection probe: n=%d, exact and %d sketches built", n, len(runs) - 1)
        rows += [
            {
                "n": n,
                "method": method,
                "dim": dim,
                "build_s": seconds,
                "rel_error": error,
                "top_eig_ratio": top,
                "stored_bytes": n * c * dim * exact.theta.element_size(),
            }
            for method, dim, seconds, error, top in runs
        ]
    return pd.DataFrame(rows)


def projection_probe(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, spec: RunSpec
) -> pd.DataFrame:
    p, th = spec.probes, spec.theta
    return projection_frame(model, x, p.sizes, p.dims, th.sketch, spec.seed, th.chunk, th.memory_gb)
