"""Clustering probe (Fig. 3): per sample, the leading principal components of its gradient and
of its features, and its predicted loss trajectory and training time; t-SNE is left to the
analysis layer.

* Gradient: the per-sample loss gradient at w0, g_i = J_i^T a_i with a_i = dl_i/df_i (one
  D-vector per sample, all trainable weights). Its PCA is uncentred, as in Proposition 2, whose
  eigenvalues set the convergence rates, and is had without forming any g_i: kernel PCA of the
  Gram matrix G_ij = <g_i, g_j> = sum_cc' a_ic Theta[(i,c),(j,c')] a_jc', whose eigenvectors v_k
  give the scores sqrt(lambda_k) v_k.
* Features: the input of model.head, centred, by SVD.
* Trajectory: the per-sample loss l_i(t) of the linearised model under GD with the run's lr and
  momentum (core.dynamics' exact discrete map: the deterministic part, also for SGD runs), at
  about TRAJECTORY_POINTS steps, and its T_eps at CLUSTER_EPS (relative to its own range, as
  everywhere in ttbench).
Signs of components are fixed so that each one's largest-magnitude score is positive.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch import nn

from ttbench.core import losses
from ttbench.core.curves import t_eps
from ttbench.core.dynamics import discrete
from ttbench.core.linearize import linearize
from ttbench.spec import RunSpec

CLUSTER_EPS = 0.1
TRAJECTORY_POINTS = 20


def gradient_gram(
    theta: torch.Tensor, f0: torch.Tensor, y: torch.Tensor, loss: str
) -> torch.Tensor:
    """G_ij = <g_i, g_j> of the per-sample loss gradients g_i = J_i^T dl_i/df_i, from the exact
    Theta (N*C, N*C) and the outputs f0 (N, C), in float64."""
    n, c = f0.shape
    a = losses.grad_f(f0.to(torch.float64), y, loss) * n  # the mean loss's gradient times N
    return torch.einsum("ic,icjd,jd->ij", a, theta.to(torch.float64).view(n, c, n, c), a)


def _signed(scores: torch.Tensor) -> torch.Tensor:
    rows = scores.abs().argmax(0)
    sign = torch.sign(scores[rows, torch.arange(scores.shape[1], device=scores.device)])
    return scores * torch.where(sign == 0, 1.0, sign)


def kernel_pcs(gram: torch.Tensor, k: int) -> torch.Tensor:
    """Scores (N, k) of the uncentred PCA of vectors whose Gram matrix is `gram`."""
    lambdas, vectors = torch.linalg.eigh(gram.to(torch.float64))
    top = lambdas.flip(0)[:k].clamp_min(0)
    return _signed(vectors.flip(1)[:, :k] * top.sqrt())


def centred_pcs(data: torch.Tensor, k: int) -> torch.Tensor:
    """Scores (N, k) of the usual (centred) PCA of the rows of `data`."""
    d = data.to(torch.float64)
    u, s, _ = torch.linalg.svd(d - d.mean(0), full_matrices=False)
    return _signed(u[:, :k] * s[:k])


def head_inputs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The features the model's head (`model.head`, see models.classifier) sees, (N, F)."""
    head = getattr(model, "head", None)
    if not isinstance(head, nn.Module):
        raise ValueError("the clustering probe needs a model with a `head` module")
    seen: list[torch.Tensor] = []
    handle = head.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach()))
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    return seen[0].flatten(1)


def _columns(prefix: str, scores: torch.Tensor, k: int) -> dict[str, np.ndarray]:
    """k columns prefix1..prefixk; NaN beyond the components that exist (k > rank)."""
    values = scores.cpu().numpy()
    return {
        f"{prefix}{j + 1}": values[:, j] if j < values.shape[1] else np.full(len(values), np.nan)
        for j in range(k)
    }


def clustering_frame(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    lr: float,
    momentum: float,
    steps: int,
    loss: str,
    components: int,
    memory_gb: float | None = None,
) -> pd.DataFrame:
    """One row per sample: sample (index in the task), label, t_eps (predicted, in steps),
    grad_pc1..K, feat_pc1..K, and loss_t<step>, the predicted loss at
    ~TRAJECTORY_POINTS steps. Theta is built within `memory_gb`."""
    features = head_inputs(model, x)
    lin = linearize(model, x, memory_gb=memory_gb)
    grads = kernel_pcs(gradient_gram(lin.theta, lin.f0, y, loss), components)
    feats = centred_pcs(features, components)
    pred = discrete(lin.theta, lin.f0, y, lr=lr, momentum=momentum, steps=steps, loss=loss)
    per_sample = losses.per_sample_loss(pred.outputs, y.to(pred.outputs.device), loss)
    curves = per_sample.cpu().numpy()  # (T+1, N)
    times = [t_eps(curves[:, i], CLUSTER_EPS) for i in range(len(y))]
    at = np.unique(np.round(np.linspace(0, steps, TRAJECTORY_POINTS)).astype(int))
    return pd.DataFrame(
        {
            "sample": np.arange(len(y)),
            "label": y.cpu().numpy(),
            "t_eps": np.array([np.nan if t is None else t for t in times], dtype=float),
            **_columns("grad_pc", grads, components),
            **_columns("feat_pc", feats, components),
            **{f"loss_t{t}": curves[t] for t in at},
        }
    )


def clustering_probe(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, spec: RunSpec
) -> pd.DataFrame:
    return clustering_frame(
        model,
        x,
        y,
        **spec.train.dynamics,
        components=spec.probes.components,
        memory_gb=spec.theta.memory_gb,
    )
