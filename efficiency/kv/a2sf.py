"""A2SF: accumulated attention with a forgetting factor."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from workbench.errors import InputError

from .base import AttentionScorePolicy
from .registry import register


@register("a2sf")
@dataclass
class A2SF(AttentionScorePolicy):
    """H2O's accumulation with a forgetting factor, so old queries count less.

    Jo & Shin, "A2SF: Accumulative Attention Scoring with Forgetting Factor for Token Pruning in
    Transformer Decoder" (arXiv 2407.20485). Score of key k after query n: sum_q alpha^(n - q) A[q, k],
    which removes plain accumulation's bias toward early tokens (they are seen by more queries).
    State per layer: (B, H, 1, N); per forward of Tq queries: old * alpha^Tq + sum_q alpha^(Tq-1-q) A[q].
    Score (B, G, N): summed over the query heads of each KV group.
    """

    forgetting: float = 0.99
    window: int = 8
    head_reduce: str = "sum"

    def __post_init__(self) -> None:
        f = self.forgetting
        if not isinstance(f, (int, float)) or isinstance(f, bool) or not 0 < f <= 1:
            raise InputError(f"A2SF: forgetting must be a number in (0, 1], got {f!r}.")
        super().__post_init__()

    def summarize(self, pattern: torch.Tensor) -> torch.Tensor:
        tq = pattern.shape[-2]
        w = self.forgetting ** torch.arange(tq - 1, -1, -1, dtype=pattern.dtype, device=pattern.device)
        return torch.einsum("bhqk,q->bhk", pattern, w)[:, :, None]

    def combine(self, old, new, n_new):
        return new if old is None else old * self.forgetting ** n_new + new
