"""TOVA: keep by the last query's attention, averaged over heads."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import AttentionScorePolicy
from .registry import register


@register("tova")
@dataclass
class TOVA(AttentionScorePolicy):
    """Token Omission Via Attention: keep the entries the newest query attends to most.

    Oren et al., "Transformers are Multi-State RNNs" (arXiv 2401.06104). State per layer:
    (B, H, 1, N) the last query's attention row (the last prompt token at prefill, the new token
    while decoding). Score (B, G, N): that row averaged over *all* query heads (one choice per
    layer, as in the paper), the same for every KV head. A decoding-time policy: by default it
    compresses at prefill and after every step (``at="both"``).
    """

    at: str = "both"

    def summarize(self, pattern: torch.Tensor) -> torch.Tensor:
        return pattern[:, :, -1:]

    def combine(self, old, new, n_new):
        return new

    def score(self, cache, layer, ctx) -> torch.Tensor:
        s = self.state[layer][:, :, 0].mean(1, keepdim=True)  # (B, 1, N)
        return s.expand(-1, cache.n_kv_heads, -1)
