"""Dataset names known to the configs, their factories, and the class counts known before any
file is read (for validation)."""

from __future__ import annotations

from functools import partial
from typing import Any

from ttbench.data.cifar import Cifar
from ttbench.data.custom import custom
from ttbench.data.digits import Digits
from ttbench.data.finegrained import cub200, fgvc_aircraft, minc2500, stanford_cars
from ttbench.data.images import image_folder, mit67

DATASETS: dict[str, Any] = {
    "digits": Digits,
    "cifar10": partial(Cifar, "cifar10"),
    "cifar100": partial(Cifar, "cifar100"),
    "mit67": mit67,
    "imagefolder": image_folder,
    "cub200": cub200,
    "stanford_cars": stanford_cars,
    "fgvc_aircraft": fgvc_aircraft,
    "minc2500": minc2500,
    "custom": custom,
}
NUM_CLASSES = {
    "digits": 10,
    "cifar10": 10,
    "cifar100": 100,
    "mit67": 67,
    "cub200": 200,
    "stanford_cars": 196,
    "fgvc_aircraft": 100,
    "minc2500": 23,
}


def get_dataset(name: str, **options: Any):
    if name not in DATASETS:
        raise KeyError(f"unknown dataset {name!r}; known: {sorted(DATASETS)}")
    return DATASETS[name](**options)
