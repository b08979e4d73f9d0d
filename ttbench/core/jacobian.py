"""The Jacobian of a network at its weights, in factors (eq. 2's per-sample gradients, never
formed whole). One forward pass records every trainable layer's input a; one backward pass per
output direction (the C classes, or P random unit directions r: the gradient of f r) records
the gradient delta of that direction with respect to the layer's output. Samples do not interact
(BatchNorm is in eval mode), so a weight matrix's per-sample gradient is sum_p delta(p) a(p)^T
over its positions p. Supported layers: Conv2d (groups=1), Linear, BatchNorm in eval mode;
anything else with trainable weights is refused with a clear message.

Also here, shared by the exact engine (ttbench.core.linearize) and the projections
(ttbench.core.projected): the pieces of J one layer at a time, materialised per-sample
gradients a few samples at a time, the Gram product, and the multiply-add model of the exact
contraction.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F

ROUTES = ("auto", "materialised", "structured")
_BatchNorm = nn.modules.batchnorm._BatchNorm


@dataclass
class _Layer:
    module: nn.Module
    generic: bool = False  # per-sample gradients through torch.func, not factors
    inp: torch.Tensor | None = None
    args: tuple = ()  # generic: the forward's positional and keyword arguments
    kwargs: dict = field(default_factory=dict)
    out: torch.Tensor | None = None
    delta: torch.Tensor | None = None  # (R, n, *out.shape[1:]), one per output direction


FACTORED = "factored"
GENERIC = "generic"


def _route(m: nn.Module) -> str:
    """How a module's own weights enter Theta: through factors (Conv2d with groups = 1,
    Linear, BatchNorm in eval mode), or through torch.func per-sample gradients."""
    if (isinstance(m, nn.Conv2d) and m.groups == 1) or isinstance(m, nn.Linear | _BatchNorm):
        return FACTORED
    return GENERIC


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


def routes(model: nn.Module) -> dict[str, str]:
    """Each module owning trainable weights, by name: the route its weights take."""
    return {name: _route(m) for name, m in trainable_layers(model)}


def trainable_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The modules owning trainable weights (their own, not their submodules'), by name;
    refuses BatchNorm that would make samples interact."""
    layers = []
    for name, m in model.named_modules():
        if isinstance(m, _BatchNorm):  # with or without weights
            if m.training:
                raise ValueError(f"layer {name}: BatchNorm must be in eval mode (model.eval())")
            if not m.track_running_stats:
                raise NotImplementedError(
                    f"layer {name}: BatchNorm without running statistics normalises with the "
                    "batch's even in eval mode, so samples interact: not supported"
                )
        if any(p.requires_grad for p in m.parameters(recurse=False)):
            layers.append((name, m))
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


def capture(
    model: nn.Module, x: torch.Tensor, rows_of: Callable[[torch.Tensor], torch.Tensor]
) -> tuple[torch.Tensor, list[_Layer]]:
    """Forward once recording layer inputs/outputs, then one backward pass per column of
    rows_of(f) (n, R): the output classes, output directions f r, or a loss's f . s_i."""
    layers = [_Layer(m, _route(m) == GENERIC) for _, m in trainable_layers(model)]

    def hook(layer: _Layer):
        def record(module, args, kwargs, output):
            if layer.out is not None:
                raise NotImplementedError("a layer used twice in one forward pass is not supported")
            if not isinstance(output, torch.Tensor):
                raise NotImplementedError(
                    f"{type(module).__name__} owns trainable weights and returns "
                    f"{type(output).__name__}, not a tensor: not supported"
                )
            layer.inp, layer.out = args[0].detach(), output
            if layer.generic:
                layer.args = tuple(a.detach() if torch.is_tensor(a) else a for a in args)
                layer.kwargs = kwargs

        return record

    handles = [lay.module.register_forward_hook(hook(lay), with_kwargs=True) for lay in layers]
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


def layer_factors(
    layer: _Layer,
) -> tuple[list[torch.Tensor], tuple[torch.Tensor, torch.Tensor] | None]:
    """Split a layer's gradient into materialised pieces (n, C, d) and, for a weight matrix,
    the factors (A: (n, P, K) inputs, D: (C, n, P, O) output gradients) of g = sum_p D A^T."""
    m, a, d = layer.module, layer.inp, layer.delta
    C, n = d.shape[:2]
    if layer.generic:
        return [_generic(layer)], None
    pieces: list[torch.Tensor] = []
    if isinstance(m, _BatchNorm):
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


def _generic(layer: _Layer) -> torch.Tensor:
    """Per-sample gradients (n, R, d) of a module's own trainable weights: for each sample
    and output direction, the vector-Jacobian product of the module's forward (its weights
    alone the variables) with the captured output gradient, by torch.func, vectorised over
    both. Exact for any module whose forward treats samples independently."""
    m = layer.module
    own = {k: p.detach() for k, p in m.named_parameters(recurse=False) if p.requires_grad}
    n = layer.delta.shape[1]
    batched = tuple(
        0 if torch.is_tensor(a) and a.dim() and len(a) == n else None for a in layer.args
    )

    def sample(args: tuple, deltas: torch.Tensor) -> torch.Tensor:
        def forward(weights: dict) -> torch.Tensor:
            one = tuple(a.unsqueeze(0) if b == 0 else a for a, b in zip(args, batched, strict=True))
            return torch.func.functional_call(m, weights, one, layer.kwargs)

        _, pull = torch.func.vjp(forward, own)
        grads = torch.func.vmap(lambda dr: pull(dr.unsqueeze(0))[0])(deltas)
        return torch.cat([grads[k].flatten(1) for k in own], 1)  # (R, d)

    with (
        torch.no_grad()
    ):  # the module's other weights stay out of autograd; torch.func still differentiates
        return torch.func.vmap(sample, in_dims=(batched, 1))(layer.args, layer.delta)


# Measured on 2 CPU cores: an element of the structured product costs about as much as this
# many multiply-adds of a large GEMM (it is memory-bound), so small-P layers go structured.
STRUCTURED_ELEMENT_COST = 300


def materialise(A: torch.Tensor, D: torch.Tensor) -> torch.Tensor:
    """Per-sample weight gradients sum_p D A^T, shape (n, C, O*K)."""
    return torch.einsum("cnpo,npk->ncok", D, A).flatten(2)


def exact_costs(R: int, n: int, P: int, n_out: int, K: int) -> tuple[int, int]:
    """Multiply-adds of one weight matrix's share of the exact Theta: materialised, structured."""
    materialised = R * n * P * n_out * K + (n * R) ** 2 * n_out * K
    structured = (n * P) ** 2 * K + (n * R * P) ** 2 * (n_out + STRUCTURED_ELEMENT_COST)
    return materialised, structured


def add_gram(theta: torch.Tensor, rows: torch.Tensor, parts: int = 4) -> None:
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

    f0, layers = capture(model, x, rows_of)
    return JacobianFactors(f0, layers, directions)


def blocks(
    factors: JacobianFactors, structured: Callable[[torch.Tensor, torch.Tensor], bool] | None = None
) -> Iterator[torch.Tensor | tuple[torch.Tensor, torch.Tensor]]:
    """Every trainable layer's share of J, one piece at a time: materialised per-sample gradients
    (n, C, d), or, for a weight matrix that `structured(A, D)` picks, its factors (A, D)."""
    for layer in factors.layers:
        pieces, weight = layer_factors(layer)
        chosen = weight is not None and structured is not None and structured(*weight)
        yield from _split(pieces, weight, chosen)


def _split(pieces: list, weight: tuple | None, factored: bool) -> Iterator:
    if weight is not None:
        if factored:
            yield weight
        else:
            pieces.append(materialise(*weight))
    yield from pieces


def block_pairs(
    fa: JacobianFactors,
    fb: JacobianFactors,
    structured: Callable[[torch.Tensor, torch.Tensor], bool],
) -> Iterator[tuple]:
    """`blocks` of two sets of samples side by side, each layer contracted the same way."""
    for la, lb in zip(fa.layers, fb.layers, strict=True):
        pa, wa = layer_factors(la)
        pb, wb = layer_factors(lb)
        factored = wa is not None and structured(*wa)
        yield from zip(_split(pa, wa, factored), _split(pb, wb, factored), strict=True)


_SLICE_ELEMENTS = 2**21  # materialised per-sample gradients are processed this many at a time


def in_slices(piece: torch.Tensor | tuple[torch.Tensor, torch.Tensor]) -> Iterator[torch.Tensor]:
    """A piece's per-sample gradients (n, R, d), a few samples at a time for a weight matrix's
    factors, so that the working set stays in cache: there, every element costs a memory
    access or two for a handful of multiply-adds."""
    if not isinstance(piece, tuple):
        yield piece
        return
    A, D = piece
    step = max(1, _SLICE_ELEMENTS // (D.shape[0] * D.shape[3] * A.shape[2]))
    for s in range(0, A.shape[0], step):
        yield materialise(A[s : s + step], D[:, s : s + step])
