"""PyramidKV-style per-layer budgets: more cache in lower layers, less in upper layers."""
from __future__ import annotations

import math
from dataclasses import dataclass

from workbench.errors import InputError

from .registry import register
from .snapkv import SnapKV


@dataclass(frozen=True)
class PyramidBudgets:
    """A linear per-layer schedule with the same total; use as ``layer_budgets=`` of any policy.

    Cai et al., "PyramidKV: Dynamic KV Cache Compression based on Pyramidal Information Funneling"
    (arXiv 2406.02069). For an average free budget b over L layers: the top layer gets
    b / beta, the bottom 2b - b / beta, linearly in between; rounded so the sum is exactly L * b.
    """

    beta: float = 20.0

    def __post_init__(self) -> None:
        if not isinstance(self.beta, (int, float)) or isinstance(self.beta, bool) or self.beta < 1:
            raise InputError(f"PyramidBudgets: beta must be a number >= 1, got {self.beta!r}.")

    def __call__(self, free: int, n_layers: int) -> list[int]:
        if n_layers == 1:
            return [free]
        lo = free / self.beta
        hi = 2 * free - lo
        raw = [hi - (hi - lo) * l / (n_layers - 1) for l in range(n_layers)]
        out = [math.floor(x) for x in raw]
        rest = free * n_layers - sum(out)  # largest remainders get the missing tokens
        for l in sorted(range(n_layers), key=lambda l: out[l] - raw[l])[:rest]:
            out[l] += 1
        return out


@register("pyramidkv")
@dataclass
class PyramidKV(SnapKV):
    """SnapKV scores with PyramidKV's per-layer budgets (``PyramidBudgets(beta)``).

    Same scores as ``SnapKV`` (B, G, N); only the per-layer budgets differ: lower layers keep
    more, upper layers fewer, with the same total as a uniform budget (a layer is capped at what
    it holds). ratio=0 evicts nothing.
    """

    beta: float = 20.0

    def __post_init__(self) -> None:
        if self.layer_budgets is None:
            self.layer_budgets = PyramidBudgets(self.beta)
        super().__post_init__()
