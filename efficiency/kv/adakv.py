"""AdaKV: per-head budgets inside each layer (top scores across the layer's heads), stored ragged.

Feng et al., "Ada-KV: Optimizing KV Cache Eviction by Adaptive Budget Allocation for Efficient LLM
Inference" (arXiv 2407.11550); kvpress ``AdaKVPress(scorer, alpha_safeguard=0.2)``. Unlike kvpress,
which keeps every entry and masks the evicted ones with a "fake key" (no memory saved), the kept
entries here are stored per KV head (``workbench.kv_cache.RaggedLayer``), so the bytes really go.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from workbench.errors import InputError

from .registry import register
from .snapkv import SnapKV


@dataclass(frozen=True)
class AdaptiveHeadBudgets:
    """Split a layer's budget among its KV heads by score; use as ``head_budgets=`` of any policy.

    Given one layer's scores (G, N) (+inf on protected entries, -inf on padding slots) and the
    per-head budget k: every head first keeps its protected entries and its ``floor(alpha * k)``
    best entries (the safeguard), then the remaining slots of the layer total ``G * k`` go to the
    best remaining scores across *all* heads. Returns G sorted index tensors (counts differ).
    Scores must be comparable across heads (attention-based scores are: each head's attention
    sums to 1). alpha = 1 gives every head the same k (the uniform policy).
    """

    alpha: float = 0.2

    def __post_init__(self) -> None:
        a = self.alpha
        if not isinstance(a, (int, float)) or isinstance(a, bool) or not 0 <= a <= 1:
            raise InputError(f"AdaptiveHeadBudgets: alpha (minimum share of the budget per head) must lie in [0, 1], "
                             f"got {a!r}.")

    def __call__(self, scores: torch.Tensor, k: int) -> list[torch.Tensor]:
        g, n = scores.shape
        valid = scores > float("-inf")
        total = min(g * k, int(valid.sum()))
        boosted = scores.clone()
        n_safe = min(math.floor(self.alpha * k), n)
        if n_safe:
            top = scores.topk(n_safe, dim=-1).indices
            boosted.scatter_(-1, top, torch.where(valid.gather(-1, top), float("inf"), float("-inf")))
        total = max(total, int((boosted == float("inf")).sum()))
        flat = boosted.reshape(-1).topk(total).indices
        head, slot = flat // n, flat % n
        return [slot[head == h].sort().values for h in range(g)]


@register("adakv")
@dataclass
class AdaKV(SnapKV):
    """SnapKV scores with AdaKV's per-head budgets (``AdaptiveHeadBudgets(alpha)``), stored ragged.

    Scores (B, G, N) as ``SnapKV``; each layer keeps the same total as a uniform policy (G * k
    entries), but its KV heads keep different counts: a head whose attention is spread keeps more,
    a focused head fewer, each at least ``alpha * k`` plus its protected window. Batch size 1.
    ratio=0 evicts nothing.
    """

    alpha: float = 0.2

    def __post_init__(self) -> None:
        if self.head_budgets is None:
            self.head_budgets = AdaptiveHeadBudgets(self.alpha)
        super().__post_init__()
