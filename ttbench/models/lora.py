"""Low-rank adapters (LoRA, Hu et al. 2021) on a network's Linear layers.

    LoRALinear(base)(x) = base(x) + (alpha / rank) * B A x,   A (rank x in), B (out x rank),

A random (N(0, 1/rank)... as Kaiming-uniform in the paper's code) and B zero, so the adapted
network computes exactly the pretrained function at w0. A and B are nn.Linear modules, so the
Theta engine contracts them through its factored route like any other weight matrix. Written
here rather than taken from `peft`, which would bring in `transformers` and `accelerate` for
these few lines.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class LoRALinear(nn.Module):
    def __init__(self, base: nn.Linear, rank: int, alpha: float) -> None:
        super().__init__()
        if rank < 1:
            raise ValueError(f"rank must be >= 1, got {rank}")
        self.base, self.scale = base, alpha / rank
        like = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_a = nn.Linear(base.in_features, rank, bias=False, **like)
        self.lora_b = nn.Linear(rank, base.out_features, bias=False, **like)
        nn.init.kaiming_uniform_(self.lora_a.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_b.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.scale * self.lora_b(self.lora_a(x))


def add_lora(body: nn.Module, rank: int, alpha: float) -> list[str]:
    """Wrap every nn.Linear of `body` in a LoRALinear, in place; the names wrapped."""
    names = [n for n, m in body.named_modules() if isinstance(m, nn.Linear) and n]
    for name in names:
        parent, _, attr = name.rpartition(".")
        owner = body.get_submodule(parent) if parent else body
        setattr(owner, attr, LoRALinear(getattr(owner, attr), rank, alpha))
    return names
