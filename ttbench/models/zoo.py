"""ImageNet ResNets from torchvision, their weights read from a local file, never fetched.

The default file is torchvision's own name for the weights in the torch hub cache
($TORCH_HOME/hub/checkpoints/, as `torch.hub.get_dir()` gives), so a machine that once
downloaded them with torchvision needs nothing else; `model.weights=<file>` names another.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torchvision
from torch import nn

from ttbench.models.classifier import Classifier

WEIGHT_FILES = {"resnet18": "resnet18-f37072fd.pth", "resnet34": "resnet34-b627a593.pth"}


class WeightsNotFound(RuntimeError):
    """Missing or mismatching weights; the message is one line for the user."""


def default_weights(arch: str) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / WEIGHT_FILES[arch]


def imagenet_resnet(arch: str, pretrained: bool = True, weights: str | None = None) -> Classifier:
    """The ResNet as body (fc removed) and its 1000-way fc as the head to be replaced."""
    if arch not in WEIGHT_FILES:
        raise ValueError(f"arch must be one of {sorted(WEIGHT_FILES)}, got {arch!r}")
    model = getattr(torchvision.models, arch)(weights=None)
    if pretrained:
        path = Path(weights).expanduser() if weights else default_weights(arch)
        if not path.is_file():
            raise WeightsNotFound(
                f"model {arch}: no ImageNet weights at {path}; put torchvision's "
                f"{WEIGHT_FILES[arch]} there (or set model.weights=FILE or model.pretrained=false)"
            )
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            model.load_state_dict(state)
        except (RuntimeError, KeyError, TypeError, ValueError) as e:
            first = str(e).strip().splitlines()[0]
            raise WeightsNotFound(
                f"model {arch}: {path} does not hold {arch} weights ({first})"
            ) from e
    head = model.fc
    model.fc = nn.Identity()
    return Classifier(model, head).eval()
