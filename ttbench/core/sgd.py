"""SGD in function space (Proposition 1, Section 4, Appendix C): mini-batch sampling, the exact
linearised SGD simulator, and the paper's SDE, each over R Monte-Carlo paths.

Sampling schemes (the same for the real run and for the predictors):
  * "with_replacement": every step draws B indices uniformly (the paper's assumption, App. F);
  * "epoch": a fresh permutation each epoch cut into floor(N / B) batches (the incomplete tail
    is dropped), the usual practice; with B = N it is full-batch GD.

Exact simulator: u <- m u + Theta grad_f L_B(f),  f <- f - lr u, where L_B is the batch's mean
loss (grad_f L_B is (1/B) grad l_i on the batch rows, zero elsewhere). It is exactly SGD of the
linearised model.

SDE (eq. 1), Euler-Maruyama with one step per SGD step. Without momentum:
    f <- f - lr Theta grad_f L(f) + (lr / sqrt(B)) * sqrt(fpc) * xi,   Cov[xi] = J Sigma J^T.
With momentum the same drift and noise enter a velocity, as a mini-batch gradient enters
heavy-ball SGD's:
    u <- m u + Theta grad_f L(f) + sqrt(fpc / B) * xi,   f <- f - lr u.
Over many steps this moves f by lr / (1 - m) times drift and noise alike (Section 3.1's effective
learning rate, and Smith and Le's noise scale lr / (B (1 - m))), but it is stable exactly where
heavy-ball is (lr lambda < 2 (1 + m)), whereas a single Euler-Maruyama step at the effective
rate lr / (1 - m) blows up once lr lambda / (1 - m) > 2, ten times sooner at m = 0.9.
fpc = (N - B)/(N - 1) is the finite-population correction of sampling without replacement
(1 with replacement), so B = N without replacement has no noise.
Sigma, the covariance of per-sample gradients h_i = J_i^T grad l_i:
  * "diagonal" (the paper's approximation, Section 4): diag(Sigma) estimated once at w0, so
    Cov[xi] = J diag(sigma^2) J^T is a fixed (N*C)^2 matrix; it is rescaled over time by
    (|grad_f L(f_t)| / |grad_f L(f_0)|)^2 ("grad_norm", Fig. 8 right) or kept ("constant",
    Fig. 8 centre);
  * "full": the exact covariance of the linearised model at f_t, which in function space needs
    only Theta: J h_i = Theta[:, i] grad l_i, so xi = Theta vec(S * (z - mean z)) / sqrt(N)
    with S the per-sample loss gradients and z ~ N(0, I_N).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ttbench.core import losses
from ttbench.core.curves import Curves, blew_up

SCHEMES = ("with_replacement", "epoch")
NOISES = ("diagonal", "full")
SCHEDULES = ("grad_norm", "constant")


def batch_indices(
    n: int, batch_size: int, steps: int, scheme: str, generator: torch.Generator
) -> torch.Tensor:
    """The batches of `steps` SGD steps, shape (steps, B)."""
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {SCHEMES}, got {scheme!r}")
    if not 1 <= batch_size <= n:
        raise ValueError(f"batch size must be in 1..{n}, got {batch_size}")
    if scheme == "with_replacement":
        return torch.randint(n, (steps, batch_size), generator=generator)
    per_epoch = n // batch_size
    epochs = -(-steps // per_epoch)
    perms = [
        torch.randperm(n, generator=generator)[: per_epoch * batch_size] for _ in range(epochs)
    ]
    return torch.cat(perms).view(-1, batch_size)[:steps]


def batch_paths(
    n: int, batch_size: int, steps: int, scheme: str, paths: int, seed: int
) -> torch.Tensor:
    """R independent batch sequences, shape (R, steps, B), path r drawn from seed (seed, r)."""
    return torch.stack(
        [
            batch_indices(
                n, batch_size, steps, scheme, torch.Generator().manual_seed(seed * 100_003 + r)
            )
            for r in range(paths)
        ]
    )


def _apply(theta: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Theta g for a batch of paths g (R, N, C); exact (N*C)^2 or trace (N, N) Theta."""
    r, n, c = g.shape
    if theta.shape[0] == n * c:
        return (g.reshape(r, n * c) @ theta).reshape(r, n, c)  # Theta is symmetric
    return torch.einsum("ij,rjc->ric", theta, g)


def _sample_grads(f: torch.Tensor, y: torch.Tensor, loss: str) -> torch.Tensor:
    """Per-sample loss gradients grad_{f_i} l_i, shape (..., N, C)."""
    return losses.grad_f(f, y, loss) * f.shape[-2]


@dataclass(frozen=True)
class PathPrediction:
    """R sample paths of the loss and error curves, and their mean curves."""

    paths_loss: np.ndarray  # (R, T+1)
    paths_error: np.ndarray  # (R, T+1)
    final: torch.Tensor  # (R, N, C) outputs after the last step
    outputs: torch.Tensor | None = None  # (R, T+1, N, C) at every step, when asked for

    @property
    def curves(self) -> Curves:
        loss = self.paths_loss.mean(0)
        return Curves(loss, self.paths_error.mean(0), diverged=blew_up(loss))


def batch_grad_f(f: torch.Tensor, y: torch.Tensor, loss: str, batch: torch.Tensor) -> torch.Tensor:
    """grad_f L_B(f) of each path's batch mean loss: (1/B) grad_{f_i} l_i on the batch's rows
    (counted with multiplicity), zero elsewhere. f (R, N, C), batch (R, B) indices."""
    paths, b = batch.shape
    counts = torch.zeros(paths, f.shape[1], dtype=f.dtype, device=f.device)
    counts.scatter_add_(1, batch, torch.ones(paths, b, dtype=f.dtype, device=f.device))
    return _sample_grads(f, y, loss) * (counts / b).unsqueeze(-1)


def _record(fs_loss: list, fs_err: list, f: torch.Tensor, y: torch.Tensor, loss: str) -> None:
    fs_loss.append(losses.loss(f, y, loss).cpu().numpy())
    fs_err.append(losses.error(f, y).cpu().numpy())


def _velocity(u0: torch.Tensor | None, f: torch.Tensor) -> torch.Tensor:
    """The paths' starting velocity (R, N, C): u0 on every path, or rest."""
    return torch.zeros_like(f) if u0 is None else u0.to(f.device, f.dtype).expand_as(f).clone()


def _prepare(theta, f0, y, paths):
    theta = theta.to(torch.float64)
    f = f0.to(theta.device, torch.float64).expand(paths, *f0.shape).clone()
    return theta, f, y.to(theta.device)


def exact_sgd(
    theta: torch.Tensor,
    f0: torch.Tensor,
    y: torch.Tensor,
    *,
    lr: float,
    momentum: float,
    loss: str,
    batches: torch.Tensor,
    keep_outputs: bool = False,
    u0: torch.Tensor | None = None,
) -> PathPrediction:
    """SGD of the linearised model along given batch sequences (R, steps, B), from velocity u0
    (N, C); `keep_outputs` also returns the outputs at every step."""
    paths, steps, _ = batches.shape
    theta, f, y = _prepare(theta, f0, y, paths)
    batches = batches.to(theta.device)
    u = _velocity(u0, f)
    out_loss, out_err, outputs = [], [], []
    for t in range(steps + 1):
        _record(out_loss, out_err, f, y, loss)
        if keep_outputs:
            outputs.append(f)
        if t == steps:
            break
        u = momentum * u + _apply(theta, batch_grad_f(f, y, loss, batches[:, t]))
        f = f - lr * u
    kept = torch.stack(outputs, 1) if keep_outputs else None
    return PathPrediction(np.stack(out_loss, 1), np.stack(out_err, 1), f, kept)


def noise_factor(cov: torch.Tensor) -> torch.Tensor:
    """A square root L (L L^T = cov) of a PSD covariance, through its eigen-decomposition."""
    w, v = torch.linalg.eigh(cov.to(torch.float64))
    return v * w.clamp_min(0).sqrt()


def sde(
    theta: torch.Tensor,
    f0: torch.Tensor,
    y: torch.Tensor,
    *,
    lr: float,
    momentum: float,
    steps: int,
    loss: str,
    batch_size: int,
    scheme: str,
    paths: int,
    seed: int,
    noise: str = "diagonal",
    noise_sqrt: torch.Tensor | None = None,
    schedule: str = "grad_norm",
    u0: torch.Tensor | None = None,
) -> PathPrediction:
    """Euler-Maruyama paths of eq. (1), momentum through a velocity (module docstring), from
    velocity u0 (N, C). `noise_sqrt` (N*C, r), any L with L L^T = J diag(sigma^2) J^T at w0
    (`noise_factor` of the covariance, or the sketched features of
    ttbench.core.projected.diagonal_noise_features), or (N, r) for the trace form
    Cov_s (x) I_C, is needed for noise="diagonal"."""
    if noise not in NOISES or schedule not in SCHEDULES or scheme not in SCHEMES:
        raise ValueError(f"noise in {NOISES}, schedule in {SCHEDULES}, scheme in {SCHEMES}")
    theta, f, y = _prepare(theta, f0, y, paths)
    n, c = f.shape[1:]
    if noise == "diagonal":
        if noise_sqrt is None:
            raise ValueError("noise='diagonal' needs noise_sqrt")
        noise_sqrt = noise_sqrt.to(theta.device, torch.float64)
    fpc = (n - batch_size) / (n - 1) if scheme == "epoch" and n > 1 else 1.0
    amplitude = (fpc / batch_size) ** 0.5
    gen = torch.Generator(device=theta.device).manual_seed(seed)
    u = _velocity(u0, f)
    norm0 = losses.grad_f(f[0], y, loss).norm()
    out_loss, out_err = [], []
    for t in range(steps + 1):
        _record(out_loss, out_err, f, y, loss)
        if t == steps:
            break
        s = _sample_grads(f, y, loss)  # (R, N, C)
        drift = _apply(theta, s / n)
        if noise == "full":
            z = torch.randn(paths, n, 1, generator=gen, dtype=f.dtype, device=f.device)
            xi = _apply(theta, s * (z - z.mean(1, keepdim=True))) / n**0.5
        else:
            rank = noise_sqrt.shape[1]
            if len(noise_sqrt) == n * c:
                z = torch.randn(paths, rank, generator=gen, dtype=f.dtype, device=f.device)
                xi = (z @ noise_sqrt.T).view(paths, n, c)
            else:  # the trace form: independent classes, each with covariance L L^T
                z = torch.randn(paths, rank, c, generator=gen, dtype=f.dtype, device=f.device)
                xi = torch.einsum("ir,prc->pic", noise_sqrt, z)
            if schedule == "grad_norm":
                scale = (s / n).flatten(1).norm(dim=1) / norm0
                xi = xi * scale.view(paths, 1, 1)
        u = momentum * u + drift + amplitude * xi
        f = f - lr * u
    return PathPrediction(np.stack(out_loss, 1), np.stack(out_err, 1), f)
