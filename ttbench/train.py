"""Real fine-tuning: the only place in ttbench that trains a network.

Full-batch gradient descent with heavy-ball momentum (torch.optim.SGD) on the whole task; the
training loss and error on the whole task are recorded at every step t = 0..T, before that
step's update. A non-finite loss stops the run, which is then marked diverged.
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
    on_step: Callable[[int, float], None] | None = None,
) -> Curves:
    """Fine-tune `model` in place for `steps` GD steps; returns curves of length steps + 1."""
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    loss_curve = np.full(steps + 1, np.nan)
    error_curve = np.full(steps + 1, np.nan)
    diverged = False
    for t in range(steps + 1):
        opt.zero_grad(set_to_none=True)
        f = model(x)
        value = losses.loss(f, y, loss)
        loss_curve[t] = value.item()
        error_curve[t] = losses.error(f.detach(), y).item()
        if on_step is not None:
            on_step(t, loss_curve[t])
        if not np.isfinite(loss_curve[t]):
            diverged = True
            break
        if t < steps:
            value.backward()
            opt.step()
    return Curves(loss_curve, error_curve, diverged)
