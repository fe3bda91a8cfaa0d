"""H2O: heavy hitters by accumulated attention, plus a recent window."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import AttentionScorePolicy
from .registry import register


@register("h2o")
@dataclass
class H2O(AttentionScorePolicy):
    """Keep the keys that received the most attention so far ("heavy hitters") plus recent tokens.

    Zhang et al., "H2O: Heavy-Hitter Oracle for Efficient Generative Inference of Large Language
    Models" (NeurIPS 2023, arXiv 2306.14048). State per layer: (B, H, 1, N) attention each
    retained key received, summed over every query seen (prompt rows at prefill, one row per
    decoding step), accumulated across steps. Score (B, G, N): that sum, summed over the query
    heads of each KV group (``head_reduce="sum"``).
    """

    window: int = 8
    head_reduce: str = "sum"

    def summarize(self, pattern: torch.Tensor) -> torch.Tensor:
        return pattern.sum(-2, keepdim=True)

    def combine(self, old, new, n_new):
        return new if old is None else old + new
