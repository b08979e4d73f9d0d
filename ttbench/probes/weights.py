"""Weight-function probe (Fig. 9): does the linearised model predict the weights, or only the
outputs, of real fine-tuning?

The model linearised at w0 and trained with the run's optimiser (GD or SGD along the run's own
batches, heavy-ball momentum) moves its weights by w_t^lin - w0 = J^T a_t, J the Jacobian at w0:
with g_s = grad_f L(f_s^lin) (the batch loss for SGD), U_s = m U_{s-1} + g_s and
a_{t+1} = a_t - lr U_t, since every update is J^T of a function-space vector. f_t^lin comes from
core.dynamics' exact discrete map (core.sgd.exact_sgd for SGD), and f_t^lin = f0 + Theta a_t.
The real model is then fine-tuned as the run does (train.finetune_run), and at every
recorded step its weights and outputs are compared with w0 + J^T a_t (one vector-Jacobian
product at w0) and f_t^lin, without ever storing a weight trajectory.
"""

from __future__ import annotations

import copy
import logging

import pandas as pd
import torch
from torch import nn

from ttbench.core import losses
from ttbench.core.dynamics import discrete
from ttbench.core.linearize import linearize
from ttbench.core.sgd import batch_grad_f, exact_sgd
from ttbench.spec import RunSpec
from ttbench.train import finetune_run, sgd_batches

log = logging.getLogger(__name__)


def linear_trajectory(
    theta: torch.Tensor,
    f0: torch.Tensor,
    y: torch.Tensor,
    *,
    lr: float,
    momentum: float,
    steps: int,
    loss: str,
    batches: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(f_t^lin, a_t), both (T+1, N, C) in float64: the linearised model's outputs and the
    coefficients with w_t^lin - w0 = J^T a_t, under GD or, given batches (T, B), SGD."""
    kw = {"lr": lr, "momentum": momentum, "loss": loss}
    if batches is None:
        outputs = discrete(theta, f0, y, steps=steps, **kw).outputs
        grads = losses.grad_f(outputs[:-1], y.to(outputs.device), loss)
    else:
        outputs = exact_sgd(theta, f0, y, batches=batches[None], keep_outputs=True, **kw).outputs[0]
        grads = batch_grad_f(outputs[:-1], y.to(outputs.device), loss, batches.to(outputs.device))
    coef = torch.zeros_like(outputs)
    u = torch.zeros_like(outputs[0])
    for t in range(steps):
        u = momentum * u + grads[t]
        coef[t + 1] = coef[t] - lr * u
    return outputs, coef


class _Pullback:
    """a -> J^T a at w0 (flattened over the trainable weights), on a frozen copy of the model
    whose forward graph is kept for repeated products."""

    def __init__(self, model: nn.Module, x: torch.Tensor) -> None:
        self.model = copy.deepcopy(model)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        with torch.enable_grad():
            self.out = self.model(x)

    def __call__(self, a: torch.Tensor) -> torch.Tensor:
        a = a.to(self.out.device, self.out.dtype)
        with torch.enable_grad():
            grads = torch.autograd.grad(self.out, self.params, a, retain_graph=True)
        return torch.cat([g.reshape(-1) for g in grads])


def _flat(params: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in params])


def _ratio(num: torch.Tensor, den: torch.Tensor) -> float:
    d = den.norm().item()
    return num.norm().item() / d if d > 0 else float("nan")


def weight_function_frame(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, spec: RunSpec
) -> pd.DataFrame:
    """Fine-tunes `model` in place. One row per recorded step (every optim.eval_every):
    step, weight_rel_error = |w_t^lin - w_t| / |w_t - w0|, output_rel_error =
    |f_t^lin - f_t| / |f_t - f0| (both NaN at t = 0), weight_distance |w_t - w0|,
    weight_distance_lin |w_t^lin - w0|, output_distance |f_t - f0|, loss and loss_lin."""
    batches = sgd_batches(spec.train, len(y), spec.seed)
    lin = linearize(model, x, memory_gb=spec.theta.memory_gb)
    f_lin, coef = linear_trajectory(
        lin.theta,
        lin.f0,
        y,
        **spec.train.dynamics,
        batches=batches,
    )
    loss_lin = losses.loss(f_lin, y.to(f_lin.device), spec.train.loss).cpu().numpy()
    del lin
    pullback = _Pullback(model, x)
    params = [p for p in model.parameters() if p.requires_grad]
    w0 = _flat(params).to(torch.float64)
    f0 = pullback.out.detach().to(torch.float64)
    rows = []

    def on_step(t: int, value: float) -> None:
        with torch.no_grad():
            f = model(x).to(torch.float64)
        dw = _flat(params).to(torch.float64) - w0
        dw_lin = pullback(coef[t]).to(torch.float64)
        df, df_lin = f - f0, f_lin[t].to(f.device) - f0
        rows.append(
            {
                "step": t,
                "weight_rel_error": _ratio(dw_lin - dw, dw),
                "output_rel_error": _ratio(df_lin - df, df),
                "weight_distance": dw.norm().item(),
                "weight_distance_lin": dw_lin.norm().item(),
                "output_distance": df.norm().item(),
                "loss": value,
                "loss_lin": float(loss_lin[t]),
            }
        )

    log.info("weight_function probe: linearised trajectory done, fine-tuning")
    finetune_run(spec, model, x, y, on_step=on_step)
    return pd.DataFrame(rows)  # t = 0 is always recorded
