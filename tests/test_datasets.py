"""Paper-scale datasets and ImageNet ResNets, on tiny fixtures in the real on-disk formats."""

import pickle
import zlib

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.datasets import CIFAR10, CIFAR100

from tests.conftest import cli_error, run_in_process
from ttbench import record
from ttbench.data.cifar import Cifar
from ttbench.data.finegrained import cub200, fgvc_aircraft, minc2500, stanford_cars
from ttbench.data.images import DataNotFound, image_folder, mit67
from ttbench.models.zoo import WEIGHT_FILES, WeightsNotFound, imagenet_resnet


def _rng(key: str) -> np.random.Generator:
    """Pixels drawn from the file's own name: a fixture's contents never depend on which
    tests ran before it."""
    return np.random.default_rng(zlib.crc32(key.encode()))


def write_cifar(root, name, per_file=4, bytes_keys=False):
    """The official pickles have str keys; bytes_keys writes what Python 3 tools following the
    dataset page's dict[b'data'] write."""
    spec = CIFAR10 if name == "cifar10" else CIFAR100
    key, classes = ("labels", 10) if name == "cifar10" else ("fine_labels", 100)
    base = root / spec.base_folder
    base.mkdir(parents=True)
    for k, (file, _) in enumerate(spec.train_list):
        labels = [(k * per_file + i) % 3 for i in range(per_file)]
        pixels = _rng(f"{name}/{file}").integers(0, 256, (per_file, 3072), dtype=np.uint8)
        blob = {"data": pixels, key: labels}
        if bytes_keys:
            blob = {k.encode(): v for k, v in blob.items()}
        (base / file).write_bytes(pickle.dumps(blob))
    return classes


def _image(path, size=(24, 20)):
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = _rng(f"{path.parent.name}/{path.name}").integers(0, 256, (*size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def write_imagefolder(root):
    for c in ("cat", "dog", "eel"):
        for i in range(3):
            _image(root / c / f"{i}.png")


def write_mit67(root):
    listed = []
    for c in ("bakery", "bar", "library"):
        for i in range(3):
            _image(root / "Images" / c / f"{i}.jpg")
            if i < 2:
                listed.append(f"{c}/{i}.jpg")
    (root / "TrainImages.txt").write_text("\n".join(listed) + "\n")


def write_cub200(root):
    base = root / "CUB_200_2011"
    rows, labels, split = [], [], []
    for k, c in enumerate(("001.Albatross", "002.Auklet", "003.Blackbird")):
        for i in range(3):
            rel = f"{c}/{c}_{i}.jpg"
            _image(base / "images" / rel)
            n = 3 * k + i + 1
            rows.append(f"{n} {rel}")
            labels.append(f"{n} {k + 1}")
            split.append(f"{n} {int(i < 2)}")
    (base / "images.txt").write_text("\n".join(rows))
    (base / "image_class_labels.txt").write_text("\n".join(labels))
    (base / "train_test_split.txt").write_text("\n".join(split))


def write_stanford_cars(root):
    from scipy.io import savemat

    base = root / "stanford_cars"
    annos = np.zeros((1, 9), dtype=[("fname", "O"), ("class", "O")])
    for n in range(9):
        _image(base / "cars_train" / f"{n:05d}.jpg")
        annos[0, n] = (f"{n:05d}.jpg", np.array([[n % 3 + 1]], dtype=np.uint8))
    (base / "devkit").mkdir()
    savemat(base / "devkit" / "cars_train_annos.mat", {"annotations": annos})


def write_fgvc_aircraft(root):
    base = root / "fgvc-aircraft-2013b" / "data"
    rows = []
    for n in range(9):
        _image(base / "images" / f"{1000 + n}.jpg")
        rows.append(f"{1000 + n} {['Boeing 707-320', 'A300B4', 'DC-9-30'][n % 3]}")
    (base / "images_variant_trainval.txt").write_text("\n".join(rows))


def write_minc2500(root):
    base = root / "minc-2500"
    rows = []
    for c in ("brick", "carpet", "wood"):
        for i in range(3):
            _image(base / "images" / c / f"{c}_{i}.jpg")
            rows.append(f"images/{c}/{c}_{i}.jpg")
    (base / "labels").mkdir()
    (base / "labels" / "train1.txt").write_text("\n".join(rows))


WRITERS = {
    "cifar10": lambda r: write_cifar(r, "cifar10"),
    "cifar100": lambda r: write_cifar(r, "cifar100"),
    "mit67": write_mit67,
    "imagefolder": write_imagefolder,
    "cub200": write_cub200,
    "stanford_cars": write_stanford_cars,
    "fgvc_aircraft": write_fgvc_aircraft,
    "minc2500": write_minc2500,
}


@pytest.mark.parametrize(
    ("reader", "n_images"), [(cub200, 6), (stanford_cars, 9), (fgvc_aircraft, 9), (minc2500, 9)]
)
def test_fine_grained_readers(tmp_path, reader, n_images):
    WRITERS[reader.__name__](tmp_path)
    data = reader(str(tmp_path), resolution=8)
    assert len(data.files) == n_images and data.num_classes == 3
    assert np.bincount(data.labels()).tolist() == [n_images // 3] * 3
    assert data.images(np.arange(2)).shape == (2, 3, 8, 8)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataNotFound, match=f"dataset {reader.__name__}: .* not found; expected"):
        reader(str(tmp_path / "empty"))


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
@pytest.mark.parametrize("bytes_keys", [False, True])
def test_cifar_reads_the_python_batches_and_checks_md5(tmp_path, name, bytes_keys):
    write_cifar(tmp_path, name, bytes_keys=bytes_keys)
    with pytest.raises(DataNotFound, match="MD5"):
        Cifar(name, str(tmp_path), resolution=16)
    data = Cifar(name, str(tmp_path), resolution=16, verify=False)
    files = len((CIFAR10 if name == "cifar10" else CIFAR100).train_list)
    assert len(data.labels()) == 4 * files and set(data.labels()) <= {0, 1, 2}
    x = data.images(np.array([0, 3]))
    assert x.shape == (2, 3, 16, 16) and x.dtype == torch.float32


def test_image_folder_and_mit67(tmp_path):
    write_imagefolder(tmp_path / "own")
    own = image_folder(str(tmp_path / "own"), resolution=8)
    assert (
        own.classes == ["cat", "dog", "eel"]
        and own.labels().tolist() == [0] * 3 + [1] * 3 + [2] * 3
    )
    assert own.images(np.array([4])).shape == (1, 3, 8, 8)
    write_mit67(tmp_path / "mit")
    mit = mit67(str(tmp_path / "mit"), resolution=8)
    assert len(mit.files) == 6 and mit.classes == [
        "bakery",
        "bar",
        "library",
    ]  # the train list only


def test_missing_and_corrupt_data_are_named(tmp_path):
    with pytest.raises(DataNotFound, match="no data root"):
        Cifar("cifar10", None)
    with pytest.raises(
        DataNotFound, match=r"cifar-10-batches-py/data_batch_1 not found.*CIFAR page"
    ):
        Cifar("cifar10", str(tmp_path))
    with pytest.raises(DataNotFound, match=r"TrainImages\.txt not found"):
        mit67(str(tmp_path))
    write_imagefolder(tmp_path / "own")
    (tmp_path / "own" / "cat" / "0.png").write_bytes(b"not a png")
    with pytest.raises(DataNotFound, match=r"cannot read image .*cat/0.png"):
        image_folder(str(tmp_path / "own"), resolution=8).images(np.array([0]))


def test_imagenet_weights_load_from_a_local_file_only(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(WeightsNotFound, match=r"no ImageNet weights at .*resnet18-f37072fd.pth"):
        imagenet_resnet("resnet18")
    import torchvision

    reference = torchvision.models.resnet18(weights=None)
    path = tmp_path / "hub" / "checkpoints" / WEIGHT_FILES["resnet18"]
    path.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), path)
    model = imagenet_resnet("resnet18")
    assert (
        torch.equal(model.body.conv1.weight, reference.conv1.weight)
        and model.head.out_features == 1000
    )
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), path)
    with pytest.raises(WeightsNotFound, match=r"does not hold resnet18 weights: tensors .* unex"):
        imagenet_resnet("resnet18")
    # a user's own fine-tuned weights, whose head has another size: the head is ignored
    own = torchvision.models.resnet18(weights=None, num_classes=7)
    torch.save(own.state_dict(), path)
    loaded = imagenet_resnet("resnet18")
    assert torch.equal(loaded.body.layer4[1].conv2.weight, own.layer4[1].conv2.weight)
    assert loaded.head.out_features == 1000
    broken = own.state_dict()
    broken["layer1.0.conv1.weight"] = broken["layer1.0.conv1.weight"][:, :3]
    torch.save(broken, path)
    with pytest.raises(WeightsNotFound, match=r"1 of another shape \(first layer1\.0\.conv1"):
        imagenet_resnet("resnet18")
    assert imagenet_resnet("resnet34", pretrained=False).head.in_features == 512


# every dataset end to end in the whole suite; in the fast lane one folder and one pickle
# format (each reader has its own fast test above)
FAST_DATASETS = ("cifar10", "imagefolder")


@pytest.mark.parametrize(
    "name",
    [n if n in FAST_DATASETS else pytest.param(n, marks=pytest.mark.slow) for n in sorted(WRITERS)],
)
def test_cli_runs_each_dataset_with_a_resnet(tmp_path, cache_dir, name):
    root = tmp_path / "data"
    WRITERS[name](root)
    extra = ["dataset.verify=false"] if name.startswith("cifar") else []
    out = tmp_path / "run"
    data = [f"dataset={name}", f"dataset.root={root}", "dataset.resolution=16", *extra]
    small = ["task.k=2", "task.n=2", "steps=2"]
    rec = run_in_process(
        [*data, "model=resnet18", "model.pretrained=false", *small], out, cache_dir
    )
    assert rec.task.dataset == name and rec.task.C == 2 and 2 <= rec.task.N <= 4
    assert record.is_done(out)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["dataset=cifar10", "dataset.root=/nonexistent", "model=resnet18"],
            "dataset cifar10: data root /nonexistent does not exist",
        ),
        (["dataset=cifar10", "model=resnet18", "task.k=11"], "task.k=11 is invalid: must be <= 10"),
        (["dataset=mit67"], "model='small_resnet' is invalid: takes 1-channel images"),
        (
            ["model=resnet34", "model.weights=/nonexistent.pth"],
            "model='resnet34' is invalid: takes 3-channel",
        ),
    ],
)
def test_dataset_and_model_errors_are_one_line(tmp_path, cache_dir, capsys, args, expected):
    assert expected in cli_error([*args, f"cache_dir={cache_dir}"], tmp_path, capsys)
    assert not (tmp_path / "run").exists()  # found after the run's directory was made: removed


def test_task_images_are_decoded_once(tmp_path):
    from ttbench.data.cache import cached_task

    write_imagefolder(tmp_path / "own")
    data = image_folder(str(tmp_path / "own"), resolution=8)
    calls = []
    decode = data.images
    data.images = lambda positions: calls.append(len(positions)) or decode(positions)
    key = ("imagefolder", str(tmp_path / "own"), 8)
    a = cached_task(data, 2, 2, seed=1, cache_dir=tmp_path / "c", key_parts=key)
    b = cached_task(data, 2, 2, seed=1, cache_dir=tmp_path / "c", key_parts=key)
    assert calls == [4] and torch.equal(a.x, b.x) and a.classes == b.classes
    cached_task(data, 2, 2, seed=2, cache_dir=tmp_path / "c", key_parts=key)
    cached_task(data, 2, 2, seed=1, cache_dir=tmp_path / "c", key_parts=(*key[:2], 16))
    assert len(calls) == 3  # another seed or resolution is another entry
    for entry in (tmp_path / "c" / "tasks").glob("imagefolder_8px_*.pt"):
        entry.write_bytes(b"truncated")
    assert torch.equal(
        cached_task(data, 2, 2, seed=1, cache_dir=tmp_path / "c", key_parts=key).x, a.x
    )
    # an image changed under its own name: decoded again, new pixels
    changed = data.files[int(a.positions[0])]
    Image.new("RGB", (12, 12), (250, 5, 5)).save(changed)
    again = cached_task(data, 2, 2, seed=1, cache_dir=tmp_path / "c", key_parts=key)
    assert len(calls) == 5 and not torch.equal(again.x[0], a.x[0])
    assert torch.equal(again.x[1:], a.x[1:])


def test_timm_resnet_loads_named_local_weights(tmp_path):
    import timm
    from safetensors.torch import save_file

    with pytest.raises(WeightsNotFound, match=r"\(timm\): set model.weights=FILE"):
        imagenet_resnet("resnet18", source="timm")
    reference = timm.create_model("resnet18", pretrained=False)
    path = tmp_path / "resnet18.safetensors"
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(path))
    model = imagenet_resnet("resnet18", weights=str(path), source="timm")
    assert torch.equal(model.body.conv1.weight, reference.conv1.weight)
    x = torch.randn(2, 3, 32, 32)
    reference.eval()
    torch.testing.assert_close(model.head(model.body(x)), reference(x))
    path.write_bytes(b"garbage")
    with pytest.raises(WeightsNotFound, match=r"resnet18\.safetensors cannot be read"):
        imagenet_resnet("resnet18", weights=str(path), source="timm")
    text = tmp_path / "notes.pth"
    text.write_text("these are not weights")
    with pytest.raises(
        WeightsNotFound, match=r"cannot be read as a PyTorch state dict or a \.safetensors file \("
    ):
        imagenet_resnet("resnet18", weights=str(text))


@pytest.mark.parametrize(("arch", "source"), [("resnet34", "torchvision"), ("resnet18", "timm")])
def test_cli_loads_local_imagenet_weights(tmp_path, cache_dir, monkeypatch, arch, source):
    import timm
    import torchvision

    write_imagefolder(tmp_path / "own")
    if source == "timm":
        weights = tmp_path / "w.pth"
        torch.save(timm.create_model(arch, pretrained=False).state_dict(), weights)
        extra = [f"model.weights={weights}"]
    else:  # torchvision's own file name in the torch hub cache
        weights = tmp_path / "torch" / "hub" / "checkpoints" / WEIGHT_FILES[arch]
        weights.parent.mkdir(parents=True)
        torch.save(getattr(torchvision.models, arch)(weights=None).state_dict(), weights)
        extra = []
        monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    out = tmp_path / "run"
    data = ["dataset=imagefolder", f"dataset.root={tmp_path / 'own'}", "dataset.resolution=16"]
    model = [f"model={arch}", f"model.source={source}", *extra]
    rec = run_in_process([*data, *model, "task.k=2", "task.n=2", "steps=2"], out, cache_dir)
    body = imagenet_resnet(arch, pretrained=False).body
    assert sum(p.numel() for p in body.parameters()) + 2 * (512 + 1) == rec.task.D
