"""Gradient-descent dynamics of the linearised model in function space (Section 3, Appendix A).

The state is the outputs f on the N training samples, an (N, C) array; Theta is either the
exact (N*C, N*C) kernel, rows (i, c) i-major, or the trace approximation Theta_s (N, N), which
acts on every class alike (Theta ~ Theta_s (x) I_C). Four predictors, each returning the loss
and error curves at the integer steps t = 0..T:

* `ode`: the paper's gradient flow df/dt = -elr * Theta grad_f L(f), elr = lr / (1 - m) (the
  effective learning rate of Section 3.1 / Appendix E), integrated by LSODA (scipy) with the
  analytic Jacobian, read at integer t;
* `discrete`: the exact map of the linearised model under GD with heavy-ball momentum
  (PyTorch's convention v <- m v + g, w <- w - lr v), carried in function space through the
  velocity u = J v:  u <- m u + Theta grad_f L(f),  f <- f - lr u.  No small-lr limit, no ELR;
  exact for the linearised model;
* `heavy_ball`: heavy-ball momentum in continuous time, a second-order ODE in function space:
  df/dt = -lr u,  du/dt = -kappa (u - Theta grad_f L(f) / (1 - m)),  kappa = -ln m,
  i.e. the velocity u is the exponentially weighted memory of past gradients whose weights decay
  by m per step, as the discrete velocity's do (total weight 1 / (1 - m)), starting from rest.
  For slow dynamics it reduces to `ode` (the ELR flow, Appendix E); unlike it, it captures the
  velocity's warm-up over the first ~1 / (1 - m) steps. At m = 0 it is `ode`;
* `closed_form` (MSE only, Proposition 2 / eq. 5): with residual r = f - Y and the loss
  normalisation of `losses` (1/(2N) ||r||^2), r_t = exp(-elr Theta t / N) r_0, so
  L_t = 1/(2N) sum_k exp(-2 elr lambda_k t / N) p_k,  p_k = (v_k . r_0)^2.

The discrete map, heavy_ball and the SGD simulators (ttbench.core.sgd) can start from a
velocity u0 (in the discrete convention u = J v, v the optimiser's momentum buffer), for
predictions made from a point reached by real training. `sharpness` gives lambda_max of
Theta grad_f^2 L: GD on the linearised model is stable while lr * lambda_max < 2 (1 + m).

Everything runs in float64 on the device of Theta.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.integrate import solve_ivp

from ttbench.core import losses
from ttbench.core.curves import Curves, blew_up
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
    """Curves from outputs at every step, shape (T+1, N, C); non-finite rows end the curve,
    which is diverged when it blew up (ttbench.core.curves.blew_up)."""
    loss_curve = losses.loss(fs, y, loss).cpu().numpy()
    error_curve = losses.error(fs, y).cpu().numpy()
    bad = ~np.isfinite(loss_curve)
    if bad.any():
        first = int(np.argmax(bad))
        loss_curve[first:] = np.nan
        error_curve[first:] = np.nan
    return Curves(loss_curve, error_curve, diverged=blew_up(loss_curve))


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
    u0: torch.Tensor | None = None,
) -> Prediction:
    """Exact linearised GD with heavy-ball momentum, in function space, from velocity u0."""
    theta, f, y = _prepare(theta, f0, y)
    fs = torch.full((steps + 1, *f.shape), float("nan"), dtype=f.dtype, device=f.device)
    u = torch.zeros_like(f) if u0 is None else u0.to(f.device, f.dtype)
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

    def rhs(_t: float, v: np.ndarray) -> np.ndarray:
        f = torch.from_numpy(v).view(n, c)
        return (-rate * apply_theta(theta_cpu, losses.grad_f(f, y_cpu, loss))).reshape(-1).numpy()

    def jac(_t: float, v: np.ndarray) -> np.ndarray:
        return (-rate * _theta_hessian(theta_cpu, torch.from_numpy(v).view(n, c), loss)).numpy()

    return _integrate(
        rhs, jac, f0.cpu().reshape(-1).numpy(), steps, (n, c), y_cpu, loss, rtol, atol
    )


def _theta_hessian(theta: torch.Tensor, f: torch.Tensor, loss: str) -> torch.Tensor:
    """Theta times the (block-diagonal) Hessian of L at f, as an (N*C, N*C) matrix."""
    n, c = f.shape
    h = losses.hessian_f(f, loss)  # (N, C, C)
    if theta.shape[0] == n * c:  # Theta (NC, N, C) times the block-diagonal Hessian
        return torch.einsum("ajc,jcd->ajd", theta.view(n * c, n, c), h).reshape(n * c, n * c)
    # (Theta_s (x) I)(blockdiag H): entry ((i,c),(j,d)) = Theta_s[i,j] H_j[c,d]
    return torch.einsum("ij,jcd->icjd", theta, h).reshape(n * c, n * c)


def _integrate(rhs, jac, state0, steps, shape, y, loss, rtol, atol) -> Prediction:
    """LSODA over t in [0, steps], read at integer t; the outputs are the state's first N*C
    entries. A solve that fails part-way leaves NaN (a diverged curve) from there on."""
    n, c = shape
    sol = solve_ivp(
        rhs, (0, steps), state0, method="LSODA", t_eval=np.arange(steps + 1), jac=jac,
        rtol=rtol, atol=atol,
    )  # fmt: skip
    fs = torch.full((steps + 1, n * c), float("nan"), dtype=torch.float64)
    fs[: sol.y.shape[1]] = torch.from_numpy(sol.y[: n * c].T)
    return Prediction(_curves(fs.view(steps + 1, n, c), y, loss), fs.view(steps + 1, n, c))


def heavy_ball(
    theta: torch.Tensor,
    f0: torch.Tensor,
    y: torch.Tensor,
    *,
    lr: float,
    momentum: float,
    steps: int,
    loss: str,
    u0: torch.Tensor | None = None,
    rtol: float = 1e-7,
    atol: float = 1e-10,
) -> Prediction:
    """Heavy-ball momentum in continuous time (module docstring), from velocity u0."""
    if momentum == 0:  # no memory: the velocity is the gradient, and this is the ELR flow
        return ode(theta, f0, y, lr=lr, momentum=0.0, steps=steps, loss=loss, rtol=rtol, atol=atol)
    theta, f0, y = _prepare(theta, f0, y)
    theta_cpu, y_cpu = theta.cpu(), y.cpu()
    n, c = f0.shape
    k = n * c
    kappa = -np.log(momentum)
    gain = kappa / (1 - momentum)

    def rhs(_t: float, state: np.ndarray) -> np.ndarray:
        f, u = torch.from_numpy(state[:k]).view(n, c), state[k:]
        g = apply_theta(theta_cpu, losses.grad_f(f, y_cpu, loss)).reshape(-1).numpy()
        return np.concatenate([-lr * u, gain * g - kappa * u])

    def jac(_t: float, state: np.ndarray) -> np.ndarray:
        m = _theta_hessian(theta_cpu, torch.from_numpy(state[:k]).view(n, c), loss).numpy()
        out = np.zeros((2 * k, 2 * k))
        out[:k, k:] = -lr * np.eye(k)
        out[k:, :k] = gain * m
        out[k:, k:] = -kappa * np.eye(k)
        return out

    u = np.zeros(k) if u0 is None else u0.to(torch.float64).cpu().reshape(-1).numpy()
    state0 = np.concatenate([f0.cpu().reshape(-1).numpy(), u])
    return _integrate(rhs, jac, state0, steps, (n, c), y_cpu, loss, rtol, atol)


def sharpness(
    theta: torch.Tensor, f: torch.Tensor, loss: str, iterations: int = 300, tol: float = 1e-6
) -> float:
    """lambda_max of Theta grad_f^2 L(f) (real and >= 0: a product of PSD matrices), by power
    iteration: GD with momentum m on the linearised model is stable near f while
    lr * sharpness < 2 (1 + m)."""
    theta = theta.to(torch.float64)
    f = f.to(theta.device, torch.float64)
    h = losses.hessian_f(f, loss)  # (N, C, C)
    v = torch.ones_like(f) / f.numel() ** 0.5
    value = 0.0
    for _ in range(iterations):
        w = apply_theta(theta, torch.einsum("ncd,nd->nc", h, v))
        new = float(w.norm())
        if new == 0:
            return 0.0
        v = w / new
        if abs(new - value) <= tol * new:
            return new
        value = new
    return value


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
