"""The "your own weights" case of the fidelity evaluation: an ImageFolder set ttbench never saw,
and a torchvision ResNet-18 that its user pretrained on another draw of the same images.

    python experiments/own_weights.py OUT          # data, weights, and the sweep's command

writes, from a fixed seed:
* OUT/pretrain/<class>/<i>.png: 6 classes of procedurally drawn shapes (circle, square,
  triangle, cross, ring, bar: random place, size, turn and colours on a noisy background),
  200 images each, 32 x 32, the user's own pretraining data;
* OUT/tasks/<class>/<i>.png: another draw of the same 6 classes (60 each), the fine-tuning set;
* OUT/resnet18_own.pth: torchvision's resnet18 (6-way fc) trained on OUT/pretrain at 16 px
  (Adam, one-cycle, 30 epochs, BatchNorm statistics recomputed at the end), a plain state dict.
  ttbench drops its 6-way head (a fresh k-way head replaces it) and loads the body.

and prints its held-out accuracy and the sweep, tagged preset=own_weights:

    python -m ttbench.run -m dataset=imagefolder dataset.root=OUT/tasks dataset.resolution=16 \\
        model=resnet18 model.weights=OUT/resnet18_own.pth predictor=all preset=own_weights \\
        task.n=30 'seed=range(500,506)' lr=0.003,0.01 momentum=0,0.9
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image, ImageDraw, ImageFilter
from torch import nn

from ttbench.data.images import preprocess
from ttbench.models.pretrain import precise_bn

CLASSES = ("bar", "circle", "cross", "ring", "square", "triangle")
SIZE = 32


def _polygon(cx: float, cy: float, r: float, sides: int, turn: float) -> list[tuple]:
    angles = [turn + 2 * math.pi * i / sides for i in range(sides)]
    return [(cx + r * math.cos(a), cy + r * math.sin(a)) for a in angles]


def draw(shape: str, rng: np.random.Generator) -> Image.Image:
    """One image of a shape at a random place, size, turn and colour on a noisy background."""
    back = rng.integers(0, 256, 3)
    noise = rng.normal(0, 24, (SIZE, SIZE, 3)) + back
    img = Image.fromarray(np.clip(noise, 0, 255).astype(np.uint8)).filter(ImageFilter.BLUR)
    pen = ImageDraw.Draw(img)
    fill = tuple(int(v) for v in (back + rng.integers(90, 166, 3)) % 256)
    cx, cy = rng.uniform(0.35, 0.65, 2) * SIZE
    r, turn = rng.uniform(0.18, 0.32) * SIZE, rng.uniform(0, 2 * math.pi)
    if shape == "circle":
        pen.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "ring":
        pen.ellipse([cx - r, cy - r, cx + r, cy + r], outline=fill, width=max(2, round(r / 3)))
    elif shape == "square":
        pen.polygon(_polygon(cx, cy, r * 1.2, 4, turn), fill=fill)
    elif shape == "triangle":
        pen.polygon(_polygon(cx, cy, r * 1.3, 3, turn), fill=fill)
    else:  # bar and cross: one or two thick strokes through the centre
        for extra in (0.0, math.pi / 2) if shape == "cross" else (0.0,):
            dx, dy = r * 1.3 * math.cos(turn + extra), r * 1.3 * math.sin(turn + extra)
            pen.line([cx - dx, cy - dy, cx + dx, cy + dy], fill=fill, width=max(2, round(r / 2.5)))
    return img


def write_folder(root: Path, per_class: int, rng: np.random.Generator) -> None:
    for shape in CLASSES:
        (root / shape).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            draw(shape, rng).save(root / shape / f"{i:04d}.png")


def load(root: Path, resolution: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The folder as tensors, preprocessed as ttbench's ImageFolder reader does."""
    t = preprocess(resolution)
    xs, ys = [], []
    for label, shape in enumerate(CLASSES):
        for path in sorted((root / shape).glob("*.png")):
            with Image.open(path) as img:
                xs.append(t(img.convert("RGB")))
            ys.append(label)
    return torch.stack(xs), torch.tensor(ys)


def pretrain(x: torch.Tensor, y: torch.Tensor, epochs: int, seed: int) -> nn.Module:
    """What a user would do: torchvision's resnet18 with a 6-way fc, Adam with one cycle."""
    torch.manual_seed(seed)
    model = torchvision.models.resnet18(num_classes=len(CLASSES))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    batch = 64
    steps = epochs * -(-len(y) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(y), generator=gen)
        for start in range(0, len(y), batch):
            idx = order[start : start + batch]
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
            sched.step()
    precise_bn(model, x, batch)
    return model.eval()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--resolution", type=int, default=16)
    a = p.parse_args(argv)
    rng = np.random.default_rng(2026)
    write_folder(a.out / "pretrain", 200, rng)
    write_folder(a.out / "tasks", 60, rng)
    x, y = load(a.out / "pretrain", a.resolution)
    model = pretrain(x, y, a.epochs, seed=0)
    torch.save(model.state_dict(), a.out / "resnet18_own.pth")
    xt, yt = load(a.out / "tasks", a.resolution)
    with torch.no_grad():
        accuracy = float((model(xt).argmax(1) == yt).float().mean())
    print(f"resnet18 trained on {len(y)} images: {accuracy:.1%} on the tasks' {len(yt)}")
    print(
        "python -m ttbench.run -m dataset=imagefolder "
        f"dataset.root={a.out / 'tasks'} dataset.resolution={a.resolution} model=resnet18 "
        f"model.weights={a.out / 'resnet18_own.pth'} predictor=all preset=own_weights "
        "task.n=30 'seed=range(500,506)' lr=0.003,0.01 momentum=0,0.9"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
