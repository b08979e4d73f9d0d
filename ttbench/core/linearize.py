"""Linearisation at w0: the outputs f0 = f_{w0}(X) and the empirical NTK (eq. 2)

    Theta[(i, c), (j, c')] = <d f_c(x_i) / dw, d f_c'(x_j) / dw>,   rows ordered (i, c), i-major,

over every trainable weight, from the Jacobian's factors (ttbench.core.jacobian). Per layer,
Theta's share is contracted in the cheaper of two orders, measured by their flop counts:
  * materialised: per-sample weight gradients g_{ic} = sum_p delta_ic(p) a_i(p)^T, then G G^T;
  * structured:   sum_{p,p'} <delta_ic(p), delta_jc'(p')> <a_i(p), a_j(p')>  (Novak et al. 2022),
    which never forms per-sample gradients and wins where the spatial size P is small.
Only one layer's block of J exists at a time, and with a memory budget Theta is built block pair
by block pair over samples. The "projected" mode is in ttbench.core.projected.

The "hybrid" mode is exact where the exact contraction is cheap and sketched where it is not:
a weight matrix on the materialised route (many positions P) whose width O*K exceeds the
sketch's D0, whose Gram would cost (N C)^2 O K, enters as its projection J_l P_l; every other
weight (the structured route's matrices, narrow ones, biases and norms) exactly. Theta =
exact part + phi phi^T is unbiased, with the sketch's noise on the sketched layers' share only.

The "trace" mode returns Theta_s = mean_c Theta[(i, c), (j, c)] (N x N), the approximation
Theta ~ Theta_s (x) I_C. With `outputs=P` it is estimated from P random unit output directions
r_p (shared by all samples, E[r r^T] = I / C, orthonormal in groups of C): one backward pass of
f r_p each instead of C, and E[<J_i^T r, J_j^T r>] = Theta_s[i, j], so mean_p is unbiased. The
head's weights contribute exactly (their cross-class blocks are zero and |r| = 1); the error is
the backbone's cross-class blocks, it falls like 1 / sqrt(P), and P = C is exact.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from ttbench.core.jacobian import (
    ROUTES,
    JacobianFactors,
    add_gram,
    block_pairs,
    blocks,
    exact_costs,
    jacobian_factors,
    layer_factors,
    materialise,
)
from ttbench.core.projected import (
    project_piece,
    projected_features,
    sketch_is_cheaper,
    sketched_theta,
)
from ttbench.core.sketch import Sketch

MODES = ("exact", "trace", "projected", "hybrid")
_FLUSH_ELEMENTS = 2**25  # materialised gradient columns are batched into GEMMs of this size


Stage = Callable[[str], contextlib.AbstractContextManager]


class OverBudget(ValueError):
    """Theta alone does not fit the memory budget of the exact and trace modes."""


@dataclass(frozen=True)
class Linearization:
    f0: torch.Tensor  # (N, C) outputs at w0
    theta: torch.Tensor  # (N*C, N*C) exact, or (N, N) for mode "trace"
    mode: str  # the form of theta: exact | trace
    built: str = ""  # how it was built: exact | trace | projected
    block_samples: int = 0  # samples per block of the exact and trace builds (N: at once)

    @property
    def n_samples(self) -> int:
        return self.f0.shape[0]

    @property
    def n_outputs(self) -> int:
        return self.f0.shape[1]

    def full_theta(self) -> torch.Tensor:
        """Theta as an (N*C, N*C) matrix (Theta_s (x) I_C in trace mode)."""
        if self.mode == "exact":
            return self.theta
        eye = torch.eye(self.n_outputs, dtype=self.theta.dtype, device=self.theta.device)
        return torch.kron(self.theta, eye)


def _structured_is_cheaper(A: torch.Tensor, D: torch.Tensor) -> bool:
    R, n, P, n_out = D.shape
    materialised, structured = exact_costs(R, n, P, n_out, A.shape[2])
    return structured < materialised


def _structured(
    Aa: torch.Tensor, Da: torch.Tensor, Ab: torch.Tensor, Db: torch.Tensor, mode: str, block: int
) -> torch.Tensor:
    """Theta share of g = sum_p D A^T between samples a and b, without per-sample gradients:
    Theta[(i,c),(j,d)] = sum_{p,q} <Da[c,i,p], Db[d,j,q]> <Aa[i,p], Ab[j,q]>, in sample blocks;
    when a and b are the same samples only the upper block triangle is contracted."""
    C, na, P, n_out = Da.shape
    nb = Db.shape[1]
    exact = mode == "exact"
    symmetric = Aa is Ab and Da is Db
    out = torch.zeros((na, C, nb, C) if exact else (na, nb), dtype=Da.dtype, device=Da.device)
    # rows ordered (sample, position, class) so the GEMM output is already in (i,p,c,j,q,d) layout
    rows_a, rows_b = Da.permute(1, 2, 0, 3), Db.permute(1, 2, 0, 3)  # (n, P, C, O)
    for i in range(0, na, block):
        for j in range(i if symmetric else 0, nb, block):
            Ai, Aj = Aa[i : i + block], Ab[j : j + block]
            bi, bj = len(Ai), len(Aj)
            ka = (Ai.reshape(bi * P, -1) @ Aj.reshape(bj * P, -1).T).view(bi, P, 1, bj, P, 1)
            if exact:
                Ri = rows_a[i : i + block].reshape(-1, n_out)
                Rj = rows_b[j : j + block].reshape(-1, n_out)
                kd = (Ri @ Rj.T).view(bi, P, C, bj, P, C)
                out[i : i + bi, :, j : j + bj] = kd.mul_(ka).sum((1, 4))
            else:
                for c in range(C):
                    Ri = rows_a[i : i + block, :, c].reshape(-1, n_out)
                    Rj = rows_b[j : j + block, :, c].reshape(-1, n_out)
                    kd = (Ri @ Rj.T).view(bi, P, 1, bj, P, 1)
                    out[i : i + bi, j : j + bj] += kd.mul_(ka).sum((1, 2, 4, 5)) / C
            if symmetric and j > i:  # the mirrored block (i, c, j, d) -> (j, d, i, c)
                rows, cols = slice(i, i + bi), slice(j, j + bj)
                if exact:
                    out[cols, :, rows] = out[rows, :, cols].permute(2, 3, 0, 1)
                else:
                    out[cols, rows] = out[rows, cols].T
    return out.reshape(na * C, nb * C) if exact else out


class _Gram:
    """Accumulates G_a G_b^T over materialised (n, R, d) gradient pieces of samples a and b (R
    output directions), batching small ones; trace mode averages over the directions. When
    a and b are the same samples (`symmetric`) only the upper block triangle is computed."""

    def __init__(self, na: int, nb: int, R: int, mode: str, like: torch.Tensor, symmetric: bool):
        self.mode, self.R, self.symmetric = mode, R, symmetric
        shape = (na * R, nb * R) if mode == "exact" else (na, nb)
        self.theta = torch.zeros(shape, dtype=like.dtype, device=like.device)
        self.pending: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.size = 0

    def add(self, a: torch.Tensor, b: torch.Tensor) -> None:
        self.pending.append((a, b))
        self.size += a.numel()
        if self.size >= _FLUSH_ELEMENTS:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        Ga = torch.cat([a for a, _ in self.pending], dim=2)  # (n, R, d)
        Gb = Ga if self.symmetric else torch.cat([b for _, b in self.pending], dim=2)
        if self.mode == "exact":
            rows = Ga.view(-1, Ga.shape[2])  # (n*R, d), i-major
            if self.symmetric:
                add_gram(self.theta, rows)
            else:
                self.theta.addmm_(rows, Gb.view(-1, Gb.shape[2]).T)
        else:
            Gac, Gbc = Ga.transpose(0, 1), Gb.transpose(0, 1)  # (R, n, d)
            self.theta.add_(torch.bmm(Gac, Gbc.transpose(1, 2)).sum(0), alpha=1 / self.R)
        self.pending, self.size = [], 0


def _materialised(A: torch.Tensor, D: torch.Tensor) -> bool:
    return False


def gram(
    factors: JacobianFactors,
    mode: str = "exact",
    route: str = "auto",
    block: int = 128,
    other: JacobianFactors | None = None,
) -> torch.Tensor:
    """Theta from the factors, layer by layer; with `other`, the cross block between the
    samples of `factors` (rows) and those of `other` (columns).

    `route` forces one contraction order for every weight matrix (default: the cheaper per
    layer); `block` bounds the samples per side of a structured block, i.e. its memory.
    """
    if mode not in ("exact", "trace"):
        raise ValueError(f"mode must be exact or trace, got {mode!r}")
    if route not in ROUTES:
        raise ValueError(f"route must be one of {ROUTES}, got {route!r}")
    if mode == "exact" and factors.directions is not None:
        raise ValueError("the exact mode needs every class: output projections estimate Theta_s")
    chosen = {
        "auto": _structured_is_cheaper,
        "structured": lambda A, D: True,
        "materialised": _materialised,
    }[route]
    symmetric = other is None
    other = factors if other is None else other
    acc = _Gram(len(factors.f0), len(other.f0), factors.n_directions, mode, factors.f0, symmetric)
    if symmetric:
        pairs = ((piece, piece) for piece in blocks(factors, chosen))
    else:
        pairs = block_pairs(factors, other, chosen)
    structured = []
    for a, b in pairs:
        if isinstance(a, tuple):
            structured.append(_structured(*a, *b, mode, block))
        else:
            acc.add(a, b)
    acc.flush()
    theta = acc.theta
    for s in structured:
        theta += s
    return theta


def hybrid_gram(factors: JacobianFactors, sketch: Sketch, block: int = 128) -> torch.Tensor:
    """The "hybrid" Theta (module docstring): the wide materialised-route weight matrices
    sketched, everything else contracted exactly; (N*C, N*C)."""
    if factors.directions is not None:
        raise ValueError("the hybrid mode needs every class: output projections estimate Theta_s")
    f0, R = factors.f0, factors.n_directions
    exact = _Gram(len(f0), len(f0), R, "exact", f0, True)
    phi = torch.zeros(len(f0) * R, sketch.dim, dtype=f0.dtype, device=f0.device)
    theta = torch.zeros(len(f0) * R, len(f0) * R, dtype=f0.dtype, device=f0.device)
    for b, layer in enumerate(factors.layers):
        pieces, weight = layer_factors(layer)
        if weight is not None and _structured_is_cheaper(*weight):
            theta += _structured(*weight, *weight, "exact", block)
        elif weight is not None and weight[0].shape[2] * weight[1].shape[3] > sketch.dim:
            # count-sketched per-sample gradients: the factored sketch erred 1.6x as much
            project_piece(phi, b, weight, sketch, _materialised)
        elif weight is not None:
            pieces.append(materialise(*weight))
        for piece in pieces:
            exact.add(piece, piece)
    exact.flush()
    add_gram(theta, phi)
    return theta + exact.theta


def blocked_gram(
    model: nn.Module,
    x: torch.Tensor,
    size: int,
    mode: str = "exact",
    route: str = "auto",
    block: int = 128,
    outputs: int | None = None,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """f0 and Theta built block pair by block pair over `size` samples at a time. Peak memory
    is Theta plus two blocks' factors: the second block of each pair is captured again (one
    forward and R backward passes over it) rather than stored, so the capture costs
    (k + 1) / 2 times that of `gram` for k blocks; the contractions cost the same."""
    starts = list(range(0, len(x), size))
    f0s: list[torch.Tensor] = []
    theta = torch.empty(0)
    for k, a in enumerate(starts):
        fa = jacobian_factors(model, x[a : a + size], outputs, seed)
        r = fa.n_directions if mode == "exact" else 1
        if k == 0:
            side = len(x) * r
            theta = torch.zeros(side, side, dtype=fa.f0.dtype, device=fa.f0.device)
        rows = slice(a * r, (a + len(fa.f0)) * r)
        theta[rows, rows] = gram(fa, mode, route, block)
        for b in starts[k + 1 :]:
            fb = jacobian_factors(model, x[b : b + size], outputs, seed)
            cols = slice(b * r, (b + len(fb.f0)) * r)
            cross = gram(fa, mode, route, block, other=fb)
            theta[rows, cols] = cross
            theta[cols, rows] = cross.T
        f0s.append(fa.f0)
    return torch.cat(f0s), theta


def diagonal_noise_gram(factors: JacobianFactors, sample_grads: torch.Tensor) -> torch.Tensor:
    """J diag(sigma^2) J^T (N*C x N*C): the function-space covariance of SGD noise with the
    gradient covariance Sigma approximated by its diagonal (Section 4). sigma^2 is, per weight,
    the variance over samples of the per-sample loss gradient h_i = J_i^T sample_grads[i].
    Exact, at the cost of an (N C)^2 D Gram; runs use the sketched `diagonal_noise_features`,
    and this stays as the exact route that the sketch is checked against (and usable on small
    N), as neural-tangents keeps its exact kernel beside the sketched ones."""
    if factors.directions is not None:
        raise ValueError("the diagonal noise needs every class's gradients")
    n, C = factors.f0.shape
    acc = _Gram(n, n, C, "exact", factors.f0, symmetric=True)
    s = sample_grads.to(factors.f0.dtype)
    for g in blocks(factors):  # (n, C, d)
        h = torch.einsum("ncd,nc->nd", g, s)
        scaled = g * h.var(0, unbiased=False).sqrt()
        acc.add(scaled, scaled)
    acc.flush()
    return acc.theta


def linearize(
    model: nn.Module,
    x: torch.Tensor,
    mode: str = "exact",
    route: str = "auto",
    block: int = 128,
    sketch: Sketch | None = None,
    chunk: int = 256,
    outputs: int | None = None,
    seed: int = 0,
    memory_gb: float | None = None,
    stage: Stage | None = None,
) -> Linearization:
    """f0 and Theta of `model` (BatchNorm in eval mode) at its current weights on inputs x: the
    one dispatcher over Theta's modes (neural-tangents' `empirical_ntk_fn(implementation=)`).

    modes "projected" and "hybrid" need a `sketch`; "projected" streams over `chunk` samples at
    a time, "hybrid" holds every sample's factors (without room for them in `memory_gb` it
    builds the projected Theta instead). `outputs=P`
    (trace and projected modes) estimates Theta_s from P random output projections drawn from
    `seed`: the result is then in trace form (N x N). With `memory_gb` the exact and trace
    modes build Theta block pair by block pair when building it at once would not fit
    (OverBudget when Theta alone does not), and the projected mode builds Theta outright
    (exact, or trace with `outputs`) where that costs fewer multiply-adds than the sketch and
    fits. `stage(name)`, a context manager, is entered around the two parts, "jacobian" and
    "theta", for whoever times them. The result says what was built (`built`, `block_samples`).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if mode in ("projected", "hybrid") and sketch is None:
        raise ValueError(f"mode={mode!r} needs a sketch")
    stage = stage or (lambda name: contextlib.nullcontext())
    n = len(x)
    held = mode == "hybrid" and memory_gb is not None  # every sample's factors at once
    if held and exact_memory_bytes(model, x, n) > memory_gb * 2**30:
        mode = "projected"  # streams a sketch instead
    with stage("jacobian"):
        outright = memory_gb is not None and mode == "projected"
        if outright and _outright_is_cheaper(model, x, sketch, outputs, memory_gb):
            mode = "exact" if outputs is None else "trace"
        if mode == "projected":
            f0, phi = projected_features(model, x, sketch, chunk, outputs, seed, route)
        else:
            fits = memory_gb is None or mode == "hybrid"  # the hybrid's was checked above
            size = n if fits else block_size(model, x, memory_gb)
            factors = jacobian_factors(model, x, outputs, seed) if size == n else None
    with stage("theta"):
        if mode == "projected":
            trace = outputs is not None
            theta = sketched_theta(phi, len(f0), trace)
            return Linearization(f0, theta, "trace" if trace else "exact", "projected", n)
        if mode == "hybrid":  # factors of every sample: the budget was checked above
            return Linearization(factors.f0, hybrid_gram(factors, sketch, block), "exact", mode, n)
        if factors is None:
            f0, theta = blocked_gram(model, x, size, mode, route, block, outputs, seed)
        else:
            f0, theta = factors.f0, gram(factors, mode, route, block)
    return Linearization(f0, theta, mode, mode, size)


def _outright_is_cheaper(
    model: nn.Module, x: torch.Tensor, sketch: Sketch, outputs: int | None, memory_gb: float
) -> bool:
    if sketch_is_cheaper(model, x, sketch, outputs):
        return False
    try:
        block_size(model, x, memory_gb)
    except OverBudget:
        return False
    return True


def exact_memory_bytes(model: nn.Module, x: torch.Tensor, n: int) -> int:
    """An upper estimate of the exact engine's memory for n samples like x[:1]: the factors of
    every layer, the largest per-sample gradient block, and Theta itself."""
    per_sample, C, item = _per_sample_bytes(model, x)
    return n * per_sample + item * (n * C) ** 2


def _per_sample_bytes(model: nn.Module, x: torch.Tensor) -> tuple[int, int, int]:
    """Bytes per sample of the factors and the largest per-sample gradient block; C; item."""
    factors = jacobian_factors(model, x[:1])
    C = factors.f0.shape[1]
    factor = sum(lay.inp.numel() + lay.delta.numel() for lay in factors.layers)
    largest = max(
        sum(p.numel() for p in lay.module.parameters(recurse=False)) for lay in factors.layers
    )
    item = factors.f0.element_size()
    return item * (factor + C * largest), C, item


def block_size(model: nn.Module, x: torch.Tensor, memory_gb: float) -> int:
    """Samples per block for `blocked_gram` within memory_gb (len(x) when the whole build
    fits at once); OverBudget when Theta alone does not fit."""
    budget = memory_gb * 2**30
    if exact_memory_bytes(model, x, len(x)) <= budget:
        return len(x)
    per_sample, C, item = _per_sample_bytes(model, x)
    left = budget - item * (len(x) * C) ** 2
    size = int(left // (2 * per_sample))
    if size < 1:
        need = (item * (len(x) * C) ** 2 + 2 * per_sample) / 2**30
        raise OverBudget(f"needs at least {need:.2g} GB for N={len(x)}, above {memory_gb} GB")
    return size


def forward_ad() -> contextlib.AbstractContextManager:
    """The context forward-mode autodiff runs in: scaled dot-product attention by its plain
    math kernels, since the fused CPU kernel (timm's ViT) has no forward derivative."""
    return sdpa_kernel([SDPBackend.MATH])


def jvp(
    model: nn.Module,
    x: torch.Tensor,
    tangent: dict[str, torch.Tensor],
    params: dict[str, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """f(x; w) and J(x; w) tangent by forward-mode autodiff (torch.func.jvp); `tangent` is keyed
    by parameter name, w is `params` or the model's own weights."""
    if params is None:
        params = {k: p.detach() for k, p in model.named_parameters() if k in tangent}

    def f(p: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.func.functional_call(model, p, (x,))

    with forward_ad():
        return torch.func.jvp(f, (params,), (tangent,))


class LinearizedModel(nn.Module):
    """f_lin(x; w) = f(x; w0) + J(x; w0) (w - w0): the first-order Taylor expansion of `model`
    at its current weights w0 (computed with torch.func.jvp), linear in its weights w."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.names = [k for k, p in model.named_parameters() if p.requires_grad]
        self.w0 = {k: p.detach().clone() for k, p in model.named_parameters() if p.requires_grad}
        self.weights = nn.ParameterList([nn.Parameter(w.clone()) for w in self.w0.values()])
        model.requires_grad_(False)  # its own copies are replaced by `weights` in forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tangent = {k: w - self.w0[k] for k, w in zip(self.names, self.weights, strict=True)}
        out, df = jvp(self.model, x, tangent, self.w0)
        return out + df
