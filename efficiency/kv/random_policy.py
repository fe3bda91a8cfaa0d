"""Random eviction: the baseline every scorer must beat."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .base import ScorePolicy
from .registry import register


@register("random")
@dataclass
class RandomPolicy(ScorePolicy):
    """Keep a uniformly random subset (plus any protected sinks and window); seeded.

    Baseline used by kvpress (``RandomPress``) and most eviction papers. Score (B, G, N): i.i.d.
    uniform draws from a generator seeded with ``seed`` (a new policy object repeats its choices).
    """

    seed: int = 0
    _gen: torch.Generator = field(init=False, repr=False, compare=False, default=None)

    def __post_init__(self) -> None:
        super().__post_init__()
        self._gen = torch.Generator().manual_seed(int(self.seed))

    def score(self, cache, layer, ctx) -> torch.Tensor:
        shape = cache.positions[layer].shape
        return torch.rand(shape, generator=self._gen).to(cache.positions[layer].device)
