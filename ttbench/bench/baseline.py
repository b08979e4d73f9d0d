"""The route to J and Theta that shares nothing with ttbench's engine: per-sample Jacobians by
torch.func `vmap(jacrev)`, chunked over samples. The benchmarks' baseline and the tests'
reference."""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call, jacrev, vmap


def jacobian(model: nn.Module, x: torch.Tensor, chunk: int = 16) -> torch.Tensor:
    """J (N*C, D) over the trainable weights (in `named_parameters` order), rows (i, c)."""
    trainable = {k: v.detach() for k, v in model.named_parameters() if v.requires_grad}
    fixed = {k: v.detach() for k, v in model.named_parameters() if not v.requires_grad}
    fixed |= dict(model.named_buffers())

    def f(params: dict[str, torch.Tensor], xi: torch.Tensor) -> torch.Tensor:
        return functional_call(model, (params, fixed), (xi.unsqueeze(0),)).squeeze(0)

    blocks = []
    for i in range(0, len(x), chunk):
        jac = vmap(jacrev(f), in_dims=(None, 0))(trainable, x[i : i + chunk])
        blocks.append(torch.cat([j.flatten(2) for j in jac.values()], dim=2).flatten(0, 1))
    return torch.cat(blocks)


def func_theta(model: nn.Module, x: torch.Tensor, chunk: int = 16) -> torch.Tensor:
    """Theta = J J^T from `jacobian`."""
    J = jacobian(model, x, chunk)
    return J @ J.T
