"""Linearisation at w0: the outputs f0 = f_{w0}(X) and the empirical NTK (eq. 2)

    Theta[(i, c), (j, c')] = <d f_c(x_i) / dw, d f_c'(x_j) / dw>,   rows ordered (i, c), i-major,

over every trainable weight. One forward pass records each layer's input and C backward passes
record the gradient of each output class with respect to each layer's output (samples do not
interact: BatchNorm is in eval mode). Per layer, Theta's share is then contracted in the cheaper
of two orders, measured by their flop counts:
  * materialised: per-sample weight gradients g_{ic} = sum_p delta_ic(p) a_i(p)^T, then G G^T;
  * structured:   sum_{p,p'} <delta_ic(p), delta_jc'(p')> <a_i(p), a_j(p')>  (Novak et al. 2022),
    which never forms per-sample gradients and wins where the spatial size P is small.
Only one layer's block of J exists at a time. Supported layers: Conv2d (groups=1), Linear,
BatchNorm in eval mode; anything else with trainable weights is refused with a clear message.

The "trace" mode returns Theta_s = mean_c Theta[(i, c), (j, c)] (N x N), the approximation
Theta ~ Theta_s (x) I_C. With `outputs=P` it is estimated from P random unit output directions
r_p (shared by all samples, E[r r^T] = I / C, orthonormal in groups of C): one backward pass of
f r_p each instead of C, and E[<J_i^T r, J_j^T r>] = Theta_s[i, j], so mean_p is unbiased. The
head's weights contribute exactly (their cross-class blocks are zero and |r| = 1); the error is
the backbone's cross-class blocks, it falls like 1 / sqrt(P), and P = C is exact.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from ttbench.core.sketch import SCATTER_COST, Sketch

MODES = ("exact", "trace", "projected")
ROUTES = ("auto", "materialised", "structured")
_FLUSH_ELEMENTS = 2**25  # materialised gradient columns are batched into GEMMs of this size


@dataclass(frozen=True)
class Linearization:
    f0: torch.Tensor  # (N, C) outputs at w0
    theta: torch.Tensor  # (N*C, N*C) exact, or (N, N) for mode "trace"
    mode: str

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


@dataclass
class _Layer:
    module: nn.Module
    inp: torch.Tensor | None = None
    out: torch.Tensor | None = None
    delta: torch.Tensor | None = None  # (R, n, *out.shape[1:]), one per output direction


def output_directions(n_outputs: int, outputs: int | None, seed: int) -> torch.Tensor | None:
    """P random unit output directions (P, C), orthonormal in groups of C (rows of independent
    Haar-random orthogonal matrices), so E[r r^T] = I / C and P = C gives Theta_s exactly;
    None (the C classes themselves) when `outputs` is None."""
    if outputs is None:
        return None
    if outputs < 1:
        raise ValueError(f"outputs must be >= 1, got {outputs}")
    gen = torch.Generator().manual_seed(seed * 1_000_003 + 7)
    groups = []
    for _ in range(-(-outputs // n_outputs)):
        g = torch.randn(n_outputs, n_outputs, generator=gen, dtype=torch.float64)
        q, r = torch.linalg.qr(g)
        groups.append((q * torch.sign(torch.diagonal(r))).T)  # the sign fix makes q Haar
    return torch.cat(groups)[:outputs]


def trainable_layers(model: nn.Module) -> list[nn.Module]:
    """Modules owning trainable weights; refuses layer types the engine cannot contract."""
    layers = []
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):  # with or without weights
            if m.training:
                raise ValueError(f"layer {name}: BatchNorm must be in eval mode (model.eval())")
            if not m.track_running_stats:
                raise NotImplementedError(
                    f"layer {name}: BatchNorm without running statistics normalises with the "
                    "batch's even in eval mode, so samples interact: not supported"
                )
        own = [p for p in m.parameters(recurse=False) if p.requires_grad]
        if not own:
            continue
        if isinstance(m, nn.Conv2d) and m.groups != 1:
            raise NotImplementedError(f"layer {name}: grouped convolutions are not supported")
        if not isinstance(m, nn.Conv2d | nn.Linear | nn.modules.batchnorm._BatchNorm):
            raise NotImplementedError(
                f"layer {name} ({type(m).__name__}) has trainable weights and is not supported "
                "by the Theta engine (Conv2d, Linear, BatchNorm in eval mode)"
            )
        layers.append(m)
    return layers


@contextmanager
def _no_inplace(model: nn.Module) -> Iterator[None]:
    # An in-place activation would overwrite the layer output whose gradient we ask for.
    changed = [m for m in model.modules() if getattr(m, "inplace", False) is True]
    for m in changed:
        m.inplace = False
    try:
        yield
    finally:
        for m in changed:
            m.inplace = True


def _capture(
    model: nn.Module, x: torch.Tensor, rows_of: Callable[[torch.Tensor], torch.Tensor]
) -> tuple[torch.Tensor, list[_Layer]]:
    """Forward once recording layer inputs/outputs, then one backward pass per column of
    rows_of(f) (n, R): the output classes, output directions f r, or a loss's f . s_i."""
    layers = [_Layer(m) for m in trainable_layers(model)]

    def hook(layer: _Layer):
        def record(module, args, output):
            if layer.out is not None:
                raise NotImplementedError("a layer used twice in one forward pass is not supported")
            layer.inp, layer.out = args[0].detach(), output

        return record

    handles = [lay.module.register_forward_hook(hook(lay)) for lay in layers]
    try:
        with _no_inplace(model), torch.enable_grad():
            f = model(x)
    finally:
        for h in handles:
            h.remove()
    outs = [lay.out for lay in layers]
    rows = rows_of(f)
    per_class = []
    for c in range(rows.shape[1]):
        grads = torch.autograd.grad(
            rows[:, c].sum(), outs, retain_graph=c < rows.shape[1] - 1, allow_unused=True
        )
        per_class.append(
            [torch.zeros_like(o) if g is None else g for g, o in zip(grads, outs, strict=True)]
        )
    for k, lay in enumerate(layers):
        lay.delta = torch.stack([g[k] for g in per_class]).detach()
        lay.out = None
    return f.detach(), layers


def _factors(layer: _Layer) -> tuple[list[torch.Tensor], tuple[torch.Tensor, torch.Tensor] | None]:
    """Split a layer's gradient into materialised pieces (n, C, d) and, for a weight matrix,
    the factors (A: (n, P, K) inputs, D: (C, n, P, O) output gradients) of g = sum_p D A^T."""
    m, a, d = layer.module, layer.inp, layer.delta
    C, n = d.shape[:2]
    pieces: list[torch.Tensor] = []
    if isinstance(m, nn.modules.batchnorm._BatchNorm):
        shape = (1, -1) + (1,) * (a.dim() - 2)
        xhat = (a - m.running_mean.view(shape)) / torch.sqrt(m.running_var.view(shape) + m.eps)
        dims = tuple(range(3, d.dim()))
        if m.weight is not None and m.weight.requires_grad:
            pieces.append(((d * xhat).sum(dims) if dims else d * xhat).transpose(0, 1))
        if m.bias is not None and m.bias.requires_grad:
            pieces.append((d.sum(dims) if dims else d).transpose(0, 1))
        return pieces, None
    if isinstance(m, nn.Conv2d):
        # pad as the layer does (any padding mode, 'same' included), then unfold unpadded
        mode = "constant" if m.padding_mode == "zeros" else m.padding_mode
        a = F.pad(a, m._reversed_padding_repeated_twice, mode=mode)
        A = F.unfold(a, m.kernel_size, m.dilation, 0, m.stride).transpose(1, 2)
        D = d.flatten(3).transpose(2, 3)
    else:  # Linear: extra leading dims of the input act like positions
        A = a.reshape(n, -1, a.shape[-1])
        D = d.reshape(C, n, -1, d.shape[-1])
    if m.bias is not None and m.bias.requires_grad:
        pieces.append(D.sum(2).transpose(0, 1))
    return pieces, ((A, D) if m.weight.requires_grad else None)


# Measured on 2 CPU cores: an element of the structured product costs about as much as this
# many multiply-adds of a large GEMM (it is memory-bound), so small-P layers go structured.
_STRUCTURED_ELEMENT_COST = 300


def _materialise(A: torch.Tensor, D: torch.Tensor) -> torch.Tensor:
    """Per-sample weight gradients sum_p D A^T, shape (n, C, O*K)."""
    return torch.einsum("cnpo,npk->ncok", D, A).flatten(2)


def _exact_costs(R: int, n: int, P: int, n_out: int, K: int) -> tuple[int, int]:
    """Multiply-adds of one weight matrix's share of the exact Theta: materialised, structured."""
    materialised = R * n * P * n_out * K + (n * R) ** 2 * n_out * K
    structured = (n * P) ** 2 * K + (n * R * P) ** 2 * (n_out + _STRUCTURED_ELEMENT_COST)
    return materialised, structured


def _structured_is_cheaper(A: torch.Tensor, D: torch.Tensor) -> bool:
    R, n, P, n_out = D.shape
    materialised, structured = _exact_costs(R, n, P, n_out, A.shape[2])
    return structured < materialised


def sketch_is_cheaper(
    model: nn.Module, x: torch.Tensor, sketch: Sketch, outputs: int | None = None
) -> bool:
    """Whether projecting with `sketch` costs fewer multiply-adds than contracting the exact
    Theta (each layer in its cheaper way) for the samples x, estimated from the layer shapes
    of one sample. Where the exact contraction is cheap (few samples, small layers), a sketch
    would only add error. Trace form (with `outputs`) is held against the exact-Theta cost,
    an upper bound of the trace mode's."""
    factors = jacobian_factors(model, x[:1], outputs)
    n, R = len(x), factors.n_directions
    exact, sketched = 0, (n * R) ** 2 * sketch.dim
    for layer in factors.layers:
        pieces, weight = _factors(layer)
        width = sum(p.shape[2] for p in pieces)
        exact += (n * R) ** 2 * width
        sketched += n * R * width * SCATTER_COST
        if weight is not None:
            A, D = weight
            P, n_out, K = D.shape[2], D.shape[3], A.shape[2]
            exact += min(_exact_costs(R, n, P, n_out, K))
            sketched += n * min(sketch.per_sample_costs(R, P, n_out, K))
    return sketched < exact


def _structured(
    Aa: torch.Tensor, Da: torch.Tensor, Ab: torch.Tensor, Db: torch.Tensor, mode: str, block: int
) -> torch.Tensor:
    """Theta share of g = sum_p D A^T between samples a and b, without per-sample gradients:
    Theta[(i,c),(j,d)] = sum_{p,q} <Da[c,i,p], Db[d,j,q]> <Aa[i,p], Ab[j,q]>, in sample blocks."""
    C, na, P, n_out = Da.shape
    nb = Db.shape[1]
    exact = mode == "exact"
    out = torch.zeros((na, C, nb, C) if exact else (na, nb), dtype=Da.dtype, device=Da.device)
    # rows ordered (sample, position, class) so the GEMM output is already in (i,p,c,j,q,d) layout
    rows_a, rows_b = Da.permute(1, 2, 0, 3), Db.permute(1, 2, 0, 3)  # (n, P, C, O)
    for i in range(0, na, block):
        for j in range(0, nb, block):
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
    return out.reshape(na * C, nb * C) if exact else out


def _add_gram(theta: torch.Tensor, rows: torch.Tensor, parts: int = 4) -> None:
    """theta += rows rows^T computing only the upper block triangle (torch has no SYRK):
    (parts + 1) / (2 parts) of the GEMM's work."""
    edges = [round(k * len(rows) / parts) for k in range(parts + 1)]
    for a, b in itertools.pairwise(edges):
        for c, d in itertools.pairwise(edges):
            if c < a:
                continue
            block = rows[a:b] @ rows[c:d].T
            theta[a:b, c:d] += block
            if c > a:
                theta[c:d, a:b] += block.T


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
                _add_gram(self.theta, rows)
            else:
                self.theta.addmm_(rows, Gb.view(-1, Gb.shape[2]).T)
        else:
            Gac, Gbc = Ga.transpose(0, 1), Gb.transpose(0, 1)  # (R, n, d)
            self.theta.add_(torch.bmm(Gac, Gbc.transpose(1, 2)).sum(0), alpha=1 / self.R)
        self.pending, self.size = [], 0


@dataclass
class JacobianFactors:
    """f0 and, per trainable layer, its inputs and the output gradients of each class (or of
    each random output projection): all that is needed to contract any layer's block of J J^T
    (output of `jacobian_factors`)."""

    f0: torch.Tensor
    layers: list[_Layer]
    directions: torch.Tensor | None = None  # (P, C) output projections; None: the C classes

    @property
    def n_directions(self) -> int:
        return self.layers[0].delta.shape[0] if self.layers else self.f0.shape[1]


def jacobian_factors(
    model: nn.Module, x: torch.Tensor, outputs: int | None = None, seed: int = 0
) -> JacobianFactors:
    """One forward pass and C backward passes (or, with `outputs=P`, one per output direction
    of `output_directions(C, P, seed)`) of `model` (BatchNorm in eval mode) on x."""
    directions = None

    def rows_of(f: torch.Tensor) -> torch.Tensor:
        nonlocal directions
        directions = output_directions(f.shape[1], outputs, seed)
        return f if directions is None else f @ directions.to(f.device, f.dtype).T

    f0, layers = _capture(model, x, rows_of)
    return JacobianFactors(f0, layers, directions)


def _blocks(
    factors: JacobianFactors, structured: Callable[[torch.Tensor, torch.Tensor], bool] | None = None
) -> Iterator[torch.Tensor | tuple[torch.Tensor, torch.Tensor]]:
    """Every trainable layer's share of J, one piece at a time: materialised per-sample gradients
    (n, C, d), or, for a weight matrix that `structured(A, D)` picks, its factors (A, D)."""
    for layer in factors.layers:
        pieces, weight = _factors(layer)
        chosen = weight is not None and structured is not None and structured(*weight)
        yield from _split(pieces, weight, chosen)


def _split(pieces: list, weight: tuple | None, factored: bool) -> Iterator:
    if weight is not None:
        if factored:
            yield weight
        else:
            pieces.append(_materialise(*weight))
    yield from pieces


def _block_pairs(
    fa: JacobianFactors,
    fb: JacobianFactors,
    structured: Callable[[torch.Tensor, torch.Tensor], bool],
) -> Iterator[tuple]:
    """`_blocks` of two sets of samples side by side, each layer contracted the same way."""
    for la, lb in zip(fa.layers, fb.layers, strict=True):
        pa, wa = _factors(la)
        pb, wb = _factors(lb)
        factored = wa is not None and structured(*wa)
        yield from zip(_split(pa, wa, factored), _split(pb, wb, factored), strict=True)


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
        "materialised": lambda A, D: False,
    }[route]
    symmetric = other is None
    other = factors if other is None else other
    acc = _Gram(len(factors.f0), len(other.f0), factors.n_directions, mode, factors.f0, symmetric)
    if symmetric:
        pairs = ((piece, piece) for piece in _blocks(factors, chosen))
    else:
        pairs = _block_pairs(factors, other, chosen)
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
    Exact, at the cost of an (N C)^2 D Gram; runs use `diagonal_noise_features`."""
    if factors.directions is not None:
        raise ValueError("the diagonal noise needs every class's gradients")
    n, C = factors.f0.shape
    acc = _Gram(n, n, C, "exact", factors.f0, symmetric=True)
    s = sample_grads.to(factors.f0.dtype)
    for g in _blocks(factors):  # (n, C, d)
        h = torch.einsum("ncd,nc->nd", g, s)
        scaled = g * h.var(0, unbiased=False).sqrt()
        acc.add(scaled, scaled)
    acc.flush()
    return acc.theta


def diagonal_noise_features(
    model: nn.Module,
    x: torch.Tensor,
    sample_grads: torch.Tensor,
    sketch: Sketch,
    chunk: int = 256,
    outputs: int | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """A sketched square root of J diag(sigma^2) J^T (see `diagonal_noise_gram`): phi =
    J diag(sigma) P, (N*C, D0) rows (i, c) i-major, E[phi phi^T] = J diag(sigma^2) J^T. Two
    streamed passes over chunks of samples: the first accumulates each weight's mean and mean
    square of h_i = J_i^T sample_grads[i] (one backward pass of sum_i f_i . s_i), the second
    projects every class's per-sample gradients scaled by sigma. No (N C)^2 D Gram and no
    eigendecomposition: the SDE draws its noise as phi z, z ~ N(0, I_D0).

    With `outputs=P` the second pass takes P random output directions (as for Theta_s) and
    returns a square root (N, P*D0) of the class-averaged covariance, for the trace form
    Cov ~ Cov_s (x) I_C."""
    if sketch.kind != "countsketch":
        raise ValueError("the diagonal noise is sketched with a countsketch")
    s = sample_grads
    starts = range(0, len(x), chunk)
    moments: list[torch.Tensor] = []  # per block: (2, d) sums of h and h^2, in float64
    for start in starts:
        ss = s[start : start + chunk]
        f, layers = _capture(
            model, x[start : start + chunk], lambda f, ss=ss: (f * ss.to(f)).sum(1, keepdim=True)
        )
        for b, piece in enumerate(_blocks(JacobianFactors(f, layers), _factored)):
            m = 0
            for h in _in_slices(piece):
                h = h[:, 0]
                f64 = torch.float64
                m = m + torch.stack([h.sum(0, dtype=f64), (h * h).sum(0, dtype=f64)])
            if b < len(moments):
                moments[b] += m
            else:
                moments.append(m)
    n_all = len(x)
    sigma = [(m[1] / n_all - (m[0] / n_all) ** 2).clamp_min(0).sqrt() for m in moments]
    rows = []
    for start in starts:
        factors = jacobian_factors(model, x[start : start + chunk], outputs, seed)
        n, R = len(factors.f0), factors.n_directions
        f0 = factors.f0
        phi = torch.zeros(n * R, sketch.dim, dtype=f0.dtype, device=f0.device)
        for b, piece in enumerate(_blocks(factors, _factored)):
            bucket, sign = sketch.countsketch_map(b, len(sigma[b]), f0.device, f0.dtype)
            scale = sign * sigma[b].to(f0.dtype)
            row = 0
            for g in _in_slices(piece):
                g = g.reshape(-1, g.shape[2])
                phi[row : row + len(g)].index_add_(1, bucket, g * scale)
                row += len(g)
        rows.append(phi)
    phi = torch.cat(rows)
    if outputs is None:
        return phi
    return phi.view(len(x), -1) / outputs**0.5  # (N, P*D0): mean_p phi_p phi_p^T


def _factored(A: torch.Tensor, D: torch.Tensor) -> bool:
    return True


_SLICE_ELEMENTS = 2**21  # materialised per-sample gradients are processed this many at a time


def _in_slices(piece: torch.Tensor | tuple[torch.Tensor, torch.Tensor]) -> Iterator[torch.Tensor]:
    """A piece's per-sample gradients (n, R, d), a few samples at a time for a weight matrix's
    factors, so that the working set stays in cache: there, every element costs a memory
    access or two for a handful of multiply-adds."""
    if not isinstance(piece, tuple):
        yield piece
        return
    A, D = piece
    step = max(1, _SLICE_ELEMENTS // (D.shape[0] * D.shape[3] * A.shape[2]))
    for s in range(0, A.shape[0], step):
        yield _materialise(A[s : s + step], D[:, s : s + step])


def projected_features(
    model: nn.Module,
    x: torch.Tensor,
    sketch: Sketch,
    chunk: int = 256,
    outputs: int | None = None,
    seed: int = 0,
    route: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """f0 (N, C) and J P (N*R, D0), rows (i, r) i-major over the R output directions (the C
    classes, or `outputs` random ones drawn from `seed`), streamed over chunks of samples:
    peak memory is J P plus one chunk's factors and one layer's sketch. Each weight matrix is
    sketched in the cheaper of two ways by the sketch's flop model (`route` forces one): its
    per-sample gradients materialised then projected, or its factors projected without
    forming them."""
    if route not in ROUTES:
        raise ValueError(f"route must be one of {ROUTES}, got {route!r}")
    factored = {
        "auto": sketch.factored_is_cheaper,
        "structured": lambda A, D: True,
        "materialised": lambda A, D: False,
    }[route]
    f0s, rows = [], []
    for start in range(0, len(x), chunk):
        factors = jacobian_factors(model, x[start : start + chunk], outputs, seed)
        n, R = len(factors.f0), factors.n_directions
        phi = torch.zeros(n * R, sketch.dim, dtype=factors.f0.dtype, device=factors.f0.device)
        for block, piece in enumerate(_blocks(factors, _factored)):
            if isinstance(piece, tuple) and factored(*piece):
                sketch.project_factors_into(phi, block, *piece)
            elif sketch.kind == "countsketch":  # cheap to regenerate: slice to stay in cache
                row = 0
                for g in _in_slices(piece):
                    g = g.reshape(-1, g.shape[2])
                    sketch.project_into(phi[row : row + len(g)], block, g)
                    row += len(g)
            else:
                g = _materialise(*piece) if isinstance(piece, tuple) else piece
                sketch.project_into(phi, block, g.reshape(n * R, -1))
        f0s.append(factors.f0)
        rows.append(phi)
    return torch.cat(f0s), torch.cat(rows)


def sketched_theta(phi: torch.Tensor, n: int, trace: bool) -> torch.Tensor:
    """Theta from projected features phi (N*R, D0): phi phi^T, or with `trace` the mean over
    the R output directions of their (N, N) Grams (an estimate of Theta_s)."""
    if not trace:
        theta = torch.zeros(len(phi), len(phi), dtype=phi.dtype, device=phi.device)
        _add_gram(theta, phi)
        return theta
    per = phi.view(n, -1, phi.shape[1]).transpose(0, 1)  # (R, N, D0)
    return torch.bmm(per, per.transpose(1, 2)).mean(0)


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
) -> Linearization:
    """f0 and Theta of `model` (BatchNorm in eval mode) at its current weights on inputs x.
    mode "projected" needs a `sketch` and streams over `chunk` samples at a time. `outputs=P`
    (trace and projected modes) estimates Theta_s from P random output projections drawn from
    `seed`: the result is then in trace form (N x N). With `memory_gb` the exact and trace
    modes build Theta block pair by block pair when building it at once would not fit."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if mode == "projected":
        if sketch is None:
            raise ValueError("mode='projected' needs a sketch")
        f0, phi = projected_features(model, x, sketch, chunk, outputs, seed, route)
        trace = outputs is not None
        return Linearization(f0, sketched_theta(phi, len(f0), trace), "trace" if trace else "exact")
    size = len(x) if memory_gb is None else block_size(model, x, memory_gb)
    if size < len(x):
        f0, theta = blocked_gram(model, x, size, mode, route, block, outputs, seed)
        return Linearization(f0, theta, mode)
    factors = jacobian_factors(model, x, outputs, seed)
    return Linearization(factors.f0, gram(factors, mode, route, block), mode)


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
    fits at once); a ValueError when Theta alone does not fit."""
    budget = memory_gb * 2**30
    if exact_memory_bytes(model, x, len(x)) <= budget:
        return len(x)
    per_sample, C, item = _per_sample_bytes(model, x)
    left = budget - item * (len(x) * C) ** 2
    size = int(left // (2 * per_sample))
    if size < 1:
        need = (item * (len(x) * C) ** 2 + 2 * per_sample) / 2**30
        raise ValueError(f"needs at least {need:.2g} GB for N={len(x)}, above {memory_gb} GB")
    return size


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
