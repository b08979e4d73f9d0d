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
    linearize,
    projected_features,
)
from ttbench.core.sketch import Sketch
from ttbench.core.spectrum import predict_from_subset
from ttbench.core.timing import Curves, t_eps_quantiles
from ttbench.measure import Stages
from ttbench.validate import STOCHASTIC, ConfigError, predictor_names

log = logging.getLogger(__name__)
QUANTILES = (0.05, 0.5, 0.95)


@dataclass(frozen=True)
class Result:
    curves: Curves  # the mean curve for the stochastic predictors
    stages: tuple[str, ...]  # the stages whose wall-clock this prediction cost
    paths: sgd.PathPrediction | None = None
    spectra: dict[str, np.ndarray] | None = None  # the subset predictor's spectra


def _theta(cfg: DictConfig, model, x: torch.Tensor, stages: Stages, factors_needed: bool):
    """f0, Theta and (when needed or free) the Jacobian factors, in the configured mode."""
    th = cfg.theta
    factors = None
    with stages("jacobian"):
        if th.mode == "projected":
            f0, phi = projected_features(model, x, Sketch(th.sketch, th.dim, cfg.seed), th.chunk)
        else:
            _check_memory(cfg, model, x)
            factors = jacobian_factors(model, x)
            f0 = factors.f0
    with stages("theta"):
        theta = phi @ phi.T if th.mode == "projected" else gram(factors, th.mode, block=th.block)
    if factors is None and factors_needed:  # the diagonal of Sigma needs unprojected gradients
        factors = jacobian_factors(model, x)
    log.info(
        "Theta (%s) %s built in %.2f s",
        th.mode,
        tuple(theta.shape),
        stages.stats["jacobian"]["wall_s"] + stages.stats["theta"]["wall_s"],
    )
    return f0, theta, factors


def run_predictors(
    cfg: DictConfig, model, x: torch.Tensor, y: torch.Tensor, stages: Stages
) -> dict[str, Result]:
    names = predictor_names(cfg)
    out = {}
    if "subset" in names:
        with stages("subset"):
            curve, spectra = subset_prediction(cfg, model, x, y)
        out["subset"] = Result(
            Curves(curve, np.full_like(curve, np.nan)), ("subset",), spectra=spectra
        )
    names = [n for n in names if n != "subset"]
    if not names:
        return out
    diagonal = "sde" in names and cfg.stochastic.noise == "diagonal"
    f0, theta, factors = _theta(cfg, model, x, stages, diagonal)
    shared = ("jacobian", "theta")
    noise_sqrt = None
    if diagonal:
        with stages("noise"):
            s0 = losses.grad_f(f0, y, cfg.loss) * len(y)
            noise_sqrt = sgd.noise_factor(diagonal_noise_gram(factors, s0))
    del factors
    for name in names:
        with stages(f"solve_{name}"):
            paths = None
            if name in STOCHASTIC:
                paths = _stochastic(cfg, name, theta, f0, y, noise_sqrt)
                curves = paths.curves
            else:
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
        extra = ("noise",) if name == "sde" and diagonal else ()
        out[name] = Result(curves, (*shared, *extra, f"solve_{name}"), paths)
        if curves.diverged:
            log.warning("predictor %s diverged", name)
    return out


def subset_prediction(cfg: DictConfig, model, x: torch.Tensor, y: torch.Tensor):
    """Appendix D: Theta on a random subset of N0 samples, extrapolated to all N (MSE)."""
    n0 = min(cfg.subset.n0, len(y))
    gen = torch.Generator().manual_seed(cfg.seed)
    idx = torch.randperm(len(y), generator=gen)[:n0].to(x.device)
    lin = linearize(
        model, x[idx], mode="exact" if cfg.theta.mode == "projected" else cfg.theta.mode
    )
    with torch.no_grad():
        f0_all = model(x)
    return predict_from_subset(
        lin.theta,
        lin.f0,
        y[idx],
        f0_all,
        y,
        lr=cfg.lr,
        momentum=cfg.momentum,
        steps=cfg.steps,
        alpha=cfg.subset.alpha,
        k0=cfg.subset.k0,
    )


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
