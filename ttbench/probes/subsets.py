"""The nested random subsets of a task that the spectrum and projection probes measure on."""

from __future__ import annotations

from collections.abc import Iterable

import torch


def nested_subsets(n_total: int, sizes: Iterable[int], seed: int) -> list[torch.Tensor]:
    """Sample indices for each size (clipped to n_total, duplicates dropped, n_total always
    included), ascending: prefixes of one permutation drawn from `seed`, so every subset holds
    the smaller ones, and the one of size subset.n0 is the subset predictor's subset."""
    perm = torch.randperm(n_total, generator=torch.Generator().manual_seed(seed))
    return [perm[:n] for n in sorted({min(int(s), n_total) for s in sizes} | {n_total})]
