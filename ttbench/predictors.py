"""The registry of predictors: one entry each, saying what it models, what it needs, how it is
drawn and how it is solved. Validation, the prediction stage, the record, the results table,
the figures and the report all read it; adding a predictor is one entry here (its maths in
ttbench.core) plus its conf/predictor/<name>.yaml.

Two families:
* plain predictors see only w0 (the paper's setting): the run's Theta at w0, or their own;
* refined predictors (`prefix=True`) also see the first steps of the real fine-tuning, which
  the run performs anyway: the real curves up to their step (`at`: k = refine.steps, or k / 2,
  2k, 4k, or where the loss has settled after a spike), and for those on Theta there, the
  weights and momentum buffer at that step. Their curve is the observed prefix followed by
  their prediction of the remaining steps, and their cost counts the steps they observed.

`predict(name, theta, f0, y, ...)` is the public entry to the plain deterministic ones.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import nn

from ttbench.core import dynamics, refine, sgd
from ttbench.core.curves import Curves, blew_up
from ttbench.core.linearize import linearize
from ttbench.core.losses import LOSSES
from ttbench.core.subset import predict_from_subset
from ttbench.settings import SKETCHED
from ttbench.spec import RunSpec

DETERMINISTIC, STOCHASTIC = "deterministic", "stochastic"
W0, WK = "w0", "wk"  # where a predictor's Theta is taken: at w0, or at w_k after the prefix
# The step a refined predictor starts from: k = refine.steps, k / 2, 2k, 4k, or the first step
# at or after k where the loss has settled (ttbench.core.curves.settled) and the watched
# stability is below its threshold: after a catapult, the network's new neighbourhood.
K, HALF, TWICE, FOUR, SETTLED = "k", "half", "2k", "4k", "settled"
_MULTIPLE = {HALF: 0.5, K: 1, TWICE: 2, FOUR: 4}


def refine_step(at: str, k: int, every: int) -> int | None:
    """The step of a refined predictor's `at` (a multiple of k, down to the evaluation grid);
    None for SETTLED, found during the run."""
    if at == SETTLED:
        return None
    return int(_MULTIPLE[at] * k) // every * every


@dataclass
class Inputs:
    """What a predictor may use, built once per run by the prediction stage."""

    spec: RunSpec
    model: nn.Module  # at w0, for predictors that build their own Theta
    x: torch.Tensor
    y: torch.Tensor
    theta: torch.Tensor | None = None  # the run's Theta at w0 (theta.mode), when one uses it
    f0: torch.Tensor | None = None
    noise_sqrt: torch.Tensor | None = None  # square root of J diag(sigma^2) J^T, when needed
    prefix: Curves | None = None  # the real curves at steps 0..k (refined predictors)
    theta_k: torch.Tensor | None = None  # Theta, outputs and velocity J_k v_k at w_k
    f_k: torch.Tensor | None = None
    u_k: torch.Tensor | None = None
    k: int = 0  # the step a refined prediction starts from

    def joined(self, tail: Curves) -> Curves:
        """The observed prefix, then `tail` (a prediction at every step from step k), on the
        real curve's grid."""
        every = self.spec.train.eval_every
        loss, error = tail.loss[::every], tail.error[::every]
        return Curves(
            refine.join(self.prefix.loss, loss),
            refine.join(self.prefix.error, error),
            tail.diverged,
            every,
        )


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
    # how heavy-ball momentum enters: "exact" map, "elr" = lr / (1 - m), "memory" (a
    # continuous velocity with the map's exponential memory of gradients), or "observed"
    momentum: str
    losses: tuple[str, ...] = LOSSES  # the losses it models
    optimizers: tuple[str, ...] = ("gd", "sgd")  # the fine-tuning it predicts
    theta: str | None = W0  # the Theta it is solved on: W0, WK, or None (its own, or none)
    diagonal_noise: bool = False  # needs J diag(sigma^2) J^T with stochastic.noise=diagonal
    flow: bool = False  # continuous time: cannot blow up where discrete GD does (see stability)
    prefix: bool = False  # refined: uses the first refine.steps real steps
    pooled: bool = False  # computed by ttbench.collect from completed runs, never in a run
    core: Callable[..., dynamics.Prediction] | None = None  # (theta, f0, y, *, lr, ...) in core
    at: str = K  # refined: the step it starts from (K, HALF, TWICE, FOUR or SETTLED)

    def applies(
        self, loss: str, optimizer: str, refine_steps: int, steps: int = 0, every: int = 1
    ) -> str | None:
        """Why it does not apply to this loss, optimiser, refinement and budget, or None."""
        if loss not in self.losses:
            return f"{self.name} needs loss={' or '.join(self.losses)}"
        if optimizer not in self.optimizers:
            return f"{self.name} needs optim={' or '.join(self.optimizers)}"
        if self.prefix and refine_steps == 0:
            return f"{self.name} needs refine.steps > 0 (the real steps it refines from)"
        start = refine_step(self.at, refine_steps, every) if self.prefix else None
        if start is not None and not 0 < start < steps:
            return f"{self.name} starts at step {start}: it needs 0 < {self.at} < steps={steps}"
        if self.pooled:
            return f"{self.name} is computed by python -m ttbench.collect from completed runs"
        return None


def _core(fn: Callable[..., dynamics.Prediction]) -> Callable[[Inputs], Solved]:
    return lambda i: Solved(fn(i.theta, i.f0, i.y, **i.spec.train.dynamics).curves)


def _sgd_paths(i: Inputs, theta, f, steps: int, u0=None) -> sgd.PathPrediction:
    t, s = i.spec.train, i.spec
    # batch sequences independent of the real run's (drawn from seed + 1)
    batches = sgd.batch_paths(
        len(i.y), t.batch_size, steps, t.sampling, s.stochastic.paths, s.seed + 1
    )
    return sgd.exact_sgd(
        theta, f, i.y, lr=t.lr, momentum=t.momentum, loss=t.loss, batches=batches, u0=u0
    )


def _exact_sgd(i: Inputs) -> Solved:
    paths = _sgd_paths(i, i.theta, i.f0, i.spec.train.steps)
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
    """Appendix D: Theta on a random subset of subset.n0 samples (the run's theta.mode; exact
    for a sketched one), extrapolated to all N (MSE). Returns the curve and the spectra used."""
    n0 = min(spec.subset.n0, len(y))
    gen = torch.Generator().manual_seed(spec.seed)
    idx = torch.randperm(len(y), generator=gen)[:n0].to(x.device)
    th = replace(spec.theta, mode="exact") if spec.theta.mode in SKETCHED else spec.theta
    lin = linearize(
        model, x[idx], mode=th.mode, outputs=th.directions, seed=spec.seed, memory_gb=th.memory_gb
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


# --- refined: the first k real steps ---------------------------------------------------------


def _relinearised(i: Inputs) -> Solved:
    """The exact linearised GD map started at w_k from (f_k, u_k)."""
    kw = i.spec.train.dynamics | {"steps": i.spec.train.steps - i.k}
    tail = dynamics.discrete(i.theta_k, i.f_k, i.y, u0=i.u_k, **kw).curves
    return Solved(i.joined(tail))


def _relinearised_sgd(i: Inputs) -> Solved:
    """Linearised SGD at w_k from (f_k, u_k), over independent batch paths."""
    tail = _sgd_paths(i, i.theta_k, i.f_k, i.spec.train.steps - i.k, u0=i.u_k)
    every = i.spec.train.eval_every
    paths = [
        np.stack([refine.join(p, q[::every]) for q in arr])
        for p, arr in ((i.prefix.loss, tail.paths_loss), (i.prefix.error, tail.paths_error))
    ]
    joined = sgd.PathPrediction(paths[0], paths[1], tail.final)
    mean = joined.curves
    return Solved(Curves(mean.loss, mean.error, mean.diverged, every), joined)


def _rescaled(i: Inputs) -> Solved:
    """The discrete map at w0, time-stretched to fit the prefix (ttbench.core.refine)."""
    t = i.spec.train
    reach = int(np.ceil(refine.SCALES[1] * t.steps))
    plain = dynamics.discrete(i.theta, i.f0, i.y, **(t.dynamics | {"steps": reach})).curves
    every = t.eval_every
    prefix = refine.rescale_time(i.prefix.loss, 1 / every, i.k)  # on the step grid
    scale = refine.fit_time_scale(plain.loss, prefix)
    loss, error = (refine.rescale_time(c, scale, t.steps) for c in (plain.loss, plain.error))
    tail = Curves(loss[i.k :], error[i.k :], blew_up(loss))
    return Solved(i.joined(tail))


def _fitted(family: str) -> Callable[[Inputs], Solved]:
    def solve(i: Inputs) -> Solved:
        every, steps = i.spec.train.eval_every, i.spec.train.steps // i.spec.train.eval_every
        fits = [refine.extrapolate(c, steps, family) for c in (i.prefix.loss, i.prefix.error)]
        if fits[0] is None:  # no fit: no prediction
            return Solved(Curves(np.full(steps + 1, np.nan), np.full(steps + 1, np.nan), True))
        error = fits[1] if fits[1] is not None else np.full(steps + 1, i.prefix.error[-1])
        n = len(i.prefix.loss)
        curves = [
            refine.join(p, f[n - 1 :])
            for p, f in ((i.prefix.loss, fits[0]), (i.prefix.error, error))
        ]
        return Solved(Curves(curves[0], curves[1], False, every))

    return solve


def _pooled(i: Inputs) -> Solved:
    raise ValueError("a pooled predictor is computed by ttbench.collect, not in a run")


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
            flow=True,
            core=dynamics.ode,
        ),
        Predictor(
            "heavy_ball",
            DETERMINISTIC,
            "heavy-ball ODE",
            "tab:cyan",
            _core(dynamics.heavy_ball),
            momentum="memory",
            flow=True,
            core=dynamics.heavy_ball,
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
            flow=True,
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
            theta=None,
            flow=True,
        ),
        Predictor(
            "sde",
            STOCHASTIC,
            "SDE",
            "tab:red",
            _sde,
            momentum="exact",
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
        Predictor(
            "relin",
            DETERMINISTIC,
            "re-linearised at step k",
            "tab:pink",
            _relinearised,
            momentum="exact",
            theta=WK,
            prefix=True,
        ),
        *(
            Predictor(
                f"relin_{at}",
                DETERMINISTIC,
                f"re-linearised at {label}",
                color,
                _relinearised,
                momentum="exact",
                theta=WK,
                prefix=True,
                at=at,
            )
            for at, label, color in (
                (HALF, "step k/2", "lightpink"),
                (TWICE, "step 2k", "hotpink"),
                (FOUR, "step 4k", "deeppink"),
                (SETTLED, "the settled loss", "mediumvioletred"),
            )
        ),
        Predictor(
            "relin_sgd",
            STOCHASTIC,
            "linearised SGD from step k",
            "magenta",
            _relinearised_sgd,
            momentum="exact",
            optimizers=("sgd",),
            theta=WK,
            prefix=True,
        ),
        Predictor(
            "rescaled",
            DETERMINISTIC,
            "discrete, time fitted to k steps",
            "gold",
            _rescaled,
            momentum="exact",
            prefix=True,
        ),
        Predictor(
            "fit_exp",
            DETERMINISTIC,
            "exponential fit of k steps",
            "tab:gray",
            _fitted("exp"),
            momentum="observed",
            theta=None,
            prefix=True,
        ),
        Predictor(
            "fit_power",
            DETERMINISTIC,
            "power-law fit of k steps",
            "darkgray",
            _fitted("power"),
            momentum="observed",
            theta=None,
            prefix=True,
        ),
        Predictor(
            "constant",
            DETERMINISTIC,
            "constant (other seeds' median)",
            "olive",
            _pooled,
            momentum="observed",
            theta=None,
            pooled=True,
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
    """Predicted curves and outputs of a plain deterministic predictor on a Theta and f0."""
    p = PREDICTORS.get(name)
    if p is None or p.core is None:
        usable = [n for n, q in PREDICTORS.items() if q.core is not None]
        raise ValueError(f"predictor must be one of {usable}, got {name!r}")
    return p.core(theta, f0, y, lr=lr, momentum=momentum, steps=steps, loss=loss)
