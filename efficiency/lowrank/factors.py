"""Low-rank linears: a weight W (out, in) kept as two thin factors B (out, r) and A (r, in), W ~ B A.

``LowRankLinear`` computes y = B (A x) + b: two thin GEMVs costing r (out + in) multiply-adds instead of
out x in, so it saves bytes and time only below the break-even rank out x in / (out + in) (SmolLM2:
288 for q and o, 144 for k and v, 418 for the MLP matrices). ``truncated_svd`` gives the best rank-r
factors in the Frobenius norm (Eckart-Young), split as B = U_r S_r^1/2, A = S_r^1/2 V_r^T.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from workbench.errors import InputError


def break_even_rank(out_features: int, in_features: int) -> float:
    """Rank at which the two factors hold as many numbers as the dense matrix."""
    return out_features * in_features / (out_features + in_features)


def check_rank(rank, w: torch.Tensor, what: str) -> int:
    full = min(w.shape)
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        raise InputError(f"{what}: rank must be a positive integer, got {rank!r}.")
    if rank > full:
        raise InputError(f"{what}: rank {rank} is larger than the matrix allows: a {tuple(w.shape)} matrix has rank at "
                         f"most {full}.")
    return rank


def svd64(w: torch.Tensor):
    """Exact SVD in float64: (U (out, k), S (k,), Vh (k, in))."""
    return torch.linalg.svd(w.detach().double(), full_matrices=False)


def truncated_svd(w: torch.Tensor, rank: int, svd=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(B (out, r), A (r, in)) with B A the best rank-r approximation of w, in w's dtype."""
    check_rank(rank, w, "truncated_svd")
    u, s, vh = svd if svd is not None else svd64(w)
    root = s[:rank].sqrt()
    return (u[:, :rank] * root).to(w.dtype), (root[:, None] * vh[:rank]).to(w.dtype)


class LowRankLinear(nn.Module):
    """y = B (A x) + b with B (out, r) and A (r, in) (two thin GEMVs)."""

    def __init__(self, B: torch.Tensor, A: torch.Tensor, bias: torch.Tensor | None = None):
        super().__init__()
        if B.ndim != 2 or A.ndim != 2 or B.shape[1] != A.shape[0]:
            raise InputError(f"LowRankLinear: need B (out, r) and A (r, in), got {tuple(B.shape)} and {tuple(A.shape)}.")
        self.B = nn.Parameter(B.detach().contiguous(), requires_grad=False)
        self.A = nn.Parameter(A.detach().contiguous(), requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)

    @property
    def rank(self) -> int:
        return self.A.shape[0]

    @property
    def weight(self) -> torch.Tensor:
        """The effective (out, in) weight B A (computed on demand, for analyses)."""
        return self.B @ self.A

    @property
    def in_features(self) -> int:
        return self.A.shape[1]

    @property
    def out_features(self) -> int:
        return self.B.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.linear(x, self.A), self.B, self.bias)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, rank={self.rank}"
