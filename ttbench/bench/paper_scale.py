"""Cost of prediction against fine-tuning at the paper's scale: a torchvision ResNet-18,
synthetic images, GD and SGD, every way to build Theta.

    python -m ttbench.bench.paper_scale [--size PX] [--per-class N] [--classes 5] [--steps 150]
        [--batch 25] [--loss ce] [--weights random|ttbench] [--memory-gb GB] [--csv DIR]

Defaults: the paper's setting (224 px, 5 x 150 images, T = 150) on CUDA, and on CPU a reduced
one (64 px, 5 x 20 images) that runs in about 10 minutes on 2 cores. The images are class
prototypes (random 8 x 8 patterns, upsampled) plus noise; the weights are random (BatchNorm in
eval mode), or with --weights ttbench the ResNet-18 ttbench pretrains on the digits' source
half (model=resnet18_digits). The learning rate is set from the sharpness at w0 (lr lambda_max
= 1, half the stability limit) unless --lr is given.

For fine-tuning and for each prediction mode it prints the wall-clock, the fine-tuning /
prediction ratio (measured in this run, same device), the multiply-adds counted by
torch.utils.flop_counter (convolutions, matrix products, einsums; not index_add, whose cost is
memory traffic), the rate they ran at against this machine's float32 matrix-multiply rate (for
each stage of a prediction too: jacobian, theta, noise, solve), the peak host memory the stage
added and the peak GPU memory, and each mode's loss T_eps: the largest difference in steps from
the exact mode's over the eps grid, and the share within 13% of the real fine-tuning's. SGD
fine-tuning is timed twice: with the whole-task loss recorded every 5 steps (for its T_eps) and
as bare optimisation steps, the cost a user pays; the ratios use the bare steps.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.nn import functional as F

from ttbench import build, cli
from ttbench.bench.counting import CountingStages, gemm_rate
from ttbench.config import compose
from ttbench.core.curves import DEFAULT_EPS, Curves
from ttbench.core.dynamics import sharpness
from ttbench.core.linearize import linearize
from ttbench.points import GD_TOLERANCE
from ttbench.prediction import at_w0
from ttbench.train import finetune_run
from ttbench.validate import validate

GD_MODES = {
    "exact": ["theta.mode=exact"],
    "hybrid": ["theta.mode=hybrid"],
    "trace": ["theta.mode=trace"],
    "trace, 1 output": ["theta.mode=trace", "theta.outputs=1"],
    "projected": ["theta.mode=projected"],
    "projected 1024": ["theta.mode=projected", "theta.dim=1024"],
    "projected 1024, 1 output": ["theta.mode=projected", "theta.dim=1024", "theta.outputs=1"],
}
TRACE_1 = ["theta.mode=trace", "theta.outputs=1"]
SGD_MODES = {
    "exact, diagonal noise": ["theta.mode=exact", "stochastic.noise=diagonal"],
    "hybrid, diagonal noise": ["theta.mode=hybrid", "stochastic.noise=diagonal"],
    "trace 1 output, full noise": [*TRACE_1, "stochastic.noise=full"],
    "trace 1 output, diagonal": [*TRACE_1, "stochastic.noise=diagonal"],
    "projected 1024 1 output, diagonal": [
        "theta.mode=projected",
        "theta.dim=1024",
        "theta.outputs=1",
        "stochastic.noise=diagonal",
    ],
}


def images(classes: int, per_class: int, size: int, seed: int, device: torch.device):
    """Class prototypes (random 8 x 8 patterns, upsampled to size) plus noise; labels."""
    g = torch.Generator().manual_seed(seed)
    protos = F.interpolate(torch.randn(classes, 3, 8, 8, generator=g), size, mode="bilinear")
    y = torch.arange(classes).repeat_interleave(per_class)
    x = protos[y] + 0.7 * torch.randn(len(y), 3, size, size, generator=g)
    return x.to(device), y.to(device)


class Bench:
    """Runs and counts the stages: wall-clock, memory, multiply-adds."""

    def __init__(self, device: torch.device, rate: float) -> None:
        self.stages, self.rate, self.rows = CountingStages(device), rate, []

    def run(self, part: str, name: str, fn, inner: CountingStages | None = None):
        """fn() as one stage; `inner`, the stages that fn itself records (they reset the host
        peak, so the stage's peak is the largest of theirs and its own; their multiply-adds
        are printed per inner stage)."""
        key = f"{part}/{name}"
        with self.stages(key):
            out = fn()
        st = self.stages.stats[key]
        inner_stats = inner.stats.values() if inner else []
        peaks = [st["peak_rss_mb"], *(s["peak_rss_mb"] for s in inner_stats)]
        macs = self.stages.macs[key]
        row = {
            "part": part,
            "stage": name,
            "wall_s": st["wall_s"],
            "gmac": macs / 1e9,
            "rate_of_gemm": macs / st["wall_s"] / self.rate,
            "host_added_mb": max(peaks) - st["start_rss_mb"],
            "gpu_peak_mb": st.get("peak_cuda_mb", np.nan),
        }
        if inner is not None:  # which stage the time went to, and at what rate
            row["stages"] = ", ".join(
                f"{k} {v['wall_s']:.2f}s {inner.macs[k] / 1e9:.3g}GMAC "
                f"{inner.rate(k, self.rate):.0%}"
                for k, v in inner.stats.items()
            )
        self.rows.append(row)
        return out, row


def _t_eps(curves: Curves, window: int = 1) -> np.ndarray:
    t = curves.t_eps("loss", DEFAULT_EPS, window)
    return np.array([np.nan if v is None else v for v in t.values()], dtype=float)


def _print(row: dict) -> None:
    cells = [f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()]
    print("  ".join(cells), flush=True)


def _part(bench, part, model_fn, x, y, base, modes, finetune_s, real):
    """Each mode's prediction on the same task: its cost and T_eps against exact and real."""
    exact_t = None
    for name, overrides in modes.items():
        spec = validate(compose([*base, *overrides]))
        inner = CountingStages(x.device)
        (inputs, predicted, _), row = bench.run(
            part, name, lambda s=spec, i=inner: at_w0(s, model_fn(), x, y, i), inner
        )
        t = _t_eps(next(iter(predicted.values())).curves)
        exact_t = t if exact_t is None else exact_t
        row["ratio"] = finetune_s / row["wall_s"]
        row["max_steps_from_exact"] = float(np.nanmax(np.abs(t - exact_t)))
        row["within_13_of_real"] = float(np.mean(np.abs(t - real) <= GD_TOLERANCE * real))
        _print(row)
        del inputs, predicted


def main(argv: list[str] | None = None) -> None:
    start = time.perf_counter()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cuda = torch.cuda.is_available()
    p.add_argument("--size", type=int, default=224 if cuda else 64)
    p.add_argument("--per-class", type=int, default=150 if cuda else 20)
    p.add_argument("--classes", type=int, default=5)
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--batch", type=int, default=25)
    p.add_argument("--loss", default="ce", choices=["ce", "mse"])
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--weights", default="random", choices=["random", "ttbench"])
    p.add_argument("--memory-gb", type=float, default=100 if cuda else 16)
    p.add_argument("--parts", default="gd,sgd")
    p.add_argument("--csv", type=Path, default=None)
    a = p.parse_args(argv)
    device = torch.device("cuda" if cuda else "cpu")
    x, y = images(a.classes, a.per_class, a.size, 0, device)
    if a.weights == "ttbench":
        pretrained = build.setup(validate(compose(["model=resnet18_digits"]))).model
    else:
        torch.manual_seed(0)
        from torchvision.models import resnet18

        net = resnet18(num_classes=a.classes).eval().to(device)
        weights = {k: v.clone() for k, v in net.state_dict().items()}

        def pretrained():
            net.load_state_dict(weights)
            return net

    rate = gemm_rate(device)
    n_params = sum(q.numel() for q in pretrained().parameters())
    where = torch.cuda.get_device_name() if cuda else f"{torch.get_num_threads()} threads"
    print(
        f"{device} ({where})"
        f"; float32 GEMM {rate / 1e9:.0f} GMAC/s; ResNet-18 ({a.weights} weights, D={n_params:,})"
        f" at {a.size} px; N = {a.classes} x {a.per_class}; T = {a.steps}; loss {a.loss}"
    )
    lr = a.lr
    if lr is None:
        lin = linearize(pretrained(), x, "trace", outputs=1)
        lr = 1.0 / sharpness(lin.full_theta(), lin.f0, a.loss)
    base = [
        f"task.k={a.classes}",
        f"task.n={a.per_class}",
        f"steps={a.steps}",
        f"lr={lr}",
        f"loss={a.loss}",
        f"theta.memory_gb={a.memory_gb}",
    ]
    print(f"lr = {lr:.4g}")
    bench = Bench(device, rate)
    if "gd" in a.parts:
        spec = validate(compose([*base, "predictor.names=[discrete]"]))
        real, row = bench.run("gd", "fine-tune", lambda: finetune_run(spec, pretrained(), x, y))
        _print(row)
        gd_modes = dict(GD_MODES)
        if a.loss == "mse":  # Appendix D: Theta on a fifth of the samples, extrapolated
            n0 = max(2, a.classes * a.per_class // 5)
            k0 = min(100, n0 * a.classes // 2)
            gd_modes["subset"] = ["predictor.names=[subset]", f"subset.n0={n0}", f"subset.k0={k0}"]
        base_gd = [*base, "predictor.names=[discrete]"]
        _part(bench, "gd", pretrained, x, y, base_gd, gd_modes, row["wall_s"], _t_eps(real))
    if "sgd" in a.parts:
        sgd = [*base, "optim=sgd", f"optim.batch_size={a.batch}", "predictor.names=[sde]"]
        spec = validate(compose([*sgd, "optim.eval_every=5"]))
        real, row = bench.run(
            "sgd", "fine-tune, loss every 5", lambda: finetune_run(spec, pretrained(), x, y)
        )
        _print(row)
        bare = replace(spec, train=replace(spec.train, eval_every=a.steps))
        _, row = bench.run("sgd", "fine-tune", lambda: finetune_run(bare, pretrained(), x, y))
        _print(row)
        real_t = _t_eps(real, spec.train.smooth)
        _part(bench, "sgd", pretrained, x, y, sgd, SGD_MODES, row["wall_s"], real_t)
    table = pd.DataFrame(bench.rows)
    print("\n" + table.to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    if a.csv:
        a.csv.mkdir(parents=True, exist_ok=True)
        table.to_csv(a.csv / "paper_scale.csv", index=False)
        print(f"wrote {a.csv}/paper_scale.csv")
    print(f"total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    cli.command(main)
