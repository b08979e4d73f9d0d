"""A user's own data set, from the command line: `dataset=custom dataset._target_=pkg.fn`
(ttbench/conf/dataset/custom.yaml), drawn into tasks like the built-in ones."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ttbench.errors import DataNotFound


class TorchDataset:
    """A map-style torch Dataset of (image, label) as the task sampler reads data."""

    name = "custom"

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset
        targets = getattr(dataset, "targets", None)
        if targets is None:  # read every item once: the labels
            targets = [int(dataset[i][1]) for i in range(len(dataset))]
        self._labels = np.asarray(targets, dtype=np.int64)
        if not len(self._labels):
            raise DataNotFound("dataset custom: the data set is empty")
        self.in_channels = int(torch.as_tensor(dataset[0][0]).shape[0])

    @property
    def num_classes(self) -> int:
        return int(np.unique(self._labels).size)

    def labels(self) -> np.ndarray:
        return self._labels

    def images(self, positions: np.ndarray) -> torch.Tensor:
        return torch.stack([torch.as_tensor(self.dataset[int(i)][0]) for i in positions])


def custom(_target_: str, kwargs: dict | None = None) -> TorchDataset:
    from hydra.utils import instantiate

    return TorchDataset(instantiate({"_target_": _target_, **(kwargs or {})}))
