"""Key norm: keep the keys with the lowest L2 norm."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import ScorePolicy
from .registry import register


@register("key_norm")
@dataclass
class KeyNorm(ScorePolicy):
    """Keep the cached keys with the *lowest* L2 norm; no attention needed.

    Devoto et al., "A Simple and Effective L2 Norm-Based Strategy for KV Cache Compression"
    (EMNLP 2024, arXiv 2406.11430): low-norm keys tend to receive high attention (sink tokens have
    small keys). Score (B, G, N): minus the L2 norm of each post-RoPE key (RoPE preserves norms).
    """

    def score(self, cache, layer, ctx) -> torch.Tensor:
        return -cache.keys(layer).float().norm(dim=-1)
