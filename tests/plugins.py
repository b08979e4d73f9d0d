"""A user's own network and data set, as `model._target_` and `dataset._target_` name them
in the plug-in tests."""

from __future__ import annotations

import torch
from torch import nn


def make_mlp(channels: int = 1, side: int = 8, hidden: int = 16, classes: int = 10) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(channels * side * side, hidden),
        nn.Tanh(),
        nn.Linear(hidden, classes),
    )


class Blobs(torch.utils.data.Dataset):
    """Gaussian blobs as 1 x 4 x 4 images, with the `targets` attribute torchvision's have."""

    def __init__(self, n: int = 60, classes: int = 4) -> None:
        g = torch.Generator().manual_seed(0)
        self.targets = [i % classes for i in range(n)]
        centres = torch.randn(classes, 1, 4, 4, generator=g) * 2
        self.x = centres[self.targets] + torch.randn(n, 1, 4, 4, generator=g)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int):
        return self.x[i], self.targets[i]


def make_blobs(n: int = 60, classes: int = 4) -> Blobs:
    return Blobs(n, classes)


def not_a_model() -> str:
    return "a string"
