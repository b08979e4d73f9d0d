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


NORMS = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)


def set_trainable(model: Classifier, which: str) -> None:
    """Which weights train: all; the head only; the head and the body's normalisation layers'
    affine weights (BatchNorm, LayerNorm, GroupNorm, and their subclasses such as timm's
    LayerNorm2d); the head and the LoRA adapters (ttbench.models.lora)."""
    for name, p in model.body.named_parameters():
        owner = name.rpartition(".")[0]
        module = model.body.get_submodule(owner)
        p.requires_grad_(
            which == "all"
            or (which == "norm" and isinstance(module, NORMS))
            or (which == "adapters" and owner.rpartition(".")[2] in ("lora_a", "lora_b"))
        )
    model.head.requires_grad_(True)


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
