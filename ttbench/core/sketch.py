"""Random projections of per-sample gradients (Section 4): Theta ~ (J P)(J P)^T with P a D x D0
random matrix, E[P P^T] = I, so projected inner products are unbiased.

P is never stored: it is generated from (seed, block) for one block of weights at a time (and,
for the dense kinds, a bounded number of rows at a time), so every sample chunk sees the same P.
  * "achlioptas": entries sqrt(3/D0) * {+1, 0, -1} with probabilities 1/6, 2/3, 1/6 [1];
  * "gaussian":   entries N(0, 1/D0);
  * "countsketch": each weight goes to one random column with a random sign (sparse JL with one
    non-zero per row): O(D) per gradient instead of O(D D0 / 3), same unbiasedness.
"""

from __future__ import annotations

import torch

SKETCHES = ("countsketch", "achlioptas", "gaussian")
_ROWS = 8192  # rows of a dense P generated at once (bounds memory to _ROWS x D0)


class Sketch:
    def __init__(self, kind: str, dim: int, seed: int) -> None:
        if kind not in SKETCHES:
            raise ValueError(f"sketch must be one of {SKETCHES}, got {kind!r}")
        if dim < 1:
            raise ValueError(f"sketch dimension must be >= 1, got {dim}")
        self.kind, self.dim, self.seed = kind, dim, seed

    def _generator(self, block: int, device: torch.device) -> torch.Generator:
        return torch.Generator(device=device).manual_seed(self.seed * 1_000_003 + block)

    def project_into(self, out: torch.Tensor, block: int, g: torch.Tensor) -> None:
        """out += g P_block: g (rows, d), out (rows, D0), P_block the rows of P for `block`."""
        gen = self._generator(block, g.device)
        d = g.shape[1]
        if self.kind == "countsketch":
            bucket = torch.randint(self.dim, (d,), generator=gen, device=g.device)
            sign = torch.randint(2, (d,), generator=gen, device=g.device).to(g.dtype) * 2 - 1
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
