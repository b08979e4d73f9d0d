"""The stability of gradient descent along a trajectory, and the forecast of a spike.

GD with heavy-ball momentum m on a model linearised at w is stable while lr * lambda < 2 (1 + m),
lambda the largest eigenvalue of Theta grad_f^2 L, which is also that of the Gauss-Newton matrix
G = J^T grad_f^2 L J (the same nonzero eigenvalues). `stability` = lr lambda / (2 (1 + m)): at 1
or above, the step overshoots along G's top direction.

At w0 this is `dynamics.sharpness` on the run's Theta. Along fine-tuning, building Theta again
at every watched step would cost about 20 training steps each on a ResNet-18; `top_eigen`
instead runs power iteration on G, one jvp and one vjp per iteration (torch.func), and `Watch`
warm-starts it from the previous watched step's eigenvector on a fixed subsample of the task,
iterating until two successive estimates differ by less than TOL (at least two, at most
MAX_ITERATIONS): where the top direction turns fast, as a fresh head sharpens, a single
iteration read 0.3 where a full build of Theta gave 1.5. Measured on the fidelity_resnet
preset: within about 10% of the full build, for about two training steps per watched step.

Why watch: a pretrained network with a fresh head sharpens fast, its Theta growing with the
head's weights, and crosses the edge of stability within a few steps at learning rates where
Theta at w0 is stable (measured on the fidelity_resnet preset: stability 0.4-0.8 at w0, 2.6-16
two steps later). Past the edge the loss spikes: a catapult that recovers, or an explosion
(ttbench.core.curves.outcome). `forecast` announces a spike when a watched stability reaches the
threshold (the run's default 1.1: the edge, plus the watch's error; on the development seeds
1.0 also flagged two of the three runs that never spiked, at 1.09), before the loss has risen,
and says "diverges" where an explosion is the likely end:
with heavy-ball momentum (m >= EXPLODE_MOMENTUM), an instability that is strong (stability >=
EXPLODE_STABILITY) within the first EARLY steps. Why momentum: the velocity keeps pushing along
the unstable direction while the catapult would need the step to shrink; on the two-layer
network of Lewkowycz et al. (2020) the catapult window closes from stability 2-2.5 at m = 0 to
1.2 at m = 0.9 (MSE), and with cross-entropy, which recovers from any stability at m = 0, only
m = 0.9 explodes. On the fidelity_resnet development seeds (0-5) every run with momentum 0.9
that was strongly unstable by step 2 exploded (6 of 6) and every later crossing with momentum
recovered (4 of 4); without momentum 5 of 6 strongly unstable runs recovered, so no rule there.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from ttbench.core import losses
from ttbench.core.linearize import forward_ad

FIRST_ITERATIONS = 6  # power iterations from a random start
MAX_ITERATIONS, TOL = 4, 0.05  # warm-started: until the estimate moves by less than TOL
CONVERGES, SPIKE_AHEAD, DIVERGES = "converges", "spike ahead", "diverges"
EARLY, EXPLODE_STABILITY, EXPLODE_MOMENTUM = 2, 2.0, 0.5  # the "diverges" rule (docstring)
SEVERITY = {CONVERGES: 0, SPIKE_AHEAD: 1, DIVERGES: 2}  # how plans rank jobs by their forecast


def stability(lr: float, momentum: float, lam: float) -> float:
    """lr lambda / (2 (1 + m)): GD with heavy-ball momentum is stable below 1."""
    return lr * lam / (2 * (1 + momentum))


def _norm(v: Mapping[str, torch.Tensor]) -> torch.Tensor:
    return torch.sqrt(sum((t.double() ** 2).sum() for t in v.values()))


def top_eigen(
    model: nn.Module,
    x: torch.Tensor,
    loss: str,
    v: dict[str, torch.Tensor] | None = None,
    iterations: int = FIRST_ITERATIONS,
    seed: int = 0,
    tol: float = 0.0,
) -> tuple[float, dict[str, torch.Tensor]]:
    """(lambda, v): the largest eigenvalue of the Gauss-Newton matrix of the loss on x at the
    model's trainable weights (BatchNorm in eval mode), by at most `iterations` power
    iterations from `v` (by parameter name; random from `seed` when None), stopping once an
    estimate moves by less than `tol` of itself from the one before, and the last iterate."""
    params = {k: p.detach() for k, p in model.named_parameters() if p.requires_grad}

    def f(p: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.func.functional_call(model, p, (x,))

    if v is None:
        gen = torch.Generator().manual_seed(seed)
        v = {k: torch.randn(p.shape, generator=gen).to(p) for k, p in params.items()}
        v = {k: t / _norm(v).to(t.dtype) for k, t in v.items()}
    out, back = torch.func.vjp(f, params)
    h = losses.hessian_f(out.detach().double(), loss).to(out.dtype)
    lam = None
    for i in range(iterations):
        with forward_ad():
            _, jv = torch.func.jvp(f, (params,), (v,))
        (g,) = back(torch.einsum("ncd,nd->nc", h, jv))
        before, lam = lam, float(_norm(g))
        if lam == 0 or not math.isfinite(lam):
            return lam, v
        v = {k: t / lam for k, t in g.items()}
        if i > 0 and abs(lam - before) < tol * lam:
            break
    return lam, v


def schedule(steps: int) -> tuple[int, ...]:
    """The default watched steps below `steps`: 0, 1, 2, 3, 4, then x sqrt(2) (6, 8, 11, 16, 23,
    32, 45, 64, 91, 128, ...): dense early, where a fresh head sharpens fastest."""
    out, t = [0, 1, 2, 3, 4], 4.0
    while True:
        t *= 2**0.5
        out.append(round(t))
        if out[-1] >= steps:
            return tuple(s for s in out if s < steps)


@dataclass
class Watch:
    """The stability at the watched steps of one trajectory: call it with (t, model) at every
    step, before that step's update; it measures at the steps in `steps`, on `x` (a fixed
    subsample), warm-starting each power iteration from the last."""

    lr: float
    momentum: float
    loss: str
    x: torch.Tensor
    steps: frozenset[int]
    seed: int = 0
    values: dict[int, float] = field(default_factory=dict)
    _v: dict[str, torch.Tensor] | None = None

    def __call__(self, t: int, model: nn.Module) -> float | None:
        """The stability at step t when t is watched (and not measured yet), else None."""
        if t not in self.steps or t in self.values:
            return None
        if self._v is None:
            lam, self._v = top_eigen(model, self.x, self.loss, None, FIRST_ITERATIONS, self.seed)
        else:
            lam, self._v = top_eigen(
                model, self.x, self.loss, self._v, MAX_ITERATIONS, self.seed, TOL
            )
        self.values[t] = stability(self.lr, self.momentum, lam)
        return self.values[t]


@dataclass(frozen=True)
class Forecast:
    """What the stability says of the run: CONVERGES, or SPIKE_AHEAD or DIVERGES, announced at
    step `at` (the first watched step at or past the threshold), where it was `stability`."""

    verdict: str
    at: int | None = None
    stability: float | None = None


def forecast(
    values: Mapping[int, float],
    momentum: float,
    threshold: float = 1.1,
    before: int | None = None,
) -> Forecast:
    """From the stabilities at watched steps (below `before`, when given): SPIKE_AHEAD at the
    first whose stability is at least `threshold` (a non-finite one counts), DIVERGES when the
    explosion rule holds (module docstring), else CONVERGES."""
    seen = sorted(t for t in values if before is None or t < before)
    crossed = [t for t in seen if not values[t] < threshold]  # NaN: no longer finite there
    if not crossed:
        return Forecast(CONVERGES)
    early = [t for t in seen if t <= EARLY and not values[t] < EXPLODE_STABILITY]
    verdict = DIVERGES if momentum >= EXPLODE_MOMENTUM and early else SPIKE_AHEAD
    return Forecast(verdict, crossed[0], values[crossed[0]])


def subsample(n: int, size: int, seed: int) -> torch.Tensor:
    """`size` of n indices (all when fewer), drawn from `seed`."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=gen)[: min(size, n)].sort().values
