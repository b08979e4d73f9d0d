"""Cost of prediction against fine-tuning on the default task, and the Theta engine against a
plain torch.func baseline.

    python -m ttbench.bench.theta [config overrides...] [--no-baseline] [--baseline-chunk 10]

Overrides are those of `python -m ttbench.run` (e.g. `task.n=20 steps=50`). Prints wall-clock,
peak resident memory and multiply-adds per stage (torch.utils.flop_counter) with the rate they
ran at against this machine's float32 matrix-multiply rate, the fine-tuning / prediction ratio,
and the relative difference between the engine's Theta and the baseline's.
"""

from __future__ import annotations

import argparse
import logging

import torch

from ttbench import build, cli
from ttbench.bench.baseline import func_theta
from ttbench.bench.counting import CountingStages, gemm_rate
from ttbench.config import compose
from ttbench.core.jacobian import jacobian_factors
from ttbench.core.linearize import gram
from ttbench.predictors import predict
from ttbench.train import finetune_run
from ttbench.validate import validate


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--no-baseline", action="store_true", help="skip the torch.func baseline")
    parser.add_argument("--baseline-chunk", type=int, default=10)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    spec = validate(compose(args.overrides))
    s = build.setup(spec)
    x, y = s.x, s.y
    model = s.model()
    n_params = sum(p.numel() for p in model.parameters())
    print(
        f"task N={s.task.n_samples} C={s.task.n_classes} D={n_params:,}; device {s.device}; "
        f"{torch.get_num_threads()} threads"
    )
    rate = gemm_rate(s.device)
    print(f"float32 GEMM rate {rate / 1e9:.0f} GMAC/s")
    stages = CountingStages(s.device)
    thetas = {}
    for mode, route in [("exact", "auto"), ("exact", "materialised"), ("trace", "auto")]:
        label = f"{mode}/{route}"
        with stages(f"jacobian [{label}]"):
            factors = jacobian_factors(model, x)
        with stages(f"theta [{label}]"):
            thetas[label] = gram(factors, mode, route, spec.theta.block)
        f0 = factors.f0
    if not args.no_baseline:
        with stages("theta [torch.func vmap(jacrev) + J J^T]"):
            baseline = func_theta(model, x, args.baseline_chunk)
    kw = spec.train.dynamics
    methods = ["ode", "discrete"] + (["closed_form"] if spec.train.loss == "mse" else [])
    for method in methods:
        with stages(f"solve [{method}]"):
            predict(method, thetas["exact/auto"], f0, y, **kw)
    with stages("fine-tune"):
        finetune_run(spec, s.model(), x, y)

    s = stages.stats
    print(
        f"\n{'stage':50s} {'wall s':>8s} {'peak RSS MB':>12s} {'added MB':>9s} {'GMAC':>8s} "
        f"{'of GEMM':>8s}"
    )
    for name, st in s.items():
        added = stages.added_mb(name)
        print(
            f"{name:50s} {st['wall_s']:8.3f} {st['peak_rss_mb']:12.0f} {added:9.0f} "
            f"{stages.macs[name] / 1e9:8.3g} {stages.rate(name, rate):8.0%}"
        )
    finetune_s = s["fine-tune"]["wall_s"]
    print()
    for label in thetas:
        build_s = s[f"jacobian [{label}]"]["wall_s"] + s[f"theta [{label}]"]["wall_s"]
        for method in methods:
            total = build_s + s[f"solve [{method}]"]["wall_s"]
            print(
                f"fine-tune / predict ({label:18s} + {method:11s}): {finetune_s / total:6.1f}x"
                f"  ({total:.2f} s)"
            )
    if not args.no_baseline:
        base_s = s["theta [torch.func vmap(jacrev) + J J^T]"]["wall_s"]
        ours = s["jacobian [exact/auto]"]["wall_s"] + s["theta [exact/auto]"]["wall_s"]
        rel = ((thetas["exact/auto"] - baseline).norm() / baseline.norm()).item()
        print(
            f"\nexact Theta: engine {ours:.2f} s vs torch.func {base_s:.2f} s: "
            f"{base_s / ours:.1f}x faster; relative Frobenius difference {rel:.1e}"
        )


if __name__ == "__main__":
    cli.command(main)
