"""What the benchmarks measure besides time: multiply-adds per stage, and the machine's
float32 matrix-multiply rate to hold them against."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch.utils.flop_counter import FlopCounterMode

from ttbench.stages import Stages


def gemm_rate(device: torch.device) -> float:
    """The float32 matrix-multiply rate of this machine, in multiply-adds per second."""
    n = 4096 if device.type == "cuda" else 1536
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    a @ b  # warm-up
    stages = Stages(device)
    with stages("gemm"):
        for _ in range(5):
            a @ b
    return 5 * n**3 / stages.stats["gemm"]["wall_s"]


class CountingStages(Stages):
    """Stages that also count each stage's multiply-adds."""

    def __init__(self, device: torch.device) -> None:
        super().__init__(device)
        self.macs: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        counter = FlopCounterMode(display=False)
        with counter, super().__call__(name):
            yield
        self.macs[name] = counter.get_total_flops() / 2

    def rate(self, name: str, gemm: float) -> float:
        """The stage's multiply-adds per second as a share of the GEMM rate `gemm`."""
        return self.macs[name] / self.stats[name]["wall_s"] / gemm
