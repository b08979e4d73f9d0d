"""Theta from random projections of the Jacobian (Section 4), and the SGD noise's square root
the same way: the projected features J P (streamed over chunks of samples, each weight matrix
sketched in the cheaper of its two ways), Theta from them, the sketched diagonal noise, and
whether a sketch costs fewer multiply-adds than the exact contraction at all.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ttbench.core.jacobian import (
    ROUTES,
    JacobianFactors,
    add_gram,
    blocks,
    capture,
    exact_costs,
    in_slices,
    jacobian_factors,
    layer_factors,
    materialise,
)
from ttbench.core.sketch import SCATTER_COST, Sketch


def sketch_is_cheaper(
    model: nn.Module, x: torch.Tensor, sketch: Sketch, outputs: int | None = None
) -> bool:
    """Whether projecting with `sketch` costs fewer multiply-adds than contracting the exact
    Theta (each layer in its cheaper way) for the samples x, estimated from the layer shapes
    of one sample. Where the exact contraction is cheap (few samples, small layers), a sketch
    would only add error. Trace form (with `outputs`) is held against the exact-Theta cost,
    an upper bound of the trace mode's."""
    factors = jacobian_factors(model, x[:1], outputs)
    n, R = len(x), factors.n_directions
    exact, sketched = 0, (n * R) ** 2 * sketch.dim
    for layer in factors.layers:
        pieces, weight = layer_factors(layer)
        width = sum(p.shape[2] for p in pieces)
        exact += (n * R) ** 2 * width
        sketched += n * R * width * SCATTER_COST
        if weight is not None:
            A, D = weight
            P, n_out, K = D.shape[2], D.shape[3], A.shape[2]
            exact += min(exact_costs(R, n, P, n_out, K))
            sketched += n * min(sketch.per_sample_costs(R, P, n_out, K))
    return sketched < exact


def weight_variances(
    model: nn.Module, x: torch.Tensor, sample_grads: torch.Tensor, chunk: int = 256
) -> list[torch.Tensor]:
    """Per block of weights (in `blocks` order), the variance over the samples of the per-sample
    loss gradients h_i = J_i^T sample_grads[i]: the diagonal of Sigma (Section 4), in float64.
    One backward pass of sum_i f_i . s_i per chunk of samples. For a weight matrix with few
    positions P, sum_i h_i^2 = sum_{i,p,q} (e_ip * e_iq)(a_ip * a_iq)^T is one GEMM of
    n P^2 rows instead of n per-sample gradients of O K elements each (memory traffic)."""
    moments: list[torch.Tensor] = []  # per block: (2, d) sums of h and h^2
    f64 = torch.float64
    for start in range(0, len(x), chunk):
        ss = sample_grads[start : start + chunk]
        f, layers = capture(
            model, x[start : start + chunk], lambda f, ss=ss: (f * ss.to(f)).sum(1, keepdim=True)
        )
        for b, piece in enumerate(blocks(JacobianFactors(f, layers), _factored)):
            if (
                isinstance(piece, tuple)
                and piece[0].shape[1] ** 2 <= piece[0].shape[1] + SCATTER_COST
            ):
                A, D = piece[0].double(), piece[1][0].double()  # (n, P, K), (n, P, O)
                a2 = (A.unsqueeze(2) * A.unsqueeze(1)).flatten(0, 2)  # (n P^2, K)
                e2 = (D.unsqueeze(2) * D.unsqueeze(1)).flatten(0, 2)  # (n P^2, O)
                m = torch.stack(
                    [(D.flatten(0, 1).T @ A.flatten(0, 1)).flatten(), (e2.T @ a2).flatten()]
                )
            else:
                m = 0
                for h in in_slices(piece):
                    h = h[:, 0]
                    m = m + torch.stack([h.sum(0, dtype=f64), (h * h).sum(0, dtype=f64)])
            if b < len(moments):
                moments[b] += m
            else:
                moments.append(m)
    n = len(x)
    return [(m[1] / n - (m[0] / n) ** 2).clamp_min(0) for m in moments]


def _factored(A: torch.Tensor, D: torch.Tensor) -> bool:
    return True


def _by_slices(phi: torch.Tensor, piece, add) -> None:
    """add(rows of phi, their per-sample gradients (rows, d)) for a piece, a few samples at a
    time (`in_slices`), rows (i, r) i-major."""
    row = 0
    for g in in_slices(piece):
        g = g.reshape(-1, g.shape[2])
        add(phi[row : row + len(g)], g)
        row += len(g)


def diagonal_noise_features(
    model: nn.Module,
    x: torch.Tensor,
    sample_grads: torch.Tensor,
    sketch: Sketch,
    chunk: int = 256,
    outputs: int | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """A sketched square root of J diag(sigma^2) J^T (see `diagonal_noise_gram`): phi =
    J diag(sigma) P, (N*C, D0) rows (i, c) i-major, E[phi phi^T] = J diag(sigma^2) J^T. Two
    streamed passes over chunks of samples: the first accumulates each weight's mean and mean
    square of h_i = J_i^T sample_grads[i] (one backward pass of sum_i f_i . s_i), the second
    projects every class's per-sample gradients scaled by sigma. No (N C)^2 D Gram and no
    eigendecomposition: the SDE draws its noise as phi z, z ~ N(0, I_D0).

    With `outputs=P` the second pass takes P random output directions (as for Theta_s) and
    returns a square root (N, P*D0) of the class-averaged covariance, for the trace form
    Cov ~ Cov_s (x) I_C."""
    if sketch.kind != "countsketch":
        raise ValueError("the diagonal noise is sketched with a countsketch")
    starts = range(0, len(x), chunk)
    sigma = [v.sqrt() for v in weight_variances(model, x, sample_grads, chunk)]
    rows = []
    for start in starts:
        factors = jacobian_factors(model, x[start : start + chunk], outputs, seed)
        n, R = len(factors.f0), factors.n_directions
        f0 = factors.f0
        phi = torch.zeros(n * R, sketch.dim, dtype=f0.dtype, device=f0.device)
        for b, piece in enumerate(blocks(factors, _factored)):
            bucket, sign = sketch.countsketch_map(b, len(sigma[b]), f0.device, f0.dtype)
            scale = sign * sigma[b].to(f0.dtype)
            _by_slices(phi, piece, lambda out, g, i=bucket, w=scale: out.index_add_(1, i, g * w))
        rows.append(phi)
    phi = torch.cat(rows)
    if outputs is None:
        return phi
    return phi.view(len(x), -1) / outputs**0.5  # (N, P*D0): mean_p phi_p phi_p^T


def project_piece(
    phi: torch.Tensor,
    block: int,
    piece: torch.Tensor | tuple[torch.Tensor, torch.Tensor],
    sketch: Sketch,
    factored: Callable[[torch.Tensor, torch.Tensor], bool],
) -> None:
    """phi += a piece of J (per-sample gradients (n, R, d), or a weight matrix's factors) times
    the sketch's rows for `block`; factors are projected without forming the gradients where
    `factored(A, D)` says so."""
    if isinstance(piece, tuple) and factored(*piece):
        sketch.project_factors_into(phi, block, *piece)
    elif sketch.kind == "countsketch":  # cheap to regenerate: slice to stay in cache
        _by_slices(phi, piece, lambda out, g: sketch.project_into(out, block, g))
    else:
        g = materialise(*piece) if isinstance(piece, tuple) else piece
        sketch.project_into(phi, block, g.reshape(len(phi), -1))


def projected_features(
    model: nn.Module,
    x: torch.Tensor,
    sketch: Sketch,
    chunk: int = 256,
    outputs: int | None = None,
    seed: int = 0,
    route: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """f0 (N, C) and J P (N*R, D0), rows (i, r) i-major over the R output directions (the C
    classes, or `outputs` random ones drawn from `seed`), streamed over chunks of samples:
    peak memory is J P plus one chunk's factors and one layer's sketch. Each weight matrix is
    sketched in the cheaper of two ways by the sketch's flop model (`route` forces one): its
    per-sample gradients materialised then projected, or its factors projected without
    forming them."""
    if route not in ROUTES:
        raise ValueError(f"route must be one of {ROUTES}, got {route!r}")
    factored = {
        "auto": sketch.factored_is_cheaper,
        "structured": lambda A, D: True,
        "materialised": lambda A, D: False,
    }[route]
    f0s, rows = [], []
    for start in range(0, len(x), chunk):
        factors = jacobian_factors(model, x[start : start + chunk], outputs, seed)
        n, R = len(factors.f0), factors.n_directions
        phi = torch.zeros(n * R, sketch.dim, dtype=factors.f0.dtype, device=factors.f0.device)
        for block, piece in enumerate(blocks(factors, _factored)):
            project_piece(phi, block, piece, sketch, factored)
        f0s.append(factors.f0)
        rows.append(phi)
    return torch.cat(f0s), torch.cat(rows)


def sketched_theta(phi: torch.Tensor, n: int, trace: bool) -> torch.Tensor:
    """Theta from projected features phi (N*R, D0): phi phi^T, or with `trace` the mean over
    the R output directions of their (N, N) Grams (an estimate of Theta_s)."""
    if not trace:
        theta = torch.zeros(len(phi), len(phi), dtype=phi.dtype, device=phi.device)
        add_gram(theta, phi)
        return theta
    per = phi.view(n, -1, phi.shape[1]).transpose(0, 1)  # (R, N, D0)
    return torch.bmm(per, per.transpose(1, 2)).mean(0)
