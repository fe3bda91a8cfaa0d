"""TrimLLM, training-free variant (Hu et al. 2025): progressive layer dropping guided by a domain score.

TrimLLM drops layers one at a time during domain fine-tuning: each round it scans the remaining layers
on domain calibration data ("calibration scanning"), drops the one whose removal hurts the domain score
least, breaks near-ties by activation norm (the layer that changes the residual least goes first), and
fine-tunes before the next round. Without fine-tuning (this CPU), what remains is the progressive,
domain-scored selection: a ``score(model) -> float`` callable (higher is better; e.g. accuracy on one
half of a fact set, the other half kept for evaluation) replaces the perplexity of SLEB. Without a
score, the calibration texts' negative perplexity is used (then it is SLEB with the tie-breaker).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, ClassVar

from workbench.errors import InputError

from ..calibration import token_windows, window_nll
from ..method import Knob
from ..registry import register_method
from .analysis import RemovalCurve
from .base import N_WINDOWS, RATIO, WINDOW, LayerDropMethod, n_to_remove
from .scores import layer_scores
from .skip import DropLayers


@register_method("trimllm")
@dataclass
class TrimLLM(LayerDropMethod):
    """Progressive, domain-scored block dropping without fine-tuning (module docstring)."""

    ratio: float = 0.2
    tie: float = 0.0
    protect_first: int = 1
    protect_last: int = 1
    window: int = 128
    n_windows: int = 4

    knobs: ClassVar[dict[str, Knob]] = {
        "ratio": RATIO, "window": WINDOW, "n_windows": N_WINDOWS,
        "tie": Knob("float", 0.0, 1e9, doc="Scores within this of the best are near-ties, broken by activation norm."),
        "protect_first": Knob("int", 0, 1 << 16), "protect_last": Knob("int", 0, 1 << 16),
    }
    needs_calibration: ClassVar[bool] = True
    curve: RemovalCurve | None = field(default=None, init=False, repr=False, compare=False)
    removal_order: list = field(default_factory=list, init=False, repr=False, compare=False)

    def prepare(self, model, texts=None, score: Callable | None = None) -> None:
        """texts: calibration texts (used for the activation norms, and for the score when none is given);
        score: callable(model) -> float, higher is better, evaluated with the candidate drop in force."""
        n = model.info.n_layers
        k = n_to_remove(self.ratio, n)
        windows = token_windows(model, texts, self.window, self.n_windows)
        if score is None:
            def score(m):
                v, c = window_nll(m, windows)
                return -math.exp(v / c)
            metric = "neg_ppl"
        else:
            if not callable(score):
                raise InputError("trimllm.prepare(): score must be a callable(model) -> float (higher is better).")
            metric = "score"
        cands = list(range(self.protect_first, n - self.protect_last))
        if k > len(cands):
            raise InputError(f"trimllm: {k} blocks to remove but only {len(cands)} may be removed.")
        removed: list[int] = []
        with model.without_interventions():
            steps = [{"step": 0, "removed": None, metric: float(score(model))}]
            tried = []
            for step in range(1, k + 1):
                with model.intervene(DropLayers(blocks=removed)):
                    norms = layer_scores(model, windows).frame.set_index("layer")["update_norm"]
                vals = {}
                for j in cands:
                    if j in removed:
                        continue
                    with model.intervene(DropLayers(blocks=removed + [j])):
                        vals[j] = float(score(model))
                    tried.append({"step": step, "layer": j, metric: vals[j]})
                best = max(vals.values())
                near = [j for j, v in vals.items() if v >= best - self.tie]
                pick = min(near, key=lambda j: (float(norms[j]), -vals[j]))
                removed.append(pick)
                steps.append({"step": step, "removed": pick, metric: vals[pick]})
        self.removal_order = removed
        self.curve = RemovalCurve("TrimLLM (training-free)", steps, tried, n, metric=metric)
        self.dropped_blocks = sorted(removed)
        self.prepared = True
