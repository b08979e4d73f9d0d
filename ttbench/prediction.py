"""The prediction stage of a run: linearise the model at w0 once, in the configured mode, then
solve every requested predictor of the registry (ttbench.predictors) on the same Theta. Spec in,
plain results and their record entries out."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ttbench import record
from ttbench.core import losses, sgd
from ttbench.core.curves import Curves, t_eps_quantiles
from ttbench.core.linearize import (
    diagonal_noise_gram,
    exact_memory_bytes,
    gram,
    jacobian_factors,
    projected_features,
)
from ttbench.core.sketch import Sketch
from ttbench.predictors import PREDICTORS, Inputs, Solved
from ttbench.spec import RunSpec
from ttbench.stages import Stages
from ttbench.validate import ConfigError

log = logging.getLogger(__name__)
SHARED = ("jacobian", "theta")  # the stages of the run's Theta, shared by the predictors on it


@dataclass(frozen=True)
class Predicted:
    solved: Solved
    stages: tuple[str, ...]  # the stages whose wall-clock this prediction cost

    @property
    def curves(self) -> Curves:
        return self.solved.curves


def _theta(spec: RunSpec, model: nn.Module, x: torch.Tensor, stages: Stages, factors: bool):
    """f0, Theta and, when asked for, the unprojected Jacobian factors (free unless projected)."""
    th = spec.theta
    kept = None
    with stages("jacobian"):
        if th.mode == "projected":
            f0, phi = projected_features(model, x, Sketch(th.sketch, th.dim, spec.seed), th.chunk)
        else:
            check_memory(spec, model, x)
            kept = jacobian_factors(model, x)
            f0 = kept.f0
    with stages("theta"):
        theta = phi @ phi.T if th.mode == "projected" else gram(kept, th.mode, block=th.block)
    if factors and kept is None:  # the diagonal of Sigma needs unprojected gradients
        kept = jacobian_factors(model, x)
    built = stages.stats["jacobian"]["wall_s"] + stages.stats["theta"]["wall_s"]
    log.info("Theta (%s) %s built in %.2f s", th.mode, tuple(theta.shape), built)
    return f0, theta, kept if factors else None


def run_predictors(
    spec: RunSpec, model: nn.Module, x: torch.Tensor, y: torch.Tensor, stages: Stages
) -> dict[str, Predicted]:
    """Every predictor of the spec, at w0, each timed as the stage solve_<name>."""
    chosen = [PREDICTORS[n] for n in spec.predictors]
    inputs = Inputs(spec, model, x, y)
    shared: tuple[str, ...] = ()
    if any(p.uses_theta for p in chosen):
        diagonal = spec.stochastic.noise == "diagonal"
        noise = [p for p in chosen if p.diagonal_noise and diagonal]
        inputs.f0, inputs.theta, factors = _theta(spec, model, x, stages, bool(noise))
        shared = SHARED
        if noise:
            with stages("noise"):
                s0 = losses.grad_f(inputs.f0, y, spec.train.loss) * len(y)
                inputs.noise_sqrt = sgd.noise_factor(diagonal_noise_gram(factors, s0))
        del factors
    out = {}
    for p in chosen:
        with stages(f"solve_{p.name}"):
            solved = p.solve(inputs)
        own = ("noise",) if inputs.noise_sqrt is not None and p.diagonal_noise else ()
        out[p.name] = Predicted(
            solved, (*(shared if p.uses_theta else ()), *own, f"solve_{p.name}")
        )
        if solved.curves.diverged:
            log.warning("predictor %s diverged", p.name)
    return out


def check_memory(spec: RunSpec, model: nn.Module, x: torch.Tensor) -> None:
    """Refuse the exact and trace modes above theta.memory_gb, suggesting projected mode."""
    need = exact_memory_bytes(model, x, len(x)) / 2**30
    if need > spec.theta.memory_gb:
        raise ConfigError(
            "theta.mode",
            spec.theta.mode,
            f"needs about {need:.1f} GB for N={len(x)}, above theta.memory_gb="
            f"{spec.theta.memory_gb}: use theta.mode=projected (theta.dim={spec.theta.dim})",
        )


def bands(paths: sgd.PathPrediction) -> dict[float, Curves]:
    """Per-step 5% and 95% quantiles of the paths' loss and error."""
    return {
        q: Curves(
            np.nanquantile(paths.paths_loss, q, axis=0),
            np.nanquantile(paths.paths_error, q, axis=0),
        )
        for q in record.BAND
    }


def entry(name: str, p: Predicted, spec: RunSpec) -> record.PredictorRecord:
    """The record of one prediction: T_eps per eps and, for sample paths, their quantiles."""
    window = spec.train.smooth
    paths = p.solved.paths
    quantiles = None
    if paths is not None:
        quantiles = {}
        for kind, arr in (("loss", paths.paths_loss), ("error", paths.paths_error)):
            qs = t_eps_quantiles(arr, spec.eps, window, q=record.QUANTILES)
            quantiles[kind] = tuple(record.Quantiles(*qs[e]) for e in spec.eps)
    return record.PredictorRecord(
        kind=PREDICTORS[name].kind,
        t_eps=record.t_eps(p.curves, spec.eps, window),
        diverged=p.curves.diverged,
        stages=p.stages,
        paths=None if paths is None else len(paths.paths_loss),
        quantiles=quantiles,
    )
