"""ShortGPT (Men et al. 2024): drop the blocks with the lowest Block Influence, in one shot.

BI_l = 1 - mean_t cos(x_l, x_{l+1}) over calibration tokens (``scores.layer_scores``), computed once on
the unmodified model; the ``round(ratio x L)`` lowest-BI blocks are dropped. ``metric`` picks the
variant: "bi" (the paper, all tokens), "bi_no_first" (position 0, the attention-sink token with the
massive activation, left out) or "bi_angular" (arccos(cos)/pi).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from ..calibration import token_windows
from ..method import Knob
from ..registry import register_method
from .base import N_WINDOWS, RATIO, WINDOW, LayerDropMethod, n_to_remove
from .scores import LayerScores, layer_scores


@register_method("shortgpt")
@dataclass
class ShortGPT(LayerDropMethod):
    """Drop the ``round(ratio x L)`` blocks of lowest Block Influence on the calibration texts."""

    ratio: float = 0.2
    metric: str = "bi"
    window: int = 256
    n_windows: int = 16

    knobs: ClassVar[dict[str, Knob]] = {
        "ratio": RATIO, "window": WINDOW, "n_windows": N_WINDOWS,
        "metric": Knob("choice", choices=("bi", "bi_no_first", "bi_angular"),
                       doc="Block Influence over all tokens, without position 0, or angular."),
    }
    needs_calibration: ClassVar[bool] = True
    scores: LayerScores | None = field(default=None, init=False, repr=False, compare=False)

    def prepare(self, model, texts=None) -> None:
        k = n_to_remove(self.ratio, model.info.n_layers)
        windows = token_windows(model, texts, self.window, self.n_windows)
        with model.without_interventions():
            self.scores = layer_scores(model, windows, label="ShortGPT calibration")
        self.dropped_blocks = sorted(self.scores.order(self.metric)[:k])
        self.prepared = True
