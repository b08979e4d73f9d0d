"""A body (feature extractor) and a linear head; the model that is fine-tuned and linearised."""

from __future__ import annotations

import copy

import torch
from torch import nn


class Classifier(nn.Module):
    def __init__(self, body: nn.Module, head: nn.Linear) -> None:
        super().__init__()
        self.body = body
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def finetune_model(pretrained: Classifier, k: int, head_init_std: float, seed: int) -> Classifier:
    """The model at w0: the pretrained body with a fresh k-way head (weights N(0, std^2), bias 0,
    drawn from `seed`), in eval mode so BatchNorm statistics stay frozen while all weights train.
    The body is a copy: the pretrained model is left untouched."""
    g = torch.Generator().manual_seed(seed)
    features = pretrained.head.in_features
    head = nn.Linear(features, k)
    with torch.no_grad():
        head.weight.copy_(torch.randn(k, features, generator=g) * head_init_std)
        head.bias.zero_()
    ref = next(pretrained.parameters())
    model = Classifier(copy.deepcopy(pretrained.body), head.to(device=ref.device, dtype=ref.dtype))
    return model.eval()
