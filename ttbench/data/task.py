"""Fine-tuning tasks as in the paper (Section 5): k random classes x n images per class."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class Task:
    """Inputs x (N, ...), labels y (N,) in 0..k-1, and where they came from."""

    x: torch.Tensor
    y: torch.Tensor
    classes: tuple[int, ...]  # dataset class of each task label
    positions: np.ndarray  # positions in the dataset's target pool
    seed: int

    @property
    def n_samples(self) -> int:
        return len(self.y)

    @property
    def n_classes(self) -> int:
        return len(self.classes)


def sample_positions(
    labels: np.ndarray, k: int, n: int, seed: int
) -> tuple[tuple[int, ...], np.ndarray, np.ndarray]:
    """Choose k classes and up to n images of each (all of them when fewer exist, as the paper
    does). Returns (classes, positions, task labels); deterministic in `seed`."""
    available = np.unique(labels)
    if not 1 <= k <= available.size:
        raise ValueError(f"k must be in 1..{available.size}, got {k}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    rng = np.random.default_rng(seed)
    classes = np.sort(rng.choice(available, size=k, replace=False))
    positions, task_labels = [], []
    for label, c in enumerate(classes):
        pool = np.flatnonzero(labels == c)
        pick = np.sort(rng.choice(pool, size=min(n, pool.size), replace=False))
        positions.append(pick)
        task_labels.append(np.full(pick.size, label))
    return tuple(int(c) for c in classes), np.concatenate(positions), np.concatenate(task_labels)


def sample_task(dataset, k: int, n: int, seed: int) -> Task:
    """Draw a task from a dataset exposing labels() and images(positions)."""
    classes, positions, y = sample_positions(dataset.labels(), k, n, seed)
    return Task(dataset.images(positions), torch.from_numpy(y), classes, positions, seed)
