"""Gradient-descent dynamics of the linearised model in function space (Section 3, Appendix A).

The state is the outputs f on the N training samples, an (N, C) array; Theta is either the
exact (N*C, N*C) kernel, rows (i, c) i-major, or the trace approximation Theta_s (N, N), which
acts on every class alike (Theta ~ Theta_s (x) I_C). Three predictors, each returning the loss
and error curves at the integer steps t = 0..T:

* `ode`: the paper's gradient flow df/dt = -elr * Theta grad_f L(f), elr = lr / (1 - m) (the
  effective learning rate of Section 3.1 / Appendix E), integrated by LSODA (scipy) with the
  analytic Jacobian, read at integer t;
* `discrete`: the exact map of the linearised model under GD with heavy-ball momentum
  (PyTorch's convention v <- m v + g, w <- w - lr v), carried in function space through the
  velocity u = J v:  u <- m u + Theta grad_f L(f),  f <- f - lr u.  No small-lr limit, no ELR;
  exact for the linearised model;
* `closed_form` (MSE only, Proposition 2 / eq. 5): with residual r = f - Y and the loss
  normalisation of `losses` (1/(2N) ||r||^2), r_t = exp(-elr Theta t / N) r_0, so
  L_t = 1/(2N) sum_k exp(-2 elr lambda_k t / N) p_k,  p_k = (v_k . r_0)^2.

Everything runs in float64 on the device of Theta.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.integrate import solve_ivp

from ttbench.core import losses
from ttbench.core.curves import Curves
from ttbench.core.spectrum import spectrum


def elr(lr: float, momentum: float) -> float:
    """Effective learning rate lr / (1 - momentum)."""
    return lr / (1 - momentum)


def apply_theta(theta: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Theta g for g of shape (N, C): exact (N*C)^2 kernel or trace (N, N) kernel."""
    n, c = g.shape
    if theta.shape[0] == n * c:
        return (theta @ g.reshape(-1)).reshape(n, c)
    if theta.shape[0] == n:
        return theta @ g
    raise ValueError(f"Theta of shape {tuple(theta.shape)} does not fit outputs of shape {(n, c)}")


def _curves(fs: torch.Tensor, y: torch.Tensor, loss: str) -> Curves:
    """Curves from outputs at every step, shape (T+1, N, C); non-finite rows end the curve."""
    loss_curve = losses.loss(fs, y, loss).cpu().numpy()
    error_curve = losses.error(fs, y).cpu().numpy()
    bad = ~np.isfinite(loss_curve)
    if bad.any():
        first = int(np.argmax(bad))
        loss_curve[first:] = np.nan
        error_curve[first:] = np.nan
        return Curves(loss_curve, error_curve, diverged=True)
    return Curves(loss_curve, error_curve)


def _prepare(theta: torch.Tensor, f0: torch.Tensor, y: torch.Tensor):
    theta = theta.to(torch.float64)
    return theta, f0.to(theta.device, torch.float64), y.to(theta.device)


@dataclass(frozen=True)
class Prediction:
    """Predicted curves, and the predicted outputs f_t at every step (T+1, N, C)."""

    curves: Curves
    outputs: torch.Tensor


def discrete(
    theta: torch.Tensor,
    f0: torch.Tensor,
    y: torch.Tensor,
    *,
    lr: float,
    momentum: float,
    steps: int,
    loss: str,
) -> Prediction:
    """Exact linearised GD with heavy-ball momentum, in function space."""
    theta, f, y = _prepare(theta, f0, y)
    fs = torch.full((steps + 1, *f.shape), float("nan"), dtype=f.dtype, device=f.device)
    u = torch.zeros_like(f)
    for t in range(steps + 1):
        fs[t] = f
        if t == steps or not torch.isfinite(f).all():
            break
        u = momentum * u + apply_theta(theta, losses.grad_f(f, y, loss))
        f = f - lr * u
    return Prediction(_curves(fs, y, loss), fs)


def ode(
    theta: torch.Tensor,
    f0: torch.Tensor,
    y: torch.Tensor,
    *,
    lr: float,
    momentum: float,
    steps: int,
    loss: str,
    rtol: float = 1e-7,
    atol: float = 1e-10,
) -> Prediction:
    """The paper's ODE (deterministic part of eq. 1) with the effective learning rate."""
    theta, f0, y = _prepare(theta, f0, y)
    theta_cpu, y_cpu = theta.cpu(), y.cpu()
    n, c = f0.shape
    rate = elr(lr, momentum)
    exact = theta.shape[0] == n * c

    def rhs(_t: float, v: np.ndarray) -> np.ndarray:
        f = torch.from_numpy(v).view(n, c)
        return (-rate * apply_theta(theta_cpu, losses.grad_f(f, y_cpu, loss))).reshape(-1).numpy()

    def jac(_t: float, v: np.ndarray) -> np.ndarray:
        h = losses.hessian_f(torch.from_numpy(v).view(n, c), loss)  # (N, C, C)
        if exact:  # Theta (NC, N, C) times the block-diagonal Hessian
            m = torch.einsum("ajc,jcd->ajd", theta_cpu.view(n * c, n, c), h).reshape(n * c, n * c)
        else:  # (Theta_s (x) I)(blockdiag H): entry ((i,c),(j,d)) = Theta_s[i,j] H_j[c,d]
            m = torch.einsum("ij,jcd->icjd", theta_cpu, h).reshape(n * c, n * c)
        return (-rate * m).numpy()

    sol = solve_ivp(
        rhs,
        (0, steps),
        f0.cpu().reshape(-1).numpy(),
        method="LSODA",
        t_eval=np.arange(steps + 1),
        jac=jac,
        rtol=rtol,
        atol=atol,
    )
    fs = torch.full((steps + 1, n * c), float("nan"), dtype=torch.float64)
    fs[: sol.y.shape[1]] = torch.from_numpy(sol.y.T)
    return Prediction(_curves(fs.view(steps + 1, n, c), y_cpu, loss), fs.view(steps + 1, n, c))


def closed_form(
    theta: torch.Tensor,
    f0: torch.Tensor,
    y: torch.Tensor,
    *,
    lr: float,
    momentum: float,
    steps: int,
    loss: str = "mse",
) -> Prediction:
    """Proposition 2 for MSE: the gradient flow solved through the eigen-decomposition of Theta."""
    if loss != "mse":
        raise ValueError("the closed form exists for loss='mse' only")
    s = spectrum(theta, f0, y)
    n, c = s.residual.shape
    t = torch.arange(steps + 1, dtype=torch.float64, device=s.lambdas.device)
    decay = torch.exp(-elr(lr, momentum) * torch.outer(t, s.lambdas) / n)  # (T+1, K)
    coef = s.vectors.T @ (s.residual.reshape(-1) if s.vectors.shape[0] == n * c else s.residual)
    if coef.dim() == 1:
        r = (decay * coef) @ s.vectors.T  # (T+1, N*C)
    else:
        r = torch.einsum("tk,kc,ik->tic", decay, coef, s.vectors)
    fs = r.reshape(steps + 1, n, c) + torch.nn.functional.one_hot(y.to(r.device), c).to(r.dtype)
    return Prediction(_curves(fs, y.to(r.device), "mse"), fs)
