"""StreamingLLM: attention sinks plus a recent window."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import ScorePolicy
from .registry import register


@register("streaming_llm")
@dataclass
class StreamingLLM(ScorePolicy):
    """Keep the first ``sinks`` positions (attention sinks) and the most recent tokens.

    Xiao et al., "Efficient Streaming Language Models with Attention Sinks" (ICLR 2024,
    arXiv 2309.17453). Score: the entry's original position (B, G, N), so after the protected
    sinks the most recent entries win. With neither ratio nor budget, the budget is
    ``sinks + window`` (exactly the sinks plus the window). Positions are not re-assigned
    (no key re-rotation): kept keys keep their original rotation.
    """

    sinks: int = 4

    def __post_init__(self) -> None:
        if self.ratio is None and self.budget is None and self.window > 0:
            self.budget = self.sinks + self.window
        super().__post_init__()

    def score(self, cache, layer, ctx) -> torch.Tensor:
        return cache.positions[layer].float()
