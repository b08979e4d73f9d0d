"""The registry of predictors: one entry each, saying what it models, what it needs, how it is
drawn and how it is solved. Validation, the prediction stage, the record, the results table,
the figures and the report all read it; adding a predictor is one entry here (its maths in
ttbench.core) plus its conf/predictor/<name>.yaml.

`predict(name, theta, f0, y, ...)` is the public entry to the deterministic ones.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ttbench.core import dynamics, sgd
from ttbench.core.curves import Curves
from ttbench.core.linearize import linearize
from ttbench.core.losses import LOSSES
from ttbench.core.subset import predict_from_subset
from ttbench.spec import RunSpec

DETERMINISTIC, STOCHASTIC = "deterministic", "stochastic"


@dataclass
class Inputs:
    """What a predictor may use, built once per run by the prediction stage."""

    spec: RunSpec
    model: nn.Module  # at w0, for predictors that build their own Theta
    x: torch.Tensor
    y: torch.Tensor
    theta: torch.Tensor | None = None  # the run's Theta (theta.mode), when any predictor uses it
    f0: torch.Tensor | None = None
    noise_sqrt: torch.Tensor | None = None  # square root of J diag(sigma^2) J^T, when needed


@dataclass(frozen=True)
class Solved:
    curves: Curves  # the mean curve of a stochastic predictor
    paths: sgd.PathPrediction | None = None  # stochastic: every sample path
    spectra: dict[str, np.ndarray] | None = None  # subset: the spectra it extrapolated


@dataclass(frozen=True)
class Predictor:
    name: str
    kind: str  # DETERMINISTIC: one curve | STOCHASTIC: sample paths, T_eps quantiles
    label: str  # for legends
    color: str  # one colour per predictor in every figure
    solve: Callable[[Inputs], Solved]
    momentum: str  # how heavy-ball momentum enters: "exact" map, or "elr" = lr / (1 - m)
    losses: tuple[str, ...] = LOSSES  # the losses it models
    optimizers: tuple[str, ...] = ("gd", "sgd")  # the fine-tuning it predicts
    uses_theta: bool = True  # on the run's Theta; False: it builds its own
    diagonal_noise: bool = False  # needs J diag(sigma^2) J^T with stochastic.noise=diagonal
    core: Callable[..., dynamics.Prediction] | None = None  # (theta, f0, y, *, lr, ...) in core

    def applies(self, loss: str, optimizer: str) -> str | None:
        """Why it does not apply to this loss and optimiser, or None when it does."""
        if loss not in self.losses:
            return f"{self.name} needs loss={' or '.join(self.losses)}"
        if optimizer not in self.optimizers:
            return f"{self.name} needs optim={' or '.join(self.optimizers)}"
        return None


def _core(fn: Callable[..., dynamics.Prediction]) -> Callable[[Inputs], Solved]:
    return lambda i: Solved(fn(i.theta, i.f0, i.y, **i.spec.train.dynamics).curves)


def _exact_sgd(i: Inputs) -> Solved:
    t, s = i.spec.train, i.spec
    # batch sequences independent of the real run's (drawn from seed + 1)
    batches = sgd.batch_paths(
        len(i.y), t.batch_size, t.steps, t.sampling, s.stochastic.paths, s.seed + 1
    )
    paths = sgd.exact_sgd(
        i.theta, i.f0, i.y, lr=t.lr, momentum=t.momentum, loss=t.loss, batches=batches
    )
    return Solved(paths.curves, paths)


def _sde(i: Inputs) -> Solved:
    t, st = i.spec.train, i.spec.stochastic
    paths = sgd.sde(
        i.theta,
        i.f0,
        i.y,
        **t.dynamics,
        batch_size=t.batch_size,
        scheme=t.sampling,
        paths=st.paths,
        seed=i.spec.seed + 2,
        noise=st.noise,
        noise_sqrt=i.noise_sqrt,
        schedule=st.schedule,
    )
    return Solved(paths.curves, paths)


def subset_prediction(spec: RunSpec, model: nn.Module, x: torch.Tensor, y: torch.Tensor):
    """Appendix D: Theta on a random subset of subset.n0 samples (the run's theta.mode, exact
    for projected), extrapolated to all N (MSE). Returns the curve and the spectra used."""
    n0 = min(spec.subset.n0, len(y))
    gen = torch.Generator().manual_seed(spec.seed)
    idx = torch.randperm(len(y), generator=gen)[:n0].to(x.device)
    lin = linearize(
        model, x[idx], mode="exact" if spec.theta.mode == "projected" else spec.theta.mode
    )
    with torch.no_grad():
        f0_all = model(x)
    t = spec.train
    return predict_from_subset(
        lin.theta,
        lin.f0,
        y[idx],
        f0_all,
        y,
        lr=t.lr,
        momentum=t.momentum,
        steps=t.steps,
        alpha=spec.subset.alpha,
        k0=spec.subset.k0,
    )


def _subset(i: Inputs) -> Solved:
    curve, spectra = subset_prediction(i.spec, i.model, i.x, i.y)
    return Solved(Curves(curve, np.full_like(curve, np.nan)), spectra=spectra)


PREDICTORS: dict[str, Predictor] = {
    p.name: p
    for p in (
        Predictor(
            "ode",
            DETERMINISTIC,
            "ODE",
            "tab:blue",
            _core(dynamics.ode),
            momentum="elr",
            core=dynamics.ode,
        ),
        Predictor(
            "discrete",
            DETERMINISTIC,
            "discrete (linearised GD)",
            "tab:orange",
            _core(dynamics.discrete),
            momentum="exact",
            core=dynamics.discrete,
        ),
        Predictor(
            "closed_form",
            DETERMINISTIC,
            "closed form (MSE)",
            "tab:green",
            _core(dynamics.closed_form),
            momentum="elr",
            losses=("mse",),
            core=dynamics.closed_form,
        ),
        Predictor(
            "subset",
            DETERMINISTIC,
            "subset extrapolation",
            "tab:brown",
            _subset,
            momentum="elr",
            losses=("mse",),
            uses_theta=False,
        ),
        Predictor(
            "sde",
            STOCHASTIC,
            "SDE",
            "tab:red",
            _sde,
            momentum="elr",
            optimizers=("sgd",),
            diagonal_noise=True,
        ),
        Predictor(
            "exact_sgd",
            STOCHASTIC,
            "linearised SGD",
            "tab:purple",
            _exact_sgd,
            momentum="exact",
            optimizers=("sgd",),
        ),
    )
}

REAL = "real"  # the curve of real fine-tuning, drawn beside the predictors
REAL_COLOR, REAL_LABEL = "black", "real fine-tuning"


def color(name: str) -> str:
    """The colour of a curve source ("real" or a predictor) in every figure."""
    if name == REAL:
        return REAL_COLOR
    return PREDICTORS[name].color if name in PREDICTORS else "tab:gray"


def label(name: str) -> str:
    if name == REAL:
        return REAL_LABEL
    return PREDICTORS[name].label if name in PREDICTORS else name


def stochastic(name: str) -> bool:
    return name in PREDICTORS and PREDICTORS[name].kind == STOCHASTIC


def predict(
    name: str,
    theta: torch.Tensor,
    f0: torch.Tensor,
    y: torch.Tensor,
    *,
    lr: float,
    momentum: float,
    steps: int,
    loss: str,
) -> dynamics.Prediction:
    """Predicted curves and outputs of a deterministic predictor on a given Theta and f0."""
    p = PREDICTORS.get(name)
    if p is None or p.core is None:
        usable = [n for n, q in PREDICTORS.items() if q.core is not None]
        raise ValueError(f"predictor must be one of {usable}, got {name!r}")
    return p.core(theta, f0, y, lr=lr, momentum=momentum, steps=steps, loss=loss)
