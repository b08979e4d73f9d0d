"""Pretraining of the default network on a dataset's source part, and its validated cache.

A checkpoint holds a format version, the architecture and pretraining settings it was built
with, and the state dict. Loading checks all of them against what is asked for; a corrupt,
stale or mismatching file is rebuilt (and says why), never silently used.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from ttbench.files import atomic_save, waiting
from ttbench.models.classifier import Classifier
from ttbench.models.small_resnet import small_resnet
from ttbench.models.zoo import TIMM_MODELS, split_head, timm_classifier

log = logging.getLogger(__name__)
FORMAT_VERSION = 1


@dataclass(frozen=True)
class PretrainSpec:
    """Everything that determines a pretrained checkpoint."""

    dataset: str
    in_channels: int
    width: int
    num_classes: int
    epochs: int
    lr: float
    batch_size: int
    seed: int
    conv_scale: float = 1.0  # function-preserving rescale applied after pretraining
    arch: str = "small_resnet"  # or a torchvision ResNet (resnet18, resnet34), or TIMM_MODELS
    resolution: int | None = None  # the source images' size (None: the dataset's own)
    patch_size: int | None = None  # a ViT's
    source_fraction: float = 0.5  # the source part of the dataset (its target part is tasks)
    split_seed: int = 0
    augment: bool = False  # every epoch sees a random affine copy of each source image
    precise_bn: bool = False  # BatchNorm statistics recomputed over the source after training
    schedule: str = "constant"  # the learning rate: constant | onecycle (up to lr, then down)

    def build(self) -> Classifier:
        if self.arch == "small_resnet":
            return small_resnet(self.in_channels, self.width, self.num_classes)
        if self.arch in TIMM_MODELS:
            return timm_classifier(self.arch, self.num_classes, self.resolution, self.patch_size)
        import torchvision  # ~1 s to import: only for its models

        return split_head(getattr(torchvision.models, self.arch)(num_classes=self.num_classes))

    def identity(self) -> dict:
        """The settings, less those at the defaults they had before they existed (so older
        checkpoints of the default model keep their name)."""
        later = {
            "arch": "small_resnet",
            "resolution": None,
            "source_fraction": 0.5,
            "split_seed": 0,
            "patch_size": None,
            "augment": False,
            "precise_bn": False,
            "schedule": "constant",
        }
        return {k: v for k, v in asdict(self).items() if later.get(k, object()) != v}

    def filename(self) -> str:
        digest = hashlib.sha1(json.dumps(self.identity(), sort_keys=True).encode()).hexdigest()
        name = f"small_resnet_w{self.width}" if self.arch == "small_resnet" else self.arch
        return f"{name}_{self.dataset}_{digest[:10]}.pt"


def pretrain(
    spec: PretrainSpec, x: torch.Tensor, y: torch.Tensor, progress: bool = False
) -> Classifier:
    """Train from scratch on (x, y) with Adam, seeded, BatchNorm in train mode."""
    gen = torch.Generator().manual_seed(spec.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)  # weight init draws from the global generator
        model = spec.build()
    opt = torch.optim.Adam(model.parameters(), lr=spec.lr)
    batches = spec.epochs * -(-len(y) // spec.batch_size)
    sched = (
        torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=spec.lr, total_steps=batches)
        if spec.schedule == "onecycle"
        else None
    )
    model.train()
    for epoch in range(spec.epochs):
        order = torch.randperm(len(y), generator=gen)
        total = 0.0
        for start in range(0, len(y), spec.batch_size):
            idx = order[start : start + spec.batch_size]
            opt.zero_grad()
            batch = augment(x[idx], gen) if spec.augment else x[idx]
            batch_loss = nn.functional.cross_entropy(model(batch), y[idx])
            batch_loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
            total += batch_loss.item() * len(idx)
        if progress:
            log.info("pretrain epoch %d/%d: loss %.4f", epoch + 1, spec.epochs, total / len(y))
    if spec.precise_bn:
        precise_bn(model, x, spec.batch_size)
    model.eval()
    if spec.conv_scale != 1.0:
        rescale_convs(model, spec.conv_scale)
    return model


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """A random affine copy of each image (rotation within 15 degrees, scale 0.85-1.15, shift
    within 12% of the size, a shear within 0.15), drawn from `gen`: many more distinct source
    images than the few hundred a small source set has, so the features generalise."""
    n = len(x)

    def uniform(low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(n, generator=gen)

    angle = uniform(-15, 15) * torch.pi / 180
    scale, shear = uniform(0.85, 1.15), uniform(-0.15, 0.15)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [
            torch.stack([cos, -sin + shear, uniform(-0.24, 0.24)], 1),
            torch.stack([sin, cos, uniform(-0.24, 0.24)], 1),
        ],
        1,
    ).to(x.dtype)
    grid = nn.functional.affine_grid(theta, list(x.shape), align_corners=False)
    fill = x.amin(dim=(1, 2, 3), keepdim=True)  # the background of each image
    out = nn.functional.grid_sample(x - fill, grid, align_corners=False, padding_mode="zeros")
    return out + fill


def precise_bn(model: nn.Module, x: torch.Tensor, batch_size: int) -> None:
    """Every BatchNorm's running statistics recomputed as the plain average over the source
    images with the final weights (Wu & Johnson 2021, "precise BN"). The exponential average
    kept during training lags the weights: on the digits' 898 images ResNet-18's eval-mode
    accuracy was 75% with it and 87% with the recomputed statistics (held-out digits)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the batches below
    model.train()
    with torch.no_grad():
        for start in range(0, len(x), batch_size):
            model(x[start : start + batch_size])
    for m in norms:
        m.momentum = 0.1


def rescale_convs(model: nn.Module, scale: float) -> None:
    """Multiply every convolution followed by a BatchNorm by `scale`, and that BatchNorm's running
    mean by scale and (running_var + eps) by scale^2: the function in eval mode is unchanged, but
    the convolutions' share of Theta shrinks by scale^2 and GD moves them less (a lazier model)."""
    modules = list(model.modules())
    with torch.no_grad():
        for conv, bn in itertools.pairwise(modules):
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                conv.weight.mul_(scale)
                bn.running_mean.mul_(scale)
                bn.running_var.copy_(scale**2 * (bn.running_var + bn.eps) - bn.eps)


class CheckpointError(RuntimeError):
    pass


def load_checkpoint(path: Path, spec: PretrainSpec) -> Classifier:
    """Load and validate a cached checkpoint; CheckpointError says what is wrong."""
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # any unreadable file is corrupt, whatever torch raises
        raise CheckpointError(f"cannot be read ({type(e).__name__}: {e})") from e
    if not isinstance(blob, dict) or blob.get("format_version") != FORMAT_VERSION:
        found = blob.get("format_version") if isinstance(blob, dict) else type(blob).__name__
        raise CheckpointError(f"format version {found!r}, expected {FORMAT_VERSION}")
    if blob.get("spec") != spec.identity():
        raise CheckpointError(f"built for {blob.get('spec')}, expected {spec.identity()}")
    model = spec.build()
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    state = blob.get("state_dict", {})
    found = {k: tuple(v.shape) for k, v in state.items()}
    if found != expected:
        missing = sorted(set(expected) ^ set(found)) or [
            k for k in expected if expected[k] != found[k]
        ]
        raise CheckpointError(f"state dict does not match the architecture (first: {missing[0]})")
    model.load_state_dict(state)
    return model.eval()


def save_checkpoint(path: Path, spec: PretrainSpec, model: Classifier) -> None:
    """Write atomically: a killed job never leaves a half-written checkpoint behind."""
    blob = {
        "format_version": FORMAT_VERSION,
        "spec": spec.identity(),
        "state_dict": model.state_dict(),
    }
    atomic_save(path, blob)


def load_or_pretrain(spec: PretrainSpec, cache_dir: Path, source) -> Classifier:
    """The pretrained model from the cache, pretraining it first when missing or invalid.
    `source` is a callable returning the source images and labels."""
    path = Path(cache_dir) / spec.filename()

    def note() -> None:
        log.info("another process is pretraining %s: waiting for it", path.name)

    # one pretraining per checkpoint: a second worker that needs it waits, then loads it
    with waiting(path.with_name(f".{path.name}.lock"), note):
        if path.exists():
            try:
                return load_checkpoint(path, spec)
            except CheckpointError as e:
                log.warning("cached checkpoint %s %s; pretraining it again", path, e)
        else:
            log.info(
                "no pretrained checkpoint at %s: pretraining on %s (runs once)", path, spec.dataset
            )
        x, y = source()
        model = pretrain(spec, x, y, progress=True)
        save_checkpoint(path, spec, model)
        log.info("saved pretrained checkpoint %s", path)
        return model
