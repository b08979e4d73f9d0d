"""Wall-clock and peak memory of each stage of a run (`Stages`), and of one call (`timed`).

Peak memory on the host is the process's peak resident set size during the stage (Linux: the
VmHWM counter is reset at the start of each stage through /proc/self/clear_refs; elsewhere the
process peak so far). On CUDA the peak allocated device memory is recorded too.
"""

from __future__ import annotations

import contextlib
import resource
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    import torch

# A run's stages as result.json names them (prediction.py adds solve_<predictor>, and for a
# refined prediction jacobian_<at>, theta_<at>, velocity_<at>). PREFIX is a pseudo-stage: the
# real steps a refined prediction observed, a part of FINETUNE counted in that prediction's
# cost and never in a job's total (`is_prefix`). A prediction's validity reads the signals
# STABILITY at w0, counted in every prediction's cost (it is computed before training, as a
# plan's is), and the two measured on the fine-tuning, DRIFT (at k) and the WATCH along it,
# counted apart (ALONG). Under SGD the whole-task losses fine-tuning records are EVALUATE,
# not FINETUNE (the bare steps, what a user's job pays). A plan times PREDICT and PROBE.
DATA, MODEL, JACOBIAN, THETA, NOISE = "data", "model", "jacobian", "theta", "noise"
FINETUNE, EVALUATE, WATCH, PREFIX = "finetune", "evaluate", "watch", "prefix"
STABILITY, DRIFT = "stability", "drift"  # the signals the validity reads, at w0 and at k
ALONG = (DRIFT, WATCH)  # the signals measured on the fine-tuning itself
PREDICT, PROBE = "predict", "probe"


def solve(predictor: str) -> str:
    return f"solve_{predictor}"


def is_prefix(stage: str) -> bool:
    return stage == PREFIX or stage.startswith(f"{PREFIX}_")


_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")
T = TypeVar("T")


def _reset_peak_rss() -> None:
    # Not Linux, or not permitted: the peak then covers the process so far.
    with contextlib.suppress(OSError):
        _CLEAR_REFS.write_text("5")


def _status_mb(field: str) -> float | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def sync(device: torch.device) -> None:
    if device.type == "cuda":  # kernels are asynchronous: wait before reading the clock
        import torch  # here: a judge or a report reads stage names without torch

        torch.cuda.synchronize(device)


def timed(fn: Callable[[], T], device: torch.device) -> tuple[T, float]:
    """fn() and its wall-clock in seconds."""
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - start


def peak_rss_mb() -> float:
    peak = _status_mb("VmHWM:")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Stages:
    """Collects {stage: {"wall_s", "peak_rss_mb", "start_rss_mb"[, "peak_cuda_mb"]}} in run
    order; peak - start is what the stage itself added."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.stats: dict[str, dict[str, float]] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        cuda = self.device.type == "cuda"
        _reset_peak_rss()
        start_rss = _status_mb("VmRSS:") or 0.0
        if cuda:
            import torch

            torch.cuda.reset_peak_memory_stats(self.device)
        sync(self.device)
        start = time.perf_counter()
        yield
        sync(self.device)
        stat = {
            "wall_s": time.perf_counter() - start,
            "peak_rss_mb": peak_rss_mb(),
            "start_rss_mb": start_rss,
        }
        if cuda:
            stat["peak_cuda_mb"] = torch.cuda.max_memory_allocated(self.device) / 2**20
        self.stats[name] = stat

    def carve(self, name: str, seconds: float, out_of: str = FINETUNE) -> None:
        """Moves `seconds` spent inside stage `out_of` (the watch, SGD's evaluations) into a
        stage of their own, which shares its memory figures."""
        self.stats[out_of]["wall_s"] -= seconds
        self.stats[name] = self.stats[out_of] | {"wall_s": seconds}

    def added_mb(self, name: str) -> float:
        """The peak resident memory a stage added to what the process held at its start."""
        st = self.stats[name]
        return st["peak_rss_mb"] - st["start_rss_mb"]
