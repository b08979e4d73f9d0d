"""CUB-200-2011, Stanford Cars, FGVC-Aircraft and MINC-2500, each read from the layout its
official archive unpacks to, training split only (Table 2 of the paper)."""

from __future__ import annotations

from pathlib import Path

from ttbench.data.images import DataNotFound, FileDataset, data_root


def _require(name: str, base: Path, files: list[str], expected: str, source: str) -> None:
    for f in files:
        if not (base / f).exists():
            raise DataNotFound(
                f"dataset {name}: {base / f} not found; expected {expected}; get it from {source}"
            )


def _pairs(path: Path) -> list[tuple[str, str]]:
    """Lines 'key value...' of a text file as (key, rest)."""
    out = []
    for line in path.read_text().splitlines():
        if line.strip():
            key, _, rest = line.strip().partition(" ")
            out.append((key, rest.strip()))
    return out


def _dataset(name: str, files: list[Path], names: list[str], resolution: int) -> FileDataset:
    classes = sorted(set(names))
    index = {c: i for i, c in enumerate(classes)}
    return FileDataset(name, files, [index[c] for c in names], classes, resolution)


def cub200(root: str | None, resolution: int = 224) -> FileDataset:
    expected = (
        "<root>/CUB_200_2011/{images.txt, image_class_labels.txt, train_test_split.txt, images/}"
    )
    source = "the Caltech-UCSD Birds-200-2011 page (CUB_200_2011.tgz)"
    base = data_root("cub200", root, expected, source) / "CUB_200_2011"
    _require(
        "cub200",
        base,
        ["images.txt", "image_class_labels.txt", "train_test_split.txt", "images"],
        expected,
        source,
    )
    paths = dict(_pairs(base / "images.txt"))
    label = dict(_pairs(base / "image_class_labels.txt"))
    train = [i for i, flag in _pairs(base / "train_test_split.txt") if flag == "1"]
    names = [f"{int(label[i]):03d}" for i in train]
    return _dataset("cub200", [base / "images" / paths[i] for i in train], names, resolution)


def stanford_cars(root: str | None, resolution: int = 224) -> FileDataset:
    from scipy.io import loadmat

    expected = "<root>/stanford_cars/{cars_train/*.jpg, devkit/cars_train_annos.mat}"
    source = "the Stanford Cars dataset page (cars_train.tgz and car_devkit.tgz)"
    base = data_root("stanford_cars", root, expected, source) / "stanford_cars"
    _require("stanford_cars", base, ["cars_train", "devkit/cars_train_annos.mat"], expected, source)
    try:
        annos = loadmat(base / "devkit" / "cars_train_annos.mat", squeeze_me=True)["annotations"]
        rows = [(str(a["fname"]), int(a["class"])) for a in annos]
    except (OSError, ValueError, KeyError) as e:
        raise DataNotFound(
            f"dataset stanford_cars: cannot read devkit/cars_train_annos.mat ({e})"
        ) from e
    return _dataset(
        "stanford_cars",
        [base / "cars_train" / f for f, _ in rows],
        [f"{c:03d}" for _, c in rows],
        resolution,
    )


def fgvc_aircraft(root: str | None, resolution: int = 224) -> FileDataset:
    expected = "<root>/fgvc-aircraft-2013b/data/{images/*.jpg, images_variant_trainval.txt}"
    source = "the FGVC-Aircraft page (fgvc-aircraft-2013b.tar.gz)"
    base = data_root("fgvc_aircraft", root, expected, source) / "fgvc-aircraft-2013b" / "data"
    _require("fgvc_aircraft", base, ["images", "images_variant_trainval.txt"], expected, source)
    rows = _pairs(base / "images_variant_trainval.txt")
    return _dataset(
        "fgvc_aircraft",
        [base / "images" / f"{i}.jpg" for i, _ in rows],
        [v for _, v in rows],
        resolution,
    )


def minc2500(root: str | None, resolution: int = 224) -> FileDataset:
    expected = "<root>/minc-2500/{images/<class>/*.jpg, labels/train1.txt}"
    source = "the MINC materials-in-context page (minc-2500.tar.gz)"
    base = data_root("minc2500", root, expected, source) / "minc-2500"
    _require("minc2500", base, ["images", "labels/train1.txt"], expected, source)
    rel = [
        line.strip()
        for line in (base / "labels" / "train1.txt").read_text().splitlines()
        if line.strip()
    ]
    return _dataset("minc2500", [base / r for r in rel], [r.split("/")[1] for r in rel], resolution)
