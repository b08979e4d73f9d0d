"""ImageNet ResNets from torchvision, their weights read from a local file, never fetched.

The default file is torchvision's own name for the weights in the torch hub cache
($TORCH_HOME/hub/checkpoints/, as `torch.hub.get_dir()` gives), so a machine that once
downloaded them with torchvision needs nothing else; `model.weights=<file>` names another.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

from ttbench.errors import WeightsNotFound
from ttbench.models.classifier import Classifier

WEIGHT_FILES = {"resnet18": "resnet18-f37072fd.pth", "resnet34": "resnet34-b627a593.pth"}
TIMM_MODELS = {"vit_tiny": "vit_tiny_patch16_224", "convnext_atto": "convnext_atto"}
TTBENCH = "ttbench"  # model.pretrained=ttbench: weights ttbench pretrains on a source task


def default_weights(arch: str) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / WEIGHT_FILES[arch]


def _reason(e: Exception) -> str:
    """A loader's error in a few words: its type and the first line of its message (torch
    says only `KeyError(101)` of a text file)."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _load_state(path: Path) -> dict:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    return torch.load(path, map_location="cpu", weights_only=True)


def imagenet_resnet(
    arch: str, pretrained: bool = True, weights: str | None = None, source: str = "torchvision"
) -> Classifier:
    """The ResNet as body (fc removed) and its 1000-way fc as the head to be replaced.
    source "timm" builds timm's model, whose weights must be named by `weights` (.safetensors
    or a state dict), since timm keeps them in the Hugging Face cache under varying names."""
    if arch not in WEIGHT_FILES:
        raise ValueError(f"arch must be one of {sorted(WEIGHT_FILES)}, got {arch!r}")
    if source == "timm":
        import timm

        model = timm.create_model(arch, pretrained=False)
    else:
        import torchvision  # ~1 s to import: only for its models

        model = getattr(torchvision.models, arch)(weights=None)
    if pretrained:
        if source == "timm" and not weights:
            raise WeightsNotFound(
                f"model {arch} (timm): set model.weights=FILE, timm's {arch} ImageNet weights "
                "(.safetensors or .pth), or model.pretrained=false"
            )
        path = Path(weights).expanduser() if weights else default_weights(arch)
        if not path.is_file():
            raise WeightsNotFound(
                f"model {arch}: no ImageNet weights at {path}; put torchvision's "
                f"{WEIGHT_FILES[arch]} there (or set model.weights=FILE or model.pretrained=false)"
            )
        try:
            state = _load_state(path)
        except Exception as e:  # any unreadable file, whatever the loader raises
            raise WeightsNotFound(
                f"model {arch}: {path} cannot be read as a PyTorch state dict or a "
                f".safetensors file ({_reason(e)})"
            ) from e
        _load_body(model, state, arch, path)
    return split_head(model).eval()


def _load_body(model: nn.Module, state: dict, arch: str, path: Path) -> None:
    """Load the weights, naming the tensors that are missing, unexpected or of another shape;
    a head (fc) of another size is ignored, since a fresh k-way head replaces it anyway."""
    if not isinstance(state, dict):
        raise WeightsNotFound(f"model {arch}: {path} does not hold a state dict")
    want = {k: v.shape for k, v in model.state_dict().items() if not k.startswith("fc.")}
    got = {k: getattr(v, "shape", None) for k, v in state.items() if not k.startswith("fc.")}
    missing = sorted(set(want) - set(got))
    extra = sorted(set(got) - set(want))
    shapes = sorted(k for k in set(want) & set(got) if tuple(want[k]) != tuple(got[k] or ()))
    if missing or extra or shapes:
        what = [
            f"{len(missing)} missing (first {missing[0]})" if missing else "",
            f"{len(extra)} unexpected (first {extra[0]})" if extra else "",
            f"{len(shapes)} of another shape (first {shapes[0]}: {tuple(got[shapes[0]])}, "
            f"{arch} has {tuple(want[shapes[0]])})"
            if shapes
            else "",
        ]
        raise WeightsNotFound(
            f"model {arch}: {path} does not hold {arch} weights: tensors "
            + "; ".join(w for w in what if w)
            + " (the fc head is ignored: it is replaced)"
        )
    fc = {k: v for k, v in state.items() if k.startswith("fc.")}
    same = all(tuple(v.shape) == tuple(model.state_dict()[k].shape) for k, v in fc.items())
    keep = {k: v for k, v in state.items() if not k.startswith("fc.") or (same and fc)}
    model.load_state_dict(keep, strict=False)


def timm_classifier(
    arch: str,
    num_classes: int,
    img_size: int | None = None,
    patch_size: int | None = None,
    weights: str | None = None,
) -> Classifier:
    """timm's ViT or ConvNeXt (TIMM_MODELS) as body (its classifier reset: the body returns
    pooled features) and its classifier as the head. A ViT takes `img_size` and `patch_size`.
    Random weights, or `weights`: a local file of timm's weights, passed through timm's own
    checkpoint filter (which resamples a ViT's position embedding to img_size)."""
    import timm

    kwargs = {"num_classes": num_classes}
    if arch == "vit_tiny":
        kwargs |= {k: v for k, v in (("img_size", img_size), ("patch_size", patch_size)) if v}
    model = timm.create_model(TIMM_MODELS[arch], **kwargs)
    if weights:
        _load_timm(model, arch, Path(weights).expanduser())
    head = model.get_classifier()
    model.reset_classifier(0)
    return Classifier(model, head).eval()


def _load_timm(model: nn.Module, arch: str, path: Path) -> None:
    """Load timm weights, a classifier of another size left out; WeightsNotFound names what
    is missing, unexpected or of another shape."""
    if not path.is_file():
        raise WeightsNotFound(f"model {arch}: no weights at {path}")
    try:
        state = _load_state(path)
        if not isinstance(state, dict):
            raise TypeError("not a state dict")
        filter_fn = getattr(sys.modules[type(model).__module__], "checkpoint_filter_fn", None)
        if filter_fn is not None:
            state = filter_fn(state, model)
        own = model.state_dict()
        head = {id(p) for p in model.get_classifier().parameters()}
        classifier = {k for k, p in model.named_parameters() if id(p) in head}
        state = {k: v for k, v in state.items() if k not in classifier or v.shape == own[k].shape}
        result = model.load_state_dict(state, strict=False)
    except Exception as e:  # any unreadable or mismatching file, whatever raises
        raise WeightsNotFound(f"model {arch}: {path} cannot be loaded ({_reason(e)})") from e
    missing = [k for k in result.missing_keys if k not in classifier]
    if missing or result.unexpected_keys:
        raise WeightsNotFound(
            f"model {arch}: {path} cannot be loaded (not {arch} weights: {len(missing)} tensors "
            f"missing, {len(result.unexpected_keys)} unexpected)"
        )


def custom_classifier(target: str, kwargs: dict | None = None) -> Classifier:
    """A user's network (model=custom): `target` called as Hydra's instantiate does, its last
    nn.Linear (in module order) taken as the head, the rest as the body."""
    from hydra.utils import instantiate

    net = instantiate({"_target_": target, **(kwargs or {})})
    if not isinstance(net, nn.Module):
        raise WeightsNotFound(f"model {target} returned a {type(net).__name__}, not a Module")
    linears = [n for n, m in net.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise WeightsNotFound(f"model {target}: no nn.Linear to take as its head")
    owner, _, attr = linears[-1].rpartition(".")
    parent = net.get_submodule(owner)
    head = getattr(parent, attr)
    setattr(parent, attr, nn.Identity())
    return Classifier(net, head)


def split_head(resnet: nn.Module) -> Classifier:
    """A ResNet as body (its fc removed) and its fc as the head."""
    head = resnet.fc
    resnet.fc = nn.Identity()
    return Classifier(resnet, head)
