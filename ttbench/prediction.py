"""The prediction stage of a run, in two parts. `at_w0`: linearise the model at w0 once, in the
configured mode, and solve every plain predictor of the registry (ttbench.predictors) on that
Theta. `after_prefix`: once the real fine-tuning has passed step k = refine.steps, linearise
again at w_k and solve the refined predictors. Both also return the run's signals:

* stability = lr lambda_max(Theta grad^2 L) / (2 (1 + m)) at w0: at 1 or more, GD on the
  linearised model is unstable; where the forecast of ttbench.core.stability says it explodes
  (strongly unstable with momentum), the predictors that integrate a flow (which cannot blow
  up) are reported as diverged, elsewhere they assume the spike recovers, as catapults do;
* after k steps, how far the real network has left its linearisation: drift =
  |f_k - f_k^lin| / |f_k - f_0| (f_k^lin: the linearised model after the same k steps, along
  the real run's batches), kernel_change = |Theta_k - Theta_0|_F / |Theta_0|_F, and
  time_scale, the factor by which the real prefix runs faster (> 1) or slower than the
  linearised one (ttbench.core.refine.fit_time_scale).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import nn

from ttbench import record
from ttbench import stages as stages_
from ttbench.bands import Calibration
from ttbench.core import losses, refine, sgd
from ttbench.core.curves import QUANTILES, Curves, t_eps_quantiles
from ttbench.core.dynamics import discrete, sharpness
from ttbench.core.jacobian import GENERIC, routes
from ttbench.core.linearize import OverBudget, jvp, linearize
from ttbench.core.projected import diagonal_noise_features
from ttbench.core.sketch import Sketch
from ttbench.core.stability import DIVERGES, SPIKE_AHEAD, forecast
from ttbench.predictors import PREDICTORS, W0, WK, Inputs, K, Predictor, Solved
from ttbench.spec import RunSpec
from ttbench.stages import Stages
from ttbench.validate import ConfigError
from ttbench.validity import REFERENCES, before, before_features, family, features

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Predicted:
    solved: Solved
    stages: tuple[str, ...]  # the stages its T_eps needed (their wall-clock is its cost)
    k: int | None = None  # refined: the step it starts from
    signals: tuple[str, ...] = ()  # the stages its validity reads on the fine-tuning (ALONG)

    @property
    def curves(self) -> Curves:
        return self.solved.curves


def _theta(spec: RunSpec, model: nn.Module, x, stages: Stages, at: str = ""):
    """f and Theta by the core's dispatcher, timed as the stages jacobian<at> and theta<at>;
    at w_k (at="_k") in refine.theta's mode."""
    th = spec.theta_at(refined=bool(at))
    try:
        lin = linearize(
            model,
            x,
            th.mode,
            block=th.block,
            sketch=Sketch(th.sketch, th.dim, spec.seed),
            chunk=th.chunk,
            outputs=th.directions,
            seed=spec.seed,
            memory_gb=th.memory_gb,
            stage=lambda name: stages(f"{name}{at}"),
        )
    except OverBudget as e:
        raise ConfigError(
            "theta.mode",
            th.mode,
            f"{e} (theta.memory_gb): use theta.mode=projected (theta.dim={th.dim})",
        ) from None
    if lin.built != th.mode:
        why = (
            f"the {lin.built} Theta costs fewer multiply-adds here than the sketch "
            f"(theta.dim={th.dim}) and fits theta.memory_gb"
            if th.mode == "projected"
            else "every sample's Jacobian factors do not fit theta.memory_gb"
        )
        log.info("theta.mode=%s: %s; building the %s Theta instead", th.mode, why, lin.built)
    if lin.block_samples < len(x):
        log.info("Theta%s in blocks of %d samples (theta.memory_gb)", at, lin.block_samples)
    built = (
        stages.stats[f"{stages_.JACOBIAN}{at}"]["wall_s"]
        + stages.stats[f"{stages_.THETA}{at}"]["wall_s"]
    )
    log.info("Theta%s (%s) %s built in %.2f s", at, lin.built, tuple(lin.theta.shape), built)
    return lin.f0, lin.theta


def log_routes(model: nn.Module) -> None:
    """Which route each module's weights take through the Theta engine."""
    every = routes(model)
    generic = [n or type(model).__name__ for n, r in every.items() if r == GENERIC]
    factored = len(every) - len(generic)
    log.info(
        "Theta engine: %d modules through factors, %d generic (torch.func per-sample "
        "gradients, slower)%s",
        factored,
        len(generic),
        f": {', '.join(generic[:8])}{', ...' if len(generic) > 8 else ''}" if generic else "",
    )


def prefix_stage(at: str) -> str:
    """The pseudo-stage of the real steps a refined predictor observed (predictors.K, ...)."""
    return stages_.PREFIX if at == K else f"{stages_.PREFIX}_{at}"


def _solve_all(
    chosen, inputs: Inputs, stages: Stages, shared: dict[str, tuple[str, ...]], prefix: str = ""
):
    out = {}
    for p in chosen:
        with stages(stages_.solve(p.name)):
            solved = p.solve(inputs)
        own = (stages_.NOISE,) if inputs.noise_sqrt is not None and p.diagonal_noise else ()
        costs = (*((prefix,) if p.prefix else ()), *shared.get(p.theta, ()), *own)
        k = inputs.k if p.prefix else None
        out[p.name] = Predicted(solved, (*costs, stages_.solve(p.name)), k)
        if solved.curves.diverged:
            log.warning("predictor %s diverged", p.name)
    return out


def at_w0(
    spec: RunSpec, model: nn.Module, x: torch.Tensor, y: torch.Tensor, stages: Stages
) -> tuple[Inputs, dict[str, Predicted], dict[str, float]]:
    """Every plain predictor at w0, each timed as the stage solve_<name>; the inputs (kept for
    the refined predictors) and the signal `stability`."""
    every = [PREDICTORS[n] for n in spec.predictors]
    chosen = [p for p in every if not p.prefix]
    inputs = Inputs(spec, model, x, y)
    signals: dict[str, float] = {}
    if any(p.theta == W0 for p in every):
        log_routes(model)
        diagonal = spec.stochastic.noise == "diagonal"
        noise = [p for p in chosen if p.diagonal_noise and diagonal]
        inputs.f0, inputs.theta = _theta(spec, model, x, stages)
        if noise:
            with stages(stages_.NOISE):
                s0 = losses.grad_f(inputs.f0, y, spec.train.loss) * len(y)
                th = spec.theta
                outputs = th.directions
                dim = min(th.dim, len(y) * (outputs or inputs.f0.shape[1]))
                sketch = Sketch("countsketch", dim, spec.seed)
                inputs.noise_sqrt = diagonal_noise_features(
                    model, x, s0, sketch, th.chunk, outputs, spec.seed
                )
        t = spec.train
        with stages(stages_.STABILITY):
            lam = sharpness(inputs.theta, inputs.f0, t.loss)
        signals["stability"] = t.lr * lam / (2 * (1 + t.momentum))
    out = _solve_all(chosen, inputs, stages, _W0_COSTS)
    said = forecast({0: signals.get("stability", 0.0)}, spec.train.momentum, spec.watch.threshold)
    if said.verdict == DIVERGES:
        log.warning(
            "lr * lambda_max / (2 (1 + m)) = %.3g at w0, with momentum: GD is strongly unstable "
            "from the start and likely to explode; the flow predictors, which cannot blow up, "
            "are reported as diverged",
            signals["stability"],
        )
        for name, p in out.items():
            if PREDICTORS[name].flow:
                out[name] = replace(p, solved=replace(p.solved, curves=_diverged(p.curves)))
    elif said.verdict == SPIKE_AHEAD:
        log.warning(
            "lr * lambda_max / (2 (1 + m)) = %.3g at w0: GD is past the edge of stability; a "
            "spike is ahead, which the plain predictions do not model (they assume it recovers)",
            signals["stability"],
        )
    return inputs, out, signals


def _diverged(c: Curves) -> Curves:
    return Curves(c.loss, c.error, True, c.interval)


def after_prefix(
    spec: RunSpec,
    chosen: list[Predictor],
    at: str,
    k: int,
    model_k: nn.Module,
    velocity: dict[str, torch.Tensor] | None,
    real: Curves,
    inputs: Inputs,
    stages: Stages,
    built: dict[int, tuple] | None = None,
) -> tuple[dict[str, Predicted], dict[str, float]]:
    """The refined predictors `chosen` that start from step k (their `at`), from the real
    curves up to step k and the model at w_k (with the optimiser's momentum buffer `velocity`,
    by parameter name); at refine.steps also the signals drift, kernel_change and
    time_scale. `built` caches, per step, what was built there for another `at` (Theta_k and
    its stages), so two refinements from one step build it once."""
    built = {} if built is None else built
    signals: dict[str, float] = {}
    if k in built:
        i, shared, prefix = built[k]
    else:
        t = spec.train
        n_prefix = k // t.eval_every + 1
        curves = Curves(real.loss[:n_prefix], real.error[:n_prefix], interval=t.eval_every)
        i = replace(inputs, k=k, prefix=curves, theta_k=None, f_k=None, u_k=None)
        if any(p.theta == WK for p in chosen):
            i.f_k, i.theta_k = _theta(spec, model_k, i.x, stages, at=f"_{at}")
            if velocity:
                with stages(f"velocity_{at}"):  # u_k = J_k v_k, one forward-mode pass
                    _, u = jvp(model_k, i.x, velocity)
                    i.u_k = u.detach().to(torch.float64)
        shared = dict(_W0_COSTS)
        if i.theta_k is not None:
            shared[WK] = _k_stages(at, velocity)
        prefix = prefix_stage(at)
        built[k] = (i, shared, prefix)
    if at == K and i.theta is not None:
        with stages(stages_.DRIFT):
            if i.f_k is None:
                with torch.no_grad():
                    i.f_k = model_k(i.x)
            signals |= _drift(spec, i, i.f_k)
    return _solve_all(chosen, i, stages, shared, prefix), signals


_W0_COSTS = {W0: (stages_.JACOBIAN, stages_.THETA)}  # what a prediction on Theta at w0 pays


def with_signal_costs(predictions: dict[str, Predicted], stages: Stages) -> dict[str, Predicted]:
    """Every prediction with the signals its validity reads, where the run measured them: the
    stability at w0 in its cost, the drift at k and the watch along the fine-tuning apart
    (ttbench.stages.ALONG; the record's `timing` gives both)."""
    before = (stages_.STABILITY,) if stages_.STABILITY in stages.stats else ()
    along = tuple(s for s in stages_.ALONG if s in stages.stats)
    return {  # one that computed nothing (no state at its step) costs nothing
        n: replace(p, stages=(*p.stages, *before), signals=along) if p.stages else p
        for n, p in predictions.items()
    }


def _k_stages(at: str, velocity) -> tuple[str, ...]:
    return (
        f"{stages_.JACOBIAN}_{at}",
        f"{stages_.THETA}_{at}",
        *((f"velocity_{at}",) if velocity else ()),
    )


def _drift(spec: RunSpec, i: Inputs, f_k: torch.Tensor) -> dict[str, float]:
    """How far the real run has left the linearised one after k steps (module docstring)."""
    from ttbench.train import sgd_batches

    k, t = spec.refine.steps, spec.train
    batches = sgd_batches(t, len(i.y), spec.seed)
    if batches is None:
        f_lin = discrete(i.theta, i.f0, i.y, **(t.dynamics | {"steps": k})).outputs[-1]
    else:
        run = sgd.exact_sgd(
            i.theta, i.f0, i.y, lr=t.lr, momentum=t.momentum, loss=t.loss, batches=batches[None, :k]
        )
        f_lin = run.final[0]
    f0, f_k = i.f0.to(torch.float64), f_k.to(torch.float64)
    moved = float((f_k - f0).norm())
    out = {"drift": float((f_k - f_lin.to(f_k.device)).norm()) / moved if moved > 0 else 0.0}
    if i.theta_k is not None and i.theta_k.shape == i.theta.shape:
        th0 = i.theta.to(torch.float64)
        out["kernel_change"] = float((i.theta_k.to(torch.float64) - th0).norm() / th0.norm())
    reach = int(np.ceil(refine.SCALES[1] * k)) + 1
    plain = discrete(i.theta, i.f0, i.y, **(t.dynamics | {"steps": reach})).curves.loss
    prefix = refine.rescale_time(i.prefix.loss, 1 / t.eval_every, k)
    if np.all(np.isfinite(plain)) and np.all(np.isfinite(prefix)):
        out["time_scale"] = refine.fit_time_scale(plain, prefix)
    return out


def path_bands(paths: sgd.PathPrediction) -> dict[float, Curves]:
    """Per-step 5% and 95% quantiles of the paths' loss and error."""
    return {
        q: Curves(
            np.nanquantile(paths.paths_loss, q, axis=0),
            np.nanquantile(paths.paths_error, q, axis=0),
        )
        for q in record.BAND
    }


@dataclass(frozen=True)
class Evidence:
    """What a run measured that says how far its predictions hold (ttbench.validity)."""

    signals: dict[str, float]
    spike_at: int | None = None  # the real loss's first spike
    announced_at: int | None = None  # the watch's first announcement


def with_bands(
    entries: dict[str, record.PredictorRecord],
    spec: RunSpec,
    calibration: Calibration,
    evidence: Evidence | None = None,
    before_training: bool = False,
) -> dict[str, record.PredictorRecord]:
    """Every prediction with its validity (expected error, from the calibration's model of the
    run's evidence; without a model, a plain prediction's disagreement with the refined
    reference) and its model-error band (ttbench.bands, Mondrian by the model's family and the
    validity's level; "unknown" when wider than ttbench.bands.WIDTH budgets). Made
    `before_training` (a plan, predict_job), a plain prediction is read by the validity's
    BEFORE family and banded by its cells, from the stability at w0 alone."""
    evidence = evidence or Evidence({})
    steps = spec.train.steps
    times = {n: e.t_eps["loss"] for n, e in entries.items() if not PREDICTORS[n].pooled}
    f = features(
        times,
        {n: e.k for n, e in entries.items()},
        evidence.signals,
        evidence.spike_at,
        evidence.announced_at,
        steps,
        spec.refine.steps,
    )
    model = calibration.validity
    out = {}
    for name, e in entries.items():
        key, x = name, f.get(name)
        if before_training and name in f and family(name) == "plain":
            key, x = before(name), before_features(evidence.signals)
        if name not in f:
            v = None
        elif model is not None:
            v = model.expected(key, x)
        else:  # the disagreement with the refined reference alone, where there is one
            has_ref = any(r in times and set(times[r]) != {None} for r in REFERENCES)
            v = float(f[name][0]) if has_ref and family(name) == "plain" else None
        cells = key if calibration.has(key) else name  # a calibration without BEFORE cells
        band = {}
        for kind, ts in e.t_eps.items():
            qs = [calibration.band(cells, kind, t, v, spec.model.name, steps) for t in ts]
            band[kind] = tuple(record.Quantiles(*(q or (None, None, None))) for q in qs)
        trusted = None if model is None or v is None else model.trusted(key, v)
        out[name] = replace(e, band=band, validity=v, trusted=trusted)
    return out


def entry(name: str, p: Predicted, spec: RunSpec) -> record.PredictorRecord:
    """The record of one prediction: T_eps per eps and, for sample paths, their quantiles,
    read on the real curve's grid (every optim.eval_every steps) and smoothed alike, so real
    and predicted times are measured the same way."""
    window, every = spec.train.smooth, spec.train.eval_every
    curves, paths = p.curves, p.solved.paths
    stride = every // curves.interval  # read every curve on the real one's grid
    if stride > 1:
        curves = Curves(curves.loss[::stride], curves.error[::stride], curves.diverged, every)
    quantiles = None
    if paths is not None:
        quantiles = {}
        for kind, arr in (("loss", paths.paths_loss), ("error", paths.paths_error)):
            grid = arr[:, ::stride] if stride > 1 else arr
            qs = t_eps_quantiles(grid, spec.eps, window, interval=every, q=QUANTILES)
            quantiles[kind] = tuple(record.Quantiles(*qs[e]) for e in spec.eps)
    return record.PredictorRecord(
        kind=PREDICTORS[name].kind,
        t_eps=record.t_eps(curves, spec.eps, window),
        diverged=curves.diverged,
        stages=p.stages,
        signals=p.signals,
        paths=None if paths is None else len(paths.paths_loss),
        quantiles=quantiles,
        k=p.k,
    )
