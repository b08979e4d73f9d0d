"""Cost of the SGD predictors: R paths of T steps on a synthetic Theta of size N*C.

    python -m ttbench.bench.sgd [--n 750] [--c 5] [--steps 150] [--paths 32] [--batch 25]

Theta is a random PSD matrix with the scale of a real one; only the cost is measured.
"""

from __future__ import annotations

import argparse

import torch

from ttbench import cli, stages
from ttbench.core import sgd


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=750)
    p.add_argument("--c", type=int, default=5)
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--paths", type=int, default=32)
    p.add_argument("--batch", type=int, default=25)
    a = p.parse_args(argv)
    g = torch.Generator().manual_seed(0)
    rows = a.n * a.c
    feats = torch.randn(rows, 2 * rows, generator=g, dtype=torch.float64)
    theta = feats @ feats.T / (2 * rows)
    f0 = 0.1 * torch.randn(a.n, a.c, generator=g, dtype=torch.float64)
    y = torch.arange(a.n) % a.c
    lr = 0.5 * a.n / torch.linalg.eigvalsh(theta)[-1].item()
    kw = {"lr": lr, "momentum": 0.9, "loss": "ce"}
    print(
        f"N*C = {a.n} x {a.c} = {rows}, T = {a.steps}, R = {a.paths}, B = {a.batch}, "
        f"{torch.get_num_threads()} threads"
    )

    def timed(label, fn):
        print(f"{label:45s} {stages.timed(fn, theta.device)[1]:7.2f} s")

    batches = sgd.batch_paths(a.n, a.batch, a.steps, "with_replacement", a.paths, seed=0)
    timed("exact_sgd", lambda: sgd.exact_sgd(theta, f0, y, batches=batches, **kw))
    common = {
        "steps": a.steps,
        "batch_size": a.batch,
        "scheme": "with_replacement",
        "paths": a.paths,
        "seed": 0,
        **kw,
    }
    timed("sde, noise=full", lambda: sgd.sde(theta, f0, y, noise="full", **common))
    holder = {}
    timed(
        "square root of the diagonal-noise covariance",
        lambda: holder.setdefault("L", sgd.noise_factor(theta)),
    )
    timed(
        "sde, noise=diagonal",
        lambda: sgd.sde(theta, f0, y, noise="diagonal", noise_sqrt=holder["L"], **common),
    )


if __name__ == "__main__":
    cli.command(main)
