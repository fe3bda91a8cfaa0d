"""SLEB (Song et al. 2024): remove blocks greedily, each time the one whose removal raises the
calibration loss least, re-scoring after every removal.

At step i every alive block j (except the first ``protect_first`` and the last ``protect_last``) is
switched off together with the blocks already removed, the summed next-token NLL of the calibration
windows is measured, and the argmin is removed for good. The removal order is nested: the first k
removals of a run at 30% are the run at k/L. ``curve`` keeps every step's loss and every candidate's.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

from ..calibration import token_windows, window_nll
from ..method import Knob
from ..registry import register_method
from .analysis import RemovalCurve
from .base import N_WINDOWS, RATIO, WINDOW, LayerDropMethod, n_to_remove
from .skip import DropLayers


@register_method("sleb")
@dataclass
class SLEB(LayerDropMethod):
    """Greedy block removal by calibration perplexity (module docstring)."""

    ratio: float = 0.2
    window: int = 128
    n_windows: int = 8
    protect_first: int = 1
    protect_last: int = 1

    knobs: ClassVar[dict[str, Knob]] = {
        "ratio": RATIO, "window": WINDOW, "n_windows": N_WINDOWS,
        "protect_first": Knob("int", 0, 1 << 16, doc="First blocks never removed."),
        "protect_last": Knob("int", 0, 1 << 16, doc="Last blocks never removed."),
    }
    needs_calibration: ClassVar[bool] = True
    curve: RemovalCurve | None = field(default=None, init=False, repr=False, compare=False)
    removal_order: list = field(default_factory=list, init=False, repr=False, compare=False)

    def prepare(self, model, texts=None, progress=None) -> None:
        n = model.info.n_layers
        k = n_to_remove(self.ratio, n)
        windows = token_windows(model, texts, self.window, self.n_windows)
        candidates_all = [j for j in range(self.protect_first, n - self.protect_last)]
        if k > len(candidates_all):
            from workbench.errors import InputError

            raise InputError(f"sleb: {k} blocks to remove but only {len(candidates_all)} may be removed "
                             f"(protect_first={self.protect_first}, protect_last={self.protect_last}).")
        removed: list[int] = []
        with model.without_interventions():
            nll, cnt = window_nll(model, windows)
            steps = [{"step": 0, "removed": None, "ppl": math.exp(nll / cnt)}]
            tried = []
            for step in range(1, k + 1):
                best, best_nll = None, math.inf
                for j in candidates_all:
                    if j in removed:
                        continue
                    with model.intervene(DropLayers(blocks=removed + [j])):
                        v, _ = window_nll(model, windows)
                    tried.append({"step": step, "layer": j, "ppl": math.exp(v / cnt)})
                    if v < best_nll:
                        best, best_nll = j, v
                    if progress is not None:
                        progress(step, j, math.exp(v / cnt))
                removed.append(best)
                steps.append({"step": step, "removed": best, "ppl": math.exp(best_nll / cnt)})
        self.removal_order = removed
        self.curve = RemovalCurve("SLEB", steps, tried, n)
        self.dropped_blocks = sorted(removed)
        self.prepared = True

    def at_ratio(self, ratio: float) -> "SLEB":
        """The same run cut at a smaller ratio (the removal order is nested), without re-calibrating."""
        self._require_prepared()
        k = n_to_remove(ratio, self.curve.n_layers)
        if k > len(self.removal_order):
            from workbench.errors import InputError

            raise InputError(f"sleb.at_ratio({ratio}): this run removed only {len(self.removal_order)} blocks.")
        out = SLEB(ratio=ratio, window=self.window, n_windows=self.n_windows, protect_first=self.protect_first,
                   protect_last=self.protect_last)
        out.removal_order = self.removal_order[:k]
        out.curve = self.curve
        out.dropped_blocks = sorted(out.removal_order)
        out.prepared = True
        return out
