"""Image datasets read from a local root in their official on-disk layouts; never downloaded.

Every dataset exposes its training split as a list of files (or arrays, for CIFAR) with
labels; `images(positions)` decodes only what a task selects, resized (shorter side) and
centre-cropped to `resolution` and normalised with the ImageNet statistics, no augmentation.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image

from ttbench.errors import DataNotFound

if TYPE_CHECKING:
    from torchvision import transforms

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def preprocess(resolution: int) -> transforms.Compose:
    from torchvision import transforms  # torchvision costs ~1 s to import

    return transforms.Compose(
        [
            transforms.Resize(resolution),
            transforms.CenterCrop(resolution),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


def data_root(name: str, root: str | None, expected: str, source: str) -> Path:
    """The dataset's folder under the data root, or a one-line DataNotFound."""
    hint = f"expected {expected}; get it from {source}"
    if not root:
        raise DataNotFound(
            f"dataset {name}: no data root (set dataset.root=... or TTBENCH_DATA); {hint}"
        )
    path = Path(root).expanduser()
    if not path.is_dir():
        raise DataNotFound(f"dataset {name}: data root {path} does not exist; {hint}")
    return path


class FileDataset:
    """A training split given as image files with integer labels."""

    in_channels = 3

    def __init__(
        self, name: str, files: list[Path], labels: list[int], classes: list[str], resolution: int
    ) -> None:
        if not files:
            raise DataNotFound(f"dataset {name}: the training list names no images")
        self.name, self.files, self.classes = name, files, classes
        self._labels = np.asarray(labels, dtype=np.int64)
        self._transform = preprocess(resolution)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def labels(self) -> np.ndarray:
        return self._labels

    def sources(self, positions: np.ndarray) -> list[Path]:
        """The files the images at these positions are read from (the task cache's key)."""
        return [self.files[int(i)] for i in positions]

    def images(self, positions: np.ndarray) -> torch.Tensor:
        out = []
        for i in positions:
            path = self.files[int(i)]
            try:
                with Image.open(path) as img:
                    out.append(self._transform(img.convert("RGB")))
            except (OSError, ValueError) as e:
                raise DataNotFound(f"dataset {self.name}: cannot read image {path} ({e})") from e
        return torch.stack(out)


def image_folder(root: str | None, resolution: int = 224, name: str = "imagefolder") -> FileDataset:
    """A user's own tree root/<class>/<image>, classes in sorted order."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset

    path = data_root(name, root, "<root>/<class>/<image files>", "your own images")
    classes = sorted(d.name for d in path.iterdir() if d.is_dir())
    if not classes:
        raise DataNotFound(
            f"dataset {name}: no class folders under {path}; expected <root>/<class>/<image files>"
        )
    samples = make_dataset(
        str(path), {c: i for i, c in enumerate(classes)}, IMG_EXTENSIONS, allow_empty=True
    )
    return FileDataset(
        name, [Path(p) for p, _ in samples], [y for _, y in samples], classes, resolution
    )


def mit67(root: str | None, resolution: int = 224) -> FileDataset:
    """MIT Indoor-67: <root>/Images/<class>/<file> and the official TrainImages.txt."""
    expected = "<root>/Images/<class>/*.jpg and <root>/TrainImages.txt"
    source = "the MIT Indoor Scene Recognition page (indoorCVPR_09.tar and TrainImages.txt)"
    path = data_root("mit67", root, expected, source)
    listing = path / "TrainImages.txt"
    if not listing.is_file() or not (path / "Images").is_dir():
        raise DataNotFound(
            f"dataset mit67: {expected} not found under {path}; get it from {source}"
        )
    rel = [line.strip() for line in listing.read_text().splitlines() if line.strip()]
    classes = sorted({r.split("/")[0] for r in rel})
    index = {c: i for i, c in enumerate(classes)}
    return FileDataset(
        "mit67",
        [path / "Images" / r for r in rel],
        [index[r.split("/")[0]] for r in rel],
        classes,
        resolution,
    )
