"""Dataset names known to the configs, with their class counts (for validation before loading)."""

from __future__ import annotations

from typing import Any

from ttbench.data.digits import Digits

DATASETS: dict[str, type] = {"digits": Digits}


def get_dataset(name: str, **options: Any):
    if name not in DATASETS:
        raise KeyError(f"unknown dataset {name!r}; known: {sorted(DATASETS)}")
    return DATASETS[name](**options)
