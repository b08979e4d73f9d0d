"""Losses in function space, shared by real fine-tuning and every predictor.

One normalisation everywhere: the mean over the N samples of a per-sample loss,
    ce:  l_i = -log softmax(f_i)[y_i]
    mse: l_i = 1/2 ||f_i - onehot(y_i)||^2
so the gradient with respect to the outputs is (softmax(f_i) - onehot(y_i)) / N for ce
and (f_i - onehot(y_i)) / N for mse. Outputs f have shape (..., N, C), labels y shape (N,).
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

LOSSES = ("ce", "mse")


def _check(kind: str) -> None:
    if kind not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {kind!r}")


def per_sample_loss(f: torch.Tensor, y: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-sample loss l_i, shape (..., N)."""
    _check(kind)
    if kind == "ce":
        return -torch.gather(
            F.log_softmax(f, dim=-1), -1, y.expand(f.shape[:-1]).unsqueeze(-1)
        ).squeeze(-1)
    onehot = F.one_hot(y, f.shape[-1]).to(f.dtype)
    return 0.5 * ((f - onehot) ** 2).sum(-1)


def loss(f: torch.Tensor, y: torch.Tensor, kind: str) -> torch.Tensor:
    """Training loss L(f): the mean of the per-sample losses, shape (...)."""
    return per_sample_loss(f, y, kind).mean(-1)


def error(f: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Training error: the fraction of samples whose arg-max output is not the label."""
    return (f.argmax(-1) != y).to(f.dtype).mean(-1)


def grad_f(f: torch.Tensor, y: torch.Tensor, kind: str) -> torch.Tensor:
    """dL/df, shape (..., N, C)."""
    _check(kind)
    onehot = F.one_hot(y, f.shape[-1]).to(f.dtype)
    p = torch.softmax(f, dim=-1) if kind == "ce" else f
    return (p - onehot) / f.shape[-2]


def hessian_f(f: torch.Tensor, kind: str) -> torch.Tensor:
    """d^2 L / df_i df_i per sample (the Hessian is block diagonal), shape (N, C, C)."""
    _check(kind)
    n, c = f.shape
    if kind == "mse":
        return torch.eye(c, dtype=f.dtype, device=f.device).expand(n, c, c) / n
    p = torch.softmax(f, dim=-1)
    return (torch.diag_embed(p) - p.unsqueeze(-1) * p.unsqueeze(-2)) / n
