"""The prediction stage of a run: linearise the model at w0 once, then run every requested
predictor on the same Theta. Config in, plain results out; the record is built by run.py."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from omegaconf import DictConfig

from ttbench.core import losses, sgd
from ttbench.core.dynamics import predict
from ttbench.core.linearize import (
    diagonal_noise_gram,
    exact_memory_bytes,
    gram,
    jacobian_factors,
    projected_features,
)
from ttbench.core.sketch import Sketch
from ttbench.core.timing import Curves, t_eps_quantiles
from ttbench.measure import Stages
from ttbench.validate import STOCHASTIC, ConfigError, predictor_names

log = logging.getLogger(__name__)
QUANTILES = (0.05, 0.5, 0.95)


@dataclass(frozen=True)
class Result:
    curves: Curves  # the mean curve for the stochastic predictors
    solve_s: float
    paths: sgd.PathPrediction | None = None


def run_predictors(
    cfg: DictConfig, model, x: torch.Tensor, y: torch.Tensor, stages: Stages
) -> dict[str, Result]:
    names = predictor_names(cfg)
    if not names:
        return {}
    th = cfg.theta
    factors = None
    with stages("jacobian"):
        if th.mode == "projected":
            sketch = Sketch(th.sketch, th.dim, cfg.seed)
            f0, phi = projected_features(model, x, sketch, th.chunk)
        else:
            _check_memory(cfg, model, x)
            factors = jacobian_factors(model, x)
            f0 = factors.f0
    with stages("theta"):
        if th.mode == "projected":
            theta = phi @ phi.T
            del phi
        else:
            theta = gram(factors, th.mode, block=th.block)
    log.info(
        "Theta (%s) %s built in %.2f s",
        cfg.theta.mode,
        tuple(theta.shape),
        stages.stats["jacobian"]["wall_s"] + stages.stats["theta"]["wall_s"],
    )
    noise_sqrt = None
    if "sde" in names and cfg.stochastic.noise == "diagonal":
        with stages("noise"):
            if factors is None:  # the diagonal of Sigma needs the unprojected gradients
                factors = jacobian_factors(model, x)
            s0 = losses.grad_f(f0, y, cfg.loss) * len(y)
            noise_sqrt = sgd.noise_factor(diagonal_noise_gram(factors, s0))
    del factors
    out = {}
    for name in names:
        with stages(f"solve_{name}"):
            if name in STOCHASTIC:
                paths = _stochastic(cfg, name, theta, f0, y, noise_sqrt)
                curves = paths.curves
            else:
                paths = None
                curves = predict(
                    name,
                    theta,
                    f0,
                    y,
                    lr=cfg.lr,
                    momentum=cfg.momentum,
                    steps=cfg.steps,
                    loss=cfg.loss,
                ).curves
        out[name] = Result(curves, stages.stats[f"solve_{name}"]["wall_s"], paths)
        if curves.diverged:
            log.warning("predictor %s diverged", name)
    return out


def _check_memory(cfg: DictConfig, model, x: torch.Tensor) -> None:
    need = exact_memory_bytes(model, x, len(x)) / 2**30
    if need > cfg.theta.memory_gb:
        raise ConfigError(
            "theta.mode",
            cfg.theta.mode,
            f"needs about {need:.1f} GB for N={len(x)}, above theta.memory_gb="
            f"{cfg.theta.memory_gb}: use theta.mode=projected (theta.dim={cfg.theta.dim})",
        )


def _stochastic(cfg, name, theta, f0, y, noise_sqrt) -> sgd.PathPrediction:
    st, opt = cfg.stochastic, cfg.optim
    n = len(y)
    if name == "exact_sgd":  # batch sequences independent of the real run's (seed + 1)
        batches = sgd.batch_paths(
            n, opt.batch_size, cfg.steps, opt.sampling, st.paths, cfg.seed + 1
        )
        return sgd.exact_sgd(
            theta, f0, y, lr=cfg.lr, momentum=cfg.momentum, loss=cfg.loss, batches=batches
        )
    return sgd.sde(
        theta,
        f0,
        y,
        lr=cfg.lr,
        momentum=cfg.momentum,
        steps=cfg.steps,
        loss=cfg.loss,
        batch_size=opt.batch_size,
        scheme=opt.sampling,
        paths=st.paths,
        seed=cfg.seed + 2,
        noise=st.noise,
        noise_sqrt=noise_sqrt,
        schedule=st.schedule,
    )


def quantile_entry(paths: sgd.PathPrediction, real_t: dict, eps, window: int) -> dict:
    """Per curve kind and eps: 5/50/95% quantiles of the paths' T_eps, and whether the real
    T_eps lies inside the 5-95% band."""
    out = {}
    for kind, arr in (("loss", paths.paths_loss), ("error", paths.paths_error)):
        out[kind] = {}
        for e, (q05, q50, q95) in t_eps_quantiles(arr, eps, window, q=QUANTILES).items():
            t_real = real_t[kind][str(e)]
            covered = None if None in (t_real, q05) else bool(q05 <= t_real <= q95)
            out[kind][str(e)] = {"q05": q05, "q50": q50, "q95": q95, "covered": covered}
    return out


def band_curves(name: str, paths: sgd.PathPrediction) -> dict[str, Curves]:
    """Per-step 5% and 95% quantiles of the paths' loss and error, as extra curves."""
    out = {}
    for q in (0.05, 0.95):
        loss_q = np.nanquantile(paths.paths_loss, q, axis=0)
        err_q = np.nanquantile(paths.paths_error, q, axis=0)
        out[f"{name}:q{round(q * 100):02d}"] = Curves(loss_q, err_q)
    return out
