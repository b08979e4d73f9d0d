"""What the probes share: nested random subsets of a task, and wall-clock timing."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import TypeVar

import torch

T = TypeVar("T")


def nested_subsets(n_total: int, sizes: Iterable[int], seed: int) -> list[torch.Tensor]:
    """Sample indices for each size (clipped to n_total, duplicates dropped, n_total always
    included), ascending: prefixes of one permutation drawn from `seed`, so every subset holds
    the smaller ones, and the one of size subset.n0 is the subset predictor's subset."""
    perm = torch.randperm(n_total, generator=torch.Generator().manual_seed(seed))
    return [perm[:n] for n in sorted({min(int(s), n_total) for s in sizes} | {n_total})]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":  # kernels are asynchronous: wait before reading the clock
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], T], device: torch.device) -> tuple[T, float]:
    """fn() and its wall-clock in seconds."""
    _sync(device)
    start = time.perf_counter()
    out = fn()
    _sync(device)
    return out, time.perf_counter() - start
