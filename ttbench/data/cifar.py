"""CIFAR-10 and CIFAR-100, python version, as the official archives unpack (and torchvision
reads them): <root>/cifar-10-batches-py/data_batch_1..5, <root>/cifar-100-python/train. The
MD5 sums of the training files are checked against torchvision's list unless verify=false."""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ttbench.data.images import DataNotFound, data_root, preprocess

_SOURCE = "the CIFAR page of the University of Toronto (the python version)"


class Cifar:
    in_channels = 3

    def __init__(
        self, name: str, root: str | None, resolution: int = 224, verify: bool = True
    ) -> None:
        from torchvision.datasets import CIFAR10, CIFAR100  # torchvision costs ~1 s to import

        spec = CIFAR10 if name == "cifar10" else CIFAR100
        folder = spec.base_folder
        expected = f"<root>/{folder}/" + ", ".join(f for f, _ in spec.train_list)
        base = data_root(name, root, expected, _SOURCE) / folder
        data, labels = [], []
        self._files = [base / file for file, _ in spec.train_list]
        for file, md5 in spec.train_list:
            path = base / file
            if not path.is_file():
                raise DataNotFound(
                    f"dataset {name}: {path} not found; expected {expected}; get it from {_SOURCE}"
                )
            blob = path.read_bytes()
            if verify and hashlib.md5(blob).hexdigest() != md5:
                raise DataNotFound(
                    f"dataset {name}: {path} fails its MD5 check (corrupt or not the official "
                    "file; dataset.verify=false skips the check)"
                )
            try:
                # the official files have str keys; Python 3 tools following the dataset
                # page's dict[b'data'] write bytes keys: read both
                entry = {
                    k.decode() if isinstance(k, bytes) else k: v
                    for k, v in pickle.loads(blob, encoding="latin1").items()
                }
                data.append(np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
                labels.extend(entry["labels"] if "labels" in entry else entry["fine_labels"])
            except (pickle.UnpicklingError, KeyError, ValueError, EOFError, AttributeError) as e:
                raise DataNotFound(f"dataset {name}: cannot read {path} ({e})") from e
        self.name = name
        self.num_classes = 10 if name == "cifar10" else 100
        self._data = np.concatenate(data).transpose(0, 2, 3, 1)
        self._labels = np.asarray(labels, dtype=np.int64)
        self._transform = preprocess(resolution)

    def labels(self) -> np.ndarray:
        return self._labels

    def sources(self, positions: np.ndarray) -> list[Path]:
        """The files the images are read from (the task cache's key): every batch file."""
        return list(self._files)

    def images(self, positions: np.ndarray) -> torch.Tensor:
        return torch.stack(
            [self._transform(Image.fromarray(self._data[int(i)])) for i in positions]
        )
