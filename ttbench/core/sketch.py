"""Random projections of per-sample gradients (Section 4): Theta ~ (J P)(J P)^T with P a D x D0
random matrix, E[P P^T] = I, so projected inner products are unbiased.

P is never stored: it is generated from (seed, block) for one block of weights at a time (and,
for the dense kinds, a bounded number of rows at a time), so every sample chunk sees the same P.
  * "achlioptas": entries sqrt(3/D0) * {+1, 0, -1} with probabilities 1/6, 2/3, 1/6 [1];
  * "gaussian":   entries N(0, 1/D0);
  * "countsketch": each weight goes to one random column with a random sign (sparse JL with one
    non-zero per row): O(D) per gradient instead of O(D D0 / 3), same unbiasedness.

A weight matrix's per-sample gradient g = sum_p delta_p a_p^T (O x K) can instead be sketched
from its factors without forming it: S(g) = R1^T g R2 = sum_p (R1^T delta_p)(R2^T a_p)^T, with
R1 (O x d1) and R2 (K x d2) independent Gaussian N(0, 1/d) maps (the identity on a side that is
already small), d1 d2 <= D0, placed on random columns of the D0. E[R R^T] = I on each side, so
E[<S(g), S(h)>] = <g, h>: unbiased like the others, at a cost set by O d1 + K d2 + d1 d2 per
position instead of O K. `factored_is_cheaper` picks between the two per layer by their
multiply-adds per sample (a choice that does not depend on the number of samples, so every
streamed chunk makes the same one).
"""

from __future__ import annotations

import torch

SKETCHES = ("countsketch", "achlioptas", "gaussian")
_ROWS = 8192  # rows of a dense P generated at once (bounds memory to _ROWS x D0)
# Measured on 2 CPU cores: scattering one element with index_add_ costs about as much as this
# many multiply-adds of a large GEMM (it is memory-bound).
SCATTER_COST = 16


class Sketch:
    def __init__(self, kind: str, dim: int, seed: int) -> None:
        if kind not in SKETCHES:
            raise ValueError(f"sketch must be one of {SKETCHES}, got {kind!r}")
        if dim < 1:
            raise ValueError(f"sketch dimension must be >= 1, got {dim}")
        self.kind, self.dim, self.seed = kind, dim, seed

    def _generator(self, block: int, device: torch.device) -> torch.Generator:
        return torch.Generator(device=device).manual_seed(self.seed * 1_000_003 + block)

    def countsketch_map(
        self, block: int, d: int, device: torch.device, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The count-sketch of `block`'s d weights: each weight's column and sign."""
        gen = self._generator(block, device)
        bucket = torch.randint(self.dim, (d,), generator=gen, device=device)
        sign = torch.randint(2, (d,), generator=gen, device=device).to(dtype) * 2 - 1
        return bucket, sign

    def project_into(self, out: torch.Tensor, block: int, g: torch.Tensor) -> None:
        """out += g P_block: g (rows, d), out (rows, D0), P_block the rows of P for `block`."""
        gen = self._generator(block, g.device)
        d = g.shape[1]
        if self.kind == "countsketch":
            bucket, sign = self.countsketch_map(block, d, g.device, g.dtype)
            out.index_add_(1, bucket, g * sign)
            return
        for start in range(0, d, _ROWS):
            stop = min(d, start + _ROWS)
            shape = (stop - start, self.dim)
            if self.kind == "gaussian":
                p = torch.randn(shape, generator=gen, dtype=g.dtype, device=g.device)
                p /= self.dim**0.5
            else:
                u = torch.randint(6, shape, generator=gen, device=g.device)
                p = ((u == 0).to(g.dtype) - (u == 1).to(g.dtype)) * (3 / self.dim) ** 0.5
            out.addmm_(g[:, start:stop], p)

    def factored_dims(self, n_out: int, n_in: int) -> tuple[int, int]:
        """(d1, d2): the sketch sizes of the output and input sides of an O x K weight."""
        d1 = min(n_out, max(1, int(self.dim**0.5)))
        d2 = min(n_in, self.dim // d1)
        return min(n_out, self.dim // d2), d2

    def per_sample_costs(self, R: int, P: int, n_out: int, n_in: int) -> tuple[int, int]:
        """Multiply-adds per sample of sketching an O x K weight's R gradients over P
        positions: materialised then projected, and factored."""
        d1, d2 = self.factored_dims(n_out, n_in)
        apply = SCATTER_COST if self.kind == "countsketch" else self.dim
        materialised = R * P * n_out * n_in + R * n_out * n_in * apply
        factored = R * d1 * d2 * (P + SCATTER_COST)
        factored += R * P * n_out * d1 * (d1 < n_out) + P * n_in * d2 * (d2 < n_in)
        return materialised, factored

    def factored_is_cheaper(self, A: torch.Tensor, D: torch.Tensor) -> bool:
        """Whether sketching the factors A (n, P, K), D (R, n, P, O) costs fewer multiply-adds
        per sample than materialising the R per-sample gradients and projecting them."""
        R, _, P, n_out = D.shape
        materialised, factored = self.per_sample_costs(R, P, n_out, A.shape[2])
        return factored < materialised

    def project_factors_into(
        self, out: torch.Tensor, block: int, A: torch.Tensor, D: torch.Tensor
    ) -> None:
        """out += S(g) for the gradients g[i, r] = sum_p D[r, i, p] A[i, p]^T, rows (i, r)
        i-major: A (n, P, K), D (R, n, P, O), out (n * R, D0)."""
        gen = self._generator(block, A.device)
        n_out, n_in = D.shape[3], A.shape[2]
        d1, d2 = self.factored_dims(n_out, n_in)
        columns = torch.randperm(self.dim, generator=gen, device=A.device)[: d1 * d2]

        def side(m: torch.Tensor, size: int) -> torch.Tensor:
            if size == m.shape[-1]:
                return m
            r = torch.randn(m.shape[-1], size, generator=gen, dtype=m.dtype, device=m.device)
            return m @ r.div_(size**0.5)

        s = torch.einsum("rnpx,npy->nrxy", side(D, d1), side(A, d2))
        out.index_add_(1, columns, s.reshape(out.shape[0], d1 * d2))
