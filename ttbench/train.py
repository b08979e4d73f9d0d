"""Real fine-tuning: the only place in ttbench that trains a network.

Gradient descent with heavy-ball momentum (torch.optim.SGD): full-batch by default, or
mini-batch SGD along given batches (see ttbench.core.sgd.batch_indices). The training loss and
error on the whole task are recorded every `eval_every` steps t = 0..T, before that step's
update. A non-finite loss stops the run, which is then marked diverged.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from ttbench.core import losses
from ttbench.core.timing import Curves


def finetune(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    lr: float,
    momentum: float,
    steps: int,
    loss: str = "ce",
    weight_decay: float = 0.0,
    batches: torch.Tensor | None = None,
    eval_every: int = 1,
    on_step: Callable[[int, float], None] | None = None,
) -> Curves:
    """Fine-tune `model` in place for `steps` steps; `batches` (steps, B) selects SGD.
    Returns curves with steps // eval_every + 1 points."""
    if steps % eval_every:
        raise ValueError("steps must be a multiple of eval_every")
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    points = steps // eval_every + 1
    loss_curve = np.full(points, np.nan)
    error_curve = np.full(points, np.nan)
    diverged = False
    for t in range(steps + 1):
        opt.zero_grad(set_to_none=True)
        record = t % eval_every == 0
        if batches is None or record:
            with torch.set_grad_enabled(batches is None and t < steps):
                f = model(x)
                value = losses.loss(f, y, loss)
            if record:
                loss_curve[t // eval_every] = value.item()
                error_curve[t // eval_every] = losses.error(f.detach(), y).item()
                if on_step is not None:
                    on_step(t, loss_curve[t // eval_every])
            if not torch.isfinite(value):
                diverged = True
                break
        if t == steps:
            break
        if batches is not None:
            idx = batches[t].to(x.device)
            value = losses.loss(model(x[idx]), y[idx], loss)
            if not torch.isfinite(value):
                diverged = True
                break
        value.backward()
        opt.step()
    return Curves(loss_curve, error_curve, diverged, interval=eval_every)
