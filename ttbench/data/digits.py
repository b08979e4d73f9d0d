"""scikit-learn's bundled handwritten digits (1797 images, 8x8, 10 classes): no download.

The images are split once, by image and stratified by class, into a *source* part used only to
pretrain the default network and a disjoint *target* part from which fine-tuning tasks are drawn:
for every class its images are shuffled with `split_seed` and the first `source_fraction` go to
the source part. Pixels (0..16) are scaled by the source part's mean and standard deviation.
With `resolution` the 8x8 images are upsampled (bilinear) to that size, and with `channels=3`
the grey channel is repeated, so that ImageNet-shaped networks (torchvision's ResNets) can be
pretrained and fine-tuned on them.
"""

from __future__ import annotations

from functools import cache

import numpy as np
import torch
from torch.nn import functional as F


@cache
def _load() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return bunch.images.astype(np.float32), bunch.target.astype(np.int64)


def split_indices(
    labels: np.ndarray, source_fraction: float, split_seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint (source, target) index arrays, stratified by class."""
    rng = np.random.default_rng(split_seed)
    source, target = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        cut = round(source_fraction * idx.size)
        source.append(idx[:cut])
        target.append(idx[cut:])
    return np.sort(np.concatenate(source)), np.sort(np.concatenate(target))


class Digits:
    """The digits data as a source part (pretraining) and a target part (tasks)."""

    name = "digits"
    num_classes = 10

    def __init__(
        self,
        source_fraction: float = 0.5,
        split_seed: int = 0,
        resolution: int | None = None,
        channels: int = 1,
    ) -> None:
        self.resolution, self.in_channels = resolution, channels
        images, labels = _load()
        self._source, self._target = split_indices(labels, source_fraction, split_seed)
        src = images[self._source]
        self._mean, self._std = float(src.mean()), float(src.std())
        self._images, self._labels = images, labels

    def _tensor(self, idx: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy((self._images[idx] - self._mean) / self._std).unsqueeze(1)
        if self.resolution and self.resolution != x.shape[-1]:
            size = (self.resolution, self.resolution)
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return x.expand(-1, self.in_channels, -1, -1).contiguous()

    def source(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All source images (N, 1, 8, 8) and labels, for pretraining."""
        return self._tensor(self._source), torch.from_numpy(self._labels[self._source])

    def labels(self) -> np.ndarray:
        """Labels of the target pool, position i naming target image i."""
        return self._labels[self._target]

    def images(self, positions: np.ndarray) -> torch.Tensor:
        """Target images at the given positions of the target pool."""
        return self._tensor(self._target[positions])
