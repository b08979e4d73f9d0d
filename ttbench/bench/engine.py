"""The Theta engine against a plain torch.func baseline, on three models.

    python -m ttbench.bench.engine [--only mlp,cnn,resnet] [--n N] [--no-baseline]

* mlp: 784-512-512-10 on N = 128 random inputs (full C x C blocks);
* cnn: a small conv net (3 conv + BatchNorm layers, 32x32x3 inputs, N = 64);
* resnet: the default small ResNet (width 48, 8x8 inputs, N = 250, C = 5).
Prints the wall-clock and the peak resident memory each build added, and the relative
Frobenius difference between the two Thetas.
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from ttbench import cli
from ttbench.bench.baseline import func_theta
from ttbench.core.linearize import linearize
from ttbench.models.small_resnet import small_resnet
from ttbench.stages import Stages


def models(n_override: int | None) -> dict[str, tuple[nn.Module, torch.Tensor]]:
    """The three benchmark models (eval mode) and their inputs."""
    torch.manual_seed(0)
    mlp = nn.Sequential(
        nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10)
    )
    cnn = nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.BatchNorm2d(64),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(64, 64, 3, padding=1),
        nn.BatchNorm2d(64),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, 10),
    )
    resnet = small_resnet(1, 48, 5)
    sizes = {"mlp": (128, (784,)), "cnn": (64, (3, 32, 32)), "resnet": (250, (1, 8, 8))}
    out = {}
    for name, model in (("mlp", mlp), ("cnn", cnn), ("resnet", resnet)):
        n, shape = sizes[name]
        out[name] = (model.eval(), torch.randn(n_override or n, *shape))
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", default="mlp,cnn,resnet")
    p.add_argument("--n", type=int, default=None, help="override every model's N")
    p.add_argument("--no-baseline", action="store_true")
    a = p.parse_args(argv)
    print(f"{torch.get_num_threads()} threads; float32")
    print(
        f"{'model':8s} {'N':>5s} {'C':>3s} {'D':>10s} {'engine s':>9s} {'MB':>6s} "
        f"{'func s':>8s} {'MB':>6s} {'speed-up':>8s} {'rel diff':>9s}"
    )
    for name, (model, x) in models(a.n).items():
        if name not in a.only.split(","):
            continue
        stages = Stages(torch.device("cpu"))
        linearize(model, x[:2])  # warm-up: one-time initialisation is not the engine's cost
        if not a.no_baseline:
            func_theta(model, x[:2], chunk=16)
        with stages("engine"):
            theta = linearize(model, x).theta
        line = (
            f"{name:8s} {len(x):5d} {theta.shape[0] // len(x):3d} "
            f"{sum(q.numel() for q in model.parameters()):10,d} "
            f"{stages.stats['engine']['wall_s']:9.3f} {stages.added_mb('engine'):6.0f}"
        )
        if not a.no_baseline:
            with stages("func"):
                base = func_theta(model, x, chunk=16)
            rel = ((theta - base).norm() / base.norm()).item()
            speed = stages.stats["func"]["wall_s"] / stages.stats["engine"]["wall_s"]
            line += (
                f" {stages.stats['func']['wall_s']:8.3f} {stages.added_mb('func'):6.0f} "
                f"{speed:7.1f}x {rel:9.1e}"
            )
        print(line, flush=True)


if __name__ == "__main__":
    cli.command(main)
