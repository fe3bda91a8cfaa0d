"""SnapKV: the last queries' attention (observation window), pooled over keys."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from workbench.errors import InputError

from .base import AttentionScorePolicy
from .registry import register


@register("snapkv")
@dataclass
class SnapKV(AttentionScorePolicy):
    """Keep the keys the last ``window`` queries (the observation window) attend to, plus the window.

    Li et al., "SnapKV: LLM Knows What You are Looking for Before Generation" (NeurIPS 2024,
    arXiv 2404.14469). State per layer: (B, H, W, N) the attention rows of the last W <= window
    queries (prompt rows at prefill; while decoding, the newest rows replace the oldest). Score
    (B, G, N): mean over those rows, pooled over neighbouring keys (``pooling`` "max" or "avg" as
    in kvpress, ``kernel`` tokens, stride 1, same length), then mean over the query heads of each
    KV group. The window's own keys are protected (always kept).

    Default kernel 13, not kvpress's 5: pooling is what keeps the neighbours of the tokens the
    window attends to (SnapKV's "clustering"), and SmolLM2 tokenizes numbers digit by digit, so
    a 5-digit passkey spans 5 tokens after the attended one. On 10 passkey prompts of 1k tokens at
    ratio 0.75 (window 16, max-pool): kernel 5 -> 0/10 (the last digits evicted: " 2900." for
    29093), 7 -> 4/10, 9 -> 7/10, 11 / 13 / 15 / 21 -> 10/10 (BENCHMARKS.md). 13 reaches a
    5-digit key and its period from the token before the key.
    """

    window: int = 16
    kernel: int = 13
    pooling: str = "max"

    def __post_init__(self) -> None:
        if not isinstance(self.kernel, int) or isinstance(self.kernel, bool) or self.kernel < 1 or self.kernel % 2 == 0:
            raise InputError(f"SnapKV: kernel must be a positive odd integer, got {self.kernel!r}.")
        if self.pooling not in ("max", "avg"):
            raise InputError(f"SnapKV: pooling must be 'max' or 'avg', got {self.pooling!r}.")
        if self.window < 1:
            raise InputError("SnapKV: window (the observation window) must be at least 1.")
        super().__post_init__()

    def summarize(self, pattern: torch.Tensor) -> torch.Tensor:
        return pattern[:, :, -self.window:]

    def combine(self, old, new, n_new):
        return new if old is None else torch.cat([old, new], dim=2)[:, :, -self.window:]

    def head_scores(self, layer: int) -> torch.Tensor:
        return pool(self.state[layer].mean(-2), self.kernel, self.pooling)


def pool(x: torch.Tensor, kernel: int, how: str) -> torch.Tensor:
    """Pool (B, H, N) over N with stride 1 and 'same' padding (max ignores padding; avg counts it as 0)."""
    b, h, n = x.shape
    flat = x.reshape(b * h, 1, n)
    if how == "max":
        out = F.max_pool1d(flat, kernel, stride=1, padding=kernel // 2)
    else:
        out = F.avg_pool1d(flat, kernel, stride=1, padding=kernel // 2)
    return out.reshape(b, h, n)
