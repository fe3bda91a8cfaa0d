"""ZigZagKV-style per-layer budgets from layer uncertainty, measured on the prompt's attention.

Zhong et al., "ZigZagKV: Dynamic KV Cache Compression for Long-context Modeling based on Layer
Uncertainty" (arXiv 2412.09036): the number of tokens a layer needs to keep a fixed share of its
attention varies across layers in a zigzag, not monotonically as PyramidKV assumes; a layer that
needs more tokens (more "uncertain" attention) gets a larger budget. No official code was found;
this is our reading: measure, per layer, the minimum number of keys holding ``mass`` of each
attention row (last ``rows`` query rows of the latest multi-token forward, i.e. the prompt),
averaged over rows and query heads, and split the total budget in proportion.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from workbench.errors import InputError

from .registry import register
from .snapkv import SnapKV


@dataclass
class UncertaintyBudgets:
    """Per-layer budgets from layer uncertainty; use as ``layer_budgets=`` of any policy.

    ``observe_attention(layer, pattern (B, H, Tq, Tk))`` (fed through the policy during prefill)
    stores need[layer] = mean over the last ``rows`` query rows and all heads of the minimum number
    of keys whose attention sums to at least ``mass``. ``__call__(free, n_layers)`` returns each
    layer's free budget: ``floor * free`` plus a share of the rest proportional to need[layer],
    rounded so the sum is exactly ``free * n_layers`` (the same total as a uniform budget).
    Only multi-token forwards (prefill, chunks) update the measurement; decoding rows do not.
    """

    mass: float = 0.9
    rows: int = 16
    floor: float = 0.2
    need: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.mass, (int, float)) or isinstance(self.mass, bool) or not 0 < self.mass <= 1:
            raise InputError(f"UncertaintyBudgets: mass must lie in (0, 1], got {self.mass!r}.")
        if not isinstance(self.rows, int) or isinstance(self.rows, bool) or self.rows < 1:
            raise InputError(f"UncertaintyBudgets: rows must be a positive integer, got {self.rows!r}.")
        if not isinstance(self.floor, (int, float)) or isinstance(self.floor, bool) or not 0 <= self.floor <= 1:
            raise InputError(f"UncertaintyBudgets: floor (minimum share of the average budget) must lie in [0, 1], "
                             f"got {self.floor!r}.")

    def observe_attention(self, layer: int, pattern: torch.Tensor) -> None:
        if pattern.shape[-2] == 1 and layer in self.need:
            return
        self.need[layer] = tokens_for_mass(pattern[:, :, -self.rows:].float(), self.mass)

    def __call__(self, free: int, n_layers: int) -> list[int]:
        missing = [l for l in range(n_layers) if l not in self.need]
        if missing:
            raise InputError(f"UncertaintyBudgets: no attention was observed for layer(s) {missing[:5]}; use it as "
                             f"layer_budgets of a policy run through model.generate/prefill/sweep (which feed the "
                             f"prompt's attention).")
        need = [self.need[l] for l in range(n_layers)]
        total = sum(need)
        rest = (1 - self.floor) * free * n_layers
        raw = [self.floor * free + (rest * x / total if total > 0 else rest / n_layers) for x in need]
        out = [math.floor(x) for x in raw]
        for l in sorted(range(n_layers), key=lambda l: out[l] - raw[l])[:free * n_layers - sum(out)]:
            out[l] += 1
        return out


def tokens_for_mass(pattern: torch.Tensor, mass: float) -> float:
    """Mean over (B, H, R) attention rows of the minimum number of keys holding ``mass`` of the row."""
    srt = pattern.sort(-1, descending=True).values
    cum = srt.cumsum(-1)
    need = (cum < mass * cum[..., -1:] - 1e-7).sum(-1) + 1
    return float(need.float().mean())


@register("zigzagkv")
@dataclass
class ZigZagKV(SnapKV):
    """SnapKV scores with ZigZagKV-style per-layer budgets (``UncertaintyBudgets(mass)``).

    Scores (B, G, N) as ``SnapKV`` (the selection); per-layer budgets proportional to the tokens
    each layer needs to hold ``mass`` of its prompt attention, with the same total as a uniform
    budget. ratio=0 evicts nothing.
    """

    mass: float = 0.9

    def __post_init__(self) -> None:
        if self.layer_budgets is None:
            self.layer_budgets = UncertaintyBudgets(self.mass)
        super().__post_init__()
