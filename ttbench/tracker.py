"""A convergence ETA inside your own training loop:

    tracker = ttbench.Tracker(model, loader, optimizer, steps=1000, eps=0.05)
    for xb, yb in batches:                     # your loop, unchanged
        loss = loss_fn(model(xb), yb)
        optimizer.zero_grad(); loss.backward(); optimizer.step()
        eta = tracker.step(loss.item())        # logs "loss within 5% in about N steps (M min)"

At the start it predicts from w0 (`predict_job`); after 10% of the steps, and again at 20% and
40% (`refine_at`), it re-linearises the model where it now is (Theta_k, f_k, and the
optimiser's momentum buffer carried into function space: the `relin` predictor under GD,
`relin_sgd` under SGD), so the ETA follows the run. Between refinements it counts down. The
loss you pass is the one your loop computed before its step (a mini-batch's under SGD: it is
smoothed as `python -m ttbench.run` smooths SGD curves); the time per step is measured
between calls. With a `writer` (a `torch.utils.tensorboard.SummaryWriter`) the loss, the ETA
and each predicted curve are written as TensorBoard scalars.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, replace

import numpy as np
import torch

from ttbench.bands import default_calibration
from ttbench.core import losses
from ttbench.core.curves import DEFAULT_EPS, Curves
from ttbench.job import JobPrediction, linearising, predict_job, quiet_torch
from ttbench.prediction import Evidence, after_prefix, entry, with_bands
from ttbench.predictors import PREDICTORS, K
from ttbench.stages import Stages

log = logging.getLogger("ttbench.tracker")
REFINE_AT = (0.1, 0.2, 0.4)  # fractions of the steps where the model is re-linearised


@dataclass(frozen=True)
class Eta:
    """When the loss is predicted to be within eps of its range for good."""

    step: int  # steps done
    t_eps: int | None  # the predicted T_eps (None: not within the budget)
    band: tuple[float, float] | None  # its calibrated 5-95% band, in steps
    seconds_per_step: float | None
    source: str  # the predictor it comes from, and where: "discrete at w0", "relin at 100"
    trusted: bool | None = None

    @property
    def steps_left(self) -> int | None:
        return None if self.t_eps is None else max(0, self.t_eps - self.step)

    @property
    def seconds_left(self) -> float | None:
        left = self.steps_left
        return (
            None if left is None or self.seconds_per_step is None else left * self.seconds_per_step
        )

    def __str__(self) -> str:
        if self.t_eps is None:
            return f"not within the step budget ({self.source})"
        text = f"in about {self.steps_left} steps"
        if self.seconds_left is not None:
            text += f" ({_duration(self.seconds_left)})"
        if self.band is not None:
            text += f", band {self.band[0]:.0f}-{self.band[1]:.0f}"
        flag = "; NOT TRUSTWORTHY" if self.trusted is False else ""
        return f"{text} [{self.source}{flag}]"


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


class Tracker:
    """The ETA of a training loop (module docstring); `step(loss)` after every optimiser
    step returns the current Eta."""

    def __init__(
        self,
        model: torch.nn.Module,
        data,
        optimizer: torch.optim.Optimizer,
        steps: int,
        eps: float = 0.05,
        loss="ce",
        theta: str = "hybrid",
        refine_at: tuple[float, ...] = REFINE_AT,
        writer=None,
        device: str | torch.device | None = None,
        seed: int = 0,
    ) -> None:
        self.model, self.optimizer, self.eps, self.writer = model, optimizer, eps, writer
        eps_all = tuple(sorted({*DEFAULT_EPS, eps}))
        self.job: JobPrediction = predict_job(
            model, data, optimizer, steps, loss, eps_all, None, theta, None, device, seed
        )
        self.refine_at = sorted({max(1, int(f * steps)) for f in refine_at if f * steps < steps})
        self.losses: list[float] = []
        self._clock: list[float] = []
        self.refined: dict[int, JobPrediction] = {}
        self.eta = self._eta(self.job, self.job.best, "at w0")
        log.info("ttbench: loss within %g %s", eps, self.eta)
        self._write_curve(self.job, self.job.best, 0)

    @property
    def steps_done(self) -> int:
        return len(self.losses)

    def step(self, loss: float) -> Eta:
        """Record the loss of the step just taken; re-linearise at the refinement steps."""
        self.losses.append(float(loss))
        self._clock.append(time.perf_counter())
        k = self.steps_done
        if k in self.refine_at:
            self._refine(k)
        else:
            self.eta = replace(self.eta, step=k, seconds_per_step=self._seconds_per_step())
        if self.writer is not None:
            self.writer.add_scalar("ttbench/loss", loss, k - 1)
            if self.eta.steps_left is not None:
                self.writer.add_scalar("ttbench/eta_steps", self.eta.steps_left, k)
        return self.eta

    def postfix(self) -> dict[str, str]:
        """For a progress bar: `bar.set_postfix(tracker.postfix())`."""
        left = self.eta.steps_left
        return {"eta": "n/a" if left is None else f"{left} steps"}

    def _seconds_per_step(self) -> float | None:
        if len(self._clock) < 2:
            return None
        recent = np.diff(self._clock[-21:])  # the last 20 intervals
        return float(np.median(recent))

    def _refine(self, k: int) -> None:
        job = self.job
        spec = replace(job.spec, refine=replace(job.spec.refine, steps=k))
        name = "relin_sgd" if job.optimizer == "sgd" else "relin"
        with linearising(self.model, job.trained) as model, torch.no_grad():
            f_k = model(job.inputs.x)  # the whole task's loss at w_k closes the prefix
        y = job.inputs.y
        error = np.full(k + 1, np.nan)  # your loop passes losses only
        error[k] = float(losses.error(f_k, y))
        real = Curves(
            np.array([*self.losses[:k], float(losses.loss(f_k, y, spec.train.loss))]), error
        )
        velocity = self._velocity()
        stages = Stages(job.inputs.x.device)
        with linearising(self.model, job.trained) as model, quiet_torch():
            predicted, signals = after_prefix(
                spec, [PREDICTORS[name]], K, k, model, velocity, real, job.inputs, stages
            )
        entries = {n: entry(n, p, spec) for n, p in predicted.items()}
        records = with_bands(entries, spec, default_calibration(), Evidence(signals))
        refined = replace(
            job,
            predictions=records,
            curves={n: p.curves for n, p in predicted.items()},
            signals=job.signals | signals,
            stages=stages.stats,
        )
        self.refined[k] = refined
        self.eta = self._eta(refined, name, f"at step {k}")
        log.info("ttbench: step %d, loss within %g %s", k, self.eps, self.eta)
        self._write_curve(refined, name, k)

    def _velocity(self) -> dict[str, torch.Tensor] | None:
        """The optimiser's momentum buffers by parameter name (None without momentum)."""
        names = {id(p): n for n, p in self.model.named_parameters()}
        out = {}
        for group in self.optimizer.param_groups:
            for p in group["params"]:
                buf = self.optimizer.state.get(p, {}).get("momentum_buffer")
                if buf is not None and id(p) in names:
                    out[names[id(p)]] = buf.detach()
        return out or None

    def _eta(self, job: JobPrediction, name: str, where: str) -> Eta:
        r = job.predictions[name]
        i = job.eps.index(self.eps)
        t = r.t_eps["loss"][i]
        q = r.band["loss"][i] if r.band else None
        band = None if q is None or q.q05 is None else (q.q05, q.q95)
        return Eta(
            self.steps_done,
            None if t is None else int(t),
            band,
            self._seconds_per_step(),
            f"{name} {where}",
            r.trusted,
        )

    def _write_curve(self, job: JobPrediction, name: str, k: int) -> None:
        if self.writer is None:
            return
        curve = job.curves[name].loss
        tag = f"ttbench/predicted_loss_from_{k}"
        for t in range(k, len(curve)):
            if math.isfinite(curve[t]):
                self.writer.add_scalar(tag, float(curve[t]), t)
